"""Synthetic CT phantom (pipeline.phantom) and its DICOM writer (pipeline.dicom_writer).

Every geometric check is made in patient space (LPS mm through the affine), never by array
index, so the same assertions hold for axial, oblique and reversed grids.
"""
import json
import subprocess

import numpy as np
import pydicom
import pytest
import yaml
from scipy import ndimage

from pipeline import phantom as P
from pipeline.dicom_writer import DicomMeta, write_dicom_series
from pipeline.errors import DicomError, GeometryError, SurgitwinError
from pipeline.geometry import read_image_file
from pipeline.types import LabelTable, Volume
from tests.conftest import ROOT, require_tool

pytestmark = pytest.mark.slow  # end-to-end: left out by `make test-fast`

ORGANS = ("liver", "spleen", "kidney_left", "kidney_right", "liver_tumor")
SMALL = dict(shape=(12, 48, 40), spacing=(3.0, 2.0, 2.5))  # non-square, anisotropic: catches swaps


@pytest.fixture(scope="module")
def default():
    return P.make_phantom(0)


def centroid_lps(labels, name) -> np.ndarray:
    idx = np.argwhere(labels.mask(name))
    assert len(idx), f"{name} missing"
    return labels.volume.index_to_lps(idx.mean(axis=0)[None])[0]


def touches_edge(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
                or mask[:, :, 0].any() or mask[:, :, -1].any())


# --- label table -------------------------------------------------------------------------------

def test_label_yaml_is_generated_from_python_table():
    path = ROOT / "configs" / "labels" / "phantom.yaml"
    assert path.read_text() == P.label_table_yaml(), "regenerate: configs/labels/phantom.yaml = label_table_yaml()"
    data = yaml.safe_load(path.read_text())
    assert LabelTable.from_list(data["labels"]) == P.PHANTOM_LABELS
    assert P.PHANTOM_LABELS.names == ["liver", "spleen", "kidney_left", "kidney_right", "aorta",
                                      "inferior_vena_cava", "liver_tumor", "lungs", "spine", "ribs", "body"]
    critical = {l.name for l in P.PHANTOM_LABELS if l.critical}
    assert critical == {"aorta", "inferior_vena_cava"}


# --- determinism --------------------------------------------------------------------------------

def test_same_seed_gives_identical_volumes():
    a_ct, a_lab = P.make_phantom(3, **SMALL)
    b_ct, b_lab = P.make_phantom(3, **SMALL)
    c_ct, c_lab = P.make_phantom(4, **SMALL)
    assert np.array_equal(a_ct.array, b_ct.array) and np.array_equal(a_lab.array, b_lab.array)
    assert np.array_equal(a_ct.affine, b_ct.affine)
    assert a_ct.frame_of_reference_uid == b_ct.frame_of_reference_uid != c_ct.frame_of_reference_uid
    assert not np.array_equal(a_ct.array, c_ct.array), "the seed drives the noise"
    assert np.array_equal(a_lab.array, c_lab.array), "without randomise the anatomy does not depend on the seed"


def test_same_seed_gives_identical_files(tmp_path):
    ct, _ = P.make_phantom(5, **SMALL)
    a = write_dicom_series(ct, tmp_path / "a")
    b = write_dicom_series(ct, tmp_path / "b")
    assert [p.name for p in a] == [p.name for p in b]
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes()
    assert not list((tmp_path / "a").glob(".tmp-*")), "temporary files left behind"


# --- anatomy ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, hu, tol", [
    ("liver", 60, 5), ("spleen", 50, 5), ("kidney_left", 28, 6), ("kidney_right", 28, 6),
    ("aorta", 200, 8), ("inferior_vena_cava", 150, 8), ("liver_tumor", 30, 6), ("lungs", -845, 25),
])
def test_mean_hu_inside_structures(default, name, hu, tol):
    ct, labels = default
    core = ndimage.binary_erosion(labels.mask(name), iterations=2)  # away from partial volume
    assert core.sum() > 50
    assert abs(ct.array[core].mean() - hu) <= tol, f"{name}: mean HU {ct.array[core].mean():.1f}, designed {hu}"


def test_tissue_hu_and_noise(default):
    ct, labels = default
    arr = ct.array
    assert arr.dtype == np.int16 and arr.min() >= -1024 and arr.max() <= 3071
    liver = ndimage.binary_erosion(labels.mask("liver"), iterations=3)
    assert 9.0 <= arr[liver].std() <= 15.0, "noise sd ~12 HU"
    spine = labels.mask("spine")
    assert arr[spine].max() > 600 and 200 < np.median(arr[spine]) < 700
    air = arr[:, :8, :]  # anterior rows: outside the body, above the table
    assert abs(air.mean() + 1000) < 3 and (labels.array[:, :8, :] == 0).all()
    # subcutaneous fat: body voxels between -150 and -50 HU are common, as in real CT
    body = labels.mask("body")
    fat = (arr > -150) & (arr < -50) & body
    assert fat.sum() > 0.2 * body.sum()


def test_left_right_and_craniocaudal_in_patient_space(default):
    _, labels = default
    c = {n: centroid_lps(labels, n) for n in labels.labels.names}
    # LPS: +x is the patient's left
    assert c["liver"][0] < -20 and c["kidney_right"][0] < -20 and c["inferior_vena_cava"][0] < 0
    assert c["spleen"][0] > 20 and c["kidney_left"][0] > 20 and c["aorta"][0] > 0
    # +y posterior: spleen and kidneys behind the liver's centre; aorta in front of the spine
    assert c["kidney_left"][1] > c["liver"][1] and c["spleen"][1] > c["liver"][1]
    assert c["aorta"][1] < c["spine"][1] and c["inferior_vena_cava"][1] < c["spine"][1]
    # +z superior: lungs at the top, kidneys below the liver
    assert c["lungs"][2] > c["liver"][2] > c["kidney_right"][2]
    assert c["kidney_left"][2] > c["kidney_right"][2], "the left kidney sits higher"


def test_volumes_are_plausible(default):
    _, labels = default
    vols = P.label_volumes_ml(labels)
    for label in P.PHANTOM_LABELS:
        if label.expected_ml:
            lo, hi = label.expected_ml
            assert lo <= vols[label.name] <= hi, f"{label.name}: {vols[label.name]} ml not in {label.expected_ml}"
    assert 1200 <= vols["liver"] <= 2000
    assert 100 <= vols["spleen"] <= 300
    assert 100 <= vols["kidney_left"] <= 200 and 100 <= vols["kidney_right"] <= 200
    diameter = (6 * vols["liver_tumor"] * 1000 / np.pi) ** (1 / 3)
    assert 20 <= diameter <= 40


def test_connected_components_match_the_table(default):
    _, labels = default
    full = np.ones((3, 3, 3), bool)
    for label in P.PHANTOM_LABELS:
        n = ndimage.label(labels.mask(label.name), structure=full)[1]
        if label.components:
            assert n == label.components, f"{label.name}: {n} components, table says {label.components}"
        elif label.name == "ribs":
            assert n >= 10
    assert ndimage.label(labels.mask("body"), structure=full)[1] == 1


def test_tumor_lies_inside_the_liver(default):
    _, labels = default
    tumor = labels.mask("liver_tumor")
    ring = ndimage.binary_dilation(tumor, iterations=2) & ~tumor
    assert labels.mask("liver")[ring].all()


@pytest.mark.parametrize("orientation, reverse", [("axial", True), ("oblique", False), ("oblique", True), ("coronal", False)])
def test_same_anatomy_on_other_grids(default, orientation, reverse):
    _, ref = default
    shape = (150, 150, 120) if orientation == "coronal" else (110, 200, 200)
    spacing = (2.4, 2.0, 2.6) if orientation == "coronal" else P.DEFAULT_SPACING
    _, labels = P.make_phantom(0, shape, spacing, orientation, reverse_slices=reverse)
    a = labels.volume.affine
    if reverse:
        assert np.dot(a[:3, 0], np.cross(a[:3, 2], a[:3, 1])) < 0, "slices advance against the normal"
    for name in ORGANS:
        mask = labels.mask(name)
        assert not touches_edge(mask), f"{name} clipped by the {orientation} grid; test grid too small"
        d = np.linalg.norm(centroid_lps(labels, name) - centroid_lps(ref, name))
        assert d < 1.5, f"{name}: centroid moved {d:.2f} mm on the {orientation} grid"
        v, v0 = mask.sum() * labels.volume.voxel_volume_ml, ref.mask(name).sum() * ref.volume.voxel_volume_ml
        assert abs(v - v0) / v0 < 0.04, f"{name}: {v:.1f} ml vs {v0:.1f} ml"
    assert centroid_lps(labels, "kidney_left")[0] > 0 > centroid_lps(labels, "liver")[0]


def test_randomised_anatomy_stays_plausible():
    spec = {"organ_shift_mm": 12.0, "organ_scale": 0.15, "body_scale": 0.1}
    seen = set()
    for seed in range(4):
        _, labels = P.make_phantom(seed, (60, 110, 110), (5.0, 3.2, 3.2), noise_sd=0, blur_sigma_vox=0, randomise=spec)
        vols = P.label_volumes_ml(labels)
        seen.add(round(vols["liver"]))
        for name in ("liver", "spleen", "kidney_left", "kidney_right"):
            lo, hi = P.PHANTOM_LABELS.by_name(name).expected_ml
            assert lo <= vols[name] <= hi, f"seed {seed}: {name} {vols[name]} ml"
        assert centroid_lps(labels, "spleen")[0] > 0 > centroid_lps(labels, "liver")[0]
        tumor = labels.mask("liver_tumor")
        ring = ndimage.binary_dilation(tumor) & ~tumor
        assert labels.mask("liver")[ring].mean() > 0.9
    assert len(seen) == 4, "randomise must change the anatomy with the seed"
    with pytest.raises(SurgitwinError, match="randomise"):
        P.make_phantom(0, **SMALL, randomise={"organ_wiggle": 1.0})


def test_bad_orientation_is_refused():
    with pytest.raises(GeometryError, match="orthogonal"):
        P.phantom_grid(orientation=(1, 0, 0, 0.5, 0.5, 0))
    with pytest.raises(GeometryError, match="orientation"):
        P.phantom_grid(orientation="upside-down")


# --- DICOM --------------------------------------------------------------------------------------

def _dciodvfy_errors(path) -> list[str]:
    tool = require_tool("dciodvfy", "dicom3tools")
    r = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("orientation, signed", [("axial", False), ("oblique", True)])
def test_dciodvfy_reports_no_errors(tmp_path, orientation, signed):
    ct, _ = P.make_phantom(0, **SMALL, orientation=orientation)
    files = write_dicom_series(ct, tmp_path, signed=signed)
    for f in (files[0], files[len(files) // 2]):
        assert _dciodvfy_errors(f) == []


def test_dciodvfy_catches_a_broken_file(tmp_path):
    """The check above is only worth something if dciodvfy flags what we would get wrong."""
    ct, _ = P.make_phantom(0, **SMALL)
    f = write_dicom_series(ct, tmp_path)[0]
    ds = pydicom.dcmread(f)
    del ds.PatientPosition
    ds.save_as(tmp_path / "broken.dcm")
    assert any("PatientPosition" in e for e in _dciodvfy_errors(tmp_path / "broken.dcm"))


@pytest.mark.parametrize("orientation, reverse_slices, reverse_order, shuffle, signed", [
    ("axial", False, False, False, False),
    ("axial", True, True, True, False),
    ("oblique", False, True, False, True),
    ("sagittal", True, False, True, False),
])
def test_series_reads_back_with_pydicom(tmp_path, orientation, reverse_slices, reverse_order, shuffle, signed):
    ct, _ = P.make_phantom(1, **SMALL, orientation=orientation, reverse_slices=reverse_slices)
    meta = DicomMeta(series_number=7)
    files = write_dicom_series(ct, tmp_path, meta, series_description="round trip",
                               reverse_order=reverse_order, shuffle_names=shuffle, signed=signed)
    nk, nj, ni = ct.shape
    assert len(files) == nk == len(list(tmp_path.glob("*.dcm")))
    a = ct.affine
    row_dir, col_dir = a[:3, 2] / np.linalg.norm(a[:3, 2]), a[:3, 1] / np.linalg.norm(a[:3, 1])
    instances = []
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        assert ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.2" == ds.SOPClassUID
        assert ds.PatientName == "PHANTOM^SURGITWIN" and ds.PatientID == "SW-0001"
        assert ds.SeriesDescription == "round trip" and ds.SeriesNumber == 7
        assert ds.FrameOfReferenceUID == ct.frame_of_reference_uid
        assert (ds.Rows, ds.Columns) == (nj, ni)
        assert np.allclose([float(v) for v in ds.ImagePositionPatient], a[:3, :3] @ (k, 0, 0) + a[:3, 3], atol=1e-4)
        assert np.allclose([float(v) for v in ds.ImageOrientationPatient], [*row_dir, *col_dir], atol=1e-6)
        assert np.allclose([float(v) for v in ds.PixelSpacing], [SMALL["spacing"][1], SMALL["spacing"][2]])
        assert float(ds.SliceThickness) == pytest.approx(SMALL["spacing"][0])
        assert ds.PixelRepresentation == (1 if signed else 0)
        hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        assert np.array_equal(hu, ct.array[k])
        instances.append(int(ds.InstanceNumber))
    assert instances == (list(range(nk, 0, -1)) if reverse_order else list(range(1, nk + 1)))
    by_name = [files.index(p) for p in sorted(files)]
    assert (by_name != sorted(by_name)) == (shuffle or reverse_order)
    uids = {pydicom.dcmread(f).SOPInstanceUID for f in files}
    assert len(uids) == nk


def test_writer_refuses_what_it_cannot_store(tmp_path):
    ct, _ = P.make_phantom(0, **SMALL)
    with pytest.raises(DicomError, match="integer HU"):
        write_dicom_series(ct.with_array(ct.array.astype(np.float32)), tmp_path)
    low = ct.with_array(np.full(ct.shape, -2000, np.int16))
    with pytest.raises(DicomError, match="signed=True"):
        write_dicom_series(low, tmp_path)
    assert len(write_dicom_series(low, tmp_path / "signed", signed=True)) == ct.shape[0]


def _ascending(vol: Volume) -> Volume:
    """The same volume with slices ordered along the slice normal (how readers stack them)."""
    a = vol.affine
    if np.dot(a[:3, 0], np.cross(a[:3, 2], a[:3, 1])) >= 0:
        return vol
    b = a.copy()
    b[:3, 0] = -a[:3, 0]
    b[:3, 3] = a[:3, :3] @ (vol.shape[0] - 1, 0, 0) + a[:3, 3]
    return Volume(vol.array[::-1], b, vol.frame_of_reference_uid)


@pytest.mark.parametrize("orientation, reverse_slices, shuffle", [("axial", False, False), ("oblique", True, True)])
def test_series_reads_back_with_ingest_reader(tmp_path, orientation, reverse_slices, shuffle):
    read = pytest.importorskip("pipeline.ingest.read")
    ct, _ = P.make_phantom(2, **SMALL, orientation=orientation, reverse_slices=reverse_slices)
    files = write_dicom_series(ct, tmp_path, shuffle_names=shuffle, reverse_order=reverse_slices)
    vol = read.read_series(sorted(files))
    expect = _ascending(ct)
    got = _ascending(vol)
    assert got.shape == expect.shape
    assert np.allclose(got.affine, expect.affine, atol=1e-3), f"{got.affine}\n{expect.affine}"
    assert np.array_equal(np.asarray(got.array, np.int32), expect.array.astype(np.int32))
    assert vol.frame_of_reference_uid == ct.frame_of_reference_uid


# --- sample bundle ------------------------------------------------------------------------------

def test_generate_sample_writes_a_complete_bundle(tmp_path):
    info = P.generate_sample(tmp_path, seed=0, shape=(20, 64, 64), spacing=(5.0, 5.4, 5.4))
    files = sorted((tmp_path / "dicom").glob("*.dcm"))
    assert len(files) == info["files"] == 20
    truth = read_image_file(tmp_path / "ground_truth_labels.nii.gz")
    _, labels = P.make_phantom(0, (20, 64, 64), (5.0, 5.4, 5.4))
    assert np.array_equal(truth.array, labels.array)
    assert np.allclose(truth.affine, labels.volume.affine, atol=1e-3)
    table = LabelTable.from_list(json.loads((tmp_path / "labels.json").read_text()))
    assert table == P.PHANTOM_LABELS
    meta = json.loads((tmp_path / "phantom.json").read_text())
    assert meta["seed"] == 0 and meta["volumes_ml"] == P.label_volumes_ml(labels)
    readme = (tmp_path / "README.md").read_text()
    assert "seed 0" in readme and "liver_tumor" in readme
    # regenerating replaces the series instead of mixing two
    P.generate_sample(tmp_path, seed=0, shape=(10, 64, 64), spacing=(5.0, 5.4, 5.4))
    assert len(list((tmp_path / "dicom").glob("*.dcm"))) == 10


def test_phantom_command_oblique_reversed(tmp_path):
    info = P.phantom_command(tmp_path, seed=1, oblique=True, reverse=True)
    assert info["files"] == P.DEFAULT_SHAPE[0]
    first = pydicom.dcmread(tmp_path / "dicom" / "IM0001.dcm")
    iop = np.array([float(v) for v in first.ImageOrientationPatient])
    assert np.allclose(iop, P.OBLIQUE_IOP, atol=1e-6)
    last_k = pydicom.dcmread(sorted((tmp_path / "dicom").glob("*.dcm"))[-1])
    assert int(last_k.InstanceNumber) == P.DEFAULT_SHAPE[0]


def test_shipped_sample_matches_the_generator():
    sample = ROOT / "sample_scans" / "phantom_ct"
    if not (sample / "dicom").exists():
        pytest.skip("sample_scans/phantom_ct not generated")
    size = sum(p.stat().st_size for p in sample.rglob("*") if p.is_file())
    assert size < 10 * 1024 * 1024, f"sample is {size / 1e6:.1f} MB"
    ct, labels = P.make_phantom(0)
    truth = read_image_file(sample / "ground_truth_labels.nii.gz")
    assert np.array_equal(truth.array, labels.array), "stale sample: run pipeline.phantom.generate_sample"
    files = sorted((sample / "dicom").glob("*.dcm"))
    assert len(files) == ct.shape[0]
    for f in files[:: max(1, len(files) // 5)]:
        ds = pydicom.dcmread(f)
        k = int(ds.InstanceNumber) - 1
        hu = ds.pixel_array.astype(np.int32) + int(ds.RescaleIntercept)
        assert np.abs(hu - ct.array[k]).max() <= 1, "stale sample: run pipeline.phantom.generate_sample"
