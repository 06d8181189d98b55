"""Leaf helpers every plan-record builder uses (:mod:`.measure`, :mod:`.cut`, :mod:`.trajectory`,
:mod:`.lesion`, :mod:`.segments`) and :mod:`.plan` re-exports: JSON-friendly LPS points,
point checks, input-file hashes, software versions. Imports nothing of the planning package,
so the builders and :class:`~.plan.Planner` import one way.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import PlanningError

HASH_CACHE_SIZE = 512  # files remembered (a scene has a handful; a long session opens many scenes)


@lru_cache(maxsize=HASH_CACHE_SIZE)
def _hash_of(resolved: str, mtime: float, size: int) -> str:
    h = hashlib.sha256()
    with open(resolved, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def file_hash(path: Path) -> str:
    """sha256[:16] of a file, cached by (path, mtime, size) for the last :data:`HASH_CACHE_SIZE` files."""
    path = Path(path)
    st = path.stat()
    return _hash_of(str(path.resolve()), st.st_mtime, st.st_size)


def _software() -> dict:
    from ..config import software_versions

    return software_versions("numpy", "scipy", "trimesh")


def lps_list(points) -> list:
    """(n, 3) or (3,) array -> nested lists of floats rounded to 1e-4 mm (JSON-friendly)."""
    return np.round(np.asarray(points, dtype=np.float64), 4).tolist()


def check_point(p, what: str = "point") -> np.ndarray:
    a = np.asarray(p, dtype=np.float64).reshape(-1)
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        raise PlanningError(f"{what} must be 3 finite LPS coordinates (x y z in mm); found {p!r}")
    return a
