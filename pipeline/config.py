"""Configuration: YAML files hold values only (no code). Each stage validates its own section.

``configs/pipeline.yaml`` has one top-level section per stage (``selection``, ``ingest``,
``segment``, ``mesh``, ``batch``, ``pacs``). :func:`load_pipeline_config` returns the parsed
mapping; :mod:`pipeline.configuration` validates every section at once (each with its stage's
own definition) and reports every broken key with the file.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .errors import ConfigError



def data_root() -> Path:
    """The folder holding ``configs/``, ``models/`` and ``sample_scans/``.

    In order: ``SURGITWIN_HOME`` (a folder with that layout, for a site's own configs and
    models), the source checkout this package runs from, and the copy an installed wheel carries
    as package data (``pipeline/_data``, read through importlib.resources). A ``--config`` file
    overrides the pipeline configuration on any command.
    """
    home = os.environ.get("SURGITWIN_HOME")
    if home:  # a wrong folder shows up as "config file not found" naming SURGITWIN_HOME/configs/...
        return Path(home).resolve()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "configs").is_dir():
        return checkout
    from importlib.resources import files

    return Path(str(files("pipeline") / "_data"))


ROOT = data_root()
CONFIG_DIR = ROOT / "configs"
DEFAULT_PIPELINE = CONFIG_DIR / "pipeline.yaml"


def load_yaml(path) -> Any:
    import yaml

    path = Path(path)
    try:
        return yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError("config file not found", path=str(path)) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", path=str(path)) from None


def load_pipeline_config(path=None) -> dict:
    path = Path(path) if path else DEFAULT_PIPELINE
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"top level must be a mapping of sections; found {type(data).__name__}", path=str(path))
    data["__file__"] = str(path)
    return data

def config_hash(obj: Any) -> str:
    """Stable short hash of a config value for provenance."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def software_versions(*names: str) -> dict:
    """Versions of surgitwin and the named distributions (for StageRecord.software)."""
    from importlib import metadata

    out = {}
    for n in ("surgitwin", *names):
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "not installed"
    return out


def cap_threads(n: int | None) -> int | None:
    """``n`` limited by ``SURGITWIN_MAX_THREADS`` (set by batch workers so that concurrent studies
    share the cores instead of each taking all of them); with no ``n``, the cap itself."""
    cap = os.environ.get("SURGITWIN_MAX_THREADS", "")
    if not cap.isdigit() or int(cap) < 1:
        return n
    return min(int(n), int(cap)) if n else int(cap)
