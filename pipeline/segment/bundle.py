"""MONAI Model Zoo bundles, read as data: ``configs/inference.json`` + ``configs/metadata.json``.

What is read: ``network_def`` (a class of ``monai.networks.nets`` and literal arguments), the
``preprocessing`` transforms we can map (Orientationd, Spacingd, ScaleIntensityRanged,
NormalizeIntensityd, ScaleIntensityd; loaders and type casts are no-ops for us), the
``inferer`` (roi, overlap, blend mode), the ``postprocessing`` order (labels or probabilities
inverted onto the input grid) and the label names (``channel_def`` in metadata.json).

Safety (advisory GHSA-873f-pvrv-4x83): a value written ``$...`` is Python that MONAI's
ConfigParser would ``eval``. Here a ``$`` value is accepted only when it is a plain literal
(``ast.literal_eval``); otherwise the user sets the value (``--bundle-set pixdim=3,3,3``) or
passes ``--trust-bundle``, and only then is MONAI's ConfigParser allowed to evaluate the
*specific* values we need. ``@id`` references are data and are followed without evaluation.
Everything else in the bundle (``imports``, ``evaluator``, ``initialize``, ...) is never touched.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

from ..config import load_yaml
from ..errors import ModelError
from .spec import LABELS_DIR, ModelSpec

_NO_OPS = {"LoadImaged", "LoadImage", "EnsureChannelFirstd", "EnsureChannelFirst", "EnsureTyped", "EnsureType",
           "ToTensord", "ToTensor", "CastToTyped", "CastToType", "ToDeviced", "AddChanneld"}
_MISSING = object()


class Overrides(dict):
    """Bundle values already parsed by :func:`parse_overrides` (which hands them back as they are:
    a value is parsed once, however many hands the overrides pass through)."""


def parse_overrides(overrides) -> Overrides:
    """``["pixdim=3,3,3", "inferer#overlap=0.5"]`` (``--bundle-set``) or a dict -> {id: value},
    values parsed as data. The one parser of ``--bundle-set`` (``surgitwin run`` and ``segment``)."""
    if isinstance(overrides, Overrides):
        return overrides
    if not overrides:
        return Overrides()
    if isinstance(overrides, dict):  # values written as text (a YAML string, an API caller): parsed the same way
        return Overrides({k: _parse_value(v) if isinstance(v, str) else v for k, v in overrides.items()})
    out = Overrides()
    for item in overrides:
        if "=" not in item:
            raise ModelError(f"--bundle-set expects KEY=VALUE (e.g. pixdim=3,3,3); found {item!r}",
                             rule="--bundle-set KEY=VALUE")
        key, raw = item.split("=", 1)
        out[key.strip()] = _parse_value(raw.strip())
    return out


def _parse_value(raw: str) -> Any:
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(raw)
        except (ValueError, SyntaxError, json.JSONDecodeError):
            pass
    if "," in raw:
        return [_parse_value(p.strip()) for p in raw.split(",")]
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    return raw


def _read(path: Path) -> dict:
    if path.suffix == ".json":
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ModelError(f"invalid JSON: {e}", path=str(path)) from None
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ModelError("bundle config must be a mapping", path=str(path))
    return data


def _config_file(folder: Path, stem: str) -> Path | None:
    for ext in ("json", "yaml", "yml"):
        p = folder / "configs" / f"{stem}.{ext}"
        if p.exists():
            return p
    return None


class BundleConfig:
    """Read-only access to a bundle config by MONAI id (``inferer#roi_size``), following ``@``
    references, accepting ``$`` only as literals, overrides first, ConfigParser only if trusted."""

    def __init__(self, folder: Path, overrides: dict, trust: bool):
        self.folder = folder
        self.file = _config_file(folder, "inference")
        if self.file is None:
            raise ModelError("not a MONAI bundle: configs/inference.json is missing", path=str(folder))
        self.config = _read(self.file)
        meta = _config_file(folder, "metadata")
        self.meta = _read(meta) if meta else {}
        self.overrides = {"bundle_root": str(folder), **overrides}
        self.trust = trust
        self._parser = None
        self.evaluated: list[str] = []

    def _raw(self, id_: str) -> Any:
        node: Any = self.config
        for part in id_.split("#"):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return _MISSING
        return node

    def get(self, id_: str, default: Any = _MISSING, _depth: int = 0) -> Any:
        if id_ in self.overrides:
            return self.overrides[id_]
        raw = self._raw(id_)
        if raw is _MISSING:
            if default is not _MISSING:
                return default
            raise ModelError(f"bundle config has no '{id_}'", path=str(self.file))
        return self._resolve(raw, id_, _depth)

    def _resolve(self, raw: Any, id_: str, depth: int) -> Any:
        if depth > 32:
            raise ModelError(f"bundle config: reference cycle at '{id_}'", path=str(self.file))
        if isinstance(raw, dict):
            return {k: self._resolve_child(v, f"{id_}#{k}", depth) for k, v in raw.items()}
        if isinstance(raw, list):
            return [self._resolve_child(v, f"{id_}#{i}", depth) for i, v in enumerate(raw)]
        if isinstance(raw, str) and raw.startswith("@"):
            return self.get(raw[1:], _depth=depth + 1)
        if isinstance(raw, str) and raw.startswith("$"):
            try:
                return ast.literal_eval(raw[1:].strip())
            except (ValueError, SyntaxError):
                return self._evaluate(id_, raw)
        return raw

    def _resolve_child(self, raw, id_, depth):
        return self.overrides[id_] if id_ in self.overrides else self._resolve(raw, id_, depth + 1)

    def _evaluate(self, id_: str, expr: str) -> Any:
        if not self.trust:
            raise ModelError(
                f"'{id_}' is a Python expression ({expr}); surgitwin does not run code from a bundle. "
                f"Set the value yourself with --bundle-set {id_}=VALUE, or pass --trust-bundle to let "
                "MONAI's ConfigParser evaluate it", path=str(self.file), rule="bundle-expression")
        if self._parser is None:
            from monai.bundle import ConfigParser

            parser = ConfigParser()
            parser.read_config(str(self.file))
            for k, v in self.overrides.items():
                parser[k] = v
            self._parser = parser
        self.evaluated.append(id_)
        try:
            return self._parser.get_parsed_content(id_, instantiate=False)
        except Exception as e:  # noqa: BLE001 - evaluating foreign code raises anything: report it as ModelError
            raise ModelError(f"evaluating '{id_}' ({expr}) failed: {e}", path=str(self.file)) from None


def _node_id(cfg: BundleConfig, id_: str, depth: int = 0) -> str | None:
    """Follow ``@`` references to the id of the node itself, resolving none of its children."""
    raw = cfg._raw(id_)
    if isinstance(raw, str) and raw.startswith("@") and depth < 32:
        return _node_id(cfg, raw[1:], depth + 1)
    return None if raw is _MISSING else id_


class _Transform:
    """One transform of a Compose: its name, and lazy access to the arguments we need.

    Only the keys asked for are resolved, so an expression in an argument we ignore (an
    output folder, a device) is never evaluated nor refused.
    """

    def __init__(self, cfg: BundleConfig, id_: str):
        self.cfg, self.id = cfg, id_
        self.name = str(cfg.get(f"{id_}#_target_", default="")).rsplit(".", 1)[-1]

    def get(self, key: str, default: Any = None) -> Any:
        return self.cfg.get(f"{self.id}#{key}", default=default)

    def __contains__(self, key: str) -> bool:
        return f"{self.id}#{key}" in self.cfg.overrides or self.cfg._raw(f"{self.id}#{key}") is not _MISSING


def _transforms(cfg: BundleConfig, id_: str) -> list[_Transform]:
    node = _node_id(cfg, id_)
    if node is None:
        return []
    raw = cfg._raw(node)
    if isinstance(raw, dict) and "transforms" in raw:
        node = _node_id(cfg, f"{node}#transforms")
        raw = cfg._raw(node) if node else None
    if not isinstance(raw, list):
        raise ModelError(f"'{id_}' must be a Compose with a list of transforms", path=str(cfg.file))
    out = []
    for i in range(len(raw)):
        tid = _node_id(cfg, f"{node}#{i}")
        if tid and isinstance(cfg._raw(tid), dict):
            out.append(_Transform(cfg, tid))
    return out


def _preprocessing(cfg: BundleConfig) -> tuple[dict, list[str]]:
    pre: dict[str, Any] = {"orientation": "RAS", "spacing": None, "intensity": []}
    notes = []
    for i, t in enumerate(_transforms(cfg, "preprocessing")):
        name = t.name
        if name in _NO_OPS:
            continue
        if name in ("Orientationd", "Orientation"):
            pre["orientation"] = t.get("axcodes", "RAS")
        elif name in ("Spacingd", "Spacing"):
            pixdim = t.get("pixdim")
            pre["spacing"] = [float(p) for p in (pixdim if isinstance(pixdim, (list, tuple)) else [pixdim] * 3)]
            if t.get("mode", "bilinear") not in ("bilinear", ["bilinear"]):
                notes.append(f"Spacingd mode {t.get('mode')!r} replaced by bilinear")
        elif name in ("ScaleIntensityRanged", "ScaleIntensityRange"):
            pre["intensity"].append({"kind": "window", "a_min": t.get("a_min"), "a_max": t.get("a_max"),
                                     "b_min": t.get("b_min", 0.0), "b_max": t.get("b_max", 1.0),
                                     "clip": bool(t.get("clip", False))})
        elif name in ("NormalizeIntensityd", "NormalizeIntensity"):
            pre["intensity"].append({"kind": "zscore_nonzero" if t.get("nonzero", False) else "zscore"})
        elif name in ("ScaleIntensityd", "ScaleIntensity"):
            pre["intensity"].append({"kind": "scale", "minv": t.get("minv", 0.0), "maxv": t.get("maxv", 1.0)})
        else:
            raise ModelError(f"preprocessing transform #{i} '{name}' is not supported by surgitwin's runner "
                             "(supported: Orientationd, Spacingd, ScaleIntensityRanged, NormalizeIntensityd, "
                             "ScaleIntensityd)", path=str(cfg.file))
    if not pre["intensity"]:
        pre["intensity"] = [{"kind": "none"}]
    return pre, notes


def _inference(cfg: BundleConfig) -> dict:
    # settings MONAI has no place for, written by `surgitwin models export`; the bundle's own
    # inferer and postprocessing (read below) win where both say something
    extra = cfg.meta.get("surgitwin_inference")
    out: dict[str, Any] = dict(extra) if isinstance(extra, dict) else {}
    node = _node_id(cfg, "inferer")
    if node:
        for key in ("roi_size", "overlap", "mode", "sw_batch_size", "padding_mode", "sigma_scale"):
            if cfg._raw(f"{node}#{key}") is not _MISSING or f"{node}#{key}" in cfg.overrides:
                out[key] = cfg.get(f"{node}#{key}")
    order = [t.name for t in _transforms(cfg, "postprocessing")]
    if "Invertd" in order:
        # argmax before inverting: labels go back nearest-neighbour (wholeBody); after: the
        # probabilities are interpolated (spleen). Follow the bundle.
        labels_first = "AsDiscreted" in order and order.index("AsDiscreted") < order.index("Invertd")
        out["resample"] = "labels" if labels_first else "probabilities"
    return out


def _snake(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", str(name).strip().lower()).strip("_")
    return s if s and s[0].isalpha() else f"label_{s}"


def _palette(i: int) -> list[int]:
    import colorsys

    h = (i * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.55, 0.9)
    return [int(r * 255), int(g * 255), int(b * 255)]


def _label_defaults() -> dict[str, dict]:
    p = LABELS_DIR / "organ_defaults.yaml"
    if not p.exists():
        return {}
    data = load_yaml(p)
    return {d["name"]: d for d in data.get("labels", [])}


def _labels(cfg: BundleConfig, out_channels: int | None) -> list[dict]:
    outputs = ((cfg.meta.get("network_data_format") or {}).get("outputs") or {})
    pred = outputs.get("pred") or (next(iter(outputs.values())) if outputs else {})
    channel_def = pred.get("channel_def") or {}
    if not channel_def:
        raise ModelError("metadata.json has no network_data_format.outputs.pred.channel_def (label names)",
                         path=str(cfg.folder / "configs" / "metadata.json"))
    n = pred.get("num_channels")
    if out_channels and n and int(n) != int(out_channels):
        raise ModelError(f"metadata.json declares {n} output channels but network_def has out_channels={out_channels}",
                         path=str(cfg.folder / "configs" / "metadata.json"))
    defaults = _label_defaults()
    labels = []
    for key, name in sorted(channel_def.items(), key=lambda kv: int(kv[0])):
        c = int(key)
        if c == 0:
            continue  # background
        snake = _snake(name)
        d = defaults.get(snake, {})
        labels.append({"id": c, "name": snake, "channel": c, "rgb": d.get("rgb", _palette(c)),
                       "code": d.get("code"), "expected_ml": d.get("expected_ml"),
                       "components": d.get("components", 1), "critical": d.get("critical", False)})
    return labels


def _weights(cfg: BundleConfig, notes: list[str]) -> str:
    models = cfg.folder / "models"
    if "weights" in cfg.overrides:
        p = Path(str(cfg.overrides["weights"])).expanduser()
        return str(p if p.is_absolute() else (cfg.folder / p))
    if "modelname" in cfg.overrides:
        return str(models / str(cfg.overrides["modelname"]))
    try:
        path = cfg.get("checkpointloader#load_path", default=None)
        if isinstance(path, str):
            p = Path(path).expanduser()
            return str(p if p.is_absolute() else cfg.folder / p)  # relative to the bundle, not the cwd
    except ModelError:
        pass  # an expression: choosing a file by convention runs no code
    default = models / "model.pt"
    others = sorted(p.name for p in models.glob("*.pt")) if models.exists() else []
    if not default.exists() and others:
        raise ModelError(f"cannot tell which weights file to load: models/model.pt is missing; found {others}. "
                         "Choose one with --bundle-set modelname=NAME", path=str(cfg.folder))
    notes.append("weights: models/model.pt (the bundle's load path is an expression; by convention)")
    return str(default)


def bundle_spec(folder: Path, overrides=None, trust: bool = False, entry: ModelSpec | None = None) -> ModelSpec:
    """A MONAI bundle folder -> ModelSpec for the runner (no bundle code runs unless ``trust``)."""
    folder = Path(folder).expanduser().resolve()
    cfg = BundleConfig(folder, parse_overrides(overrides), trust)
    notes: list[str] = []
    net_id = _node_id(cfg, "network_def")
    raw_net = cfg._raw(net_id) if net_id else None
    if not isinstance(raw_net, dict) or "_target_" not in raw_net:
        raise ModelError("'network_def' must be a mapping with a _target_", path=str(cfg.file))
    net = cfg.get(net_id)
    args = {k: v for k, v in net.items() if not k.startswith("_")}
    from .checkpoint import check_literal

    check_literal(args, "network_def")
    pre, pre_notes = _preprocessing(cfg)
    notes += pre_notes
    labels = _labels(cfg, args.get("out_channels"))
    weights = _weights(cfg, notes)
    if cfg.evaluated:
        notes.append(f"trusted bundle: MONAI evaluated {sorted(set(cfg.evaluated))}")
    if cfg.overrides.keys() - {"bundle_root"}:
        notes.append(f"bundle overrides: { {k: v for k, v in cfg.overrides.items() if k != 'bundle_root'} }")
    data: dict[str, Any] = {
        "name": _snake(cfg.meta.get("name") or folder.name),
        "backend": "bundle",
        "description": str(cfg.meta.get("description", ""))[:300],
        "weights": weights,
        "network": {"name": str(net["_target_"]), "args": args},
        "labels": labels,
        "preprocessing": pre,
        "inference": _inference(cfg),
        "bundle": str(folder),
        "bundle_overrides": {k: v for k, v in cfg.overrides.items() if k != "bundle_root"},
        "trust_bundle": trust,
        "source_file": str(cfg.file),
        "notes": notes,
    }
    if entry is not None:  # a registry entry wrapping the bundle: its own settings win
        given = entry.model_fields_set
        for key in ("name", "description", "postprocess", "combine_with", "hu_rules", "card", "modality", "body_region"):
            if key in given:
                data[key] = getattr(entry, key)
        if entry.labels:
            data["labels"] = [l.model_dump() for l in entry.labels]
        if "inference" in given:
            data["inference"] = {**data["inference"], **entry.inference.model_dump(exclude_unset=True)}
        data["source_file"] = entry.source_file
    try:
        return ModelSpec.model_validate(data)
    except Exception as e:  # noqa: BLE001 - a foreign bundle's values may fail anywhere: report it as ModelError
        raise ModelError(f"bundle cannot be mapped to a surgitwin model: {e}", path=str(folder)) from None
