"""DICOM ingest: index a folder, select series by declarative rules, read a series to a Volume.

Imports are lazy (pydicom and SimpleITK load on first use) so ``surgitwin --help`` stays fast.
"""
from __future__ import annotations

_EXPORTS = {
    "index_folder": "index", "Index": "index", "Study": "index", "Series": "index",
    "select_series": "select", "Selection": "select", "Rule": "select", "load_rules": "select",
    "selected": "select",
    "read_series": "read", "read_input": "read", "read_configured": "read", "read_pixels": "read", "load_ingest_options": "read",
    "scan_command": "scan",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
