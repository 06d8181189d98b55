"""Constructed scene bundles with known geometry, for viewer tests, demos and benchmarks.

Every scene here goes through the real pipeline path: a label map on a voxel grid ->
:func:`pipeline.mesh.labelmap_to_meshes` -> :func:`pipeline.scene.save_scene`, with the CT and
label NIfTI written by :func:`pipeline.geometry.write_image_file`. Shapes are analytic
(ellipsoids, cylinders) so positions, volumes and distances are known.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Blob:
    """An analytic structure: ellipsoid (``radii``) or z-aligned cylinder (``cylinder=True``,
    radii[0] = radius, radii[2] = half length). Centre and radii in LPS mm."""

    name: str
    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    rgb: tuple[int, int, int]
    hu: float = 60.0
    cylinder: bool = False
    critical: bool = False
    qc: dict = field(default_factory=dict)


def grid_affine(shape, spacing: float, flip_x: bool = False) -> np.ndarray:
    """Axis-aligned affine (k, j, i) -> LPS centred on the origin.

    k -> +z (superior), j -> +y (posterior), i -> +x (left), or -x with ``flip_x`` (the
    column order of a RAS-stored NIfTI), so the index->LPS path is exercised both ways.
    """
    a = np.zeros((4, 4))
    a[2, 0] = spacing
    a[1, 1] = spacing
    a[0, 2] = -spacing if flip_x else spacing
    a[3, 3] = 1.0
    a[:3, 3] = -(a[:3, :3] @ ((np.asarray(shape) - 1) / 2.0))
    return a


def _lps_grid(shape, affine):
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    m = affine[:3, :3].astype(np.float32)
    t = affine[:3, 3].astype(np.float32)
    return [m[r, 0] * k + m[r, 1] * j + m[r, 2] * i + t[r] for r in range(3)]


def blob_mask(blob: Blob, xyz) -> np.ndarray:
    x, y, z = (xyz[n] - blob.center[n] for n in range(3))
    rx, ry, rz = blob.radii
    if blob.cylinder:
        return (x * x + y * y <= rx * rx) & (np.abs(z) <= rz)
    return (x / rx) ** 2 + (y / ry) ** 2 + (z / rz) ** 2 <= 1.0


def make_scene(folder, blobs: Sequence[Blob], *, shape=(64, 96, 128), spacing: float = 3.0,
               flip_x: bool = False, case_id: str = "synthetic", uncertainty: bool = False,
               plan: dict | None = None):
    """Write a scene bundle of analytic blobs to ``folder``; later blobs overwrite earlier ones.

    Returns the saved :class:`pipeline.scene.Scene`. With ``uncertainty`` a voxel-wise map is
    written that is 1 at structure boundaries of the *left* half (+x) and 0 elsewhere, so a
    colour-by-uncertainty render has a known left/right pattern.
    """
    from pipeline.geometry import write_image_file
    from pipeline.mesh import MeshConfig, labelmap_to_meshes
    from pipeline.scene import Scene, save_scene
    from pipeline.types import Label, LabelMap, LabelTable, StageRecord, Volume

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    affine = grid_affine(shape, spacing, flip_x)
    xyz = _lps_grid(shape, affine)
    labels_arr = np.zeros(shape, dtype=np.uint16)
    ct = np.full(shape, -1000.0, dtype=np.float32)
    labels = []
    for n, b in enumerate(blobs, start=1):
        m = blob_mask(b, xyz)
        labels_arr[m] = n
        ct[m] = b.hu
        labels.append(Label(n, b.name, b.rgb, critical=b.critical))
    rng = np.random.default_rng(0)
    ct += rng.normal(0, 8, size=shape).astype(np.float32)
    image = Volume(ct.astype(np.int16), affine, "1.2.826.0.1.3680043.10.1234.1", {"kind": "synthetic"})
    lab_vol = Volume(labels_arr, affine, image.frame_of_reference_uid)
    write_image_file(image, folder / "image.nii.gz")
    write_image_file(lab_vol, folder / "labels.nii.gz")
    table = LabelTable(labels)
    meshes = labelmap_to_meshes(LabelMap(lab_vol, table), MeshConfig(smoothing_iterations=15, target_faces=8000))
    by_name = {b.name: b for b in blobs}
    for m in meshes:
        if by_name[m.name].qc:
            m.qa["qc"] = dict(by_name[m.name].qc)
    unc_rel = None
    if uncertainty:
        from scipy.ndimage import grey_dilation, grey_erosion

        # a voxel is on a boundary when its 5x5x5 neighbourhood holds more than one label
        edge = grey_dilation(labels_arr, size=5) != grey_erosion(labels_arr, size=5)
        unc = np.where(edge & (xyz[0] > 0), 1.0, 0.0).astype(np.float32)
        write_image_file(image.with_array(unc), folder / "uncertainty.nii.gz")
        unc_rel = "uncertainty.nii.gz"
    scene = Scene(case_id=case_id, source={"modality": "CT", "frame_of_reference_uid": image.frame_of_reference_uid},
                  labels=table, meshes=meshes, uncertainty=unc_rel,
                  provenance=[StageRecord("synthetic", {"surgitwin": "test"})])
    if plan:
        scene.plan.update(plan)
    save_scene(scene, folder)
    return scene


# Patient-left (+x) structures are spleen and left kidney, as in a real abdomen.
DEMO_BLOBS = (
    Blob("body", (0, 5, 0), (165, 110, 92), (220, 180, 150), hu=30),
    Blob("liver", (-60, -5, 25), (65, 60, 45), (160, 70, 60), hu=60),
    Blob("liver_tumour", (-55, -30, 30), (15, 15, 15), (250, 220, 40), hu=90),
    Blob("spleen", (85, 30, 25), (25, 35, 38), (110, 60, 170), hu=50),
    Blob("kidney_left", (55, 60, -25), (20, 18, 40), (90, 170, 90), hu=40),
    Blob("kidney_right", (-55, 60, -35), (20, 18, 40), (60, 140, 200), hu=40),
    Blob("aorta", (8, 35, 0), (11, 11, 85), (220, 30, 40), hu=200, cylinder=True, critical=True),
    Blob("vertebrae", (0, 75, 0), (20, 20, 88), (240, 240, 225), hu=700, cylinder=True, critical=True),
)


def make_demo_scene(folder, **kw):
    """A small abdomen: body, liver with a tumour (patient right), spleen and left kidney (left),
    right kidney, aorta and a spine column. Used for the README screenshot and GUI tests."""
    return make_scene(folder, DEMO_BLOBS, case_id=kw.pop("case_id", "demo_abdomen"), **kw)


def many_blobs(n: int = 40) -> list[Blob]:
    """``n`` separate spheres on a grid, distinct colours (load-time benchmarks)."""
    side = int(np.ceil(np.sqrt(n)))
    out = []
    for q in range(n):
        r, c = divmod(q, side)
        hue = q / n
        rgb = tuple(int(255 * (0.5 + 0.5 * np.cos(2 * np.pi * (hue + s / 3)))) for s in range(3))
        out.append(Blob(f"structure_{q:02d}", (-150 + 300 * (c + 0.5) / side, 0.0, -80 + 160 * (r + 0.5) / side),
                        (12, 14, 10), rgb))
    return out
