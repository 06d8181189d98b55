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



def data_roots() -> list[Path]:
    """The folders that may hold ``configs/``, ``models/`` and ``sample_scans/``, first first.

    1. ``SURGITWIN_HOME``: a folder with that layout, for a site's own configs and models (a
       wrong folder shows up as "config file not found" naming ``SURGITWIN_HOME/configs/...``);
    2. the working directory, when it holds ``configs/pipeline.yaml`` (a project folder with its
       own configs and models, laid out as ``SURGITWIN_HOME``);
    3. the source checkout this package runs from (``configs/`` beside ``pipeline/``);
    4. the copy an installed wheel carries as package data (``surgitwin/pipeline/_data``, read
       through importlib.resources).
    """
    roots = []
    home = os.environ.get("SURGITWIN_HOME")
    if home:
        roots.append(Path(home).resolve())
    try:
        cwd: Path | None = Path.cwd()
    except OSError:  # the working directory was removed under us
        cwd = None
    if cwd is not None and (cwd / "configs" / "pipeline.yaml").is_file():
        roots.append(cwd.resolve())
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "configs").is_dir():
        roots.append(checkout)
    packaged = packaged_root()
    if packaged.is_dir() or not roots:
        roots.append(packaged)
    return list(dict.fromkeys(roots))  # the working directory may be the checkout


def packaged_root() -> Path:
    """The configs, models and sample scan an installed wheel carries (``surgitwin/pipeline/_data``;
    absent in a source checkout). Read-only in spirit: it lives inside site-packages."""
    from importlib.resources import files

    return Path(str(files(__name__.rpartition(".")[0]) / "_data"))


def data_root() -> Path:
    """The folder whose ``configs/`` (and ``models/``) are used: the first of :func:`data_roots`,
    looked up once at import. A ``--config FILE`` overrides the pipeline configuration on any
    command, whatever the root."""
    return data_roots()[0]


def find_data(relative: str) -> Path:
    """``relative`` (e.g. ``sample_scans/phantom_ct``) in the first of :func:`data_roots` that has
    it; in the first root when none has it (so that the error names the expected place)."""
    roots = data_roots()
    return next((r / relative for r in roots if (r / relative).exists()), roots[0] / relative)


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
