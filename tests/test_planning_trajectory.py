"""Trajectories against analytic truth: clearances, crossings, target, critical warnings."""
import numpy as np
import pytest

from pipeline.errors import PlanningError
from pipeline.planning import Planner
from pipeline.planning.trajectory import trajectory_geometry
from tests.scene_factory import cached_constructed_scene, segment_distance


@pytest.fixture
def scene(tmp_path):
    return cached_constructed_scene(tmp_path)


PATHS = [
    ((-110.0, -20.0, 6.0), (-60.0, 4.0, 6.0), 1.5),   # lateral right approach to the tumour centre
    ((40.0, -60.0, 0.0), (-60.0, 4.0, 6.0), 1.0),    # anterior-left approach, passes in front of the aorta
    ((60.0, -40.0, 30.0), (-55.0, 0.0, 8.0), 2.5),   # oblique, above the kidney
]


@pytest.mark.parametrize("entry,target,radius", PATHS)
def test_clearances_match_analytic_truth(scene, entry, target, radius):
    path, truth = scene
    r = Planner(path).add_trajectory(entry, target, radius)
    assert r["length_mm"] == pytest.approx(np.linalg.norm(np.subtract(target, entry)), abs=1e-3)
    rows = {c["structure"]: c for c in r["clearance"]}
    assert [c["distance_mm"] for c in r["clearance"]] == sorted(c["distance_mm"] for c in r["clearance"])
    for name in ("aorta", "kidney_left"):
        d, t = segment_distance(truth.shapes[name], entry, target)
        assert d > 0, "these paths do not touch the aorta or the kidney"
        assert abs(rows[name]["distance_mm"] - (d - radius)) <= 0.5 * truth.voxel_mm, (name, rows[name], d - radius)
        assert not rows[name]["crossed"]
    # the target lies in the tumour: it is the target structure, reached through the liver
    assert r["target_structure"] == "tumour" and rows["tumour"]["target"]
    assert r["crossed"] == ["liver", "tumour"]  # in the order met along the path
    assert rows["liver"]["crossed"] and rows["liver"]["distance_mm"] == -radius
    # length inside the tumour: from its surface to the target (the centre, or close to it)
    tum = truth.shapes["tumour"]
    depth = tum.radius - np.linalg.norm(np.subtract(target, tum.center))
    assert rows["tumour"]["inside_length_mm"] == pytest.approx(depth, abs=0.5 * truth.voxel_mm)


def test_critical_structure_warning_and_margin(scene):
    path, truth = scene
    pl = Planner(path)
    entry, target = (40.0, -60.0, 0.0), (-60.0, 4.0, 6.0)
    d, _ = segment_distance(truth.shapes["aorta"], entry, target)  # ~44 mm
    quiet = pl.add_trajectory(entry, target, 1.0)
    assert quiet["warnings"] == []
    loud = pl.add_trajectory(entry, target, 1.0, safety_margin_mm=d + 5)
    assert len(loud["warnings"]) == 1 and "aorta" in loud["warnings"][0] and "safety margin" in loud["warnings"][0]
    # the kidney is not marked critical: no warning even inside the margin
    assert all("kidney" not in w for w in loud["warnings"])
    # straight through the aorta: a crossing warning
    through = pl.add_trajectory((8.0, -40.0, 0.0), (8.0, 60.0, 0.0), 1.0)
    assert "aorta" in through["crossed"]
    assert any("crosses aorta" in w for w in through["warnings"])
    row = next(c for c in through["clearance"] if c["structure"] == "aorta")
    assert row["inside_length_mm"] == pytest.approx(14.0, abs=truth.voxel_mm)  # the diameter
    assert row["at_depth_mm"] == pytest.approx(22 - 7 + 40, abs=truth.voxel_mm)  # enters at y = 15
    assert [t["id"] for t in pl.scene.plan["trajectories"]] == ["T1", "T2", "T3"]


def test_direction_and_angles_are_lps():
    g = trajectory_geometry((0, 0, 0), (10, 0, 0))  # towards patient Left
    assert g["direction"] == [1.0, 0.0, 0.0] and g["axial_deg"] == pytest.approx(90.0)
    g = trajectory_geometry((0, 0, 0), (0, -10, 10))  # anterior and superior
    assert g["craniocaudal_deg"] == pytest.approx(45.0) and g["axial_deg"] == pytest.approx(0.0)
    with pytest.raises(PlanningError, match="must differ"):
        trajectory_geometry((1, 2, 3), (1, 2, 3))


def test_bad_radius(scene):
    path, _ = scene
    with pytest.raises(PlanningError, match="radius"):
        Planner(path).add_trajectory((0, 0, 0), (1, 0, 0), -1)
