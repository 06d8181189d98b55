"""Networks and weights, safely: a class from ``monai.networks.nets`` + plain-literal arguments,
weights from safetensors or ``torch.load(weights_only=True)``. Nothing is ever unpickled as an
object and no code from a model file runs.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import ModelError

_LITERALS = (int, float, str, bool, type(None))


def check_literal(value: Any, where: str) -> None:
    """Raise ModelError unless ``value`` is plain data (numbers, strings, bools, lists, dicts)."""
    if isinstance(value, _LITERALS):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_literal(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ModelError(f"{where}: keys must be strings; found {k!r}")
            check_literal(v, f"{where}.{k}")
        return
    raise ModelError(f"{where}: only plain literals are allowed; found {type(value).__name__} {value!r}")


def network_class(name: str):
    """A network class by name, only from ``monai.networks.nets`` (``monai.networks.nets.UNet`` or ``UNet``)."""
    import monai.networks.nets as nets
    import torch

    short = name.rsplit(".", 1)[-1]
    if "." in name and not name.startswith("monai.networks.nets."):
        raise ModelError(f"network '{name}': only classes from monai.networks.nets can be built from data")
    cls = getattr(nets, short, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise ModelError(f"network '{name}' is not a class in monai.networks.nets")
    return cls


def build_network(name: str, args: dict):
    check_literal(args, f"network '{name}' args")
    cls = network_class(name)
    try:
        return cls(**args)
    except TypeError as e:
        raise ModelError(f"network '{name}': invalid arguments: {e}") from None


def load_state_dict(path) -> dict:
    """Weights file -> state dict of tensors (safetensors, or a torch file loaded weights-only).

    Accepts a bare state dict or one nested under ``state_dict`` / ``model`` / ``network``
    (what MONAI's CheckpointSaver writes).
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise ModelError("weights file not found", path=str(path))
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise ModelError(f"cannot read safetensors weights: {e}", path=str(path)) from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises anything on a foreign file
        # weights_only refuses pickled classes and functions: exactly what we want refused
        raise ModelError("weights must be a plain state dict (torch.load(weights_only=True) refused the file: "
                         f"{str(e).splitlines()[0][:200]})", path=str(path)) from None
    for key in ("state_dict", "model", "network"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError("weights must be a state dict of tensors", path=str(path))
    return obj


def file_sha256(path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=4)
def _cached(name: str, args_key: str, weights: str, mtime: float, size: int):
    import json

    net = build_network(name, json.loads(args_key))
    state = load_state_dict(weights)
    missing, unexpected = [], []
    try:
        result = net.load_state_dict(state, strict=False)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    except RuntimeError as e:  # shape mismatches
        raise ModelError(f"weights do not fit network '{name}': {str(e).splitlines()[0][:300]}", path=weights) from None
    if missing or unexpected:
        raise ModelError(f"weights do not fit network '{name}': missing keys {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
                         f"{'...' if len(unexpected) > 5 else ''}", path=weights)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, file_sha256(weights), sum(p.numel() for p in net.parameters())


def load_network(name: str, args: dict, weights) -> tuple[Any, str, int]:
    """(network in eval mode on CPU, weights sha256, parameter count); cached per file version."""
    import json

    p = Path(weights)
    if not p.exists():
        raise ModelError("weights file not found", path=str(p))
    st = p.stat()
    return _cached(name, json.dumps(args, sort_keys=True), str(p.resolve()), st.st_mtime, st.st_size)
