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
