"""Model registry: ``configs/models/*.yaml`` entries and MONAI bundle folders -> :class:`ModelSpec`.

Imports no torch and no MONAI, so ``surgitwin models list`` is instant. The file format is
documented in ``docs/MODEL_FORMAT.md``; every validation error names the file and the key.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Union

from pydantic import ValidationError

from ..config import load_yaml
from ..errors import ConfigError, ModelError, SurgitwinError, pydantic_config_error
from .spec import (LABELS_DIR, MODELS_DIR, _NAME, InferenceDef, IntensityStep, LabelDef,  # noqa: F401 - re-exported
                   ModelSpec, NetworkDef, Preprocessing)

def load_label_file(path) -> list[dict]:
    """A label table YAML (``labels: [{id, name, rgb, ...}]``) -> list of dicts (validated)."""
    path = Path(path)
    data = load_yaml(path)
    items = data.get("labels") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ConfigError("key 'labels': must be a list of {id, name, rgb, ...}", path=str(path))
    out = []
    for i, d in enumerate(items):
        try:
            out.append(LabelDef.model_validate(d).model_dump())
        except ValidationError as e:
            raise pydantic_config_error(e, path=path, prefix=f"labels.{i}") from None
    return out


def _resolve(base: Path, p: str | None) -> str | None:
    if p is None:
        return None
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else (base / q).resolve())


def load_model_file(path) -> ModelSpec:
    """Parse and validate one registry YAML; relative paths are relative to the file."""
    path = Path(path)
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"a model entry must be a mapping; found {type(data).__name__}", path=str(path))
    data = dict(data)
    data.setdefault("name", path.stem)
    base = path.parent
    for key in ("weights", "card", "bundle", "labels_file"):
        if isinstance(data.get(key), str):
            data[key] = _resolve(base, data[key])
    if data.get("labels_file") and not data.get("labels"):
        data["labels"] = load_label_file(data["labels_file"])
    data["source_file"] = str(path)
    try:
        spec = ModelSpec.model_validate(data)
    except ValidationError as e:
        raise pydantic_config_error(e, path=path) from None
    try:
        spec.label_table()
    except SurgitwinError as e:
        raise ConfigError(f"key 'labels': {e}", path=str(path)) from None
    _check_backend_keys(spec, path)
    return spec


def _check_backend_keys(spec: ModelSpec, path) -> None:
    need = {"checkpoint": ("network", "weights", "labels"), "bundle": ("bundle",), "hu_rules": ("labels",)}[spec.backend]
    for key in need:
        if not getattr(spec, key):
            raise ConfigError(f"key '{key}': required for backend '{spec.backend}'", path=str(path), rule=key)
    if spec.backend == "checkpoint":
        channels = sorted(spec.channel_ids())
        out_ch = spec.network.args.get("out_channels")
        if out_ch is not None and channels and max(channels) >= int(out_ch):
            raise ConfigError(f"key 'labels': channel {max(channels)} does not exist in a network with "
                              f"out_channels={out_ch}", path=str(path), rule="labels")


def registry_files(models_dir: Path | None = None) -> list[Path]:
    return sorted(Path(models_dir or MODELS_DIR).glob("*.yaml"))


def list_models(models_dir: Path | None = None) -> list[dict]:
    """Registry summary (name, backend, labels, description, file, problem) without importing torch."""
    out = []
    for f in registry_files(models_dir):
        try:
            spec = load_model_file(f)
            out.append({"name": spec.name, "backend": spec.backend, "labels": len(spec.labels),
                        "description": spec.description, "file": str(f), "problem": None})
        except SurgitwinError as e:
            out.append({"name": f.stem, "backend": "?", "labels": 0, "description": "", "file": str(f),
                        "problem": str(e)})
    return out


# --- training output folders (``surgitwin train``: model.json + best/last.safetensors) --------------

#: what a trained checkpoint runs with unless its training config's ``inference:`` says otherwise;
#: shared by ``models export`` (which writes it into the registry YAML) and by a training
#: folder given directly as ``--model``, so both run the same settings.
TRAINING_INFERENCE = {"overlap": 0.25, "mode": "gaussian", "sw_batch_size": 1, "threads": 2, "amp": True}
TRAINING_POSTPROCESS = {"keep_largest": True, "fill_holes": True, "min_island_ml": 1.0}


def is_training_dir(path: Path) -> bool:
    return path.is_dir() and (path / "model.json").exists()


def training_entry(meta: dict, name: str, weights: str, labels: list[dict], description: str,
                   inference: dict | None = None) -> dict:
    """The registry mapping of a training output's ``model.json``: its network, labels,
    preprocessing and every inference setting it recorded (``inference`` adds or overrides)."""
    pre = meta["preprocessing"]
    return {
        "name": name,
        "backend": "checkpoint",
        "description": description,
        "weights": weights,
        "network": meta["network"],
        "labels": labels,
        "preprocessing": {"orientation": pre.get("orientation", "RAS"), "spacing": [float(s) for s in pre["spacing"]],
                          "intensity": pre["intensity"]},
        "inference": {"roi_size": list(meta.get("roi_size", [96, 96, 96])), **TRAINING_INFERENCE,
                      **(meta.get("inference") or {}), **(inference or {})},
        "postprocess": dict(TRAINING_POSTPROCESS),
        "combine_with": "hu_rules",
    }


def training_dir_spec(folder: Path, weights: str = "best") -> ModelSpec:
    """A ``surgitwin train`` output folder -> ModelSpec (its best weights, else the last)."""
    import json

    from .bundle import _label_defaults, _palette

    folder = Path(folder).expanduser().resolve()
    mj = folder / "model.json"
    try:
        meta = json.loads(mj.read_text())
        names = list(meta["labels"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"training folder's model.json cannot be read: {e}", path=str(mj)) from None
    w = folder / f"{weights}.safetensors"
    if not w.exists() and weights == "best":
        w = folder / "last.safetensors"
    if not w.exists():
        raise ModelError("training folder has no best.safetensors or last.safetensors (no checkpoint yet)",
                         path=str(folder))
    defaults = _label_defaults()
    labels = []
    for i, n in enumerate(names, start=1):
        d = defaults.get(n, {})
        labels.append({"id": i, "name": n, "rgb": d.get("rgb", _palette(i)), "code": d.get("code"),
                       "expected_ml": d.get("expected_ml"), "critical": d.get("critical", False)})
    name = str(meta.get("name", folder.name)).lower()
    name = name if _NAME.match(name) else re.sub(r"[^a-z0-9_]+", "_", f"m_{name}")
    data = training_entry(meta, name, str(w), labels, f"training output {folder} ({w.name})")
    data["source_file"] = str(mj)
    data["notes"] = [f"training folder: {w.name}"]
    try:
        spec = ModelSpec.model_validate(data)
    except ValidationError as e:
        raise pydantic_config_error(e, path=mj) from None
    _check_backend_keys(spec, mj)
    return spec


def is_bundle_dir(path: Path) -> bool:
    return path.is_dir() and any((path / "configs" / f"inference.{ext}").exists() for ext in ("json", "yaml", "yml"))


def resolve_model(name_or_path: Union[str, Path, ModelSpec] = "hu_rules", overrides: Optional[dict | list[str]] = None,
                  trust: bool = False, models_dir: Path | None = None) -> ModelSpec:
    """Registry name, model YAML path or MONAI bundle folder -> validated :class:`ModelSpec`.

    Parameters
    ----------
    name_or_path : registry name (``configs/models/<name>.yaml``), a YAML file, the folder
        of a MONAI Model Zoo bundle (``configs/inference.json`` + ``configs/metadata.json``), or
        a ``surgitwin train`` output folder (``model.json`` + ``best.safetensors``).
    overrides : bundle config values set by the user, ``{"pixdim": [3, 3, 3]}`` or
        ``["pixdim=3,3,3"]`` (``--bundle-set``); they replace ``$`` expressions.
    trust : allow MONAI's ConfigParser to evaluate the bundle's ``$`` expressions.
    """
    if isinstance(name_or_path, ModelSpec):
        spec = name_or_path
    else:
        p = Path(str(name_or_path)).expanduser()
        if is_bundle_dir(p):
            from .bundle import bundle_spec
            return bundle_spec(p, overrides=overrides, trust=trust)
        if is_training_dir(p):
            spec = training_dir_spec(p)
            if overrides:
                raise ModelError("--bundle-set applies to MONAI bundles, not to a training folder", path=str(p))
            return spec
        if p.suffix in (".yaml", ".yml") and p.exists():
            spec = load_model_file(p)
        else:
            f = Path(models_dir or MODELS_DIR) / f"{name_or_path}.yaml"
            if not f.exists():
                known = [x.stem for x in registry_files(models_dir)]
                hint = (" (a folder, but neither a MONAI bundle (configs/inference.json) nor a training output "
                        "(model.json))" if p.is_dir() else "")
                raise ModelError(f"unknown model '{name_or_path}'{hint}; registry names: {known}, or pass the "
                                 "folder of a MONAI bundle or of a training output", path=str(MODELS_DIR))
            spec = load_model_file(f)
    if spec.backend == "bundle":
        from .bundle import Overrides, bundle_spec, parse_overrides
        merged = Overrides({**parse_overrides(spec.bundle_overrides), **parse_overrides(overrides)})  # the user's last
        return bundle_spec(Path(spec.bundle), overrides=merged, trust=trust or spec.trust_bundle, entry=spec)
    if overrides:
        raise ModelError(f"--bundle-set applies to MONAI bundles; model '{spec.name}' has backend '{spec.backend}'",
                         path=spec.source_file)
    return spec
