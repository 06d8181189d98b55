"""One validated pipeline configuration: every section checked before any work starts.

``configs/pipeline.yaml`` (or a ``--config`` file) has one section per stage. Each section keeps
its one definition where the stage lives; :class:`PipelineConfig` gathers them and
:func:`validate_pipeline_config` runs every section's own check in one pass:

=========  ====================================================  ======================
section    definition                                            checked by
=========  ====================================================  ======================
ingest     reader options (``pipeline.ingest.read``)             ``check_options``
selection  series selection rules (``pipeline.ingest.select``)   ``parse_rules``
segment    :class:`pipeline.segment.api.SegmentConfig`           pydantic
mesh       :class:`pipeline.mesh.MeshConfig`                     ``MeshConfig.from_dict``
batch      :class:`pipeline.batch.settings.BatchConfig`          pydantic
pacs       :class:`pipeline.batch.settings.PacsConfig`           pydantic
=========  ====================================================  ======================

A bad configuration raises one :class:`~pipeline.errors.ConfigError` naming the file and listing
every broken dotted key (``segment.devise``, ``mesh.smoothing_iterations``) of every section at
once, so a typo in ``mesh:`` is reported before ingest, not as a TypeError after segmentation.
A top-level section whose name is close to a known one (``mseh``) is reported as a typo; other
top-level sections belong to tools that read them themselves and are left alone.

:func:`load_pipeline_config` is :func:`pipeline.config.load_pipeline_config` plus this check.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from .config import load_pipeline_config as _load_raw
from .errors import ConfigError, pydantic_problems

SECTIONS = ("ingest", "selection", "segment", "mesh", "batch", "pacs")
RULE = "every configuration key is known and valid (configs/pipeline.yaml documents them)"


class PipelineConfig(BaseModel):
    """The validated configuration: one typed value per section (defaults where absent)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    path: str | None = None
    ingest: dict[str, Any]
    selection: list[Any] | None  # pipeline.ingest.select.Rule; None: the reader's default rules
    segment: Any  # pipeline.segment.api.SegmentConfig
    mesh: Any  # pipeline.mesh.MeshConfig
    batch: Any  # pipeline.batch.settings.BatchConfig
    pacs: Any  # pipeline.batch.settings.PacsConfig
    raw: dict[str, Any]


def _pydantic_lines(name: str, e: ValidationError) -> list[str]:
    return [f"{key}: {msg}" for key, msg in pydantic_problems(e, name)]


def _strip(msg: str, path: str | None) -> str:
    """A section checker's message without the file prefix it may carry (named once, up front)."""
    for p in filter(None, (path, str(Path(path)) if path else None)):
        msg = msg.replace(f"{p}: ", "")
    return msg


def _check_ingest(raw):
    from .ingest.read import OPTION_DEFAULTS, check_options

    if not isinstance(raw, dict):
        raise ConfigError(f"ingest: must be a mapping of options; found {type(raw).__name__}")
    return check_options({**OPTION_DEFAULTS, **raw}, where="ingest")


def _check_selection(raw):
    from .ingest.select import parse_rules

    if not isinstance(raw, dict):
        raise ConfigError(f"selection: must be a mapping with a 'rules' list; found {type(raw).__name__}")
    unknown = sorted(set(raw) - {"rules"})
    if unknown:
        raise ConfigError(f"selection: unknown key(s) {', '.join('selection.' + k for k in unknown)}; known: ['rules']")
    return parse_rules(raw["rules"]) if "rules" in raw else None


def _pydantic(model):
    def check(raw):
        return model.model_validate(raw)
    return check


def _checkers() -> dict:
    from .batch.settings import BatchConfig, PacsConfig
    from .mesh import MeshConfig
    from .segment.api import SegmentConfig

    return {"ingest": _check_ingest, "selection": _check_selection, "segment": _pydantic(SegmentConfig),
            "mesh": MeshConfig.from_dict, "batch": _pydantic(BatchConfig), "pacs": _pydantic(PacsConfig)}


def validate_pipeline_config(cfg: dict, path=None) -> PipelineConfig:
    """Check every section of a parsed configuration; one ConfigError lists every problem."""
    path = str(path or cfg.get("__file__") or "") or None
    problems: list[str] = []
    for name in sorted(set(cfg) - set(SECTIONS) - {"__file__"}):
        near = difflib.get_close_matches(str(name), SECTIONS, n=1, cutoff=0.75)
        if near:
            problems.append(f"{name}: unknown section (did you mean '{near[0]}'?); known: {list(SECTIONS)}")
    values: dict[str, Any] = {}
    for name, check in _checkers().items():
        raw = cfg.get(name)
        raw = {} if raw is None else raw
        try:
            values[name] = check(raw)
        except ValidationError as e:
            problems += _pydantic_lines(name, e)
        except ConfigError as e:
            problems.append(_strip(str(e), path))
    if problems:
        raise ConfigError(f"{len(problems)} configuration error(s):\n  - " + "\n  - ".join(problems), path=path, rule=RULE)
    return PipelineConfig(path=path, raw={k: v for k, v in cfg.items() if k != "__file__"}, **values)


def load_pipeline_config(path=None) -> dict:
    """The parsed configuration mapping (as :func:`pipeline.config.load_pipeline_config`), after
    :func:`validate_pipeline_config` found every section valid."""
    cfg = _load_raw(path)
    validate_pipeline_config(cfg)
    return cfg


def load_config(path=None) -> PipelineConfig:
    """The validated, typed configuration of ``path`` (default ``configs/pipeline.yaml``)."""
    return validate_pipeline_config(_load_raw(path))


def batch_and_pacs(path=None):
    """(BatchConfig, PacsConfig) of ``path`` after every section was validated (defaults when no
    file is given and the default one is absent)."""
    from .batch.settings import BatchConfig, PacsConfig
    from .config import DEFAULT_PIPELINE

    if path is None and not Path(DEFAULT_PIPELINE).exists():
        return BatchConfig(), PacsConfig()
    cfg = load_config(path)
    return cfg.batch, cfg.pacs
