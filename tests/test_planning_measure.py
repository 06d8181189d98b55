"""Measurements against analytic truth on a constructed, oblique, anisotropic scene."""
import json

import numpy as np
import pytest

from pipeline.errors import PlanningError, SceneError
from pipeline.planning import Planner, next_id
from pipeline.planning.measure import angle_deg, max_diameter
from pipeline.scene import load_scene
from tests.scene_factory import Box, Cylinder, Sphere, cached_constructed_scene


@pytest.fixture
def scene(tmp_path):
    return cached_constructed_scene(tmp_path)


def sphere_to_vertical_cylinder(s: Sphere, c: Cylinder):
    """Distance and closest points between a sphere and a z-aligned cylinder's side."""
    axis = np.array([c.p0[0], c.p0[1], s.center[2]])
    u = axis - np.asarray(s.center)
    u /= np.linalg.norm(u)
    d = np.linalg.norm(axis - s.center) - s.radius - c.radius
    return d, np.asarray(s.center) + s.radius * u, axis - c.radius * u


@pytest.mark.parametrize("a,b", [("tumour", "aorta"), ("liver", "aorta"), ("tumour", "kidney_left"),
                                 ("liver", "kidney_left"), ("aorta", "kidney_left")])
def test_structure_distance_matches_analytic_truth(scene, a, b):
    path, truth = scene
    pl = Planner(path)
    r = pl.measure_between(a, b)
    sa, sb = truth.shapes[a], truth.shapes[b]
    outer = lambda s: getattr(s, "outer", s)  # noqa: E731  (liver = sphere minus tumour)
    if isinstance(outer(sa), Sphere) and isinstance(sb, Cylinder):
        d, pa, pb = sphere_to_vertical_cylinder(outer(sa), sb)
        # the distance is flat (quadratic) around its minimum, so sub-voxel surface noise moves
        # the closest points tangentially by ~sqrt(2 R noise): check the region, not the voxel
        np.testing.assert_allclose(r["point_a"], pa, atol=2 * truth.voxel_mm)
        np.testing.assert_allclose(r["point_b"], pb, atol=2 * truth.voxel_mm)
    elif isinstance(outer(sa), Sphere) and isinstance(sb, Box):
        d = float(sb.distance(outer(sa).center)) - outer(sa).radius
    else:  # aorta side (x = 15) to the kidney's medial face (x = 44)
        d = 29.0
    assert abs(r["distance_mm"] - d) <= 0.5 * truth.voxel_mm, (r["distance_mm"], d)
    assert r["overlap"] is False
    # the two points lie on the two surfaces and realise the distance
    assert abs(np.linalg.norm(np.subtract(r["point_a"], r["point_b"])) - r["distance_mm"]) < 1e-3
    assert sa.surface_distance(np.array(r["point_a"])) <= 0.5 * truth.voxel_mm
    assert sb.surface_distance(np.array(r["point_b"])) <= 0.5 * truth.voxel_mm
    # LPS, not RAS: the liver/tumour are on the patient's right (x < 0), the kidney on the left
    xs = {a: r["point_a"][0], b: r["point_b"][0]}
    for name, x in xs.items():
        assert (x < 0) if name in ("liver", "tumour") else (x > 0), (name, x)


def test_touching_structures_report_overlap(scene):
    path, _ = scene
    r = Planner(path).measure_between("liver", "tumour")  # the tumour is carved out of the liver
    assert r["distance_mm"] == 0.0 and r["overlap"] is True


@pytest.mark.parametrize("name", ["liver", "tumour", "aorta", "kidney_left"])
def test_structure_volume_area_extents(scene, name):
    path, truth = scene
    vol, ext = Planner(path).measure_structure(name)
    true_ml = truth.volume_ml(name)
    assert vol["unit"] == "ml" and vol["structures"] == [name]
    assert abs(vol["voxel_volume_ml"] / true_ml - 1) < 0.02, (vol["voxel_volume_ml"], true_ml)
    assert abs(vol["mesh_volume_ml"] / true_ml - 1) < 0.02, (vol["mesh_volume_ml"], true_ml)
    shape = truth.shapes[name]
    if isinstance(shape, Sphere):
        assert abs(ext["max_diameter_mm"] - 2 * shape.radius) <= truth.voxel_mm
        for k in ("extent_left_right_mm", "extent_anterior_posterior_mm", "extent_superior_inferior_mm"):
            assert abs(ext[k] - 2 * shape.radius) <= truth.voxel_mm
        assert abs(vol["area_mm2"] / (4 * np.pi * shape.radius ** 2) - 1) < 0.05
    if isinstance(shape, Box):  # LPS axes: L-R = 2*11, A-P = 2*9, S-I = 2*22
        np.testing.assert_allclose([ext["extent_left_right_mm"], ext["extent_anterior_posterior_mm"],
                                    ext["extent_superior_inferior_mm"]], [22, 18, 44], atol=truth.voxel_mm)
        assert abs(ext["max_diameter_mm"] - 2 * np.linalg.norm(shape.half)) <= 2 * truth.voxel_mm
        assert ext["bbox_min"][0] > 40  # the left kidney is on the patient's left (+x in LPS)
    if isinstance(shape, Cylinder):
        assert abs(ext["extent_superior_inferior_mm"] - 90) <= truth.voxel_mm


def test_point_measurements_and_landmarks(scene):
    path, truth = scene
    pl = Planner(path)
    d = pl.measure_distance((0, 0, 0), (3, 4, 12), label="check")
    assert d["value"] == pytest.approx(13.0) and d["id"] == "M1"
    a = pl.measure_angle((10, 0, 0), (0, 0, 0), (0, 10, 0))
    assert a["value"] == pytest.approx(90.0) and a["id"] == "M2"
    assert angle_deg((1, 0, 0), (0, 0, 0), (-1, 1e-12, 0)) == pytest.approx(180.0)
    with pytest.raises(PlanningError, match="differ from the vertex"):
        angle_deg((0, 0, 0), (0, 0, 0), (1, 0, 0))
    # snapping a point picked outside the tumour lands on the tumour's surface, on the line to its centre
    tum = truth.shapes["tumour"]
    picked = np.array(tum.center) + np.array([0.0, -20.0, 0.0])  # 20 mm anterior of the centre
    lm = pl.add_landmark("tumour front", picked, snap_to="tumour")
    assert lm["id"] == "L1" and lm["snapped_to"] == "tumour"
    np.testing.assert_allclose(lm["point"], np.array(tum.center) + [0, -tum.radius, 0], atol=truth.voxel_mm)
    assert lm["snap_distance_mm"] == pytest.approx(20 - tum.radius, abs=0.5 * truth.voxel_mm)
    with pytest.raises(PlanningError, match="landmark name"):
        pl.add_landmark("bad/name", (0, 0, 0))
    with pytest.raises(PlanningError, match="3 finite"):
        pl.measure_distance((0, 0), (1, 1, 1))
    with pytest.raises(SceneError, match="spleen"):
        pl.measure_between("spleen", "liver")


def test_plan_records_persist_as_json(scene):
    path, _ = scene
    pl = Planner(path)
    pl.measure_between("tumour", "aorta", save=True)
    pl.add_landmark("p", (1, 2, 3), save=True)
    text = (path / "scene.json").read_text()
    back = load_scene(path)
    assert json.loads(json.dumps(back.plan)) == back.plan
    rec = back.plan["measurements"][0]
    assert {"id", "kind", "points", "value", "unit", "structures", "provenance", "created"} <= set(rec)
    assert rec["provenance"]["inputs"]["meshes/tumour.ply"]  # hash of the mesh it was computed from
    assert back.plan["landmarks"][0]["point"] == [1.0, 2.0, 3.0]
    assert next_id(back.plan, "measurements") == "M2"
    # other keys of scene.json are untouched by save_plan
    before = json.loads(text)
    assert before["structures"] == json.loads((path / "scene.json").read_text())["structures"]


def test_max_diameter_exact_on_a_point_set():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(1000, 3)) * [30, 10, 5]
    d, p, q = max_diameter(pts)
    brute = np.max(np.linalg.norm(pts[:, None] - pts[None], axis=2))
    assert d == pytest.approx(brute)
    assert np.linalg.norm(p - q) == pytest.approx(d)
