"""Planning rules from ``configs/planning.yaml``: structure classes for trajectory warnings
(critical or not, safety margin) and future-liver-remnant thresholds.

The file is validated on load; errors name the file and the dotted key (ConfigError).
"""
from __future__ import annotations

import fnmatch
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ..config import CONFIG_DIR, load_yaml
from ..errors import ConfigError, pydantic_config_error

PLANNING_CONFIG = CONFIG_DIR / "planning.yaml"
STATES = ("normal", "compromised")


class StructureClass(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    patterns: list[str]
    critical: bool = False
    margin_mm: float = Field(0.0, ge=0)
    warn_on_cross: bool = True


class TrajectoryRules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    classes: list[StructureClass]


class RemnantThreshold(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patterns: list[str]
    normal_percent: float = Field(ge=0, le=100)
    compromised_percent: float = Field(ge=0, le=100)


class RemnantRules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_state: str = "normal"
    thresholds: list[RemnantThreshold] = []


class PlanningRules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trajectory: TrajectoryRules
    remnant: RemnantRules = RemnantRules()
    miss_percent: float = Field(0.5, ge=0, le=50)

    def structure_class(self, name: str, label_critical: bool = False) -> dict:
        """``{class, critical, margin_mm, warn_on_cross}`` of a structure (first matching class)."""
        low = name.lower()
        cls = next((c for c in self.trajectory.classes if any(fnmatch.fnmatchcase(low, p) for p in c.patterns)), None)
        if cls is None:
            out = {"class": "unclassified", "critical": False, "margin_mm": 0.0, "warn_on_cross": True}
        else:
            out = {"class": cls.name, "critical": cls.critical, "margin_mm": cls.margin_mm,
                   "warn_on_cross": cls.warn_on_cross}
        if label_critical and not out["critical"]:
            vessel = next((c for c in self.trajectory.classes if c.name == "vessel" and c.critical), None)
            out.update(critical=True, margin_mm=max(out["margin_mm"], vessel.margin_mm if vessel else 5.0),
                       warn_on_cross=True)
        return out

    def remnant_threshold(self, structure: str, state: str | None = None) -> float | None:
        """Minimum remnant percentage of ``structure`` for the liver ``state``; None if none applies."""
        state = state or self.remnant.default_state
        if state not in STATES:
            raise ConfigError(f"liver state must be one of {list(STATES)}; found {state!r}")
        low = structure.lower()
        for t in self.remnant.thresholds:
            if any(fnmatch.fnmatchcase(low, p) for p in t.patterns):
                return t.normal_percent if state == "normal" else t.compromised_percent
        return None


@lru_cache(maxsize=8)
def _load(path: str, mtime: float) -> PlanningRules:
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError("top level must be a mapping", path=path)
    from pydantic import ValidationError

    try:
        return PlanningRules.model_validate(data)
    except ValidationError as e:
        raise pydantic_config_error(e, path=path, rule="planning rules schema") from None


def load_rules(path=None) -> PlanningRules:
    """The planning rules (default ``configs/planning.yaml``), cached per file version."""
    p = Path(path) if path else PLANNING_CONFIG
    try:
        mtime = p.stat().st_mtime
    except OSError:
        raise ConfigError("planning rules file not found", path=str(p)) from None
    return _load(str(p), mtime)
