"""Corrections become training data: `dataset add-scene` after an edit, then validate and train."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def edited_scene(tmp_path_factory):
    from scene_factory import sample_scan_scene

    from pipeline.scene import load_scene
    from pipeline.scene.edit import edit_structure

    d = tmp_path_factory.mktemp("addscene")
    scene_dir, _ = sample_scan_scene(d)
    lm = load_scene(scene_dir, load_meshes=False).load_labelmap()
    liver = lm.labels.by_name("liver").id
    pts = lm.volume.index_to_lps(np.argwhere(lm.array == liver))
    centre = pts[np.argmax(pts[:, 2])]  # the liver's dome, on the patient's right
    res = edit_structure(scene_dir, "liver", "erase_sphere", center=centre.tolist(), radius_mm=12.0, user="test")
    assert res.voxels_removed > 0
    return scene_dir, centre


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


@pytest.mark.slow  # test-fast stays under 60 s; runs in make test
def test_add_scene_writes_the_corrected_labels_with_lineage_and_validates(edited_scene, tmp_path):
    from pipeline.geometry import read_image_file
    from pipeline.scene import load_scene

    scene_dir, centre = edited_scene
    ds = tmp_path / "Dataset950_Corrected"
    r = _cli("dataset", "add-scene", str(scene_dir), str(ds))
    assert r.returncode == 0, r.stderr
    d = json.loads((ds / "dataset.json").read_text())
    scene = load_scene(scene_dir, load_meshes=False)
    lm = scene.load_labelmap()
    names = [l.name for l in lm.labels if np.any(lm.array == l.id)]
    assert list(d["labels"])[1:] == names and list(d["labels"].values())[1:] == list(range(1, len(names) + 1))
    cid = scene.case_id
    lab = read_image_file(ds / "labelsTr" / f"{cid}.nii.gz")
    img = read_image_file(ds / "imagesTr" / f"{cid}_0000.nii.gz")
    assert lab.geometry_equal(lm.volume) and img.geometry_equal(lm.volume)
    for n in names:  # renumbered by name, voxel for voxel (the corrected map, not the first one)
        assert np.array_equal(lab.array == d["labels"][n], lm.array == lm.labels.by_name(n).id), n
    # the erased dome is background in the training label, and it lies on the patient's right
    k, j, i = np.rint(lm.volume.lps_to_index(centre[None])[0]).astype(int)
    assert lab.array[k, j, i] == 0 and centre[0] < 0
    lineage = json.loads((ds / "lineage" / f"{cid}.json").read_text())
    assert lineage["source"]["series_instance_uid"] == scene.source["series_instance_uid"]
    assert lineage["edits"] and lineage["edits"][0]["stage"] == "edit"
    assert lineage["edit_history"] and lineage["edit_history"][0]["op"] == "erase_sphere"
    r = _cli("dataset", "validate", str(ds))
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow  # test-fast stays under 60 s; runs in make test
def test_add_scene_refuses_a_scene_that_does_not_match_the_dataset(edited_scene, tmp_path):
    from pipeline.train.dataset import write_dataset_json

    scene_dir, _ = edited_scene
    ds = tmp_path / "Dataset951_Other"
    ds.mkdir()
    write_dataset_json(ds, {"liver": 1, "pancreas": 2}, 0, name="other")
    r = _cli("dataset", "add-scene", str(scene_dir), str(ds))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "pancreas" in r.stderr and "spleen" in r.stderr and "does not match" in r.stderr
    assert not (ds / "labelsTr").exists() or not list((ds / "labelsTr").iterdir())
    r = _cli("dataset", "add-scene", str(scene_dir), str(ds), "--background", "no_such_organ")
    assert r.returncode == 1 and "no_such_organ" in r.stderr


@pytest.mark.slow
def test_train_fine_tunes_on_the_added_scene(edited_scene, tmp_path):
    """The loop closes: a corrected scene becomes a case that `train` runs on."""
    from tests.test_train import TINY_NET  # the suite's tiny network

    from pipeline.train.config import TrainConfig
    from pipeline.train.from_scene import add_scene
    from pipeline.train.train import run_training

    scene_dir, _ = edited_scene
    ds = tmp_path / "Dataset952_Loop"
    add_scene(scene_dir, ds, case_id="a")
    cid, rep = add_scene(scene_dir, ds, case_id="b")
    assert rep.ok and rep.cases == 2
    cfg = TrainConfig.model_validate({
        "name": "loop", "output_dir": str(tmp_path / "run"), "seed": 1, "device": "cpu", "threads": 2,
        "network": TINY_NET,
        "data": {"kind": "dataset", "dataset": str(ds), "patch": [16, 16, 16], "batch_size": 2,
                 "samples_per_case": 1, "val_cases": 1, "num_workers": 0, "spacing": [6.0, 6.0, 6.0]},
        "optim": {"lr": 0.01, "max_iterations": 2, "warmup_iterations": 1},
        "val_every": 2, "checkpoint_every": 2, "log_every": 1, "roi_size": [32, 32, 32], "tensorboard": False})
    res = run_training(cfg, progress=False)
    assert res["iterations"] == 2 and (tmp_path / "run" / "last.safetensors").exists()
