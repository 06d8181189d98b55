"""``surgitwin models export``: a training output -> registry entry (+ optional MONAI bundle).

Registry format: ``docs/MODEL_FORMAT.md`` (``configs/models/<name>.yaml`` + safetensors
weights under ``models/<name>/``). The MONAI bundle follows the Model Zoo layout
(``configs/metadata.json``, ``configs/inference.json``, ``models/model.pt``), so
``python -m monai.bundle run --config_file configs/inference.json`` and other MONAI tools can
run the same network with the same preprocessing. Its ``models/model.pt`` is a plain state
dict (``torch.save``), loadable with ``weights_only=True``.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..config import CONFIG_DIR, ROOT
from ..errors import ModelError
from ..fileio import atomic_write_text


def _atomic_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def _label_entries(labels: list[str]) -> list[dict]:
    from .labels import TARGET_LABELS

    out = []
    for i, n in enumerate(labels, start=1):
        d = {"id": i, "name": n}
        if n in TARGET_LABELS.names:
            lab = TARGET_LABELS.by_name(n)
            d.update({"rgb": list(lab.rgb), "code": lab.code, "critical": lab.critical})
            if lab.expected_ml:
                d["expected_ml"] = list(lab.expected_ml)
        out.append(d)
    return out


def registry_entry(meta: dict, name: str, weights_rel: str, card_rel: str | None, description: str,
                   threads: int = 2, inference: dict | None = None) -> dict:
    """The ``configs/models/<name>.yaml`` mapping for a training ``model.json``.

    ``inference`` adds or overrides keys of the entry's ``inference`` section (e.g. ``resample``,
    ``min_extent_mm``)."""
    pre = meta["preprocessing"]
    entry = {
        "name": name,
        "backend": "checkpoint",
        "description": description,
        "weights": weights_rel,
        "network": meta["network"],
        "labels": _label_entries(meta["labels"]),
        "preprocessing": {"orientation": pre.get("orientation", "RAS"), "spacing": [float(s) for s in pre["spacing"]],
                          "intensity": pre["intensity"]},
        "inference": {"roi_size": list(meta.get("roi_size", [96, 96, 96])), "overlap": 0.25, "mode": "gaussian",
                      "sw_batch_size": 1, "threads": threads, "amp": True, **(inference or {})},
        "postprocess": {"keep_largest": True, "fill_holes": True, "min_island_ml": 1.0},
        "combine_with": "hu_rules",
    }
    if card_rel:
        entry["card"] = card_rel
    return entry


def export_model(train_dir, name: str | None = None, weights: str = "best", models_dir=None, configs_dir=None,
                 bundle_dir=None, description: str = "", card: str | None = None,
                 inference: dict | None = None) -> dict:
    """Copy weights into ``models/<name>/``, write the registry YAML, optionally a MONAI bundle.

    Parameters
    ----------
    train_dir : training output folder (model.json + best/last.safetensors)
    weights : 'best' | 'last'
    models_dir, configs_dir : default ``<repo>/models`` and ``<repo>/configs/models``
    bundle_dir : if given, also write a MONAI bundle folder there
    card : MODEL_CARD.md text to place next to the weights (kept if None and one exists)
    inference : extra keys for the registry entry's ``inference`` section

    Returns
    -------
    dict of written paths.
    """
    import yaml

    train_dir = Path(train_dir)
    mj = train_dir / "model.json"
    if not mj.exists():
        raise ModelError("not a training output folder: model.json missing", path=str(train_dir))
    meta = json.loads(mj.read_text())
    name = name or meta["name"]
    src = train_dir / f"{weights}.safetensors"
    if not src.exists():
        raise ModelError(f"no {weights}.safetensors in the training folder", path=str(train_dir))
    models_dir = Path(models_dir) if models_dir else ROOT / "models"
    configs_dir = Path(configs_dir) if configs_dir else CONFIG_DIR / "models"
    mdir = models_dir / name
    mdir.mkdir(parents=True, exist_ok=True)
    wpath = mdir / "model.safetensors"
    tmp = wpath.with_name(f".tmp-{os.getpid()}-{wpath.name}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, wpath)
    card_path = mdir / "MODEL_CARD.md"
    if card is not None:
        _atomic_text(card_path, card)
    yaml_path = configs_dir / f"{name}.yaml"
    rel = lambda p: os.path.relpath(p, yaml_path.parent)  # noqa: E731
    entry = registry_entry(meta, name, rel(wpath), rel(card_path) if card_path.exists() else None,
                           description or f"{meta['network']['name']} trained by surgitwin train ({meta.get('data_kind')})",
                           inference=inference)
    _atomic_text(yaml_path, "# written by `surgitwin models export` (pipeline/train/export.py)\n"
                 + yaml.safe_dump(entry, sort_keys=False, default_flow_style=None, width=110))
    out = {"registry": str(yaml_path), "weights": str(wpath), "size_mb": round(wpath.stat().st_size / 2**20, 2)}
    if bundle_dir:
        out["bundle"] = str(write_bundle(meta, wpath, bundle_dir, name, description))
    return out


def write_bundle(meta: dict, weights_path, bundle_dir, name: str, description: str = "") -> Path:
    """MONAI Model Zoo-style bundle folder for the network in ``meta`` (see module doc)."""
    import monai
    import torch

    from .train import load_weights

    b = Path(bundle_dir)
    (b / "configs").mkdir(parents=True, exist_ok=True)
    (b / "models").mkdir(parents=True, exist_ok=True)
    sd = load_weights(weights_path)
    tmp = b / "models" / f".tmp-{os.getpid()}-model.pt"
    torch.save(sd, str(tmp))
    os.replace(tmp, b / "models" / "model.pt")
    pre = meta["preprocessing"]
    it = pre["intensity"]
    labels = meta["labels"]
    n_out = len(labels) + 1
    intensity = ({"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": it["a_min"], "a_max": it["a_max"],
                  "b_min": it.get("b_min", 0.0), "b_max": it.get("b_max", 1.0), "clip": bool(it.get("clip", True))}
                 if it.get("kind") == "window" else
                 {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": it.get("kind") == "zscore_nonzero"})
    inference = {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "$@bundle_root + '/data'",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": meta["network"]["name"], **{k: v for k, v in meta["network"]["args"].items()},
                        "out_channels": n_out},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": pre.get("orientation", "RAS")},
            {"_target_": "Spacingd", "keys": "image", "pixdim": pre["spacing"], "mode": "bilinear"},
            intensity,
            {"_target_": "EnsureTyped", "keys": "image"}]},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False, "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": meta.get("roi_size", [96, 96, 96]),
                    "sw_batch_size": 1, "overlap": 0.25, "mode": "gaussian"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_dtype": "$np.uint8",
             "separate_folder": False, "resample": False}]},
        "handlers": [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                      "load_dict": {"model": "@network"}}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@evaluator.run()"],
    }
    metadata = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": "0.1.0", "changelog": {"0.1.0": "exported by surgitwin models export"},
        "monai_version": monai.__version__, "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__, "required_packages_version": {},
        "name": name, "task": "abdominal CT organ segmentation", "description": description or name,
        "authors": "surgitwin", "copyright": "see MODEL_CARD.md",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                                 "spatial_shape": meta.get("roi_size", [96, 96, 96]), "dtype": "float32",
                                 "value_range": [it.get("a_min"), it.get("a_max")], "is_patch_data": True,
                                 "channel_def": {"0": "image"}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": n_out,
                                 "spatial_shape": meta.get("roi_size", [96, 96, 96]), "dtype": "float32",
                                 "value_range": [0, 1], "is_patch_data": True,
                                 "channel_def": {"0": "background", **{str(i): n for i, n in enumerate(labels, 1)}}}}},
    }
    _atomic_text(b / "configs" / "inference.json", json.dumps(inference, indent=1))
    _atomic_text(b / "configs" / "metadata.json", json.dumps(metadata, indent=1))
    return b
