import numpy as np
import pytest

from pipeline.mesh import MeshConfig, labelmap_to_meshes, mask_to_mesh
from pipeline.types import Label, LabelMap, LabelTable, Volume
from tests.test_types import oblique_affine


def _sphere_mask(shape, affine, center, r):
    k, j, i = np.indices(shape)
    pts = np.stack([k, j, i], -1).reshape(-1, 3) @ affine[:3, :3].T + affine[:3, 3]
    return (np.linalg.norm(pts - center, axis=1) <= r).reshape(shape)


@pytest.mark.parametrize("flip", [False, True])
def test_sphere_mesh_volume_position_and_orientation(flip):
    a = oblique_affine(spacing=(2.0, 0.9, 1.1), seed=1)
    if flip:  # a left-handed index->LPS map (reversed slice order) must still give outward normals
        a[:3, 0] *= -1
    shape = (40, 80, 80)
    center = a[:3, :3] @ (np.array(shape) / 2) + a[:3, 3]
    m = _sphere_mask(shape, a, center, 20.0)
    mesh = mask_to_mesh(m, a)
    assert mesh.is_watertight
    assert mesh.volume > 0  # outward normals
    analytic = 4 / 3 * np.pi * 20 ** 3
    assert mesh.volume == pytest.approx(analytic, rel=0.02)
    np.testing.assert_allclose(mesh.centroid, center, atol=0.3)
    r = np.linalg.norm(mesh.vertices - center, axis=1)
    assert abs(r.mean() - 20) < 0.5


def test_labelmap_to_meshes_left_right_and_qa():
    a = np.diag([2.0, 1.0, 1.0, 1.0])
    a[:3, 3] = [-40, -40, -40]
    shape = (40, 80, 80)
    arr = np.zeros(shape, np.uint8)
    arr[_sphere_mask(shape, a, np.array([20.0, 0, 0]), 12)] = 1  # patient's left (+x)
    arr[_sphere_mask(shape, a, np.array([-20.0, 0, 0]), 12)] = 2  # patient's right
    t = LabelTable([Label(1, "kidney_left"), Label(2, "kidney_right")])
    meshes = {m.name: m for m in labelmap_to_meshes(LabelMap(Volume(arr, a), t))}
    assert meshes["kidney_left"].mesh.centroid[0] > 15
    assert meshes["kidney_right"].mesh.centroid[0] < -15
    for m in meshes.values():
        assert m.qa["watertight"]
        assert abs(m.qa["deviation_percent"]) < 3


def test_decimation_keeps_closed_surface():
    a = np.eye(4)
    shape = (90, 90, 90)
    m = _sphere_mask(shape, a, np.array([45.0, 45, 45]), 40)
    mesh = mask_to_mesh(m, a, MeshConfig(target_faces=5000))
    assert len(mesh.faces) <= 5200
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * 40 ** 3, rel=0.02)


def test_tiny_structure_gets_no_mesh():
    m = np.zeros((5, 5, 5), bool)
    m[2, 2, 2] = True
    assert mask_to_mesh(m, np.eye(4)) is None
