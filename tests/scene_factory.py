"""Constructed scenes with analytic truth, for planning, export, report and viewer tests.

:func:`make_constructed_scene` rasterises spheres, cylinders and boxes placed at known LPS
positions onto an anisotropic, oblique grid (a rotated affine), meshes them with
:func:`pipeline.mesh.labelmap_to_meshes`, and saves a complete scene bundle. The returned
:class:`ConstructedTruth` knows every shape exactly (volumes, point/segment distances, plane
caps), so tests compare pipeline numbers with geometry, not with earlier outputs.

Default layout (LPS mm; +x = patient Left, +y = Posterior, +z = Superior)::

    liver        sphere  centre (-45, 0, 0)   r 32, on the patient's RIGHT, tumour carved out
    tumour       sphere  centre (-60, 4, 6)   r 9, inside the liver
    aorta        cylinder axis x=8, y=22, z -45..45, r 7, marked critical
    kidney_left  box     centre (55, 28, -8), half sizes (11, 9, 22), on the patient's LEFT
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.geometry import write_image_file
from pipeline.mesh import MeshConfig, labelmap_to_meshes
from pipeline.scene import Scene, save_scene
from pipeline.types import Label, LabelMap, LabelTable, StageRecord, Volume

STUDY_UID = "1.2.826.0.1.3680043.8.498.10000000000000000000000000000000001"
SERIES_UID = "1.2.826.0.1.3680043.8.498.10000000000000000000000000000000002"
FOR_UID = "1.2.826.0.1.3680043.8.498.10000000000000000000000000000000003"


# -- analytic solids (distance = 0 inside, exact Euclidean distance outside) -------------------
@dataclass(frozen=True)
class Sphere:
    center: tuple
    radius: float

    @property
    def volume_mm3(self) -> float:
        return 4.0 / 3.0 * np.pi * self.radius ** 3

    def contains(self, p):
        return np.linalg.norm(np.asarray(p) - self.center, axis=-1) <= self.radius

    def distance(self, p):
        return np.maximum(np.linalg.norm(np.asarray(p) - self.center, axis=-1) - self.radius, 0.0)

    def surface_distance(self, p):
        """Unsigned distance to the boundary surface (inside points too)."""
        return np.abs(np.linalg.norm(np.asarray(p) - self.center, axis=-1) - self.radius)

    def cap_mm3(self, point, normal) -> float:
        """Volume on the side ``normal`` points to of the plane through ``point``."""
        n = np.asarray(normal, float) / np.linalg.norm(normal)
        d = float((np.asarray(self.center) - np.asarray(point)) @ n)  # centre's height above the plane
        h = float(np.clip(self.radius + d, 0.0, 2 * self.radius))
        return np.pi * h * h * (3 * self.radius - h) / 3.0


@dataclass(frozen=True)
class Cylinder:
    p0: tuple
    p1: tuple
    radius: float

    def _local(self, p):
        p0 = np.asarray(self.p0, float)
        u = np.asarray(self.p1, float) - p0
        h = np.linalg.norm(u)
        u = u / h
        v = np.asarray(p, float) - p0
        a = v @ u
        rho = np.linalg.norm(v - a[..., None] * u, axis=-1)
        return a, rho, h

    @property
    def volume_mm3(self) -> float:
        return np.pi * self.radius ** 2 * float(np.linalg.norm(np.subtract(self.p1, self.p0)))

    def contains(self, p):
        a, rho, h = self._local(p)
        return (a >= 0) & (a <= h) & (rho <= self.radius)

    def distance(self, p):
        a, rho, h = self._local(p)
        da = np.maximum(np.maximum(-a, a - h), 0.0)
        dr = np.maximum(rho - self.radius, 0.0)
        return np.hypot(da, dr)

    def surface_distance(self, p):
        a, rho, h = self._local(p)
        inside = (a >= 0) & (a <= h) & (rho <= self.radius)
        return np.where(inside, np.minimum(np.minimum(a, h - a), self.radius - rho), self.distance(p))


@dataclass(frozen=True)
class Box:
    center: tuple
    half: tuple
    rotation: tuple = ((1, 0, 0), (0, 1, 0), (0, 0, 1))  # columns: the box axes in LPS

    def _local(self, p):
        return (np.asarray(p, float) - self.center) @ np.asarray(self.rotation, float)

    @property
    def volume_mm3(self) -> float:
        return 8.0 * float(np.prod(self.half))

    def contains(self, p):
        return np.all(np.abs(self._local(p)) <= self.half, axis=-1)

    def distance(self, p):
        q = np.abs(self._local(p)) - self.half
        return np.linalg.norm(np.maximum(q, 0.0), axis=-1)

    def surface_distance(self, p):
        q = np.abs(self._local(p)) - self.half
        inside = np.all(q <= 0, axis=-1)
        return np.where(inside, -q.max(axis=-1), self.distance(p))


@dataclass(frozen=True)
class Carved:
    """``outer`` minus ``inner`` (inner wholly inside outer), e.g. a liver with its tumour."""

    outer: object
    inner: object

    @property
    def volume_mm3(self) -> float:
        return self.outer.volume_mm3 - self.inner.volume_mm3

    def contains(self, p):
        return self.outer.contains(p) & ~self.inner.contains(p)

    def distance(self, p):  # exact for points outside ``outer`` (what clearances use)
        return self.outer.distance(p)

    def surface_distance(self, p):
        return np.minimum(self.outer.surface_distance(p), self.inner.surface_distance(p))

    def cap_mm3(self, point, normal) -> float:
        return self.outer.cap_mm3(point, normal) - self.inner.cap_mm3(point, normal)


def segment_distance(shape, p, q, iters: int = 200) -> tuple[float, float]:
    """Min over the segment of ``shape.distance`` (convex solid: golden-section search is exact).

    Returns (distance, t) with t the parameter of the closest point along p -> q.
    """
    p, q = np.asarray(p, float), np.asarray(q, float)
    f = lambda t: float(shape.distance(p + t * (q - p)))  # noqa: E731
    a, b = 0.0, 1.0
    g = (np.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    for _ in range(iters):
        if f(c) < f(d):
            b = d
        else:
            a = c
        c, d = b - g * (b - a), a + g * (b - a)
    t = (a + b) / 2
    return f(t), t


# -- the scene ----------------------------------------------------------------------------------
DEFAULT_LABELS = (
    Label(1, "liver", (221, 130, 101), code="10200004", expected_ml=(500, 3000)),
    Label(2, "tumour", (255, 200, 0), code="108369006"),
    Label(3, "aorta", (224, 60, 60), code="15825003", critical=True),
    Label(4, "kidney_left", (150, 90, 200), code="18639004"),
)
HU = {"liver": 60, "tumour": 25, "aorta": 180, "kidney_left": 150}


def default_shapes() -> dict:
    tumour = Sphere((-60.0, 4.0, 6.0), 9.0)
    return {
        "liver": Carved(Sphere((-45.0, 0.0, 0.0), 32.0), tumour),
        "tumour": tumour,
        "aorta": Cylinder((8.0, 22.0, -45.0), (8.0, 22.0, 45.0), 7.0),
        "kidney_left": Box((55.0, 28.0, -8.0), (11.0, 9.0, 22.0)),
    }


@dataclass
class ConstructedTruth:
    shapes: dict
    labels: LabelTable
    affine: np.ndarray
    grid_shape: tuple
    spacing: tuple
    dicom_dir: Path | None = None
    extra: dict = field(default_factory=dict)

    def volume_ml(self, name: str) -> float:
        return self.shapes[name].volume_mm3 / 1000.0

    @property
    def voxel_mm(self) -> float:
        """The tolerance unit 'one voxel' on an anisotropic grid: the largest spacing (mm)."""
        return float(np.max(self.spacing))


def rotation(seed: int) -> np.ndarray:
    q = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))[0]
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def grid_for(shapes_bounds: np.ndarray, spacing, rot: np.ndarray, margin: float = 8.0):
    """(shape, affine) of a rotated grid covering the LPS box ``shapes_bounds`` (2, 3)."""
    lo, hi = shapes_bounds[0] - margin, shapes_bounds[1] + margin
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    m = rot * np.asarray(spacing, float)
    idx = corners @ np.linalg.inv(m).T
    a = np.eye(4)
    a[:3, :3] = m
    a[:3, 3] = m @ np.floor(idx.min(0))
    shape = tuple(int(x) for x in np.ceil(idx.max(0) - np.floor(idx.min(0))) + 1)
    return shape, a


def _bounds(shape) -> np.ndarray:
    if isinstance(shape, Sphere):
        c = np.asarray(shape.center)
        return np.array([c - shape.radius, c + shape.radius])
    if isinstance(shape, Cylinder):
        p = np.array([shape.p0, shape.p1], float)
        return np.array([p.min(0) - shape.radius, p.max(0) + shape.radius])
    if isinstance(shape, Box):
        r = np.abs(np.asarray(shape.rotation, float)) @ np.asarray(shape.half, float)
        return np.array([np.subtract(shape.center, r), np.add(shape.center, r)])
    if isinstance(shape, Carved):
        return _bounds(shape.outer)
    raise TypeError(type(shape))


def make_constructed_scene(tmp_path, *, spacing=(1.6, 0.8, 0.9), rotation_seed: int = 3, shapes: dict | None = None,
                           labels=DEFAULT_LABELS, case_id: str = "constructed", dicom: bool = False,
                           mesh_config: MeshConfig | None = None, folder_name: str = "scene"):
    """Write a constructed scene bundle; returns ``(scene_path, truth)``.

    Parameters
    ----------
    tmp_path : folder to write into (the scene goes to ``tmp_path / folder_name``)
    spacing : (slice, row, column) mm; rotation_seed : seed of the grid's rotation (oblique)
    shapes : name -> analytic solid (default :func:`default_shapes`); names must be in ``labels``
    dicom : also write the image as a DICOM CT series (``tmp_path / 'dicom'``), recorded in
        ``scene.source['dicom_dir']`` with its UIDs, for DICOM SEG tests
    """
    tmp_path = Path(tmp_path)
    shapes = shapes or default_shapes()
    table = LabelTable([l for l in labels if l.name in shapes])
    bounds = np.array([b for s in shapes.values() for b in _bounds(s)])
    grid, affine = grid_for(np.array([bounds.min(0), bounds.max(0)]), spacing, rotation(rotation_seed))
    lab = np.zeros(grid, np.uint8)
    img = np.full(grid, -80, np.int16)
    inv = np.linalg.inv(affine)
    for name, shape in shapes.items():  # evaluate each solid only in its index-space box
        b = _bounds(shape)
        corners = np.array([[x, y, z] for x in b[:, 0] for y in b[:, 1] for z in b[:, 2]])
        idx = corners @ inv[:3, :3].T + inv[:3, 3]
        lo = np.clip(np.floor(idx.min(0)).astype(int) - 1, 0, None)
        hi = np.minimum(np.ceil(idx.max(0)).astype(int) + 2, grid)
        sub = np.stack(np.meshgrid(*(np.arange(l, h) for l, h in zip(lo, hi)), indexing="ij"), -1)
        inside = shape.contains(sub.reshape(-1, 3) @ affine[:3, :3].T + affine[:3, 3]).reshape(sub.shape[:3])
        box = tuple(slice(l, h) for l, h in zip(lo, hi))
        lab[box][inside] = table.by_name(name).id
        img[box][inside] = HU.get(name, 100)
    img = img + np.random.default_rng(0).integers(-10, 11, size=grid).astype(np.int16)
    source = {"study_instance_uid": STUDY_UID, "series_instance_uid": SERIES_UID, "frame_of_reference_uid": FOR_UID,
              "modality": "CT", "series_description": "constructed analytic phantom"}
    image = Volume(img, affine, FOR_UID, source)
    lm = LabelMap(Volume(lab, affine, FOR_UID, source), table)
    folder = tmp_path / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    write_image_file(image, folder / "image.nii.gz")
    write_image_file(lm.volume, folder / "labels.nii.gz")
    dicom_dir = None
    if dicom:
        dicom_dir = write_dicom_series(image, tmp_path / "dicom")
        source["dicom_dir"] = str(dicom_dir)
    meshes = labelmap_to_meshes(lm, mesh_config or MeshConfig())
    scene = Scene(case_id, source, table, meshes, provenance=[
        StageRecord("constructed", {"surgitwin": "test"}, inputs={"series_instance_uid": SERIES_UID},
                    outputs={"shape": list(grid), "spacing_mm": list(spacing)})])
    save_scene(scene, folder)
    truth = ConstructedTruth(shapes, table, affine, grid, tuple(spacing), dicom_dir)
    return folder, truth


def write_dicom_series(image: Volume, out_dir, *, study_uid: str = STUDY_UID, series_uid: str = SERIES_UID,
                       for_uid: str = FOR_UID, reverse_files: bool = True) -> Path:
    """One CT slice per ``k`` with the volume's exact geometry (IPP/IOP/PixelSpacing).

    Files are numbered in *reverse* slice order by default so readers must sort by position.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    a = image.affine
    row_dir = a[:3, 2] / np.linalg.norm(a[:3, 2])  # direction of increasing column index i
    col_dir = a[:3, 1] / np.linalg.norm(a[:3, 1])  # direction of increasing row index j
    nk = image.shape[0]
    for k in range(nk):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, for_uid
        ds.Modality, ds.PatientName, ds.PatientID = "CT", "Constructed^Phantom", "CONSTRUCTED01"
        ds.PatientBirthDate, ds.PatientSex, ds.StudyDate, ds.StudyTime = "19700101", "O", "20240101", "120000"
        ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID, ds.SeriesNumber = "A1", "", "1", 1
        ds.InstanceNumber, ds.Manufacturer = k + 1, "surgitwin tests"
        ds.ImagePositionPatient = [float(x) for x in a[:3, :3] @ [k, 0, 0] + a[:3, 3]]
        ds.ImageOrientationPatient = [float(x) for x in (*row_dir, *col_dir)]
        ds.PixelSpacing = [float(np.linalg.norm(a[:3, 1])), float(np.linalg.norm(a[:3, 2]))]
        ds.SliceThickness = float(np.linalg.norm(a[:3, 0]))
        ds.Rows, ds.Columns = image.shape[1], image.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.ImageType = 0, 1, ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PixelData = np.ascontiguousarray(image.array[k].astype(np.int16)).tobytes()
        name = f"ct_{(nk - 1 - k) if reverse_files else k:04d}.dcm"
        ds.save_as(out_dir / name, enforce_file_format=True)
    return out_dir


_CACHE: dict = {}


def cached_constructed_scene(dest, **kwargs):
    """:func:`make_constructed_scene` built once per test process (per ``kwargs``) and copied
    into ``dest`` (a fresh folder per test, so tests may change the plan freely).

    Returns ``(scene_path, truth)`` like :func:`make_constructed_scene`.
    """
    import atexit
    import shutil
    import tempfile

    key = repr(sorted(kwargs.items()))
    if key not in _CACHE:
        root = Path(tempfile.mkdtemp(prefix="surgitwin-constructed-"))
        atexit.register(shutil.rmtree, root, True)
        _CACHE[key] = make_constructed_scene(root, **kwargs)
    src, truth = _CACHE[key]
    dest = Path(dest)
    shutil.copytree(src, dest / src.name)
    return dest / src.name, truth


SAMPLE = Path(__file__).resolve().parents[1] / "sample_scans" / "phantom_ct"
SAMPLE_STRUCTURES = ("liver", "liver_tumor", "aorta", "inferior_vena_cava", "kidney_left", "kidney_right", "spleen",
                     "spine")


def sample_scan_scene(dest, names=SAMPLE_STRUCTURES, case_id: str = "sample_phantom_ct"):
    """Scene of the shipped sample scan (``sample_scans/phantom_ct``) with its ground-truth
    labels standing in for a perfect segmentation, read through the real DICOM reader.

    Returns ``(scene_path, phantom)`` where ``phantom`` is the sample's ``phantom.json``
    (true volumes in ml under ``volumes_ml``).
    """
    import json

    from pipeline.geometry import read_image_file
    from pipeline.ingest import read_input

    dest = Path(dest) / case_id
    dest.mkdir(parents=True, exist_ok=True)
    image = read_input(SAMPLE / "dicom")
    gt = read_image_file(SAMPLE / "ground_truth_labels.nii.gz")
    if not gt.geometry_equal(image, atol=1e-3):
        raise AssertionError("sample ground truth must be on the DICOM grid")
    table = LabelTable.from_list(json.loads((SAMPLE / "labels.json").read_text()))
    arr = np.rint(gt.array).astype(np.uint8)
    lm = LabelMap(image.with_array(arr), table)
    write_image_file(image, dest / "image.nii.gz")
    write_image_file(lm.volume, dest / "labels.nii.gz")
    meshes = labelmap_to_meshes(lm, MeshConfig(), names=set(names))
    src = image.source
    source = {k: src.get(k) for k in ("study_instance_uid", "series_instance_uid", "frame_of_reference_uid",
                                      "modality", "series_description", "n_files")}
    source["input"] = str((SAMPLE / "dicom").resolve())
    scene = Scene(case_id, source, table, meshes, provenance=[
        StageRecord("ingest", {"surgitwin": "test"}, inputs={"series_instance_uid": source["series_instance_uid"]},
                    outputs={"shape": list(image.shape)}),
        StageRecord("segment", {"surgitwin": "test"}, inputs={"labels": "sample_scans/phantom_ct/ground_truth_labels.nii.gz"},
                    notes=("ground-truth labels of the synthetic phantom stand in for a model",))])
    save_scene(scene, dest)
    return dest, json.loads((SAMPLE / "phantom.json").read_text())
