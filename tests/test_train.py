"""Training end to end on tiny generated data: loss falls, checkpoints load back and segment,
resume continues, export gives a registry entry and a MONAI bundle, metrics have known answers."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.types import Volume

pytestmark = pytest.mark.slow  # end-to-end: left out by `make test-fast`

TINY_NET = {"name": "UNet", "args": {"spatial_dims": 3, "in_channels": 1, "channels": [4, 8, 16],
                                     "strides": [2, 2], "num_res_units": 1}}


def _axial(arr, spacing=3.0, origin=(0.0, 0.0, 0.0)):
    a = np.eye(4)
    a[:3, 0] = [0, 0, spacing]
    a[:3, 1] = [0, spacing, 0]
    a[:3, 2] = [spacing, 0, 0]
    a[:3, 3] = origin
    return Volume(arr, a)


def _shapes_case(rng, n=24):
    """Bright ball (label 1, +x side = patient left) and a dimmer box (label 2, right side)."""
    k, j, i = np.mgrid[:n, :n, :n]
    c = rng.uniform(8, 16, 3)
    c[2] = rng.uniform(15, 18)
    ball = (k - c[0]) ** 2 + (j - c[1]) ** 2 + (i - c[2]) ** 2 <= rng.uniform(3.5, 5) ** 2
    lab = np.zeros((n, n, n), np.uint8)
    b0 = rng.integers(4, 10, 3)
    lab[b0[0]:b0[0] + 8, b0[1]:b0[1] + 8, 2:8] = 2
    lab[ball] = 1
    img = rng.normal(-120, 15, (n, n, n))
    img[lab == 1] = rng.normal(250, 15, (lab == 1).sum())
    img[lab == 2] = rng.normal(40, 15, (lab == 2).sum())
    return _axial(img.astype(np.float32)), lab


@pytest.fixture(scope="module")
def shapes_dataset(tmp_path_factory):
    from pipeline.train.dataset import write_case, write_dataset_json

    root = tmp_path_factory.mktemp("Dataset901_Shapes")
    rng = np.random.default_rng(0)
    for c in range(5):
        img, lab = _shapes_case(rng)
        write_case(root, f"shapes_{c:03d}", img, img.with_array(lab))
    write_dataset_json(root, {"liver": 1, "spleen": 2}, 5, name="Dataset901_Shapes")
    return root


def _cfg(dataset, out, **kw):
    from pipeline.train.config import TrainConfig

    d = {"name": "tiny", "output_dir": str(out), "seed": 3, "device": "cpu", "threads": 2, "network": TINY_NET,
         "data": {"kind": "dataset", "dataset": str(dataset), "patch": [16, 16, 16], "batch_size": 4,
                  "samples_per_case": 2, "val_cases": 1, "num_workers": 0, "spacing": [3.0, 3.0, 3.0]},
         "optim": {"lr": 0.02, "max_iterations": 40, "warmup_iterations": 2},
         "val_every": 40, "checkpoint_every": 10, "log_every": 5, "roi_size": [32, 32, 32], "tensorboard": False}
    d.update(kw)
    return TrainConfig.model_validate(d)


@pytest.fixture(scope="module")
def trained(shapes_dataset, tmp_path_factory):
    from pipeline.train.train import run_training

    out = tmp_path_factory.mktemp("tiny_run")
    res = run_training(_cfg(shapes_dataset, out), progress=False)
    return out, res


def test_loss_goes_down_and_checkpoint_segments(trained):
    from pipeline.train.evaluate import Predictor, compare_labelmaps

    out, res = trained
    assert res["iterations"] == 40
    assert np.mean(res["last_losses"]) < 0.7 * np.mean(res["first_losses"]), res
    for f in ("best.safetensors", "last.safetensors", "state.pt", "model.json", "log.csv"):
        assert (out / f).exists(), f
    rows = (out / "log.csv").read_text().splitlines()
    assert rows[0].startswith("iteration,elapsed_s,loss,lr,val_dice_liver") and rows[-1].startswith("40,")
    # the checkpoint loads back and segments an unseen case on its own grid
    img, lab = _shapes_case(np.random.default_rng(99))
    pred = Predictor(out, "last").predict(img)
    assert pred.volume.geometry_equal(img)
    m = compare_labelmaps(pred, img.with_array(lab), {1: "liver", 2: "spleen"})
    # 40 iterations of a 4-channel net learn the bright ball (measured 0.70), not yet the box
    assert m["liver"]["dice"] > 0.5, m


def test_resume_continues_where_it_stopped(shapes_dataset, tmp_path):
    from pipeline.errors import ModelError
    from pipeline.train.train import run_training

    cfg = _cfg(shapes_dataset, tmp_path)
    with pytest.raises(ModelError, match="--resume"):
        run_training(cfg, resume=True, max_iterations=5, progress=False)
    first = run_training(cfg, max_iterations=5, progress=False)  # "interrupted" after 5
    assert first["iterations"] == 5
    again = run_training(cfg, resume=True, max_iterations=10, progress=False)
    assert again["start_iteration"] == 5 and again["iterations"] == 10
    its = [int(r.split(",")[0]) for r in (tmp_path / "log.csv").read_text().splitlines()[1:]]
    assert its == [5, 10]
    # --reset-best: the validation cases changed, so the next validation is the new best
    third = run_training(cfg, resume=True, max_iterations=12, progress=False, reset_best=True)
    assert third["best_iteration"] == 12


def test_synth_kind_trains_from_generation_maps(tmp_path):
    """kind: synth draws images on the fly from a dataset's labelsGen/ maps."""
    from pipeline.train.dataset import write_dataset_json, write_generation_map
    from pipeline.train.labels import GEN_BY_NAME
    from pipeline.train.train import run_training

    g = np.zeros((30, 30, 30), np.uint8)
    g[8:20, 8:20, 4:14] = GEN_BY_NAME["liver"]
    g[10:18, 10:18, 18:26] = GEN_BY_NAME["spleen"]  # +x: patient left
    write_generation_map(tmp_path / "ds", "blob", _axial(g))
    write_dataset_json(tmp_path / "ds", {"liver": 1, "spleen": 2}, 0)
    cfg = _cfg(tmp_path / "ds", tmp_path / "run", labels=["liver", "spleen"],
               data={"kind": "synth", "dataset": str(tmp_path / "ds"), "patch": [16, 16, 16], "batch_size": 2,
                     "val_cases": 1, "num_workers": 0})
    res = run_training(cfg, max_iterations=3, progress=False)
    assert res["iterations"] == 3 and np.isfinite(res["last_losses"]).all()


def test_finetune_to_new_label_set_keeps_shared_channels(trained, tmp_path):
    import torch

    from pipeline.train.train import adapt_state_dict, build_network, load_weights

    out, _ = trained
    old = load_weights(out / "last.safetensors")
    new = build_network(TINY_NET, 4)  # liver, kidney_left, spleen (reordered + one new)
    sd, fresh = adapt_state_dict(old, new, ["liver", "spleen"], ["liver", "kidney_left", "spleen"])
    new.load_state_dict(sd)
    assert fresh == []  # every tensor came from the old model (output rows remapped)
    oldnet = build_network(TINY_NET, 3)
    oldnet.load_state_dict(old)
    oldnet.eval(), new.eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        a, b = oldnet(x), new(x)
    assert torch.allclose(a[:, 0], b[:, 0], atol=1e-5)   # background
    assert torch.allclose(a[:, 1], b[:, 1], atol=1e-5)   # liver
    assert torch.allclose(a[:, 2], b[:, 3], atol=1e-5)   # spleen moved to channel 3


def test_export_registry_entry_and_monai_bundle(trained, tmp_path):
    import torch
    from monai.bundle import ConfigParser

    from pipeline.segment.registry import load_model_file
    from pipeline.train.evaluate import Predictor
    from pipeline.train.export import export_model

    out, _ = trained
    res = export_model(out, name="tiny_shapes", models_dir=tmp_path / "models", configs_dir=tmp_path / "configs",
                       bundle_dir=tmp_path / "bundle", card="# tiny\n")
    spec = load_model_file(res["registry"])
    assert spec.backend == "checkpoint" and spec.network.name == "UNet"
    assert [l.name for l in spec.labels] == ["liver", "spleen"]
    assert spec.preprocessing.orientation == "RAS" and spec.preprocessing.spacing == [3.0, 3.0, 3.0]
    assert (tmp_path / "models" / "tiny_shapes" / "MODEL_CARD.md").exists()
    # the bundle's network definition + model.pt reproduce the trained network
    parser = ConfigParser()
    parser.read_config(str(tmp_path / "bundle" / "configs" / "inference.json"))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(str(tmp_path / "bundle" / "models" / "model.pt"), weights_only=True))
    net.eval()
    ref = Predictor(out, "best").net
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.allclose(net(x), ref(x), atol=1e-5)
    meta = json.loads((tmp_path / "bundle" / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"]["2"] == "spleen"


def test_segment_stage_loads_exported_checkpoint(trained, tmp_path):
    """The exported entry runs through pipeline.segment (the pipeline's own loader)."""
    pytest.importorskip("pipeline.segment.runner", reason="pipeline.segment.runner (checkpoint backend) not present")
    from pipeline.segment.api import segment
    from pipeline.segment.registry import load_model_file
    from pipeline.train.evaluate import Predictor, compare_labelmaps
    from pipeline.train.export import export_model

    out, _ = trained
    res = export_model(out, name="tiny_shapes", models_dir=tmp_path / "models", configs_dir=tmp_path / "configs")
    img, lab = _shapes_case(np.random.default_rng(7))
    ours = Predictor(out, "best").predict(img)
    theirs = segment(img, load_model_file(res["registry"]), {"uncertainty": False, "combine_with": "none"}).labelmap
    m = compare_labelmaps(theirs, ours.volume.with_array(ours.array), {1: "liver", 2: "spleen"})
    assert m["liver"]["dice"] > 0.9, m


def test_metrics_known_answers():
    from pipeline.train.evaluate import compare_labelmaps, label_metrics
    from pipeline.types import Label, LabelMap, LabelTable

    a = np.zeros((20, 20, 20), np.uint8)
    b = np.zeros_like(a)
    a[5:15, 5:15, 5:15] = 1
    b[5:15, 5:15, 7:17] = 1  # shifted 2 voxels along i
    m = label_metrics(a, b, {"cube": (1, 1)}, spacing=(1.0, 1.0, 1.5))["cube"]
    assert m["dice"] == pytest.approx(2 * 800 / 2000)
    assert m["hd95_mm"] == pytest.approx(3.0, abs=0.01)  # 2 voxels * 1.5 mm
    assert 0.0 < m["surface_dice"] < 1.0
    # a reference stored with flipped rows compares in physical space: perfect agreement
    vol = _axial(a.astype(np.float32))
    lm = LabelMap(vol.with_array(a), LabelTable([Label(1, "liver")]))
    flipped_aff = vol.affine.copy()
    flipped_aff[:3, 1] *= -1
    flipped_aff[:3, 3] = vol.index_to_lps(np.array([[0, 19, 0]]))[0]
    truth = Volume(a[:, ::-1, :].copy(), flipped_aff)
    r = compare_labelmaps(lm, truth, {1: "liver"})
    assert r["liver"]["dice"] == pytest.approx(1.0) and r["liver"]["hd95_mm"] == pytest.approx(0.0)


def test_cli_dataset_validate_exit_codes(shapes_dataset, tmp_path, capsys):
    from pipeline.cli import main

    assert main(["dataset", "validate", str(shapes_dataset)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["dataset", "validate", str(tmp_path)]) == 1
    assert "dataset.json not found" in capsys.readouterr().out


def test_card_renders_stages_and_before_after_from_measurements(trained, tmp_path):
    """MODEL_CARD.md is written from logs and evaluation results: one line per training stage, a
    before/after Dice table, the bar verdict per structure; inference extras reach the registry."""
    from pipeline.segment.registry import load_model_file
    from pipeline.train.card import render_card
    from pipeline.train.export import export_model

    out, _ = trained

    def ev(d):
        return {"mean": {n: {"dice": d, "hd95_mm": 2.0, "surface_dice": 0.5, "n": 1} for n in ("liver", "spleen")},
                "dataset": "Dataset9_X", "cases": {"c": {}}, "surface_tolerance_mm": 2.0}

    card = render_card(out, ev(0.81), ev(0.91), {"512x512x300": "9 s"}, ["a note"], earlier_stages=[out],
                       name="tiny_card", previous={"name": "stage1", "synth": ev(0.7), "real": ev(0.8)})
    assert card.startswith("# tiny_card:")
    assert card.count("- Stage ") == 2 and "## Training config, stage 2" in card
    assert "| liver | 0.700 | 0.810 | 0.800 | 0.910 |" in card
    assert "liver: above the bar (0.910 vs 0.90)" in card and "kidney_left: not measurable here" in card
    res = export_model(out, name="tiny_card", models_dir=tmp_path / "m", configs_dir=tmp_path / "c", card=card,
                       inference={"resample": "probabilities", "min_extent_mm": [0.0, 0.0, 24.0]})
    spec = load_model_file(res["registry"])
    assert spec.inference.resample == "probabilities" and spec.inference.min_extent_mm == [0.0, 0.0, 24.0]
