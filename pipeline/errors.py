"""One error hierarchy. Every message names the file/series and the rule that was broken.

Style (after highdicom): state the rule, then what was found, e.g.
``DicomError("series 1.2.3 (/data/ct): slice positions must be evenly spaced; found gaps of
2.0 mm at slices 10-11 and 4.0 mm at 20-21")``.
"""
from __future__ import annotations


class SurgitwinError(Exception):
    """Base of every error surgitwin raises on purpose (bad input, bad config, bad state)."""

    def __init__(self, message: str, *, path: str | None = None, rule: str | None = None):
        self.path = None if path is None else str(path)
        self.rule = rule
        prefix = f"{self.path}: " if self.path and self.path not in message else ""
        super().__init__(prefix + message)


class DicomError(SurgitwinError):
    """A DICOM file or series that cannot be read into a correct volume."""


class GeometryError(SurgitwinError):
    """Inconsistent or unsupported geometry (affines, grids, orientations)."""


class ConfigError(SurgitwinError):
    """A configuration file or value that fails validation (names the file and key)."""


class ModelError(SurgitwinError):
    """A segmentation model that cannot be loaded or run safely."""


class SceneError(SurgitwinError):
    """A scene bundle that is missing, incomplete or violates the scene contract."""


class PlanningError(SurgitwinError):
    """A planning request that cannot be answered (unknown structure, degenerate input)."""


class SystemToolMissing(SurgitwinError):
    """An optional external tool (dcm2niix, Xvfb, chromium, ...) is not installed."""


def pydantic_problems(e, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, message with what was found) for each error of a pydantic ``ValidationError``,
    keys prefixed with ``prefix`` (a section name): the one formatting of validation errors."""
    out = []
    for err in e.errors():
        key = ".".join([*filter(None, [prefix]), *(str(x) for x in err["loc"])])
        msg = "unknown key (misspelt?)" if err["type"] == "extra_forbidden" else err["msg"]
        if "input" in err and not isinstance(err["input"], dict):
            msg += f" (found {err['input']!r})"
        out.append((key, msg))
    return out


def pydantic_config_error(e, *, path=None, prefix: str = "", rule: str | None = None) -> ConfigError:
    """The first error of a pydantic ``ValidationError`` as a ConfigError naming the file and the
    dotted key (the key is the rule unless ``rule`` is given)."""
    key, msg = pydantic_problems(e, prefix)[0]
    return ConfigError(f"key '{key}': {msg}", path=None if path is None else str(path), rule=rule or key)
