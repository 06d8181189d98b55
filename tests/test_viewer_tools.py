"""Viewer logic that needs no display: tools -> planning, panel text, drawing maths, errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from viewer.synthetic import Blob, make_scene

ROOT = Path(__file__).resolve().parents[1]
BLOBS = (
    Blob("organ", (-40.0, 0.0, 0.0), (22, 22, 22), (200, 60, 60)),
    Blob("tumour", (-48.0, 0.0, 0.0), (6, 6, 6), (250, 220, 40), hu=120),
    Blob("vessel", (40.0, 0.0, 0.0), (15, 15, 15), (40, 80, 220), hu=250, critical=True,
         qc={"status": "warn", "reason": "volume outside the expected range"}),
)


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tools_scene")
    make_scene(folder, BLOBS, shape=(40, 50, 70), spacing=2.0, flip_x=True, case_id="tools")
    return folder


@pytest.fixture()
def session(scene_dir, tmp_path):
    from pipeline.scene.scene import copy_scene

    from viewer.tools import PlanSession

    return PlanSession.open(copy_scene(scene_dir, tmp_path / "scene"))


def test_distance_and_angle_modes_collect_points_then_ask_planning(session):
    session.set_mode("distance")
    assert session.add_point([0, 0, 0]) is None and len(session.pending) == 1
    rec = session.add_point([3, 4, 0])
    assert rec["kind"] == "distance" and rec["value"] == pytest.approx(5.0) and session.pending == []
    session.set_mode("angle")
    for p in ([10, 0, 0], [0, 0, 0]):
        assert session.add_point(p) is None
    rec = session.add_point([0, 0, 7])
    assert rec["value"] == pytest.approx(90.0)
    from viewer.tools import record_text

    assert [record_text(r) for r in session.records()] == ["M1 distance 5.0 mm", "M2 angle 90.0°"]


def test_landmark_snaps_to_the_picked_structure(session):
    session.set_mode("landmark")
    rec = session.add_point([40.0, -14.0, 0.0], "vessel")  # just inside the front pole
    assert rec["snapped_to"] == "vessel"
    assert np.linalg.norm(np.asarray(rec["point"]) - [40, 0, 0]) == pytest.approx(15.0, abs=1.0)


def test_cut_preview_matches_the_analytic_cap_and_margin(session):
    session.start_cut("organ", [-40.0, 0.0, 0.0], orientation="sagittal (cut left)", margin_to="tumour")
    session.cut.offset_mm = 5.0  # plane x = -35, resected side +x
    rec = session.preview_cut()
    h, r = 17.0, 22.0
    cap_ml = np.pi * h * h * (3 * r - h) / 3 / 1000
    assert rec["resected_ml"] == pytest.approx(cap_ml, rel=0.06)
    assert rec["margin"]["margin_mm"] == pytest.approx(7.0, abs=1.0)  # tumour spans x -54..-42
    assert session.plan["cuts"] == []  # a preview is not a plan record
    mask = session.resected_vertex_mask()
    v = np.asarray(session.planner.mesh("organ").vertices)
    assert np.all(v[mask][:, 0] > -35.0) and np.all(v[~mask][:, 0] <= -35.0)
    # tilting keeps a unit normal and moves it off the axis
    session.cut.tilt_deg = (20.0, 0.0)
    n = session.cut.normal()
    assert np.linalg.norm(n) == pytest.approx(1.0) and np.degrees(np.arccos(n[0])) == pytest.approx(20.0, abs=1e-6)


def test_wedge_of_two_planes_takes_the_quarter_beyond_both(session):
    """'+ plane': the live plane is fixed and a second one starts at the same point; the resected
    part is what lies beyond both (here x > -40 and z > 0: a quarter of the ball)."""
    from pipeline.errors import PlanningError

    session.start_cut("organ", [-40.0, 0.0, 0.0], orientation="sagittal (cut left)")
    whole = session.preview_cut()["resected_ml"] + session.preview_cut()["remnant_ml"]
    half = session.preview_cut()["resected_ml"]
    session.add_cut_plane("axial (cut above)")
    assert len(session.cut.planes()) == 2 and session.cut.offset_mm == 0.0
    rec = session.preview_cut()
    assert half == pytest.approx(whole / 2, rel=0.03)
    assert rec["resected_ml"] == pytest.approx(whole / 4, rel=0.05)
    mask = session.resected_vertex_mask()
    v = np.asarray(session.planner.mesh("organ").vertices)
    assert np.all(v[mask][:, 0] > -40.0) and np.all(v[mask][:, 2] > 0.0)
    stored = session.commit_cut()
    assert len(stored["planes"]) == 2 and stored["resected_ml"] == pytest.approx(whole / 4, rel=0.05)
    with pytest.raises(PlanningError, match="orientation must be one of"):
        session.add_cut_plane("diagonal")
    assert len(session.cut.planes()) == 2  # a refused plane changes nothing


def test_primitives_and_texts_for_every_record_kind(session):
    from viewer.tools import clearance_lines, record_primitives, record_text

    p = session.planner
    recs = [p.measure_between("organ", "vessel"), p.add_landmark("apex", [40, -15, 0], snap_to="vessel"),
            p.add_trajectory([-48, -60, 0], [-48, 0, 0], 1.0)]
    assert record_text(recs[0]).startswith("M1 organ <-> vessel: ")
    assert f"{recs[0]['value']:.1f} mm" in record_text(recs[0])
    assert recs[0]["value"] == pytest.approx(43.0, abs=1.0)  # (40-15) - (-40+22)
    prims = record_primitives(recs[0], 1.0)
    assert [q.kind for q in prims] == ["points", "polyline"] and prims[1].label.endswith("mm")
    assert record_primitives(recs[1], 1.0)[0].label == "apex"
    t = record_primitives(recs[2], 1.0)
    assert t[0].kind == "tool" and "organ" not in t[0].label.split(",")[0]
    lines = clearance_lines(recs[2])
    assert lines[0].startswith("structure") and any("(target)" in s for s in lines)


def test_cut_state_rejects_unknown_modes(session):
    from pipeline.errors import PlanningError

    with pytest.raises(PlanningError, match="mode must be one of"):
        session.set_mode("lasso")


def test_drawing_cylinder_spans_its_end_points():
    pytest.importorskip("open3d")
    from viewer.drawing import cylinder, orientation_marker

    a, b = np.array([1.0, 2.0, 3.0]), np.array([11.0, -4.0, 8.0])
    c = cylinder(a, b, 0.5)
    v = np.asarray(c.vertices)
    d = (b - a) / np.linalg.norm(b - a)
    t = (v - a) @ d
    assert t.min() == pytest.approx(0.0, abs=1e-6) and t.max() == pytest.approx(np.linalg.norm(b - a), abs=1e-6)
    radial = np.linalg.norm((v - a) - np.outer(t, d), axis=1)
    assert radial.max() == pytest.approx(0.5, abs=1e-6)
    _, _, letters = orientation_marker([0, 0, 0], 10.0)
    pos = {t: p for p, t in letters}
    assert pos["L"][0] > 0 > pos["R"][0] and pos["P"][1] > 0 > pos["A"][1] and pos["S"][2] > 0 > pos["I"][2]


def test_view_without_display_says_what_to_do(scene_dir):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    p = subprocess.run([sys.executable, "-m", "pipeline.cli", "view", str(scene_dir)], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=60)
    assert p.returncode == 1
    assert "needs a display" in p.stderr and "xvfb-run" in p.stderr and "surgitwin snapshot" in p.stderr
    env["DISPLAY"] = ":987"  # nothing listens there
    p = subprocess.run([sys.executable, "-m", "pipeline.cli", "view", str(scene_dir)], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=60)
    assert p.returncode == 1 and "no X server is listening on DISPLAY=:987" in p.stderr


def test_script_validation(tmp_path):
    from pipeline.errors import SurgitwinError
    from viewer.driver import load_actions

    f = tmp_path / "s.json"
    f.write_text(json.dumps([{"do": "set_view", "args": ["left"]}, {"do": "rm_rf"}]))
    with pytest.raises(SurgitwinError, match=r"unknown actions \['rm_rf'\]"):
        load_actions(f)
    f.write_text("{")
    with pytest.raises(SurgitwinError, match="JSON list"):
        load_actions(f)


def test_viewer_imports_no_torch_or_monai():
    code = ("import sys, viewer.app, viewer.tools, viewer.panels, viewer.driver, viewer.drawing, viewer.slices, "
            "pipeline.planning, pipeline.planning.cut, pipeline.planning.trajectory; "
            "bad=[m for m in ('torch','monai') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def test_lesion_mode_segments_a_lesion_from_one_click(session):
    """Ctrl+click in lesion mode: the seed goes to pipeline.planning (surgitwin lesion)."""
    from viewer.tools import record_text

    from pipeline.errors import PlanningError
    from pipeline.geometry import write_image_file

    scene = session.scene
    image = scene.load_image()  # a dark 6 mm lesion in the organ that the segmentation missed
    lps = image.index_to_lps(np.argwhere(np.ones(image.shape, bool))).reshape(*image.shape, 3)
    arr = np.where(np.linalg.norm(lps - (-28.0, 0.0, 0.0), axis=-1) <= 6.0, image.array - 50, image.array)
    write_image_file(image.with_array(arr.astype(image.array.dtype)), scene.root / scene.image)
    session.set_mode("lesion")
    with pytest.raises(PlanningError, match="already a lesion"):
        session.add_point((-48.0, 0.0, 0.0), None)  # the segmented tumour
    rec = session.add_point((-28.0, 0.0, 0.0), None)
    assert rec["kind"] == "lesion" and rec["id"] == "LS1" and rec["within"] == "organ"
    assert rec["centroid_lps"][0] == pytest.approx(-28.0, abs=1.5)  # the patient's right stays right
    assert rec["volume_ml"] == pytest.approx(4 / 3 * np.pi * 0.216, rel=0.35)
    assert rec in session.records() and record_text(rec).startswith("LS1 lesion lesion_1 in organ")
