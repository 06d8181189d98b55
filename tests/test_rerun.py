"""A case is a list of stages with one record-keeping step, and a scene can be rerun from a later
stage (`surgitwin run --from mesh SCENE`) with the result a full run gives for those stages."""
import json
import shutil

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.run import CaseState, Stage, run_case, run_stages
from pipeline.scene import load_scene
from pipeline.types import StageRecord
from tests.conftest import ROOT

SAMPLE = ROOT / "sample_scans" / "phantom_ct"


def test_the_runner_keeps_each_stages_record_time_and_peak(tmp_path):
    """Stages return their record bare; timing, peak memory and start time are the runner's."""
    calls = []

    def first(st):
        calls.append("first")
        st.extra["x"] = np.zeros(4_000_000)  # 30 MB: visible in the stage's peak
        return StageRecord("first", {"numpy": np.__version__}, duration_s=99.0)

    def quiet(st):
        calls.append("quiet")  # keeps no record, still timed

    st = CaseState(tmp_path, tmp_path, {}, lambda *a: None)
    run_stages([Stage("first", first), Stage("quiet", quiet)], st)
    assert calls == ["first", "quiet"]
    assert set(st.timings) == {"first", "quiet"} and set(st.peaks.mb) == {"first", "quiet"}
    (rec,) = st.records
    assert rec.stage == "first" and rec.duration_s == round(st.timings["first"], 3) != 99.0
    assert rec.peak_rss_mb == st.peaks.mb["first"] > 30
    assert rec.started_at


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "scene"
    result = run_case(SAMPLE / "dicom", out, model="hu_rules", snapshot=False)
    return out, result


def _mesh_arrays(folder):
    scene = load_scene(folder)
    return {m.name: (np.asarray(m.mesh.vertices), np.asarray(m.mesh.faces)) for m in scene.meshes}


@pytest.mark.slow
def test_run_from_mesh_gives_the_meshes_and_scene_of_a_full_run(tmp_path, full_run, capsys):
    full, result = full_run
    scene = tmp_path / "scene"
    shutil.copytree(full, scene)
    (scene / "report.html").write_text("stale: describes the old meshes")
    shutil.rmtree(scene / "meshes")  # not read: the label map is re-meshed
    assert main(["run", "--from", "mesh", str(scene), "--no-snapshot", "--json"]) == 0
    rerun = json.loads(capsys.readouterr().out)
    assert rerun["structures"] == result.structures  # volumes, closedness, deviation
    assert set(rerun["timings"]) == {"mesh", "scene"}
    assert rerun["source"] == result.source and rerun["warnings"] == result.warnings

    a, b = json.loads((full / "scene.json").read_text()), json.loads((scene / "scene.json").read_text())
    assert a["structures"] == b["structures"]  # faces, volumes, areas, qc, per structure
    assert {k: v for k, v in a.items() if k != "provenance"} == {k: v for k, v in b.items() if k != "provenance"}
    assert [p["stage"] for p in b["provenance"]] == ["ingest", "segment", "mesh"]
    assert a["provenance"][:2] == b["provenance"][:2]  # the earlier stages' records, kept as they were
    assert a["provenance"][2]["outputs"] == b["provenance"][2]["outputs"]
    assert a["provenance"][2]["config_hash"] == b["provenance"][2]["config_hash"]
    fm, rm = _mesh_arrays(full), _mesh_arrays(scene)
    assert fm.keys() == rm.keys()
    for name in fm:
        np.testing.assert_array_equal(fm[name][1], rm[name][1], err_msg=name)
        np.testing.assert_array_equal(fm[name][0], rm[name][0], err_msg=name)
    # republished as a whole: nothing stale, nothing temporary left beside it
    assert not (scene / "report.html").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]
    # left/right kept: the left lung's mesh lies at x > 0 (LPS)
    lungs = load_scene(scene).mesh("lungs").mesh.split(only_watertight=True)
    xs = sorted(float(m.centroid[0]) for m in lungs if abs(m.volume) > 100e3)
    assert len(xs) == 2 and xs[0] < -30 and xs[1] > 30


@pytest.mark.slow
def test_a_changed_mesh_config_takes_effect_on_run_from_mesh(tmp_path, full_run):
    full, result = full_run
    scene = tmp_path / "scene"
    shutil.copytree(full, scene)
    cfg = tmp_path / "coarse.yaml"
    cfg.write_text("mesh:\n  target_faces: 1500\n")
    out = tmp_path / "coarse"
    assert main(["run", "--from", "mesh", str(scene), "--out", str(out), "--config", str(cfg), "--no-snapshot"]) == 0
    d = json.loads((out / "scene.json").read_text())
    assert all(s["n_faces"] <= 1500 for s in d["structures"]), [s["n_faces"] for s in d["structures"]]
    before = {s["name"]: s["n_faces"] for s in json.loads((full / "scene.json").read_text())["structures"]}
    assert all(before[s["name"]] > 1500 for s in d["structures"])
    assert d["provenance"][2]["stage"] == "mesh"
    assert d["provenance"][2]["config_hash"] != json.loads((full / "scene.json").read_text())["provenance"][2]["config_hash"]
    # --out elsewhere: the source scene is untouched
    assert json.loads((scene / "scene.json").read_text()) == json.loads((full / "scene.json").read_text())


@pytest.mark.slow
def test_run_from_scene_rewrites_the_scene_from_the_stored_meshes(tmp_path, full_run):
    full, result = full_run
    scene = tmp_path / "scene"
    shutil.copytree(full, scene)
    assert main(["run", "--from", "scene", str(scene / "scene.json"), "--no-snapshot"]) == 0  # folder or its index
    a, b = json.loads((full / "scene.json").read_text()), json.loads((scene / "scene.json").read_text())
    assert a == b  # nothing rerun that keeps a record: the same provenance too
    fm, rm = _mesh_arrays(full), _mesh_arrays(scene)
    for name in fm:
        np.testing.assert_array_equal(fm[name][0], rm[name][0], err_msg=name)


def _copy_without(full, tmp_path, rel):
    scene = tmp_path / "scene"
    shutil.copytree(full, scene)
    p = scene / rel
    shutil.rmtree(p) if p.is_dir() else p.unlink()
    return scene


def test_run_from_mesh_refuses_a_folder_that_is_no_scene(tmp_path, capsys):
    folder = tmp_path / "notascene"
    folder.mkdir()
    (folder / "labels.nii.gz").write_bytes(b"")
    assert main(["run", "--from", "mesh", str(folder)]) == 1
    err = capsys.readouterr().err
    assert str(folder / "scene.json") in err and "[rule: run --from mesh needs a scene folder" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notascene"]


@pytest.mark.slow
def test_run_from_mesh_refuses_a_scene_without_its_label_map_or_records(tmp_path, full_run, capsys):
    full, _ = full_run
    scene = _copy_without(full, tmp_path, "labels.nii.gz")
    before = sorted(p.name for p in scene.iterdir())
    assert main(["run", "--from", "mesh", str(scene), "--no-snapshot"]) == 1
    err = capsys.readouterr().err
    assert str(scene / "labels.nii.gz") in err and "[rule: run --from mesh needs" in err and "Traceback" not in err
    assert sorted(p.name for p in scene.iterdir()) == before  # left as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]

    shutil.rmtree(scene)
    scene = _copy_without(full, tmp_path, "meshes")
    d = json.loads((scene / "scene.json").read_text())
    d["provenance"] = [p for p in d["provenance"] if p["stage"] != "segment"]
    (scene / "scene.json").write_text(json.dumps(d))
    assert main(["run", "--from", "mesh", str(scene), "--no-snapshot"]) == 1
    err = capsys.readouterr().err
    assert str(scene / "scene.json") in err and "segment" in err and "[rule:" in err


def test_run_from_refuses_segmentation_options_and_run_needs_out(tmp_path, capsys):
    assert main(["run", "--from", "mesh", str(tmp_path), "--model", "hu_rules"]) == 1
    assert "--model has no effect with --from mesh" in capsys.readouterr().err
    assert main(["run", str(tmp_path)]) == 1
    assert "--out is required" in capsys.readouterr().err


@pytest.mark.slow
def test_run_from_mesh_follows_the_plan_policy(tmp_path, full_run, capsys):
    from pipeline.planning import Planner

    full, _ = full_run
    scene = tmp_path / "scene"
    shutil.copytree(full, scene)
    pl = Planner(scene)
    lo, hi = pl.index("lungs").bounds
    centre = (lo + hi) / 2
    t = pl.add_trajectory(centre + [0, -250, 0], centre, 1.0, save=True)
    before = (scene / "scene.json").read_text()
    assert main(["run", "--from", "mesh", str(scene), "--no-snapshot"]) == 1
    err = capsys.readouterr().err
    assert "never drops a plan" in err and "--keep-plan" in err and "Traceback" not in err
    assert (scene / "scene.json").read_text() == before
    assert main(["run", "--from", "mesh", str(scene), "--no-snapshot", "--keep-plan"]) == 0
    kept = load_scene(scene).plan["trajectories"]
    assert [r["id"] for r in kept] == [t["id"]] and kept[0]["revalidation"]["ok"]
    assert kept[0]["length_mm"] == pytest.approx(t["length_mm"])
