"""The one boundary between our volumes and MONAI's MetaTensors (both directions).

Our convention (:mod:`pipeline.types`): ``array[k, j, i]`` and a 4x4 affine mapping
``(k, j, i, 1)`` to **LPS** mm. MONAI's spatial transforms (Orientation, Spacing, Invert)
assume channel-first arrays indexed ``[c, x, y, z]`` with the NIfTI/nibabel **RAS** affine
mapping ``(x, y, z, 1)`` to RAS mm, where ``x`` is the fastest-varying file axis (our column
``i``) and ``z`` our slice axis ``k``. So, once each way:

* array: ``[k, j, i]`` -> ``[1, i, j, k]`` (reverse the three axes, add the channel axis);
* affine: reorder the index columns ``(k, j, i)`` -> ``(i, j, k)``, then flip the sign of the
  x and y rows (LPS -> RAS).

Nothing else in the code base converts between the two.
"""
from __future__ import annotations

import numpy as np

from ..geometry import LPS_TO_RAS
from ..types import Volume

_KJI_TO_IJK = [2, 1, 0, 3]  # affine column permutation (an involution: it converts back too)


def lps_kji_to_ras_xyz(affine_lps: np.ndarray) -> np.ndarray:
    """Our (k, j, i) -> LPS affine  ->  MONAI's (x, y, z) -> RAS affine."""
    return LPS_TO_RAS @ np.asarray(affine_lps, np.float64)[:, _KJI_TO_IJK]


def ras_xyz_to_lps_kji(affine_ras: np.ndarray) -> np.ndarray:
    """MONAI's (x, y, z) -> RAS affine  ->  our (k, j, i) -> LPS affine."""
    return (LPS_TO_RAS @ np.asarray(affine_ras, np.float64))[:, _KJI_TO_IJK]


def volume_to_metatensor(volume: Volume, dtype=None):
    """Volume -> ``MetaTensor`` of shape (1, ni, nj, nk) with a RAS affine (MONAI convention).

    The array is a transposed view where possible (no copy for float32 input).
    """
    import torch
    from monai.data import MetaTensor

    dtype = dtype or torch.float32
    arr = np.asarray(volume.array)
    t = torch.as_tensor(arr.transpose(2, 1, 0)[None])
    if t.dtype != dtype:
        t = t.to(dtype)
    return MetaTensor(t, affine=torch.as_tensor(lps_kji_to_ras_xyz(volume.affine), dtype=torch.float64))


def metatensor_affine_lps(t) -> np.ndarray:
    """The (k, j, i) -> LPS affine of a MetaTensor's spatial grid."""
    aff = t.affine
    aff = aff.detach().cpu().numpy() if hasattr(aff, "detach") else np.asarray(aff)
    return ras_xyz_to_lps_kji(aff.reshape(4, 4))


def to_kji(array_cxyz: np.ndarray) -> np.ndarray:
    """(C, x, y, z) array (MONAI order) -> (C, k, j, i) view (our order)."""
    return np.asarray(array_cxyz).transpose(0, 3, 2, 1)


def metatensor_to_volume(t, channel: int = 0, like: Volume | None = None) -> Volume:
    """One channel of a MONAI tensor (C, x, y, z) with RAS affine -> Volume (array[k, j, i], LPS)."""
    arr = t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
    out = np.ascontiguousarray(to_kji(arr)[channel])
    src = dict(like.source) if like is not None else {}
    return Volume(out, metatensor_affine_lps(t), like.frame_of_reference_uid if like is not None else None, src)
