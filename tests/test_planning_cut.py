"""Virtual resection against analytic sphere caps (liver = sphere minus the tumour sphere)."""
import numpy as np
import pytest
import trimesh

from pipeline.errors import PlanningError
from pipeline.planning import Planner
from pipeline.planning.cut import normalise_planes, resected_fraction_voxels
from tests.scene_factory import cached_constructed_scene


@pytest.fixture
def scene(tmp_path):
    return cached_constructed_scene(tmp_path)


PLANES = [
    ((-45.0, 0.0, 0.0), (-1.0, 0.0, 0.0)),     # right hemi-liver, tumour fully resected
    ((-50.0, 0.0, 0.0), (-1.0, 0.3, 0.2)),     # oblique
    ((-45.0, 0.0, 10.0), (0.0, 0.0, 1.0)),     # crosses the tumour
    ((-30.0, 0.0, 0.0), (1.0, 0.0, 0.0)),      # medial cap towards the patient's LEFT
    ((-45.0, 12.0, -3.0), (0.2, 1.0, -0.5)),   # oblique, posterior
]


@pytest.mark.slow
@pytest.mark.parametrize("point,normal", PLANES)
def test_single_plane_resection_matches_caps(scene, point, normal):
    path, truth = scene
    pl = Planner(path)
    r = pl.add_cut("liver", {"point": point, "normal": normal}, margin_to="tumour")
    liver = truth.shapes["liver"]
    res_true = liver.cap_mm3(point, normal) / 1000.0
    tot = liver.volume_mm3 / 1000.0
    rem_pct_true = 100 * (1 - res_true / tot)
    # the label map and the capped meshes both within 2% / 2 percentage points of the truth
    assert abs(r["remnant_percent"] - rem_pct_true) < 2.0
    assert abs(r["mesh"]["remnant_percent"] - rem_pct_true) < 2.0
    assert abs(r["resected_ml"] - res_true) < 0.02 * tot
    assert abs(r["mesh"]["resected_ml"] - res_true) < 0.02 * tot
    assert abs(r["resected_ml"] + r["remnant_ml"] - r["voxel"]["total_ml"]) < 1e-3
    assert r["agreement"]["agree"], r["agreement"]
    # the margin: signed distance from the plane to the tumour, on the side holding most of it
    tum = truth.shapes["tumour"]
    n = np.asarray(normal) / np.linalg.norm(normal)
    h = float((np.asarray(tum.center) - point) @ n)  # tumour centre above the plane
    true_margin = abs(h) - tum.radius
    assert r["margin"]["side"] == ("resected" if h > 0 else "remnant")
    assert abs(r["margin"]["margin_mm"] - true_margin) <= 0.5 * truth.voxel_mm
    assert r["margin"]["crossed"] == (true_margin < 0)
    assert abs(r["margin"]["structure_resected_percent"] - 100 * tum.cap_mm3(point, normal) / tum.volume_mm3) < 2.0
    if true_margin < 0:
        assert any("crosses tumour" in w for w in r["warnings"])
    # the pieces are closed, saved, and lie on their sides of the plane
    for part, sign in (("resected", 1), ("remnant", -1)):
        m = trimesh.load_mesh(str(path / r["meshes"][part]), process=True)
        assert m.is_watertight
        s = (m.vertices - point) @ n
        assert np.all(sign * s > -1e-4)  # cap vertices lie on the plane (float tolerance)


def test_normal_points_to_the_resected_side_in_lps(scene):
    path, truth = scene
    pl = Planner(path)
    # normal towards patient Left (+x): the medial (left) part of the right-sided liver is resected
    left = pl.add_cut("liver", {"point": (-30, 0, 0), "normal": (1, 0, 0)})
    right = pl.add_cut("liver", {"point": (-30, 0, 0), "normal": (-1, 0, 0)})
    assert left["resected_ml"] < right["resected_ml"]
    assert left["resected_ml"] == pytest.approx(right["remnant_ml"], abs=1e-3)
    cap = truth.shapes["liver"].outer.cap_mm3((-30, 0, 0), (1, 0, 0)) / 1000
    assert left["resected_ml"] == pytest.approx(cap, rel=0.02)


@pytest.mark.slow
def test_two_plane_wedge(scene):
    path, truth = scene
    pl = Planner(path)
    # wedge: x < -45 (lateral right) and z > -20 (above an axial plane): resected = inside both
    planes = [{"point": (-45, 0, 0), "normal": (-1, 0, 0)}, {"point": (-45, 0, -20), "normal": (0, 0, 1)}]
    r = pl.add_cut("liver", planes)
    # truth by Monte Carlo on the analytic solid (1e6 samples: ~0.2% standard error)
    rng = np.random.default_rng(1)
    big = truth.shapes["liver"].outer
    pts = np.asarray(big.center) + rng.uniform(-big.radius, big.radius, size=(1_000_000, 3))
    inside = truth.shapes["liver"].contains(pts)
    wedge = inside & (pts[:, 0] < -45) & (pts[:, 2] > -20)
    frac = wedge.sum() / inside.sum()
    assert abs(r["resected_percent"] - 100 * frac) < 2.0
    assert abs(r["mesh"]["resected_percent"] - 100 * frac) < 2.0
    assert len(r["planes"]) == 2


def test_partial_volume_of_a_single_voxel():
    mask = np.zeros((3, 3, 3), bool)
    mask[1, 1, 1] = True
    a = np.diag([2.0, 1.0, 1.0, 1.0])  # slice axis k along x, 2 mm
    for offset, expected in ((0.0, 0.5), (0.5, 0.25), (-0.5, 0.75), (1.5, 0.0)):
        planes = normalise_planes({"point": (2.0 + offset, 0, 0), "normal": (1, 0, 0)})
        got, n = resected_fraction_voxels(mask, a, planes, subsamples=8)
        assert n == 1 and got == pytest.approx(expected, abs=1e-9)


def test_cut_errors(scene):
    path, _ = scene
    pl = Planner(path)
    with pytest.raises(PlanningError, match="non-zero"):
        pl.add_cut("liver", {"point": (0, 0, 0), "normal": (0, 0, 0)})
    with pytest.raises(PlanningError, match="spleen"):
        pl.add_cut("spleen", {"point": (0, 0, 0), "normal": (1, 0, 0)})
    assert len(normalise_planes(((0, 0, 0), (0, 0, 2)))) == 1
    assert len(normalise_planes([((0, 0, 0), (0, 0, 2)), ((0, 0, 1), (1, 0, 0))])) == 2
