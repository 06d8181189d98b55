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

from ..config import CONFIG_DIR, ROOT, packaged_root
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
                   threads: int | None = None, inference: dict | None = None) -> dict:
    """The ``configs/models/<name>.yaml`` mapping for a training ``model.json``.

    Every inference setting the training recorded (``model.json`` ``inference``: resample,
    min_extent_mm, ...) is kept; ``inference`` adds or overrides keys."""
    from ..segment.registry import training_entry

    entry = training_entry(meta, name, weights_rel, _label_entries(meta["labels"]), description,
                           inference={**({"threads": threads} if threads else {}), **(inference or {})})
    if card_rel:
        entry["card"] = card_rel
    # what scans the model is for (the run refuses others): recorded by training, else a HU window means CT
    window = ((meta.get("preprocessing") or {}).get("intensity") or {}).get("kind") == "window"
    entry.setdefault("modality", list(meta.get("modality") or (["CT"] if window else [])))
    entry.setdefault("body_region", list(meta.get("body_region") or []))
    return entry


def _refuse_overwrite(name: str, paths: list[Path], force: bool) -> None:
    taken = [p for p in paths if p.exists() and (p.is_file() or any(p.iterdir()))]
    if taken and not force:
        raise ModelError(f"model '{name}' is already registered ({', '.join(str(p) for p in taken)}); exporting "
                         "would replace its weights and leave its card describing other weights. Choose another "
                         "--name, or pass --force to replace it", path=str(taken[0]), rule="export-overwrite")


def export_model(train_dir, name: str | None = None, weights: str = "best", models_dir=None, configs_dir=None,
                 bundle_dir=None, description: str = "", card: str | None = None,
                 inference: dict | None = None, force: bool = False) -> dict:
    """Copy weights into ``models/<name>/``, write the registry YAML, optionally a MONAI bundle.

    Parameters
    ----------
    train_dir : training output folder (model.json + best/last.safetensors)
    weights : 'best' | 'last'
    models_dir, configs_dir : default ``<repo>/models`` and ``<repo>/configs/models``
    bundle_dir : if given, also write a MONAI bundle folder there (the card as ``docs/README.md``)
    card : MODEL_CARD.md text to place next to the weights. Without one, a card left by an
        earlier export of the same name is removed: it described other weights.
    inference : keys added to (or replacing) the inference settings recorded by training
    force : replace a registered model of the same name (its YAML, weights folder, bundle);
        without it that is an error and nothing is written

    Returns
    -------
    dict of written paths.
    """
    import yaml

    if (not models_dir or not configs_dir) and ROOT == packaged_root():  # an installed wheel, no folder of the user's
        raise ModelError("no folder of your own to register the model in: set SURGITWIN_HOME (a folder with configs/ "
                         "and models/) or run from a folder holding configs/pipeline.yaml; the configs packaged "
                         "inside site-packages are not written to", path=str(ROOT),
                         rule="models are exported to SURGITWIN_HOME or the working directory's configs/ and models/")
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
    yaml_path = configs_dir / f"{name}.yaml"
    _refuse_overwrite(name, [yaml_path, mdir] + ([Path(bundle_dir) / "configs"] if bundle_dir else []), force)
    mdir.mkdir(parents=True, exist_ok=True)
    configs_dir.mkdir(parents=True, exist_ok=True)
    wpath = mdir / "model.safetensors"
    tmp = wpath.with_name(f".tmp-{os.getpid()}-{wpath.name}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, wpath)
    card_path = mdir / "MODEL_CARD.md"
    if card is not None:
        _atomic_text(card_path, card)
    elif card_path.exists():
        card_path.unlink()  # it described the weights just replaced
    rel = lambda p: os.path.relpath(p, yaml_path.parent)  # noqa: E731
    entry = registry_entry(meta, name, rel(wpath), rel(card_path) if card_path.exists() else None,
                           description or f"{meta['network']['name']} trained by surgitwin train ({meta.get('data_kind')})",
                           inference=inference)
    _atomic_text(yaml_path, "# written by `surgitwin models export` (pipeline/train/export.py)\n"
                 + yaml.safe_dump(entry, sort_keys=False, default_flow_style=None, width=110))
    out = {"registry": str(yaml_path), "weights": str(wpath), "size_mb": round(wpath.stat().st_size / 2**20, 2),
           "inference": entry["inference"]}
    if bundle_dir:
        out["bundle"] = str(write_bundle(meta, wpath, bundle_dir, name, description, card=card,
                                         inference=entry["inference"]))
    return out


def write_bundle(meta: dict, weights_path, bundle_dir, name: str, description: str = "", card: str | None = None,
                 inference: dict | None = None) -> Path:
    """MONAI Model Zoo-style bundle folder for the network in ``meta`` (see module doc).

    ``configs/metadata.json`` follows the MONAI Bundle specification (meta_schema_20220324: every
    required key, the network output declared as ``labels``: one channel per class, argmax
    gives the label); ``docs/README.md`` is the model card. ``inference`` (the registry entry's
    settings) sets the inferer and whether probabilities or labels are inverted onto the input
    grid; settings MONAI has no place for (``min_extent_mm``) are kept in metadata under
    ``surgitwin_inference``, which :func:`pipeline.segment.bundle.bundle_spec` reads back.
    """
    import torch

    from .train import load_weights

    inf = {"roi_size": list(meta.get("roi_size", [96, 96, 96])), "overlap": 0.25, "mode": "gaussian",
           "sw_batch_size": 1, **(meta.get("inference") or {}), **(inference or {})}
    b = Path(bundle_dir)
    for sub in ("configs", "models", "docs"):
        (b / sub).mkdir(parents=True, exist_ok=True)
    sd = load_weights(weights_path)
    tmp = b / "models" / f".tmp-{os.getpid()}-model.pt"
    torch.save(sd, str(tmp))
    os.replace(tmp, b / "models" / "model.pt")
    _atomic_text(b / "configs" / "inference.json", json.dumps(_bundle_inference(meta, inf), indent=1))
    _atomic_text(b / "configs" / "metadata.json", json.dumps(bundle_metadata(meta, name, description, inf), indent=1))
    _atomic_text(b / "docs" / "README.md", card if card is not None else _bundle_readme(meta, name, description, inf))
    return b


def _bundle_inference(meta: dict, inf: dict) -> dict:
    pre = meta["preprocessing"]
    it = pre["intensity"]
    n_out = len(meta["labels"]) + 1
    intensity = ({"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": it["a_min"], "a_max": it["a_max"],
                  "b_min": it.get("b_min", 0.0), "b_max": it.get("b_max", 1.0), "clip": bool(it.get("clip", True))}
                 if it.get("kind") == "window" else
                 {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": it.get("kind") == "zscore_nonzero"})
    invert = {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
              "to_tensor": True}
    discrete = {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}
    if inf.get("resample") == "labels":  # labels back onto the input grid, nearest neighbour
        post = [discrete, {**invert, "nearest_interp": True}]
    else:  # probabilities interpolated onto the input grid, then argmax
        post = [{"_target_": "Activationsd", "keys": "pred", "softmax": True}, {**invert, "nearest_interp": False},
                discrete]
    return {
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
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": inf["roi_size"],
                    "sw_batch_size": int(inf.get("sw_batch_size", 1)), "overlap": float(inf.get("overlap", 0.25)),
                    "mode": inf.get("mode", "gaussian")},
        "postprocessing": {"_target_": "Compose", "transforms": post + [
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


def _package_versions() -> dict:
    """Versions of the packages the bundle's inference.json needs beyond MONAI/PyTorch/NumPy."""
    from importlib import metadata

    out = {}
    for pkg in ("nibabel", "pytorch-ignite"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def bundle_metadata(meta: dict, name: str, description: str, inf: dict) -> dict:
    """``configs/metadata.json`` per the MONAI Bundle specification (all required keys)."""
    import monai
    import torch

    it = meta["preprocessing"]["intensity"]
    labels = meta["labels"]
    n_out = len(labels) + 1
    window = it.get("kind") == "window"
    packages = _package_versions()
    roi = list(inf["roi_size"])
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": "0.1.0", "changelog": {"0.1.0": "exported by surgitwin models export"},
        "monai_version": monai.__version__, "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "optional_packages_version": packages,   # the key of meta_schema_20220324
        "required_packages_version": packages,   # its name in newer schemas (MONAI >= 1.4)
        "name": name, "task": "CT organ segmentation: " + ", ".join(labels),
        "description": description or f"{meta['network']['name']} trained by surgitwin ({meta.get('data_kind')})",
        "authors": "surgitwin", "copyright": "see docs/README.md (model card)",
        "intended_use": "research and surgical-planning prototypes; not for diagnostic use",
        "data_type": "nibabel",
        "image_classes": "1 channel CT in HU, " + (f"windowed [{it['a_min']}, {it['a_max']}] HU to "
                                                   f"[{it.get('b_min', 0.0)}, {it.get('b_max', 1.0)}]" if window
                                                   else f"intensity: {it.get('kind')}"),
        "pred_classes": f"{n_out} channels (logits): 0 background, " +
                        ", ".join(f"{i} {n}" for i, n in enumerate(labels, 1)) + "; the label is the argmax",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "CT", "num_channels": 1,
                                 "spatial_shape": roi, "dtype": "float32",
                                 "value_range": sorted([it.get("b_min", 0.0), it.get("b_max", 1.0)]) if window else [],
                                 "is_patch_data": True, "channel_def": {"0": "image"}}},
            "outputs": {"pred": {"type": "image", "format": "labels", "modality": "n/a", "num_channels": n_out,
                                 "spatial_shape": roi, "dtype": "float32", "value_range": [],
                                 "is_patch_data": True,
                                 "channel_def": {"0": "background", **{str(i): n for i, n in enumerate(labels, 1)}}}}},
        "surgitwin_inference": {k: v for k, v in inf.items() if k != "threads"},
    }


def _bundle_readme(meta: dict, name: str, description: str, inf: dict) -> str:
    return (f"# {name}\n\n{description or 'Exported by `surgitwin models export` without a model card.'}\n\n"
            f"- labels: {', '.join(meta['labels'])}\n- preprocessing: {json.dumps(meta['preprocessing'])}\n"
            f"- inference: {json.dumps(inf)}\n\nNo model card was given at export (`--card`): no measured "
            "accuracy is stated for these weights.\n")
