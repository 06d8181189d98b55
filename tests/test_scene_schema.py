"""Item 16.1: scene.json is a typed, versioned contract (pipeline/scene/schema.py).

The checked-in JSON Schema equals the generated one; a 1.0 scene written by the pre-2.0 code
(tests/data/scene_v1_0, written by scene_factory + every planning tool) loads after migration;
errors name every broken key; a writer cannot put an invalid scene.json on disk (so every scene
the suite writes validates); open sections keep keys other tools add.
"""
import json
import shutil
from pathlib import Path

import pytest

from pipeline.errors import SceneError
from pipeline.scene import load_scene, save_scene
from pipeline.scene.schema import SCHEMA_VERSION, json_schema_text, migrate, validate_scene_dict

ROOT = Path(__file__).resolve().parents[1]
V1 = ROOT / "tests" / "data" / "scene_v1_0" / "scene.json"
DOC = ROOT / "docs" / "scene.schema.json"


def _published_validator():
    jsonschema = pytest.importorskip("jsonschema")
    return jsonschema.Draft202012Validator(json.loads(DOC.read_text()))


def test_checked_in_schema_is_the_generated_one():
    assert DOC.read_text() == json_schema_text(), \
        "docs/scene.schema.json is stale: python -m pipeline.scene.schema > docs/scene.schema.json"


def test_old_1_0_scene_loads_and_is_migrated(tmp_path):
    old = json.loads(V1.read_text())
    assert old["schema_version"] == "1.0"
    folder = tmp_path / "old"
    folder.mkdir()
    shutil.copy(V1, folder / "scene.json")
    sc = load_scene(folder, load_meshes=False)
    assert sc.structure_names == ["liver", "tumour", "aorta", "kidney_left"]
    assert [r["kind"] for r in sc.plan["measurements"]] == ["distance", "angle", "structure_distance", "volume", "extents"]
    d = sc.to_json()
    assert d["schema_version"] == SCHEMA_VERSION == "2.0"
    assert d["plan"]["cuts"] == old["plan"]["cuts"] and d["structures"] == old["structures"]
    _published_validator().validate(d)


def test_minimal_1_0_scene_gets_its_labels_from_the_structures():
    d = {"schema_version": "1.0", "case_id": "x", "source": {}, "image": "i.nii.gz", "labelmap": "l.nii.gz",
         "structures": [{"name": "liver", "label": 3, "color": [1, 2, 3], "mesh": "meshes/liver.ply"}],
         "plan": {"cuts": []}, "provenance": []}
    m = migrate(d)
    assert m["labels"] == [{"id": 3, "name": "liver", "rgb": [1, 2, 3]}]
    assert set(m["plan"]) >= {"landmarks", "measurements", "lesions", "segments", "cuts", "trajectories"}
    assert d["schema_version"] == "1.0"  # the input is not modified
    validate_scene_dict(m)


def test_errors_name_every_broken_key_at_once(tmp_path):
    d = json.loads(V1.read_text())
    d["structures"][1]["volume_ml"] = "large"
    d["plan"]["cuts"][0]["planes"][0]["normal"] = [1.0, 0.0]
    del d["plan"]["trajectories"][0]["entry"]
    d["provenance"][0]["duration_s"] = "slow"
    d["plan"]["segments"] = [{"id": "S1", "kind": "segments", "structure": 7}]
    d["plan"]["measurements"].append({"id": "M9", "kind": ["not", "a", "name"]})
    (tmp_path / "scene.json").write_text(json.dumps(d))
    with pytest.raises(SceneError) as e:
        load_scene(tmp_path, load_meshes=False)
    msg = str(e.value)
    assert e.value.path.endswith("scene.json") and "docs/scene.schema.json" in e.value.rule
    for key in ("structures[1].volume_ml", "plan.cuts[0].planes[0].normal", "plan.trajectories[0].entry",
                "provenance[0].duration_s", "plan.segments[0].structure", "plan.measurements[5].kind"):
        assert key in msg, (key, msg)


def test_unsupported_version_is_refused(tmp_path):
    d = json.loads(V1.read_text())
    d["schema_version"] = "3.0"
    (tmp_path / "scene.json").write_text(json.dumps(d))
    with pytest.raises(SceneError, match="schema_version must be one of"):
        load_scene(tmp_path, load_meshes=False)


def test_a_writer_cannot_put_an_invalid_scene_on_disk(tmp_path):
    from tests.scene_factory import make_constructed_scene

    path, _ = make_constructed_scene(tmp_path)
    sc = load_scene(path)
    before = (path / "scene.json").read_text()
    _published_validator().validate(json.loads(before))  # the factory's scene, as written
    sc.plan["cuts"].append({"id": "C9", "kind": "cut"})  # no structure
    with pytest.raises(SceneError, match=r"plan\.cuts\[0\]\.structure"):
        save_scene(sc, write_meshes=False)
    assert (path / "scene.json").read_text() == before


@pytest.mark.slow
def test_open_sections_keep_keys_other_tools_add(tmp_path):
    from tests.scene_factory import make_constructed_scene

    path, _ = make_constructed_scene(tmp_path)
    sc = load_scene(path)
    sc.extra["timepoints"] = [{"id": "t0", "date": "2026-01-01"}]
    sc.mesh("liver").qa["edited"] = True
    sc.plan["measurements"].append({"id": "M1", "kind": "future_kind", "points": [[1.0, 2.0, 3.0]], "x": 1})
    save_scene(sc, write_meshes=False)
    d = json.loads((path / "scene.json").read_text())
    _published_validator().validate(d)
    back = load_scene(path, load_meshes=False)
    assert back.extra["timepoints"] == [{"id": "t0", "date": "2026-01-01"}]
    assert back.mesh("liver").qa["edited"] is True
    assert back.plan["measurements"][-1]["x"] == 1
