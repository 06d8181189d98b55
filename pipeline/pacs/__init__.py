"""PACS integration: C-STORE listener (:mod:`.listener`, durable :mod:`.spool`) and DICOMweb
pull/push (:mod:`.dicomweb`). Imports are lazy (pynetdicom, requests load on first use)."""
from __future__ import annotations

_EXPORTS = {
    "listen": "listener", "ListenerOptions": "listener", "StoreSCP": "listener", "Spool": "spool",
    "pull_study": "dicomweb", "push_scene": "dicomweb", "make_client": "dicomweb", "PacsError": "dicomweb",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
