"""One canonical axis order for processing, so results never depend on how a scan was stored.

The same patient stored with columns reversed, rows reversed, slices numbered from the other
end or transposed is the same physical image, but block grids, tie-breaks and anisotropic
filters of a segmenter follow the array order: results differed by thousands of voxels. Before
segmentation the volume is brought into the canonical order by an exact permutation and flips
of its axes (no resampling) and the results are mapped back the same way, so the scene keeps
the stored grid.

Canonical order: array axis k increases towards S, j towards P, i towards L ("SPL": an axial
CT stacked feet to head, DICOM's usual row and column directions), so the common layout needs
no copy. Oblique volumes use the nearest such order (the permutation with the largest direction
cosines).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ..geometry import orientation_code
from ..types import Volume

CANONICAL = "SPL"
_TARGET = (2, 1, 0)  # LPS axis each canonical array axis (k, j, i) runs along, increasing


@dataclass(frozen=True)
class Reorientation:
    """Axis permutation and flips taking a stored volume to the canonical order.

    ``perm[c]`` is the stored axis that becomes canonical axis ``c``; ``flip[c]`` says whether
    it is reversed. ``shape`` is the stored shape.
    """

    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]
    shape: tuple[int, int, int]
    stored_code: str

    @classmethod
    def of(cls, vol: Volume) -> "Reorientation":
        d = vol.affine[:3, :3] / np.linalg.norm(vol.affine[:3, :3], axis=0)
        best = max(itertools.permutations(range(3)),
                   key=lambda p: sum(abs(d[_TARGET[c], p[c]]) for c in range(3)))
        flip = tuple(bool(d[_TARGET[c], best[c]] < 0) for c in range(3))
        return cls(tuple(best), flip, tuple(vol.shape), orientation_code(vol.affine))

    @property
    def identity(self) -> bool:
        return self.perm == (0, 1, 2) and not any(self.flip)

    def note(self) -> str:
        if self.identity:
            return f"stored axis order {self.stored_code} is the canonical processing order {CANONICAL}"
        return (f"processed in the canonical axis order {CANONICAL} (stored {self.stored_code}: axes "
                f"{list(self.perm)}, flipped {[c for c in range(3) if self.flip[c]]}); results mapped back "
                f"to the stored grid exactly (no resampling)")

    def forward_array(self, arr: np.ndarray) -> np.ndarray:
        """Stored (..., k, j, i) -> canonical; leading axes (channels) are kept."""
        if self.identity:
            return arr
        lead = arr.ndim - 3
        out = np.transpose(arr, tuple(range(lead)) + tuple(lead + p for p in self.perm))
        flips = tuple(lead + c for c in range(3) if self.flip[c])
        if flips:
            out = np.flip(out, flips)
        return np.ascontiguousarray(out)

    def backward_array(self, arr: np.ndarray) -> np.ndarray:
        """Canonical (..., k, j, i) -> stored."""
        if self.identity:
            return arr
        lead = arr.ndim - 3
        flips = tuple(lead + c for c in range(3) if self.flip[c])
        if flips:
            arr = np.flip(arr, flips)
        inv = np.argsort(self.perm)
        return np.ascontiguousarray(np.transpose(arr, tuple(range(lead)) + tuple(lead + int(q) for q in inv)))

    def forward_affine(self, affine: np.ndarray) -> np.ndarray:
        a = np.eye(4)
        a[:3, 3] = affine[:3, 3]
        for c in range(3):
            col = affine[:3, self.perm[c]]
            if self.flip[c]:
                a[:3, 3] += col * (self.shape[self.perm[c]] - 1)
                col = -col
            a[:3, c] = col
        return a

    def forward(self, vol: Volume) -> Volume:
        if self.identity:
            return vol
        return Volume(self.forward_array(vol.array), self.forward_affine(vol.affine), vol.frame_of_reference_uid,
                      vol.source)

    def backward(self, vol: Volume, stored: Volume) -> Volume:
        """A result on the canonical grid -> the same values on ``stored``'s grid (its affine)."""
        if self.identity:
            return vol
        return Volume(self.backward_array(vol.array), stored.affine, stored.frame_of_reference_uid, vol.source)
