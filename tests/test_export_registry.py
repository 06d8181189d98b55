"""models export refuses to overwrite, keeps every inference setting, writes a spec-clean MONAI
bundle with its card; a training folder is a model everywhere (issue 15, items 2, 5, 9, 12)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ModelError
from tests.test_train import _cfg, _shapes_case

pytestmark = pytest.mark.slow  # end-to-end: left out by `make test-fast`

ROOT = Path(__file__).resolve().parents[1]
INF = {"resample": "probabilities", "min_extent_mm": [0.0, 0.0, 24.0]}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from pipeline.train.dataset import write_case, write_dataset_json
    from pipeline.train.train import run_training

    ds = tmp_path_factory.mktemp("Dataset903_Shapes")
    rng = np.random.default_rng(0)
    for c in range(3):
        img, lab = _shapes_case(rng)
        write_case(ds, f"shapes_{c:03d}", img, img.with_array(lab))
    write_dataset_json(ds, {"liver": 1, "spleen": 2}, 3)
    out = tmp_path_factory.mktemp("run")
    run_training(_cfg(ds, out, inference=INF, optim={"lr": 0.02, "max_iterations": 4, "warmup_iterations": 1},
                      val_every=4), progress=False)
    return ds, out


def _sha(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


# --- item 2 ------------------------------------------------------------------------------------

def test_export_refuses_to_overwrite_a_registered_model_without_force(run, tmp_path):
    from pipeline.train.export import export_model

    _, out = run
    kw = dict(name="mine", models_dir=tmp_path / "models", configs_dir=tmp_path / "configs")
    first = export_model(out, card="# card of the first weights\n", **kw)
    before = (_sha(first["weights"]), _sha(first["registry"]))
    with pytest.raises(ModelError, match="already registered.*--force"):
        export_model(out, weights="last", **kw)
    assert (_sha(first["weights"]), _sha(first["registry"])) == before
    again = export_model(out, weights="last", force=True, **kw)
    # the old card described the replaced weights: it is gone, and the entry no longer points at it
    assert not (tmp_path / "models" / "mine" / "MODEL_CARD.md").exists()
    assert "card" not in Path(again["registry"]).read_text()


def test_export_never_touches_the_shipped_model_without_force(run, tmp_path, capsys):
    from pipeline.cli import main

    _, out = run
    shipped = tmp_path / "shipped_run"
    shipped.mkdir()
    for f in ("best.safetensors", "last.safetensors"):
        (shipped / f).write_bytes((out / f).read_bytes())
    meta = json.loads((out / "model.json").read_text())
    (shipped / "model.json").write_text(json.dumps({**meta, "name": "abdomen_unet_3mm"}))
    files = [ROOT / "models/abdomen_unet_3mm/model.safetensors", ROOT / "models/abdomen_unet_3mm/MODEL_CARD.md",
             ROOT / "configs/models/abdomen_unet_3mm.yaml"]
    before = [_sha(f) for f in files]
    assert main(["models", "export", str(shipped)]) == 1  # default --name: the model.json's name
    assert "already registered" in capsys.readouterr().err
    assert [_sha(f) for f in files] == before


def test_shipped_training_configs_are_not_named_like_registered_models():
    import yaml

    registered = {p.stem for p in (ROOT / "configs/models").glob("*.yaml")}
    for p in (ROOT / "configs/train").glob("*.yaml"):
        name = yaml.safe_load(p.read_text())["name"]
        assert name not in registered, f"{p}: training name {name!r} is a registered model"


# --- item 5 ------------------------------------------------------------------------------------

def test_export_keeps_inference_settings_recorded_by_training(run, tmp_path):
    from pipeline.segment.bundle import bundle_spec
    from pipeline.segment.registry import load_model_file, resolve_model
    from pipeline.train.export import export_model

    _, out = run
    assert json.loads((out / "model.json").read_text())["inference"] == INF
    res = export_model(out, name="kept", models_dir=tmp_path / "m", configs_dir=tmp_path / "c",
                       bundle_dir=tmp_path / "bundle")
    spec = load_model_file(res["registry"])
    assert spec.inference.resample == "probabilities" and spec.inference.min_extent_mm == [0.0, 0.0, 24.0]
    # the training folder itself resolves to the same settings (one resolver)
    direct = resolve_model(str(out))
    assert direct.inference.model_dump() == spec.inference.model_dump()
    assert direct.postprocess == spec.postprocess and direct.preprocessing == spec.preprocessing
    # and the bundle carries them: its postprocessing order, plus metadata for what MONAI cannot say
    b = bundle_spec(tmp_path / "bundle")
    assert b.inference.resample == "probabilities" and b.inference.min_extent_mm == [0.0, 0.0, 24.0]
    res = export_model(out, name="lab", models_dir=tmp_path / "m", configs_dir=tmp_path / "c",
                       bundle_dir=tmp_path / "bundle2", inference={"resample": "labels"})
    assert load_model_file(res["registry"]).inference.resample == "labels"
    assert bundle_spec(tmp_path / "bundle2").inference.resample == "labels"


def test_evaluate_compare_states_or_refuses_different_settings(run, tmp_path, capsys):
    from pipeline.cli import main
    from pipeline.train.export import export_model

    ds, out = run
    res = export_model(out, name="nearest", models_dir=tmp_path / "m", configs_dir=tmp_path / "c",
                       inference={"resample": "labels", "min_extent_mm": None})
    assert main(["evaluate", str(ds), "--model", str(out), "--compare", res["registry"],
                 "--json", str(tmp_path / "e.json")]) == 0
    text = capsys.readouterr().out
    assert "settings differ" in text and "inference.resample: 'probabilities' vs 'labels'" in text, text
    assert "inference.min_extent_mm" in text
    saved = json.loads((tmp_path / "e.json").read_text())
    assert any("resample" in d for d in saved[0]["settings_differences"])
    assert main(["evaluate", str(ds), "--model", str(out), "--compare", res["registry"], "--same-settings"]) == 1
    assert "--same-settings" in capsys.readouterr().err
    # the same weights and settings: identical
    same = export_model(out, name="same", models_dir=tmp_path / "m", configs_dir=tmp_path / "c")
    assert main(["evaluate", str(ds), "--model", str(out), "--compare", same["registry"], "--same-settings"]) == 0
    assert "settings: identical" in capsys.readouterr().out


# --- item 9 ------------------------------------------------------------------------------------

#: MONAI Bundle specification, metadata.json: required keys, and required keys of each tensor format
REQUIRED = ["version", "monai_version", "pytorch_version", "numpy_version", "optional_packages_version", "task",
            "description", "authors", "copyright", "network_data_format"]
TENSOR = ["type", "format", "modality", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data",
          "channel_def"]


def test_bundle_metadata_is_spec_clean_and_ships_the_card(run, tmp_path):
    from pipeline.train.export import export_model

    _, out = run
    export_model(out, name="bundled", models_dir=tmp_path / "m", configs_dir=tmp_path / "c",
                 bundle_dir=tmp_path / "b", card="# bundled: the card\n\nmeasured numbers\n")
    meta = json.loads((tmp_path / "b" / "configs" / "metadata.json").read_text())
    missing = [k for k in REQUIRED if k not in meta]
    assert not missing, missing
    assert isinstance(meta["optional_packages_version"], dict) and isinstance(meta["changelog"], dict)
    for kind in ("inputs", "outputs"):
        for name, t in meta["network_data_format"][kind].items():
            assert not [k for k in TENSOR if k not in t], (kind, name)
            assert t["num_channels"] == len(t["channel_def"])
    pred = meta["network_data_format"]["outputs"]["pred"]
    # 3 one-hot channels, the label is the argmax: the spec's "labels" ("segmentation" is ONE channel)
    assert pred["format"] == "labels" and pred["num_channels"] == 3
    assert (tmp_path / "b" / "docs" / "README.md").read_text().startswith("# bundled: the card")


# --- item 12 -----------------------------------------------------------------------------------

def test_segment_accepts_a_training_folder(run, tmp_path, capsys):
    from pipeline.cli import main
    from pipeline.geometry import write_image_file

    _, out = run
    img, _ = _shapes_case(np.random.default_rng(5))
    write_image_file(img, tmp_path / "ct.nii.gz")
    rc = main(["segment", str(tmp_path / "ct.nii.gz"), "--model", str(out), "--out", str(tmp_path / "seg")])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "seg" / "labels.nii.gz").exists()
    capsys.readouterr()
    assert main(["models", "show", str(out)]) == 0
    text = capsys.readouterr().out
    spec = json.loads(text[text.index("{"):])
    assert spec["backend"] == "checkpoint" and spec["weights"].endswith("best.safetensors")
    assert spec["inference"]["resample"] == "probabilities"
