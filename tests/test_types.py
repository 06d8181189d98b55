import numpy as np
import pytest

from pipeline.errors import GeometryError, SurgitwinError
from pipeline.geometry import (lps_to_ras_affine, orientation_code, read_image_file, resample_to_grid,
                               volume_from_sitk, volume_to_sitk, write_image_file)
from pipeline.types import Label, LabelMap, LabelTable, Volume


def oblique_affine(spacing=(2.5, 0.8, 0.9), seed=0, origin=(-40.0, 20.0, 100.0)):
    q = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))[0]
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    a = np.eye(4)
    a[:3, :3] = q * np.asarray(spacing)
    a[:3, 3] = origin
    return a


def test_volume_derived_geometry():
    a = oblique_affine()
    v = Volume(np.zeros((4, 5, 6), np.int16), a)
    np.testing.assert_allclose(v.spacing, [2.5, 0.8, 0.9])
    np.testing.assert_allclose(v.direction.T @ v.direction, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(v.origin, [-40, 20, 100])
    assert v.voxel_volume_ml == pytest.approx(2.5 * 0.8 * 0.9 / 1000)
    idx = np.array([[1, 2, 3], [3.5, 0.25, 5]])
    np.testing.assert_allclose(v.lps_to_index(v.index_to_lps(idx)), idx, atol=1e-10)
    near, far = a.copy(), a.copy()
    near[:3] += 1e-6
    far[:3] += 1e-2
    assert v.geometry_equal(Volume(np.ones((4, 5, 6)), near))
    assert not v.geometry_equal(Volume(np.ones((4, 5, 6)), far))
    assert not v.geometry_equal(Volume(np.ones((4, 5, 7)), a))


@pytest.mark.parametrize("bad,rule", [
    (np.zeros((3, 3)), "4x4"),
    (np.diag([1, 1, 0, 1.0]), "invertible"),
    (np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 1.0]]), "last row"),
])
def test_volume_rejects_bad_affines(bad, rule):
    with pytest.raises(GeometryError, match=rule):
        Volume(np.zeros((2, 2, 2)), bad)


def test_volume_requires_3d():
    with pytest.raises(GeometryError, match="3-D"):
        Volume(np.zeros((2, 2)), np.eye(4))


def test_label_rules():
    with pytest.raises(SurgitwinError, match="lower_snake_case"):
        Label(1, "Left Kidney")
    with pytest.raises(SurgitwinError, match="1..65535"):
        Label(0, "liver")
    with pytest.raises(SurgitwinError, match="unique"):
        LabelTable([Label(1, "liver"), Label(1, "spleen")])
    t = LabelTable([Label(2, "spleen", (1, 2, 3), expected_ml=(50, 400)), Label(1, "liver")])
    assert t.names == ["liver", "spleen"]
    assert LabelTable.from_list(t.to_list()) == t


def test_labelmap_rejects_unknown_values():
    t = LabelTable([Label(1, "liver")])
    arr = np.zeros((2, 2, 2), np.uint8)
    arr[0, 0, 0] = 7
    with pytest.raises(SurgitwinError, match=r"unknown ids \[7\]"):
        LabelMap(Volume(arr, np.eye(4)), t)
    with pytest.raises(SurgitwinError, match="integers"):
        LabelMap(Volume(arr.astype(float), np.eye(4)), t)


def test_orientation_code():
    a = np.diag([-2.0, 1.0, -1.0, 1.0])  # k towards feet... no: col0 = (-2,0,0) -> R
    assert orientation_code(a) == "RPI"
    assert orientation_code(np.eye(4)) == "LPS"


def test_nifti_round_trip_keeps_lps_and_left_right(tmp_path):
    """A bright voxel on the patient's left (+x LPS) must stay there through NIfTI (RAS on disk)."""
    import nibabel as nib

    a = oblique_affine(seed=3)
    arr = np.zeros((6, 7, 8), np.int16)
    arr[2, 3, 4] = 1000
    v = Volume(arr, a)
    p = tmp_path / "x.nii.gz"
    write_image_file(v, p)
    back = read_image_file(p)
    assert back.geometry_equal(v, atol=1e-4)
    np.testing.assert_array_equal(back.array, arr)
    # independent reader: nibabel's RAS affine, voxel index order (i, j, k) == our (i, j, k) reversed
    img = nib.load(str(p))
    ijk = np.argwhere(np.asarray(img.dataobj) == 1000)[0]
    ras = img.affine @ np.r_[ijk, 1]
    lps = v.index_to_lps([[2, 3, 4]])[0]
    np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-3)
    np.testing.assert_allclose(lps_to_ras_affine(a)[:3, 3], [-a[0, 3], -a[1, 3], a[2, 3]])


def test_sitk_boundary_round_trip():
    a = oblique_affine(seed=5)
    v = Volume(np.arange(60, dtype=np.float32).reshape(3, 4, 5), a)
    back = volume_from_sitk(volume_to_sitk(v))
    assert back.geometry_equal(v, atol=1e-9)
    np.testing.assert_array_equal(back.array, v.array)


def test_volume_to_sitk_refuses_shear():
    a = np.eye(4)
    a[:3, 0] = [0.3, 0, 1]  # gantry-tilt-like shear
    with pytest.raises(GeometryError, match="orthogonal"):
        volume_to_sitk(Volume(np.zeros((2, 2, 2)), a))


def test_resample_maps_physical_points():
    """Resampling onto a flipped, shifted grid keeps each value at its LPS position."""
    a = np.diag([2.0, 1.0, 1.0, 1.0])
    arr = np.zeros((5, 6, 7), np.float32)
    arr[1, 2, 3] = 1
    v = Volume(arr, a)
    b = np.array(a)
    b[:3, 2] *= -1  # reversed column axis
    b[:3, 3] = v.index_to_lps([[0, 0, 6]])[0]
    r = resample_to_grid(v, v.shape, b, order=0)
    pos = r.index_to_lps(np.argwhere(r.array == 1))
    np.testing.assert_allclose(pos, v.index_to_lps([[1, 2, 3]]))


def test_stage_record_from_a_newer_scene_keeps_what_it_knows():
    from pipeline.types import StageRecord

    r = StageRecord.from_dict({"stage": "mesh", "software": {"vtk": "9"}, "peak_rss_mb": 812.5,
                               "gpu_memory_mb": 100, "notes": ["a"]})
    assert r.stage == "mesh" and r.peak_rss_mb == 812.5 and r.notes == ("a",)
    assert StageRecord.from_dict(r.to_dict()) == r
