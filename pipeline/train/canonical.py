"""The canonical training grid: isotropic, RAS-ordered, covering a volume's field of view.

A leaf of the train package (dataset, synth and evaluate all resample onto it).
"""
from __future__ import annotations

import numpy as np

from ..types import Volume


def canonical_grid(vol: Volume, spacing: float = 3.0) -> tuple[tuple[int, int, int], np.ndarray]:
    """Isotropic RAS-ordered grid covering ``vol``'s field of view.

    Returns
    -------
    shape : (3,) ints, along R, A, S
    affine : (4, 4) index (r, a, s) -> LPS mm. Axis 0 runs towards patient Right (-x LPS),
        axis 1 towards Anterior (-y LPS), axis 2 towards Superior (+z).
    """
    corners = np.array([[k, j, i] for k in (0, vol.shape[0] - 1) for j in (0, vol.shape[1] - 1)
                        for i in (0, vol.shape[2] - 1)], float)
    lps = vol.index_to_lps(corners)
    lo, hi = lps.min(0), lps.max(0)
    shape = tuple(int(np.floor((hi[d] - lo[d]) / spacing)) + 1 for d in range(3))
    aff = np.eye(4)
    aff[:3, :3] = np.diag([-spacing, -spacing, spacing])
    aff[:3, 3] = [hi[0], hi[1], lo[2]]
    return shape, aff


def to_canonical(vol: Volume, spacing: float = 3.0, order: int = 0, cval: float = 0.0) -> Volume:
    """Resample a volume (any orientation) onto its :func:`canonical_grid`, in physical space."""
    from ..geometry import resample_to_grid

    shape, aff = canonical_grid(vol, spacing)
    return resample_to_grid(vol, shape, aff, order=order, cval=cval,
                            dtype=vol.array.dtype if order == 0 else np.float32)
