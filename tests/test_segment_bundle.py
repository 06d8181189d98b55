"""MONAI Model Zoo bundles read as data: the real spleen and wholeBody configs end to end
(random weights saved into a temporary copy), and bundle safety."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from conftest import bundle_data  # noqa: E402
from segment_synth import synthetic_chest  # noqa: E402
from pipeline.errors import ModelError  # noqa: E402
from pipeline.segment import resolve_model, segment  # noqa: E402
from pipeline.segment.checkpoint import build_network  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny workloads on a shared 2-core machine: 1 thread is fastest
    yield
    torch.set_num_threads(old)


def _copy_with_random_weights(name, tmp_path, filename="model.pt", overrides=None, trust=False):
    dst = tmp_path / name
    shutil.copytree(bundle_data(name), dst)
    spec = resolve_model(str(dst), overrides=overrides, trust=trust)
    torch.manual_seed(0)
    net = build_network(spec.network.name, spec.network.args)
    (dst / "models").mkdir(exist_ok=True)
    torch.save(net.state_dict(), dst / "models" / filename)
    return dst


@pytest.mark.slow
def test_spleen_bundle_end_to_end(tmp_path):
    folder = _copy_with_random_weights("spleen_ct_segmentation", tmp_path)
    spec = resolve_model(str(folder))
    assert spec.backend == "bundle" and spec.network.name == "UNet"
    assert [l.name for l in spec.labels] == ["spleen"]
    assert spec.preprocessing.spacing == [1.5, 1.5, 2.0]
    assert spec.preprocessing.intensity[0].kind == "window" and spec.preprocessing.intensity[0].a_min == -57
    assert spec.inference.roi_size == [96, 96, 96] and spec.inference.overlap == 0.5
    assert spec.inference.resample == "probabilities"  # Invertd before AsDiscreted in the bundle
    vol, _ = synthetic_chest(shape=(16, 40, 40), spacing=(4.0, 3.0, 3.0))  # 60 mm cube
    res = segment(vol, spec)
    assert res.labelmap.volume.geometry_equal(vol)
    assert res.record.inputs["backend"] == "bundle" and res.record.inputs["inference_path"] == "whole"
    assert len(res.record.inputs["weights_sha256"]) == 64


def test_wholebody_bundle_needs_override_or_trust(tmp_path):
    folder = _copy_with_random_weights("wholeBody_ct_segmentation", tmp_path, overrides=["pixdim=3,3,3"])
    with pytest.raises(ModelError, match=r"'pixdim' is a Python expression.*--bundle-set pixdim=") as e:
        resolve_model(str(folder))
    assert "inference.json" in str(e.value) and "--trust-bundle" in str(e.value)
    trusted = resolve_model(str(folder), trust=True)  # MONAI evaluates the highres expression
    assert trusted.preprocessing.spacing == [1.5, 1.5, 1.5]
    assert any("trusted bundle" in n for n in trusted.notes)
    low = resolve_model(str(folder), overrides={"displayable_configs#highres": "false"}, trust=True)
    assert low.preprocessing.spacing == [3.0, 3.0, 3.0] and low.weights.endswith("model_lowres.pt")


@pytest.mark.slow
def test_wholebody_bundle_end_to_end(tmp_path):
    folder = _copy_with_random_weights("wholeBody_ct_segmentation", tmp_path, overrides=["pixdim=3,3,3"])
    # a coarse grid and small windows keep the 18.8 M-parameter SegResNet fast on a CPU
    spec = resolve_model(str(folder), overrides=["pixdim=8,8,8", "inferer#roi_size=32,32,32"])
    assert spec.network.name == "SegResNet" and spec.network.args["out_channels"] == 105
    assert len(spec.labels) == 104 and spec.labels[0].name == "spleen"
    assert "vertebrae_l5" in [l.name for l in spec.labels]  # names made lower_snake_case
    assert [s.kind for s in spec.preprocessing.intensity] == ["zscore_nonzero", "scale"]
    assert spec.inference.resample == "labels" and spec.inference.padding_mode == "replicate"
    liver = next(l for l in spec.labels if l.name == "liver")
    assert liver.expected_ml == [800, 3200]  # defaults from configs/labels/organ_defaults.yaml
    vol, _ = synthetic_chest(shape=(20, 40, 48), spacing=(10.0, 8.0, 8.0))
    res = segment(vol, spec)
    assert res.labelmap.volume.geometry_equal(vol)
    assert res.labelmap.array.dtype == np.uint8 and res.uncertainty is not None
    assert set(np.unique(res.labelmap.array)) <= set(range(105))


def _bundle(tmp_path, pixdim, extra=None):
    """A minimal bundle whose pixdim may carry an expression."""
    d = tmp_path / "evil_bundle"
    (d / "configs").mkdir(parents=True)
    (d / "models").mkdir()
    cfg = {
        "imports": ["$import os"],
        "pixdim": pixdim,
        "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                        "channels": [4, 8], "strides": [2], "num_res_units": 0},
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": "@pixdim"}]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 1},
        **(extra or {}),
    }
    (d / "configs" / "inference.json").write_text(json.dumps(cfg))
    meta = {"name": "evil", "network_data_format": {"outputs": {"pred": {"num_channels": 2,
                                                                         "channel_def": {"0": "background", "1": "Thing"}}}}}
    (d / "configs" / "metadata.json").write_text(json.dumps(meta))
    net = build_network("UNet", {k: v for k, v in cfg["network_def"].items() if k != "_target_"})
    torch.save(net.state_dict(), d / "models" / "model.pt")
    return d


def test_bundle_expression_refused_without_trust(tmp_path):
    marker = tmp_path / "pwned"
    d = _bundle(tmp_path, f"$open({str(marker)!r}, 'w') and [2, 2, 2]",
                extra={"initialize": [f"$open({str(marker) + '2'!r}, 'w')"]})
    with pytest.raises(ModelError, match="'pixdim' is a Python expression") as e:
        resolve_model(str(d))
    assert "--trust-bundle" in str(e.value)
    assert not marker.exists()
    spec = resolve_model(str(d), overrides=["pixdim=4,4,4"])  # the user's value replaces the code
    assert spec.preprocessing.spacing == [4.0, 4.0, 4.0] and not marker.exists()
    assert spec.labels[0].name == "thing"
    trusted = resolve_model(str(d), trust=True)  # the user asked for it: MONAI evaluates pixdim only
    assert trusted.preprocessing.spacing == [2.0, 2.0, 2.0] and marker.exists()
    assert not (tmp_path / "pwned2").exists()  # 'initialize' is never run: we do not need it


def test_bundle_literal_expression_is_data(tmp_path):
    d = _bundle(tmp_path, "$[5.0, 5.0, 5.0]")
    assert resolve_model(str(d)).preprocessing.spacing == [5.0, 5.0, 5.0]


def test_bundle_network_outside_monai_refused(tmp_path):
    d = _bundle(tmp_path, [4, 4, 4])
    cfg = json.loads((d / "configs" / "inference.json").read_text())
    cfg["network_def"]["_target_"] = "torch.nn.Identity"
    (d / "configs" / "inference.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="monai.networks.nets"):
        resolve_model(str(d))


def test_bundle_unknown_transform_refused(tmp_path):
    d = _bundle(tmp_path, [4, 4, 4])
    cfg = json.loads((d / "configs" / "inference.json").read_text())
    cfg["preprocessing"]["transforms"].append({"_target_": "Lambdad", "keys": "image", "func": "$lambda x: x"})
    (d / "configs" / "inference.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="'Lambdad' is not supported"):
        resolve_model(str(d))


def test_cli_segment_and_models_list(tmp_path, capsys):
    from pipeline.cli import main
    from pipeline.geometry import read_image_file, write_image_file

    d = _bundle(tmp_path, [6, 6, 6])
    vol, _ = synthetic_chest(shape=(12, 30, 36), spacing=(10.0, 8.0, 8.0))
    img = tmp_path / "ct.nii.gz"
    write_image_file(vol, img)
    out = tmp_path / "seg"
    assert main(["segment", str(img), "--model", str(d), "--out", str(out)]) == 0
    labels = read_image_file(out / "labels.nii.gz")
    assert labels.geometry_equal(vol) and (out / "uncertainty.nii.gz").exists()
    qc = json.loads((out / "qc.json").read_text())
    assert qc["model"] == "evil" and qc["labels"][0]["name"] == "thing"
    assert main(["models", "list"]) == 0
    assert "hu_rules" in capsys.readouterr().out


def test_registry_entry_wraps_a_bundle(tmp_path):
    import yaml

    folder = _copy_with_random_weights("wholeBody_ct_segmentation", tmp_path, "model_lowres.pt",
                                       overrides=["pixdim=3,3,3"])
    src = yaml.safe_load(open(__import__("pipeline.config", fromlist=["CONFIG_DIR"]).CONFIG_DIR
                              / "models" / "wholebody_ct_lowres.yaml"))
    src["bundle"] = str(folder)
    entry = tmp_path / "wholebody_ct_lowres.yaml"
    entry.write_text(yaml.safe_dump(src))
    spec = resolve_model(str(entry))  # no --trust-bundle needed: the entry sets the values as data
    assert spec.name == "wholebody_ct_lowres" and spec.combine_with == "hu_rules"
    assert spec.preprocessing.spacing == [3.0, 3.0, 3.0] and spec.weights.endswith("model_lowres.pt")
    assert resolve_model(str(entry), overrides=["pixdim=6,6,6"]).preprocessing.spacing == [6.0, 6.0, 6.0]
