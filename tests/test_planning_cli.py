"""`surgitwin measure / plan / export` on a constructed scene, as scripts use them (--json)."""
import json
import subprocess
import sys

import pytest

from pipeline.cli import main
from pipeline.scene import load_scene
from tests.scene_factory import cached_constructed_scene


@pytest.fixture
def scene(tmp_path):
    return cached_constructed_scene(tmp_path)


def run_json(capsys, *argv):
    assert main(list(argv)) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out  # exactly one JSON object
    return json.loads(out[0])


def test_measure_commands(scene, capsys):
    path, truth = scene
    r = run_json(capsys, "measure", str(path), "between", "tumour", "aorta", "--json", "--save")
    assert {"distance_mm", "point_a", "point_b"} <= set(r)
    assert abs(r["distance_mm"] - 54.34) < 0.5 * truth.voxel_mm  # |(68, 18)| - 9 - 7
    r = run_json(capsys, "measure", str(path), "distance", "-10", "0", "0", "20", "40", "0", "--json", "--save")
    assert r["distance_mm"] == pytest.approx(50.0)
    r = run_json(capsys, "measure", str(path), "angle", "1", "0", "0", "0", "0", "0", "0", "-1", "0", "--json", "--save")
    assert r["angle_deg"] == pytest.approx(90.0)
    r = run_json(capsys, "measure", str(path), "structure", "tumour", "--json", "--save")
    assert abs(r["volume"]["voxel_volume_ml"] / truth.volume_ml("tumour") - 1) < 0.02
    r = run_json(capsys, "measure", str(path), "landmark", "tip", "-60", "-20", "6", "--snap", "tumour", "--json", "--save")
    assert r["point"][1] == pytest.approx(4 - 9, abs=0.5 * truth.voxel_mm)
    plan = load_scene(path).plan
    assert [m["id"] for m in plan["measurements"]] == ["M1", "M2", "M3", "M4", "M5"]
    assert plan["landmarks"][0]["name"] == "tip"
    # without --save the plan is left alone; plain output is human-readable
    assert main(["measure", str(path), "between", "liver", "kidney_left"]) == 0
    assert "liver <-> kidney_left" in capsys.readouterr().out
    assert len(load_scene(path).plan["measurements"]) == 5


@pytest.mark.slow
def test_plan_cut_trajectory_list_remove(scene, capsys):
    path, truth = scene
    r = run_json(capsys, "plan", "cut", str(path), "--structure", "liver", "--point", "-45", "0", "0",
                 "--normal", "-1", "0", "0", "--margin-to", "tumour", "--json")
    cap = truth.shapes["liver"].cap_mm3((-45, 0, 0), (-1, 0, 0)) / 1000
    assert {"resected_ml", "remnant_ml", "remnant_percent"} <= set(r)
    assert r["resected_ml"] == pytest.approx(cap, rel=0.02)
    assert (path / r["meshes"]["remnant"]).exists()
    r = run_json(capsys, "plan", "trajectory", str(path), "--entry", "-110", "-20", "6", "--target", "-60", "4", "6",
                 "--radius", "1.5", "--safety-margin", "70", "--json")
    assert {"length_mm", "clearance", "crossed", "warnings"} <= set(r)
    assert {c["structure"] for c in r["clearance"][:2]} == {"liver", "tumour"}  # crossed: negative, first
    assert r["crossed"] == ["liver", "tumour"] and any("aorta" in w for w in r["warnings"])
    assert all({"structure", "distance_mm"} <= set(c) for c in r["clearance"])
    plan = run_json(capsys, "plan", "list", str(path), "--json")
    assert [c["id"] for c in plan["cuts"]] == ["C1"] and [t["id"] for t in plan["trajectories"]] == ["T1"]
    assert main(["plan", "remove", str(path), "T1"]) == 0
    assert main(["plan", "remove", str(path), "C1"]) == 0
    after = load_scene(path).plan
    assert after["trajectories"] == [] and after["cuts"] == []
    assert not (path / "meshes" / "cuts" / "C1_liver_remnant.ply").exists()  # its meshes go with it
    assert main(["plan", "remove", str(path), "T9"]) == 1  # an error naming the id, not a traceback
    assert "T9" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_errors_are_clear(scene):
    path, _ = scene
    p = subprocess.run([sys.executable, "-m", "pipeline.cli", "measure", str(path), "between", "liver", "spleen"],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "spleen" in p.stderr and "Traceback" not in p.stderr
