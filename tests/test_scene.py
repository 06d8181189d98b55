import json

import numpy as np
import pytest

from pipeline.errors import SceneError
from pipeline.geometry import write_image_file
from pipeline.mesh import labelmap_to_meshes
from pipeline.scene import Scene, load_scene, resolve_scene_path, save_scene
from pipeline.types import Label, LabelMap, LabelTable, StageRecord, Volume
from tests.test_mesh import _sphere_mask
from tests.test_types import oblique_affine


def _scene(tmp_path):
    a = oblique_affine(spacing=(2.0, 1.0, 1.0), seed=2)
    shape = (30, 60, 60)
    center = a[:3, :3] @ (np.array(shape) / 2) + a[:3, 3]
    arr = np.zeros(shape, np.uint8)
    arr[_sphere_mask(shape, a, center, 15)] = 1
    vol = Volume(arr.astype(np.int16) * 60, a)
    lm = LabelMap(Volume(arr, a), LabelTable([Label(1, "liver", (221, 130, 101), critical=False, expected_ml=(5, 50))]))
    write_image_file(vol, tmp_path / "image.nii.gz")
    write_image_file(lm.volume, tmp_path / "labels.nii.gz")
    sc = Scene("case1", {"series_instance_uid": "1.2.3"}, lm.labels, labelmap_to_meshes(lm),
               provenance=[StageRecord("mesh", {"surgitwin": "0.1"}, "abc", duration_s=1.5)])
    sc.plan["landmarks"].append({"id": "L1", "kind": "landmark", "name": "tip", "point": [1.0, 2.0, 3.0],
                                 "points": [[1.0, 2.0, 3.0]]})
    sc.extra["qc"] = {"liver": {"volume_ml": 14.1}}
    return sc, lm


def test_scene_round_trip_exact(tmp_path):
    sc, lm = _scene(tmp_path)
    save_scene(sc, tmp_path)
    d = json.loads((tmp_path / "scene.json").read_text())
    for key in ("schema_version", "case_id", "source", "image", "labelmap", "structures", "plan", "provenance"):
        assert key in d
    s = d["structures"][0]
    assert {"name", "label", "color", "mesh", "volume_ml", "voxel_volume_ml", "watertight"} <= set(s)
    back = load_scene(tmp_path / "scene.json")
    assert back.to_json() == sc.to_json()
    np.testing.assert_array_equal(back.mesh("liver").mesh.vertices, sc.mesh("liver").mesh.vertices)
    np.testing.assert_array_equal(back.mesh("liver").mesh.faces, sc.mesh("liver").mesh.faces)
    assert back.load_labelmap().volume.geometry_equal(lm.volume)
    # save the loaded scene again: byte-identical scene.json
    before = (tmp_path / "scene.json").read_text()
    save_scene(back)
    assert (tmp_path / "scene.json").read_text() == before


def test_scene_errors_name_the_rule(tmp_path):
    with pytest.raises(SceneError, match="scene.json"):
        resolve_scene_path(tmp_path)
    (tmp_path / "scene.json").write_text('{"schema_version": "1.0"}')
    with pytest.raises(SceneError, match="keys .* are required"):
        load_scene(tmp_path)
    sc, _ = _scene(tmp_path)
    save_scene(sc, tmp_path)
    (tmp_path / "meshes" / "liver.ply").unlink()
    with pytest.raises(SceneError, match="liver"):
        load_scene(tmp_path)


def test_save_requires_image_first(tmp_path):
    sc, _ = _scene(tmp_path)
    with pytest.raises(SceneError, match="must exist"):
        save_scene(sc, tmp_path / "elsewhere")
