"""Follow-up time points: known motion and growth in, the same numbers out.

The baseline is the shipped sample scan (ground-truth labels); the follow-up is the same
phantom moved rigidly (5, -3, 4) mm and turned (2, -1, 3) degrees with the liver tumour's radius
grown by 4 mm, written as DICOM and read back through the real reader. The phantoms' exact
labels stand in for the segmentation model, so these tests check registration, change
measurement and plan carry-over, not a model.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from followup_helpers import FOLLOWUP_DATE, baseline_scene, rotation_angle_deg, truth_segmenter, write_follow_up
from pipeline.errors import SceneError
from pipeline.followup.change import change_report, recist_category
from pipeline.followup.register import RegistrationConfig
from pipeline.followup.run import follow_up
from pipeline.followup.synthetic import follow_up_phantom
from pipeline.followup.timepoints import list_timepoints
from pipeline.mesh import MeshConfig, labelmap_to_meshes
from pipeline.phantom import make_phantom
from pipeline.scene import load_scene, save_scene
from pipeline.types import LabelMap

pytestmark = pytest.mark.slow  # end-to-end: left out by `make test-fast`

GROWTH_MM = 4.0
# passes ~6 mm in front of (anterior to) the tumour, along the patient's right-left axis
FAST = RegistrationConfig(deformable=False, rigid_spacing_mm=4.0, rigid_shrink=(2, 1), sampling=0.1)  # tests only
NEAR_TUMOUR = {"entry": (-150.0, -39.0, -270.0), "target": (-60.0, -39.0, -270.0), "radius_mm": 1.0}


@pytest.fixture(scope="module")
def followed(tmp_path_factory):
    """Baseline scene with a plan + a rigid-only follow-up added to it (built once, ~15 s)."""
    from pipeline.planning import Planner

    d = tmp_path_factory.mktemp("followup")
    scene_dir, phantom = baseline_scene(d)
    pl = Planner(scene_dir)
    pl.add_trajectory(NEAR_TUMOUR["entry"], NEAR_TUMOUR["target"], NEAR_TUMOUR["radius_mm"])
    pl.add_landmark("tumour_top", (-85.0, -20.0, -250.0), snap_to="liver_tumor")
    pl.add_cut("liver", [{"point": (-60.0, 0.0, -270.0), "normal": (-1.0, 0.0, 0.0)}], margin_to="liver_tumor")
    pl.save()
    folder, labels, truth = write_follow_up(d, seed=1, tumor_growth_mm=GROWTH_MM)
    res = follow_up(scene_dir, folder, segmenter=truth_segmenter(labels), registration=FAST)
    return {"dir": scene_dir, "res": res, "truth": truth, "labels": labels, "dicom": folder, "tmp": d,
            "baseline_plan": load_scene(scene_dir, load_meshes=False).plan}


def test_follow_up_recovers_the_known_rigid_motion(followed):
    res, truth = followed["res"], followed["truth"]
    m = np.array(res.registration["rigid_baseline_to_timepoint"])
    base = load_scene(followed["dir"], load_meshes=False)
    lm = base.load_labelmap()
    body = lm.array > 0
    from scipy import ndimage

    surface = np.argwhere(body & ~ndimage.binary_erosion(body))[::50]
    pts = lm.volume.index_to_lps(surface)
    err = np.linalg.norm((pts @ m[:3, :3].T + m[:3, 3]) - (pts @ truth.motion[:3, :3].T + truth.motion[:3, 3]), axis=1)
    assert err.max() < 1.0, f"body-surface error {err.max():.2f} mm"
    assert rotation_angle_deg(m[:3, :3] @ truth.motion[:3, :3].T) < 0.5
    assert res.registration["reliable"] and res.registration["residuals"]["body_surface_mean_mm"] < 1.0


def test_follow_up_reports_the_tumour_growth_and_progression(followed):
    ch = followed["res"].change
    rows = {r["name"]: r for r in ch["structures"]}
    base = make_phantom(0)[1]
    true_before = float((base.array == 7).sum()) * base.volume.voxel_volume_ml
    true_after = float((followed["labels"].array == 7).sum()) * followed["labels"].volume.voxel_volume_ml
    tumour = rows["liver_tumor"]
    assert tumour["lesion"]
    assert tumour["volume_change_ml"] == pytest.approx(true_after - true_before, rel=0.10)
    assert tumour["centroid_shift_mm"] < 1.0  # concentric growth, the motion is registered away
    assert 3.0 < tumour["surface"]["mean_mm"] < 4.8  # semi-axes grew 4.0, 3.6, 4.4 mm
    assert tumour["surface"]["p95_mm"] > 0
    for name in ("liver", "spleen", "kidney_left", "kidney_right"):  # unchanged organs stay unchanged
        assert abs(rows[name]["volume_change_percent"]) < 2.0, name
        assert abs(rows[name]["surface"]["mean_mm"]) < 0.5, name
        assert rows[name]["centroid_shift_mm"] < 1.0, name
    assert rows["aorta"]["cut_by_field_of_view"] and not rows["liver_tumor"]["cut_by_field_of_view"]
    rc = ch["recist"]
    assert rc["category"] == "progressive_disease"
    assert rc["sum_after_mm"] / rc["sum_before_mm"] == pytest.approx((14 + GROWTH_MM) / 14, rel=0.05)
    assert "20 %" in rc["thresholds"]["progressive_disease"] and "30 %" in rc["thresholds"]["partial_response"]


def test_timepoint_folder_and_scene_json(followed):
    root, res = followed["dir"], followed["res"]
    tp = root / "timepoints" / FOLLOWUP_DATE
    assert res.folder == tp and res.timepoint["id"] == FOLLOWUP_DATE
    for rel in ("scene.json", "image.nii.gz", "labels.nii.gz", "image_in_baseline.nii.gz", "change_report.json",
                "transforms/registration.json", "transforms/baseline_to_timepoint.tfm", "meshes/liver_tumor.ply",
                "changes/liver_tumor.ply"):
        assert (tp / rel).is_file(), rel
    assert not [p.name for p in (root / "timepoints").iterdir() if p.name.startswith(".")]  # nothing half-written
    tps = list_timepoints(root)
    assert [t["id"] for t in tps] == ["baseline", FOLLOWUP_DATE]
    assert [t["current"] for t in tps] == [False, True]
    d = json.loads((root / "scene.json").read_text())
    assert d["current_timepoint"] == FOLLOWUP_DATE
    # the time point is a scene of its own, in the follow-up's patient space
    tps_scene = load_scene(tp)
    assert tps_scene.source["study_date"] == FOLLOWUP_DATE
    assert tps_scene.load_image().geometry_equal(followed["labels"].volume, atol=1e-3)
    reg = json.loads((tp / "transforms/registration.json").read_text())
    fwd, inv = np.array(reg["baseline_to_timepoint"]), np.array(reg["timepoint_to_baseline"])
    assert np.allclose(fwd @ inv, np.eye(4), atol=1e-6)
    import SimpleITK as sitk

    t = sitk.ReadTransform(str(tp / "transforms/baseline_to_timepoint.tfm"))
    p = (-85.0, -20.0, -270.0)
    assert np.allclose(t.TransformPoint(p), fwd[:3, :3] @ p + fwd[:3, 3], atol=1e-4)
    # the change mesh is coloured: red where the tumour grew
    import trimesh

    cm = trimesh.load_mesh(str(tp / "changes/liver_tumor.ply"), process=False)
    colours = np.asarray(cm.visual.vertex_colors)[:, :3].astype(int)
    assert (colours[:, 0] - colours[:, 2]).mean() > 100
    # a save/load round trip of the baseline keeps the time points (older readers keep unknown keys)
    s = load_scene(root, load_meshes=False)
    save_scene(s, write_meshes=False)
    assert [t["id"] for t in list_timepoints(root)] == ["baseline", FOLLOWUP_DATE]


def test_plan_is_carried_over_and_changed_numbers_are_flagged(followed):
    root, res, truth = followed["dir"], followed["res"], followed["truth"]
    plan = load_scene(root / "timepoints" / FOLLOWUP_DATE, load_meshes=False).plan
    before = followed["baseline_plan"]["trajectories"][0]
    traj = plan["trajectories"][0]
    assert traj["carried_from"]["id"] == before["id"]
    m = truth.motion
    assert np.allclose(traj["entry"], m[:3, :3] @ NEAR_TUMOUR["entry"] + m[:3, 3], atol=1.0)
    assert np.allclose(traj["target"], m[:3, :3] @ NEAR_TUMOUR["target"] + m[:3, 3], atol=1.0)
    c0 = {r["structure"]: r["distance_mm"] for r in before["clearance"]}["liver_tumor"]
    c1 = {r["structure"]: r["distance_mm"] for r in traj["clearance"]}["liver_tumor"]
    assert 3.0 < c0 < 8.0
    assert c0 - c1 == pytest.approx(3.6, abs=1.0)  # the tumour grew towards the path
    rec = {c["id"]: c for c in res.carried}[before["id"]]
    assert rec["flagged"] and any("clearance to liver_tumor" in msg for msg in rec["messages"])
    # landmark snapped to the grown tumour; cut re-evaluated with its margin to the tumour
    assert plan["landmarks"][0]["snapped_to"] == "liver_tumor"
    cut0, cut1 = followed["baseline_plan"]["cuts"][0], plan["cuts"][0]
    assert cut1["margin"]["structure"] == "liver_tumor"
    assert cut1["margin"]["margin_mm"] < cut0["margin"]["margin_mm"] - 2.0  # the tumour reached towards the plane
    n = np.array(cut1["planes"][0]["normal"])
    assert np.allclose(n, m[:3, :3] @ (-1.0, 0.0, 0.0), atol=0.01)


def test_viewer_time_points_use_the_registered_transforms(followed):
    """What `surgitwin view --compare/--color-by-change` shows of a follow-up made by the real
    registration: the baseline's surfaces land on the follow-up's, the tumour reads its growth."""
    from pipeline.followup.change import sample, signed_distance
    from pipeline.followup.view import timepoint_view

    root = followed["dir"]
    tv = timepoint_view(root, compare="baseline", color_by_change="liver_tumor")
    assert tv.viewed["id"] == FOLLOWUP_DATE and tv.change.other == tv.timepoints[0]["id"]
    rows = {r["name"]: r for r in followed["res"].change["structures"]}
    d = tv.change.signed_mm
    assert np.mean(d) == pytest.approx(rows["liver_tumor"]["surface"]["mean_mm"], abs=0.5)  # the report's number
    assert 3.0 < np.median(d) < 4.8 and (d > 1.0).mean() > 0.95
    lm = load_scene(tv.scene.root, load_meshes=False).load_labelmap()
    for name in ("liver", "spleen", "kidney_left", "kidney_right"):
        field = signed_distance(lm.array == lm.labels.by_name(name).id, lm.volume)
        off = sample(field, np.asarray(tv.compare_meshes[name].vertices))
        assert np.nanmean(np.abs(off)) < 0.8, name
        liver = timepoint_view(root, compare="baseline", color_by_change=name).change.signed_mm
        assert abs(np.median(liver)) < 0.5, name


def test_growth_on_the_patients_right_is_reported_on_the_right():
    base = make_phantom(0)[1]
    names = {"liver_tumor"}
    m0 = {m.name: m.mesh for m in labelmap_to_meshes(base, MeshConfig(), names=names)}
    for sign, side in ((-1, "patient right"), (1, "patient left")):
        _, lab, truth = follow_up_phantom(1, tumor_growth_mm=2.0, tumor_shift_mm=(sign * 4.0, 0.0, 0.0), noise_sd=0)
        m1 = {m.name: m.mesh for m in labelmap_to_meshes(lab, MeshConfig(), names=names)}
        rep, d = change_report(base, lab, m0, m1, np.linalg.inv(truth.motion), names=names)
        row = rep["structures"][0]
        assert row["centroid_shift_lps_mm"][0] == pytest.approx(sign * 4.0, abs=0.7)
        assert row["centroid_shift_direction"] == side
        assert row["surface"]["growth_side"] == side
        assert np.sign(row["surface"]["max_growth_lps"][0] - (-85.0)) == sign  # LPS x < 0 is the patient's right
        assert row["surface"]["max_growth_mm"] == pytest.approx(6.0, abs=1.2)


def test_a_new_lesion_is_a_new_component_and_progression():
    base = make_phantom(0)[1]
    arr = base.array.copy()
    lm = base.volume
    k, j, i = np.indices(arr.shape)
    pts = lm.index_to_lps(np.stack([k, j, i], -1).reshape(-1, 3)).reshape(*arr.shape, 3)
    new_centre = np.array([-40.0, -30.0, -285.0])  # inside the liver, away from the first tumour
    ball = (np.linalg.norm(pts - new_centre, axis=-1) <= 8.0) & (arr == 1)
    arr[ball] = 7
    later = LabelMap(lm.with_array(arr), base.labels)
    names = {"liver_tumor"}
    m0 = {m.name: m.mesh for m in labelmap_to_meshes(base, MeshConfig(), names=names)}
    m1 = {m.name: m.mesh for m in labelmap_to_meshes(later, MeshConfig(), names=names)}
    rep, _ = change_report(base, later, m0, m1, np.eye(4), names=names)
    new = rep["structures"][0]["components"]["new"]
    assert len(new) == 1 and np.allclose(new[0]["centroid_lps"], new_centre, atol=1.5)
    assert new[0]["volume_ml"] == pytest.approx(4 / 3 * np.pi * 8 ** 3 / 1000, rel=0.15)
    assert rep["structures"][0]["components"]["vanished"] == []
    assert rep["recist"]["category"] == "progressive_disease" and rep["recist"]["new_lesions"] == 1


@pytest.mark.parametrize("before, after, n_after, new, expected", [
    (40.0, 0.0, 0, 0, "complete_response"),
    (40.0, 28.0, 1, 0, "partial_response"),      # exactly -30 %
    (40.0, 28.4, 1, 0, "stable_disease"),        # -29 %
    (40.0, 48.0, 1, 0, "progressive_disease"),   # +20 % and +8 mm
    (20.0, 24.0, 1, 0, "stable_disease"),        # +20 % but only +4 mm absolute
    (20.0, 25.0, 1, 0, "progressive_disease"),   # +25 % and +5 mm
    (40.0, 30.0, 1, 1, "progressive_disease"),   # a new lesion, whatever the sum
])
def test_recist_categories_at_their_thresholds(before, after, n_after, new, expected):
    assert recist_category(before, after, n_after, new)["category"] == expected


def test_a_scene_without_timepoints_is_one_timepoint(tmp_path):
    from scene_factory import cached_constructed_scene

    scene_dir, _ = cached_constructed_scene(tmp_path)
    assert "timepoints" not in json.loads((scene_dir / "scene.json").read_text())
    tps = list_timepoints(scene_dir)
    assert len(tps) == 1 and tps[0]["path"] == "." and tps[0]["current"]


def _baseline_only(followed, tmp_path):
    """A copy of the followed scene as it was before its follow-up (no time points)."""
    scene_dir = tmp_path / "scene"
    shutil.copytree(followed["dir"], scene_dir)
    shutil.rmtree(scene_dir / "timepoints")
    d = json.loads((scene_dir / "scene.json").read_text())
    d.pop("timepoints"), d.pop("current_timepoint")
    (scene_dir / "scene.json").write_text(json.dumps(d))
    return scene_dir


def test_follow_up_refuses_another_label_table_and_publishes_nothing(followed, tmp_path):
    from pipeline.types import Label, LabelTable, StageRecord

    scene_dir = _baseline_only(followed, tmp_path)

    def other_model(volume):
        table = LabelTable([Label(1, "liver"), Label(2, "spleen_renamed")])
        arr = np.isin(followed["labels"].array, (1, 2)) * followed["labels"].array
        return LabelMap(volume.with_array(arr.astype(np.uint8)), table), None, {}, StageRecord("segment", {})

    with pytest.raises(SceneError) as e:
        follow_up(scene_dir, followed["dicom"], segmenter=other_model, registration=FAST)
    assert e.value.rule == "same label table across time points" and "spleen" in str(e.value)
    with pytest.raises(SceneError):  # with --out: neither the copy nor its temporary folder is left
        follow_up(scene_dir, followed["dicom"], out=tmp_path / "copy", segmenter=other_model, registration=FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]
    assert not (scene_dir / "timepoints").exists() or not any((scene_dir / "timepoints").iterdir())
    assert "timepoints" not in json.loads((scene_dir / "scene.json").read_text())


def test_change_refuses_when_the_registration_residual_is_above_its_limit(followed, tmp_path):
    from pipeline.followup import change_between

    scene_dir = tmp_path / "scene"
    shutil.copytree(followed["dir"], scene_dir)
    rep = change_between(scene_dir)
    assert rep["from"] == "baseline" and rep["to"] == FOLLOWUP_DATE
    assert {r["name"]: r for r in rep["structures"]}["liver_tumor"]["volume_change_ml"] == pytest.approx(
        {r["name"]: r for r in followed["res"].change["structures"]}["liver_tumor"]["volume_change_ml"])
    reg = scene_dir / "timepoints" / FOLLOWUP_DATE / "transforms" / "registration.json"
    info = json.loads(reg.read_text())
    info["reliable"] = False
    reg.write_text(json.dumps(info))
    with pytest.raises(SceneError) as e:
        change_between(scene_dir)
    assert e.value.rule == "registration residual within its limit"
    assert change_between(scene_dir, force=True)["to"] == FOLLOWUP_DATE


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_errors_name_the_file_and_exit_1(tmp_path, followed):
    r = _cli("follow-up", str(tmp_path / "nope"), str(followed["dicom"]))
    assert r.returncode == 1 and "nope" in r.stderr and "Traceback" not in r.stderr
    from scene_factory import cached_constructed_scene

    one, _ = cached_constructed_scene(tmp_path)
    r = _cli("change", str(one))
    assert r.returncode == 1 and "one time point" in r.stderr and "Traceback" not in r.stderr
    r = _cli("timepoints", str(followed["dir"]))
    assert r.returncode == 0 and f"* {FOLLOWUP_DATE}" in r.stdout
    r = _cli("change", str(followed["dir"]), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["recist"]["category"] == "progressive_disease"


def test_report_has_a_what_changed_section(followed, tmp_path):
    import base64
    import io
    import re

    from PIL import Image

    from pipeline.scene.report import build_report

    scene_dir = tmp_path / "scene"
    shutil.copytree(followed["dir"], scene_dir)
    html = build_report(scene_dir, render=False).html.read_text()
    assert "What changed: baseline → " + FOLLOWUP_DATE in html
    section = html[html.index("What changed"):html.index("<h2>Structures</h2>")]
    assert "RECIST 1.1: progressive disease" in section and "liver_tumor" in section
    assert "clearance to liver_tumor" in section  # the flagged carried-over trajectory
    pics = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", section)
    assert len(pics) == 3
    for p in pics:
        assert Image.open(io.BytesIO(base64.b64decode(p))).size[0] > 100
    # the time point's own scene reports the same section
    tp_html = build_report(scene_dir / "timepoints" / FOLLOWUP_DATE, render=False).html.read_text()
    assert "What changed: baseline → " + FOLLOWUP_DATE in tp_html


def test_change_picture_puts_the_patients_right_on_the_left():
    import io

    import trimesh
    from PIL import Image

    from pipeline.followup.change import vertex_colours
    from pipeline.followup.report import anterior_view

    mesh = trimesh.creation.icosphere(subdivisions=3, radius=20.0)
    d = np.where(mesh.vertices[:, 0] < 0, 5.0, -5.0)  # grew on the patient's right (LPS x < 0)
    mesh.visual.vertex_colors = vertex_colours(d)
    img = np.asarray(Image.open(io.BytesIO(anterior_view(mesh))).convert("RGB")).astype(int)
    h, w, _ = img.shape
    left, right = img[:, : w // 2], img[:, w // 2:]
    redness = lambda a: (a[..., 0] - a[..., 2]).clip(0).sum()  # noqa: E731
    blueness = lambda a: (a[..., 2] - a[..., 0]).clip(0).sum()  # noqa: E731
    assert redness(left) > 10 * max(redness(right), 1) and blueness(right) > 10 * max(blueness(left), 1)


@pytest.mark.slow
def test_bspline_follows_a_liver_that_slid_and_inverts_consistently():
    """The liver (with its tumour) slid 8 mm up inside a rigidly moved body: the rigid part still
    matches the body, and the B-spline carries a point in the tumour most of the way to where it went."""
    from pipeline.followup.register import register

    ct0, lab0 = make_phantom(0)
    ct1, lab1, truth = follow_up_phantom(1, liver_shift_mm=(0.0, 0.0, 8.0), tumor_growth_mm=0.0)
    c0 = ct0.index_to_lps(np.argwhere(lab0.array == 7).mean(0)[None])[0]
    c1 = ct1.index_to_lps(np.argwhere(lab1.array == 7).mean(0)[None])[0]
    reg = register(ct0, lab0.array, ct1, lab1.array, RegistrationConfig(deformable=True))
    rigid_err = np.linalg.norm(reg.map_forward(c0[None], deformable=False)[0] - c1)
    deformable_err = np.linalg.norm(reg.map_forward(c0[None], deformable=True)[0] - c1)
    assert rigid_err == pytest.approx(8.0, abs=1.0)  # the rigid part follows the body, not the liver
    assert deformable_err < 0.75 * rigid_err
    fwd = reg.map_forward(c0[None])
    assert np.linalg.norm(reg.map_inverse(fwd, deformable=True)[0] - c0) < 0.5
    m = truth.motion
    skin = np.argwhere(lab0.array > 0)[::4000]
    pts = ct0.index_to_lps(skin)
    err = np.linalg.norm(reg.map_forward(pts, deformable=False) - (pts @ m[:3, :3].T + m[:3, 3]), axis=1)
    assert err.max() < 1.0


@pytest.mark.slow
def test_cli_follow_up_segments_with_the_scenes_model_into_a_copy(tmp_path):
    """End to end through the CLI: a scene made by `run` with hu_rules, then `follow-up --out` with
    the real DICOM reader and the scene's own model (no stand-in)."""
    from scene_factory import SAMPLE

    from pipeline.run import run_case

    run_case(SAMPLE / "dicom", tmp_path / "scene", model="hu_rules", snapshot=False)
    folder, _, truth = write_follow_up(tmp_path, seed=1, tumor_growth_mm=0.0)
    r = _cli("follow-up", str(tmp_path / "scene"), str(folder), "--out", str(tmp_path / "copy"), "--rigid-only", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["folder"] == str(tmp_path / "copy" / "timepoints" / FOLLOWUP_DATE)
    assert "timepoints" not in json.loads((tmp_path / "scene" / "scene.json").read_text())  # original untouched
    tp = load_scene(tmp_path / "copy" / "timepoints" / FOLLOWUP_DATE, load_meshes=False)
    assert [p.stage for p in tp.provenance] == ["ingest", "segment", "register", "mesh"]
    assert tp.provenance[1].inputs["model"] == "hu_rules"
    m = np.array(out["registration"]["rigid_baseline_to_timepoint"])
    assert rotation_angle_deg(m[:3, :3] @ truth.motion[:3, :3].T) < 0.5
    assert np.allclose(m[:3, 3], truth.motion[:3, 3], atol=1.0)
    rows = {r["name"]: r for r in out["change"]["structures"]}
    assert abs(rows["bone"]["surface"]["mean_mm"]) < 0.5  # nothing grew: bone and body surfaces agree
    assert abs(rows["body"]["surface"]["mean_mm"]) < 0.5
    r = _cli("follow-up", str(tmp_path / "scene"), str(folder), "--out", str(tmp_path / "copy"))
    assert r.returncode == 1 and "--out must be a new folder" in r.stderr and "copy" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_later_and_earlier_studies_take_their_place_in_time(followed, tmp_path):
    """A third study (later) is compared with the follow-up, not the baseline; an older study
    slots in by date and does not become current."""
    scene_dir = tmp_path / "scene"
    shutil.copytree(followed["dir"], scene_dir)
    folder, labels, _ = write_follow_up(tmp_path, date="20251201", seed=2, tumor_growth_mm=GROWTH_MM + 2.0,
                                        rotation_deg=(0.0, 0.0, -2.0), shift_mm=(-3.0, 2.0, 0.0))
    res = follow_up(scene_dir, folder, segmenter=truth_segmenter(labels), registration=FAST)
    assert res.change["from"] == FOLLOWUP_DATE and res.change["to"] == "20251201"
    tumour = {r["name"]: r for r in res.change["structures"]}["liver_tumor"]
    v1 = float((followed["labels"].array == 7).sum()) * labels.volume.voxel_volume_ml
    v2 = float((labels.array == 7).sum()) * labels.volume.voxel_volume_ml
    assert tumour["volume_change_ml"] == pytest.approx(v2 - v1, rel=0.10)
    assert tumour["centroid_shift_mm"] < 1.0  # both motions registered away, through the baseline
    assert 1.2 < tumour["surface"]["mean_mm"] < 2.6  # radius 18 -> 20 mm
    # the plan carried into 20250601 is carried again
    traj = load_scene(res.folder, load_meshes=False).plan["trajectories"][0]
    assert traj["carried_from"]["id"] == "T1"
    from pipeline.followup import change_between

    again = {r["name"]: r for r in change_between(scene_dir, FOLLOWUP_DATE, "20251201")["structures"]}
    assert again["liver_tumor"]["volume_change_ml"] == pytest.approx(tumour["volume_change_ml"])
    assert again["liver_tumor"]["surface"]["mean_mm"] == pytest.approx(tumour["surface"]["mean_mm"], abs=0.05)
    whole = {r["name"]: r for r in change_between(scene_dir, "baseline", "20251201")["structures"]}
    assert whole["liver_tumor"]["centroid_shift_mm"] < 1.0
    old, old_labels, _ = write_follow_up(tmp_path, date="20240101", seed=3, tumor_growth_mm=-2.0)
    follow_up(scene_dir, old, segmenter=truth_segmenter(old_labels), registration=FAST)
    tps = list_timepoints(scene_dir)
    assert [t["id"] for t in tps] == ["baseline", "20240101", FOLLOWUP_DATE, "20251201"]
    assert [t["id"] for t in tps if t["current"]] == ["20251201"]
    older = json.loads((scene_dir / "timepoints" / "20240101" / "change_report.json").read_text())
    assert older["from"] == "baseline"


def test_report_says_when_changes_were_not_reported(followed, tmp_path):
    from pipeline.scene.report import build_report

    scene_dir = tmp_path / "scene"
    shutil.copytree(followed["dir"], scene_dir)
    d = json.loads((scene_dir / "scene.json").read_text())
    for t in d["timepoints"]:
        t.pop("change_report", None)  # what follow_up writes when the residual is above its limit
    (scene_dir / "scene.json").write_text(json.dumps(d))
    html = build_report(scene_dir, render=False).html.read_text()
    assert f"What changed: not reported for {FOLLOWUP_DATE}" in html and "RECIST" not in html


def test_follow_up_above_the_residual_limit_adds_the_study_but_reports_no_change(followed, tmp_path):
    scene_dir = _baseline_only(followed, tmp_path)
    res = follow_up(scene_dir, followed["dicom"], segmenter=truth_segmenter(followed["labels"]), registration=FAST,
                    residual_limit_mm=0.05)
    assert res.change is None and res.carried == [] and not res.registration["reliable"]
    assert any("above the 0.05 mm limit" in w for w in res.warnings)
    assert not (res.folder / "change_report.json").exists()
    assert load_scene(res.folder, load_meshes=False).plan["trajectories"] == []
    r = _cli("change", str(scene_dir))
    assert r.returncode == 1 and "residual" in r.stderr


def test_the_same_series_is_added_once(followed, tmp_path):
    scene_dir = tmp_path / "scene"
    shutil.copytree(followed["dir"], scene_dir)
    with pytest.raises(SceneError) as e:
        follow_up(scene_dir, followed["dicom"], segmenter=truth_segmenter(followed["labels"]), registration=FAST)
    assert e.value.rule == "a series is added to a scene once" and FOLLOWUP_DATE in str(e.value)
    assert len(list_timepoints(scene_dir)) == 2


@pytest.mark.slow
def test_demo_follow_up_shows_the_change_report(tmp_path):
    r = _cli("demo-follow-up", "--out", str(tmp_path / "demo"))
    assert r.returncode == 0, r.stderr
    assert "PROGRESSIVE DISEASE" in r.stdout and "plan changed: T2 trajectory: clearance to liver_tumor" in r.stdout
    html = (tmp_path / "demo" / "report" / "report.html").read_text()
    assert "What changed: 20250101 → 20250601" in html


def test_an_oblique_reversed_follow_up_on_another_grid_keeps_left_and_right():
    """The follow-up scanned on another grid (oblique, slices head to feet, other spacing): the motion
    is still found and a growth on the patient's right is still reported on the right."""
    from pipeline.followup.register import register

    base = make_phantom(0)
    ct1, lab1, truth = follow_up_phantom(1, tumor_growth_mm=2.0, tumor_shift_mm=(-4.0, 0.0, 0.0), orientation="oblique",
                                         reverse_slices=True, shape=(90, 200, 200), spacing=(3.0, 1.7, 1.7))
    assert not np.allclose(ct1.affine, base[0].affine, atol=1.0)
    reg = register(base[0], base[1].array, ct1, lab1.array, FAST)
    pts = base[1].volume.index_to_lps(np.argwhere(base[1].array > 0)[::4000])
    err = np.linalg.norm(reg.map_forward(pts) - (pts @ truth.motion[:3, :3].T + truth.motion[:3, 3]), axis=1)
    assert err.max() < 1.0
    names = {"liver_tumor"}
    m0 = {m.name: m.mesh for m in labelmap_to_meshes(base[1], MeshConfig(), names=names)}
    m1 = {m.name: m.mesh for m in labelmap_to_meshes(lab1, MeshConfig(), names=names)}
    rep, _ = change_report(base[1], lab1, m0, m1, reg.rigid_inverse, names=names)
    row = rep["structures"][0]
    assert row["centroid_shift_lps_mm"][0] == pytest.approx(-4.0, abs=0.8)
    assert row["centroid_shift_direction"] == "patient right" and row["surface"]["growth_side"] == "patient right"


def test_change_picture_outlines_the_earlier_surface():
    import io

    import trimesh
    from PIL import Image

    from pipeline.followup.change import vertex_colours
    from pipeline.followup.report import anterior_view

    later = trimesh.creation.icosphere(subdivisions=3, radius=20.0)
    later.visual.vertex_colors = vertex_colours(np.full(len(later.vertices), 5.0))
    earlier = trimesh.creation.icosphere(subdivisions=3, radius=10.0)
    earlier.apply_translation((-8.0, 0.0, 0.0))  # on the patient's right of the later centre
    img = np.asarray(Image.open(io.BytesIO(anterior_view(later, outline=earlier))).convert("RGB")).astype(int)
    white = np.argwhere((img > 240).all(-1))
    white = white[(white[:, 0] > 30) & (white[:, 1] > 30) & (white[:, 1] < img.shape[1] - 30)]  # not the letters
    assert len(white) > 50
    assert white[:, 1].mean() < img.shape[1] / 2 - 20  # the outline sits left of centre: the patient's right
