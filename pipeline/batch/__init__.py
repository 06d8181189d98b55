"""Batch processing: many studies through the single-case function, with a manifest.

``run_batch(inputs, out_dir, BatchOptions(...))`` is what ``surgitwin batch`` calls; see
:mod:`pipeline.batch.runner` for the output layout and guarantees, :mod:`.manifest` for the
manifest format, :mod:`.executors` for process pools and Dask, :mod:`.phi` for the PHI filter.
Imports are lazy so ``surgitwin --help`` stays fast.
"""
from __future__ import annotations

_EXPORTS = {
    "run_batch": "runner", "BatchOptions": "runner", "BatchSummary": "runner",
    "Manifest": "manifest", "discover": "inputs", "StudyItem": "inputs",
    "execute": "run_case", "run_study": "run_case", "make_executor": "executors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
