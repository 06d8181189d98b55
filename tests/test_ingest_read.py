"""pipeline.ingest.read: synthetic series with known geometry, then real scanner data.

Axis convention under test: ``Volume.array[k, j, i]`` = [slice, row, column], affine -> LPS.
"""
from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import REAL, real_data, require_tool
from dicom_synth import new_uids, rotation, write_enhanced_ct, write_series, write_slice
from pipeline.errors import DicomError
from pipeline.geometry import read_image_file, resample_like, volume_from_sitk
from pipeline.ingest.read import read_input, read_pixels, read_series


def _ramp(n, rows=6, cols=5, base=100):
    """(n, rows, cols) int16 stored values: slice k holds base + 10k + a small in-plane ramp."""
    return (base + 10 * np.arange(n)[:, None, None] + np.arange(rows * cols).reshape(rows, cols) % 7).astype(np.int16)


def _bbox(vol):
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in vol.shape])))
    p = vol.index_to_lps(corners)
    return p.min(0), p.max(0)


# -- synthetic: order, orientation, left/right -------------------------------------------------

def test_shuffled_names_and_reversed_instance_order_sort_by_position(tmp_path):
    n = 8
    stored = _ramp(n)
    z = 10.0 + 2.5 * np.arange(n)
    pos = np.stack([np.full(n, -2.0), np.full(n, -3.0), z], axis=1)
    rng = np.random.default_rng(1)
    names = [f"x{v:04d}.dcm" for v in rng.permutation(n)]  # name order != slice order
    files = write_series(tmp_path, stored, pos, names=names, instances=list(range(n, 0, -1)), intercept=-1024)
    vol = read_series(files[::-1])
    assert vol.shape == (n, 6, 5)
    assert vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array, stored.astype(np.int32) - 1024)
    np.testing.assert_allclose(vol.affine[:3, 0], [0, 0, 2.5], atol=1e-6)
    np.testing.assert_allclose(vol.affine[:3, 1], [0, 0.8, 0], atol=1e-9)  # column dir x row spacing
    np.testing.assert_allclose(vol.affine[:3, 2], [0.7, 0, 0], atol=1e-9)  # row dir x column spacing
    np.testing.assert_allclose(vol.origin, [-2, -3, 10])
    src = vol.source
    assert src["series_instance_uid"] and src["frame_of_reference_uid"] == vol.frame_of_reference_uid
    assert src["n_files"] == n and src["files"][0].endswith(names[0])
    assert src["resampled"] is None and "RescaleSlope" in src["rescale"]


def test_positions_descending_along_normal_come_out_ascending(tmp_path):
    n = 5
    stored = _ramp(n)
    pos = np.stack([np.zeros(n), np.zeros(n), 50.0 - 3.0 * np.arange(n)], axis=1)  # file k lower than k-1
    vol = read_series(write_series(tmp_path, stored, pos))
    np.testing.assert_allclose(vol.affine[:3, 0], [0, 0, 3.0], atol=1e-9)
    np.testing.assert_array_equal(vol.array, stored[::-1])
    assert vol.origin[2] == pytest.approx(38.0)


def test_oblique_orientation_geometry_and_agreement_with_simpleitk(tmp_path):
    import SimpleITK as sitk

    r = rotation(30, 15, 20)
    row, col, normal = r[:, 0], r[:, 1], r[:, 2]
    n, rows, cols = 7, 9, 8
    stored = np.zeros((n, rows, cols), np.int16)
    stored[3, 2, 4] = 1000  # a single bright voxel at (k, j, i) = (3, 2, 4)
    stored += np.arange(n, dtype=np.int16)[:, None, None]
    origin = np.array([12.0, -40.0, 7.0])
    pos = origin + 3.0 * np.arange(n)[:, None] * normal
    iop = np.concatenate([row, col])
    files = write_series(tmp_path, stored, pos[::-1], iop=iop, spacing=(0.9, 1.1))  # reversed on disk
    vol = read_series(files)
    np.testing.assert_allclose(vol.affine[:3, 2], row * 1.1, atol=1e-6)
    np.testing.assert_allclose(vol.affine[:3, 1], col * 0.9, atol=1e-6)
    np.testing.assert_allclose(vol.affine[:3, 0], normal * 3.0, atol=1e-6)
    k, j, i = np.unravel_index(np.argmax(vol.array), vol.shape)
    expected = origin + 3 * 3.0 * normal + 4 * 1.1 * row + 2 * 0.9 * col
    np.testing.assert_allclose(vol.index_to_lps([[k, j, i]])[0], expected, atol=1e-4)
    # independent reader: SimpleITK/GDCM with its own sorting, compared in physical space
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path)))
    ref = volume_from_sitk(reader.Execute())
    back = resample_like(ref, vol, order=0)
    np.testing.assert_array_equal(back.array[1:-1, 1:-1, 1:-1], vol.array[1:-1, 1:-1, 1:-1])


@pytest.mark.parametrize("row_sign", [1.0, -1.0])
def test_blob_on_patient_left_stays_at_positive_x(tmp_path, row_sign):
    """A blob on the patient's left (+x in LPS) must be at x > 0 whatever the row direction."""
    n, rows, cols, cs = 4, 20, 20, 1.0
    stored = np.zeros((n, rows, cols), np.int16)
    blob_cols = slice(14, 17) if row_sign > 0 else slice(3, 6)  # columns run toward -x when row_sign < 0
    stored[:, 8:12, blob_cols] = 500
    x0 = -row_sign * (cols - 1) / 2 * cs
    pos = np.stack([np.full(n, x0), np.full(n, -9.5), 2.0 * np.arange(n)], axis=1)
    vol = read_series(write_series(tmp_path, stored, pos, iop=(row_sign, 0, 0, 0, 1, 0), spacing=(1.0, cs)))
    idx = np.argwhere(vol.array == 500)
    centroid = vol.index_to_lps(idx).mean(axis=0)
    assert centroid[0] > 0, f"blob should lie on the patient's left (x > 0); found x = {centroid[0]:.1f}"
    assert centroid[0] == pytest.approx(5.5, abs=0.01)  # columns 14-16 of -9.5..9.5, mirrored for -1


def test_headerless_implicit_file_without_preamble_reads(tmp_path):
    stored = _ramp(3)
    pos = np.stack([np.zeros(3), np.zeros(3), np.arange(3) * 1.5], axis=1)
    files = write_series(tmp_path, stored, pos, headerless=True)
    assert files[0].read_bytes()[128:132] != b"DICM" and files[0].read_bytes()[:2] == b"\x08\x00"
    (tmp_path / "manifest.txt").write_text("1-001.dcm\n1-002.dcm\n")
    vol = read_input(tmp_path)
    np.testing.assert_array_equal(vol.array, stored)
    assert vol.source["transfer_syntaxes"] == ["1.2.840.10008.1.2"]


# -- synthetic: duplicates, missing, uneven, tilt ------------------------------------------------

def test_duplicate_position_identical_pixels_dropped_with_note(tmp_path):
    n = 5
    stored = _ramp(n)
    pos = np.stack([np.zeros(n), np.zeros(n), 2.0 * np.arange(n)], axis=1)
    uids = new_uids()
    files = write_series(tmp_path, stored, pos, uids=uids)
    dup = write_slice(tmp_path / "copy_of_2.dcm", stored[2], pos[2], uids=uids, instance=99)
    vol = read_series(files + [dup])
    assert vol.shape[0] == n
    assert any("byte-identical duplicate" in s for s in vol.source["notes"])


def test_duplicate_position_different_pixels_is_an_error_naming_both(tmp_path):
    n = 5
    stored = _ramp(n)
    pos = np.stack([np.zeros(n), np.zeros(n), 2.0 * np.arange(n)], axis=1)
    uids = new_uids()
    files = write_series(tmp_path, stored, pos, uids=uids)
    other = write_slice(tmp_path / "echo2.dcm", stored[2] + 7, pos[2], uids=uids, instance=42)
    with pytest.raises(DicomError) as e:
        read_series(files + [other])
    msg = str(e.value)
    assert "one image per slice position" in (e.value.rule or "") and "echo2.dcm" in msg and "slice002.dcm" in msg


def test_missing_slice_is_an_error_naming_positions_unless_resampling(tmp_path):
    z = np.array([0, 2, 4, 8, 10, 12], float)  # 6.0 mm is missing
    stored = _ramp(len(z))
    pos = np.stack([np.zeros_like(z), np.zeros_like(z), z], axis=1)
    files = write_series(tmp_path, stored, pos)
    with pytest.raises(DicomError) as e:
        read_series(files)
    msg = str(e.value)
    assert "missing" in msg and "4.00 mm" in msg and "8.00 mm" in msg and "2 x 2.00 mm" in msg
    vol = read_series(files, on_missing="resample")
    assert vol.shape[0] == 7 and vol.spacing[0] == pytest.approx(2.0)
    assert "missing slices interpolated" in vol.source["resampled"]


def test_uneven_spacing_refuse_lists_gaps_and_resample_keeps_extent(tmp_path):
    z = np.array([0, 2, 4, 7, 10, 13], float)
    rows, cols = 4, 4
    stored = (10 * z[:, None, None] + np.zeros((1, rows, cols))).astype(np.int16)  # value linear in z
    pos = np.stack([np.full_like(z, 5.0), np.full_like(z, -5.0), z], axis=1)
    files = write_series(tmp_path, stored, pos)
    with pytest.raises(DicomError) as e:
        read_series(files, on_uneven="refuse")
    msg = str(e.value)
    assert "evenly spaced" in msg and "2 gaps of 2.00 mm" in msg and "3 gaps of 3.00 mm" in msg
    vol = read_series(files)  # default: resample, spacing = median gap
    lo, hi = _bbox(vol)
    np.testing.assert_allclose([lo[2], hi[2]], [0.0, 13.0], atol=1e-6)
    zk = vol.index_to_lps(np.stack([np.arange(vol.shape[0]), np.zeros(vol.shape[0]), np.zeros(vol.shape[0])], 1))[:, 2]
    np.testing.assert_allclose(vol.array[:, 0, 0], 10 * zk, atol=1e-3)  # linear data stays exact
    assert "uneven spacing" in vol.source["resampled"] and "median gap" in vol.source["resampled"]
    assert vol.spacing[0] == pytest.approx(13 / 5)  # <= the median gap (3 mm), landing on both ends
    vol_min = read_series(files, uneven_spacing="min")
    assert vol_min.spacing[0] == pytest.approx(13 / 7)  # <= the smallest gap (2 mm)


def test_gantry_tilt_resampled_to_orthogonal_grid_keeps_a_vertical_rod_vertical(tmp_path):
    n, rows, cols = 10, 40, 30
    step = np.array([0.0, 1.0, 3.0])  # 1 mm along the column direction per slice: tilt atan(1/3)
    y0 = -20.0
    pos = np.array([[-15.0, y0, 0.0]]) + np.arange(n)[:, None] * step
    stored = np.zeros((n, rows, cols), np.int16)
    for k in range(n):
        j = int(round((0.0 - pos[k, 1]) / 1.0))  # row where y = 0 in slice k
        stored[k, j, 15] = 1000  # a rod along z at (x, y) = (0, 0)
    files = write_series(tmp_path, stored, pos, spacing=(1.0, 1.0), extra={"GantryDetectorTilt": 18.43})
    vol = read_series(files)
    assert "gantry_tilt 18.4 deg" in vol.source["resampled"]
    assert any("GantryDetectorTilt 18.43" in s for s in vol.source["notes"])
    d = vol.direction
    np.testing.assert_allclose(d.T @ d, np.eye(3), atol=1e-9)  # orthogonal output
    for k in range(vol.shape[0]):
        j, i = np.unravel_index(np.argmax(vol.array[k]), vol.shape[1:])
        x, y, _ = vol.index_to_lps([[k, j, i]])[0]
        assert abs(x) < 0.51 and abs(y) < 1.01, f"slice {k}: rod found at ({x:.2f}, {y:.2f})"
    kept = read_series(files, on_tilt="keep")
    np.testing.assert_allclose(kept.affine[:3, 0], step, atol=1e-6)
    assert kept.source["resampled"] is None


def test_sub_voxel_in_plane_drift_is_not_mistaken_for_tilt(tmp_path):
    n = 20
    stored = _ramp(n)
    pos = np.stack([0.01 * np.arange(n), np.zeros(n), 2.0 * np.arange(n)], axis=1)  # 0.19 mm = 0.27 voxel
    vol = read_series(write_series(tmp_path, stored, pos))
    assert vol.source["resampled"] is None and vol.array.dtype == np.int16
    assert any("drift" in s for s in vol.source["notes"])


# -- synthetic: rescale, bits, errors ----------------------------------------------------------------

def test_rescale_integer_exact_gives_int16_and_fractional_gives_float32(tmp_path):
    stored = np.array([[[0, 100], [2000, 4095]]] * 3, np.uint16)
    pos = np.stack([np.zeros(3), np.zeros(3), np.arange(3.0)], axis=1)
    vol = read_series(write_series(tmp_path / "a", stored, pos, slope=2, intercept=-1000))
    assert vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array, stored.astype(np.int32) * 2 - 1000)
    vol = read_series(write_series(tmp_path / "b", stored, pos, slope=0.5, intercept=-10.25))
    assert vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.array, stored * 0.5 - 10.25)
    vol = read_series(write_series(tmp_path / "c", stored, pos, slopes=[1, 1, 1], intercepts=[-1024, 0, 24]))
    np.testing.assert_array_equal(vol.array[:, 1, 1], [4095 - 1024, 4095, 4095 + 24])
    assert "per-slice" in vol.source["rescale"]


def test_bits_stored_12_signed_is_sign_extended(tmp_path):
    raw = np.array([[0x0FFB, 0x07FF], [0x0800, 5]], np.uint16).view(np.int16)  # -5, 2047, -2048, 5 in 12 bits
    pos = np.array([[0.0, 0, 0], [0, 0, 1]])
    files = write_series(tmp_path, np.stack([raw, raw]), pos, bits_stored=12)
    vol = read_series(files)
    np.testing.assert_array_equal(vol.array[0], [[-5, 2047], [-2048, 5]])


def test_inconsistent_orientation_and_size_are_errors_naming_the_rule(tmp_path):
    stored = _ramp(3)
    pos = np.stack([np.zeros(3), np.zeros(3), np.arange(3.0)], axis=1)
    uids = new_uids("mixed")
    files = write_series(tmp_path / "a", stored, pos, uids=uids)
    odd = write_slice(tmp_path / "a" / "odd.dcm", stored[0], [0, 0, 9], iop=(0, 1, 0, 0, 0, -1), uids=uids)
    with pytest.raises(DicomError, match="must share ImageOrientationPatient.*odd.dcm"):
        read_series(files + [odd])
    small = write_slice(tmp_path / "a" / "small.dcm", stored[0][:3], [0, 0, 9], uids=uids)
    with pytest.raises(DicomError, match="must share Rows/Columns.*small.dcm"):
        read_series(files + [small])
    with pytest.raises(DicomError, match="one series"):
        read_series(files + write_series(tmp_path / "b", stored, pos + [0, 0, 5]))
    with pytest.raises(DicomError, match="orthogonal unit vectors"):
        read_series(write_series(tmp_path / "c", stored, pos, iop=(1, 0, 0, 1, 0, 0)))


def test_truncated_and_non_dicom_files_give_dicom_errors_naming_them(tmp_path):
    stored = _ramp(4, rows=16, cols=16)
    pos = np.stack([np.zeros(4), np.zeros(4), np.arange(4.0)], axis=1)
    files = write_series(tmp_path, stored, pos)
    data = files[2].read_bytes()
    files[2].write_bytes(data[:-100])
    with pytest.raises(DicomError) as e:
        read_series(files)
    assert "slice002.dcm" in str(e.value) and "truncated" in str(e.value)
    txt = tmp_path / "notes.txt"
    txt.write_text("not an image")
    with pytest.raises(DicomError, match="notes.txt.*not DICOM"):
        read_series([txt])


def test_enhanced_multiframe_per_frame_positions_and_rescale(tmp_path):
    n = 6
    stored = _ramp(n, rows=5, cols=4)
    z = 4.0 * np.arange(n)
    perm = np.array([3, 0, 5, 1, 4, 2])  # frames stored out of spatial order
    r = rotation(0, 0, 10)
    iop = np.concatenate([r[:, 0], r[:, 1]])
    pos = np.array([1.0, 2.0, 3.0]) + z[:, None] * r[:, 2]
    icpt = np.array([-1024.0, -1000, -1024, -1000, -1024, -1000])
    f = write_enhanced_ct(tmp_path / "enh.dcm", stored[perm], pos[perm], iop=iop, intercepts=icpt[perm])
    vol = read_input(f)
    assert vol.shape == (n, 5, 4)
    np.testing.assert_array_equal(vol.array, stored.astype(np.int32) + icpt[:, None, None])
    np.testing.assert_allclose(vol.affine[:3, 0], 4.0 * r[:, 2], atol=1e-6)
    np.testing.assert_allclose(vol.origin, [1, 2, 3], atol=1e-6)


# -- real data ------------------------------------------------------------------------------------

TS_FILES = [f"{i}.dcm" for i in range(1, 10)]


@pytest.mark.parametrize("name", TS_FILES)
def test_every_transfer_syntax_decodes_to_the_reference_pixels(name):
    folder = real_data("transfer_syntaxes", "In")
    ref = read_series([folder / "1.dcm"])
    try:
        vol = read_series([folder / name])
    except DicomError as e:
        if "cannot decode" in str(e):
            pytest.xfail(f"{name}: no installed decoder (pylibjpeg, GDCM) handles it: {e}")
        raise
    np.testing.assert_array_equal(vol.array, ref.array)
    assert vol.geometry_equal(ref)


def test_jpeg_extended_12bit_falls_back_to_simpleitk():
    f = real_data("pydicom_samples", "pydicom_test_files", "JPEG-lossy.dcm")
    pixels, decoder = read_pixels(f)
    assert decoder == "simpleitk"  # pylibjpeg rejects this 12-bit JPEG Extended stream
    fixed, _ = read_pixels(f.parent / "JPGExtended.dcm")  # the same image, a conformant stream
    assert pixels.shape == fixed.shape == (1, 1024, 256)
    assert np.abs(pixels.astype(int) - fixed.astype(int)).max() <= 1  # lossy decoders round differently


@pytest.mark.slow  # test-fast stays under 60 s; runs in make test
def test_orientation_48_axis_orders_all_give_the_same_image_in_lps():
    folder = real_data("orientation_48_axis_orders")
    ref = read_input(folder / "LPS.nii.gz")
    files = sorted(folder.glob("*.nii.gz"))
    assert len(files) == 48
    for f in files:
        vol = read_input(f)
        m = np.linalg.inv(vol.affine) @ ref.affine  # ref index -> this file's index
        assert np.allclose(m[:3, :3], np.round(m[:3, :3]), atol=1e-4), f"{f.name}: grids are not a permutation"
        back = resample_like(vol, ref, order=0)
        inner = (slice(1, -1),) * 3  # voxels on the border fall exactly on the edge of the field
        np.testing.assert_array_equal(back.array[inner], ref.array[inner], err_msg=f.name)


def test_ct_j2k_decodes_to_hu_and_labels_line_up_in_physical_space():
    folder = real_data("ct_thorax_abdomen_dicom_j2k")
    ct = read_input(folder / "series")
    assert ct.shape == (20, 512, 512)
    assert ct.array.dtype == np.int16 and ct.array.min() == -1024 and ct.array.max() == 1839
    assert "1.2.840.10008.1.2.4.90" in ct.source["transfer_syntaxes"]
    liver_id = int(next(k for k, v in json.loads((folder / "class_map_total.json").read_text())["total"].items() if v == "liver"))
    labels = read_image_file(folder / "labels_reference.nii.gz")
    on_ct = resample_like(labels, ct, order=0)  # by physical coordinates
    liver = on_ct.array == liver_id
    assert liver.sum() > 100000
    assert ct.array[liver].mean() == pytest.approx(89, abs=3)
    # the label array's rows are flipped relative to the DICOM: index-based pairing is wrong
    assert labels.shape == ct.shape
    assert ct.array[labels.array == liver_id].mean() == pytest.approx(-75, abs=5)


def _dcm2niix(folder: Path, out: Path) -> list[Path]:
    exe = require_tool("dcm2niix")
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([exe, "-z", "n", "-f", "out", "-o", str(out), str(folder)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    return sorted(out.glob("*.nii"))


def test_gantry_tilt_ct_matches_dcm2niix_extent(tmp_path):
    folder = real_data("ct_head_gantry_tilt_ge", "series")
    vol = read_input(folder)
    src = vol.source
    assert "gantry_tilt 18.5 deg" in src["resampled"] and "uneven spacing" in src["resampled"]
    assert "1.08 mm" in src["resampled"] and "4.00 mm" in src["resampled"] and "7.00 mm" in src["resampled"]
    d = vol.direction
    np.testing.assert_allclose(d.T @ d, np.eye(3), atol=1e-6)
    # in-plane axes are the DICOM ones (dcm2niix's sidecar records them)
    ref_json = json.loads((folder.parent / "dcm2niix_reference" / "_2.json").read_text())
    iop = np.array(ref_json["ImageOrientationPatientDICOM"])
    np.testing.assert_allclose(d[:, 2], iop[:3], atol=1e-5)
    np.testing.assert_allclose(d[:, 1], iop[3:], atol=1e-5)
    assert ref_json["SliceThickness"] == 4
    # the first slice is an input slice, shifted in-plane by whole rows only
    import pydicom

    first = pydicom.dcmread(folder / "01.dcm").pixel_array
    rows_added = vol.shape[1] - 512
    np.testing.assert_array_equal(vol.array[0, rows_added:, :], first)
    with pytest.raises(DicomError, match="evenly spaced.*1.08 mm"):
        read_series(sorted(folder.glob("*.dcm")), on_uneven="refuse")
    niis = [p for p in _dcm2niix(folder, tmp_path / "d2n") if "Tilt" in p.name]
    assert niis, "dcm2niix wrote no tilt-corrected volume"
    ref = read_image_file(niis[0])
    lo, hi = _bbox(vol)
    rlo, rhi = _bbox(ref)
    np.testing.assert_allclose(lo, rlo, atol=2.0)
    np.testing.assert_allclose(hi, rhi, atol=2.0)


@pytest.mark.slow  # test-fast stays under 60 s; runs in make test
def test_mr_series_geometry_matches_dcm2niix(tmp_path):
    folder = real_data("mr_brain_series_siemens", "series")
    vol = read_input(folder)
    assert vol.shape == (120, 512, 512) and vol.source["n_files"] == 120
    niis = _dcm2niix(folder, tmp_path / "d2n")
    assert len(niis) == 1
    ref = read_image_file(niis[0])
    assert sorted(ref.shape) == sorted(vol.shape)
    # same voxel centres in patient space (dcm2niix may flip rows): corners as sets
    a = np.array(sorted(map(tuple, np.round(vol.index_to_lps(list(itertools.product(*[(0, n - 1) for n in vol.shape]))), 2))))
    b = np.array(sorted(map(tuple, np.round(ref.index_to_lps(list(itertools.product(*[(0, n - 1) for n in ref.shape]))), 2))))
    np.testing.assert_allclose(a, b, atol=0.01)
    m = np.linalg.inv(ref.affine) @ vol.affine
    assert np.allclose(m[:3, :3], np.round(m[:3, :3]), atol=1e-4) and np.allclose(m[:3, 3], np.round(m[:3, 3]), atol=1e-3)
    # and the same voxel values there: sample 200k voxels through the exact index mapping
    idx = np.random.default_rng(0).integers(0, vol.shape, size=(200_000, 3))
    ref_idx = np.rint(idx @ m[:3, :3].T + m[:3, 3]).astype(int)
    np.testing.assert_array_equal(ref.array[tuple(ref_idx.T)], vol.array[tuple(idx.T)])


_SAMPLES = sorted(p.relative_to(REAL) for p in (REAL / "pydicom_samples").rglob("*") if p.is_file()) \
    if (REAL / "pydicom_samples").exists() else [Path("pydicom_samples/<absent>")]


@pytest.mark.parametrize("rel", _SAMPLES, ids=[str(p) for p in _SAMPLES])
def test_every_pydicom_sample_reads_or_raises_a_clear_dicom_error(rel):
    path = real_data(*rel.parts)
    try:
        vol = read_input(path)
    except DicomError as e:
        msg = str(e)
        assert path.name in msg or str(path.parent) in msg, f"error does not name the file: {msg}"
        assert e.rule, f"error states no rule: {msg}"
        return
    assert vol.array.ndim == 3 and np.all(np.isfinite(vol.affine))
