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


def volume_to_metatensor(volume: Volume, dtype=None, axcodes: str | None = None):
    """Volume -> ``MetaTensor`` of shape (1, nx, ny, nz) with a RAS affine (MONAI convention).

    ``axcodes`` (e.g. "RAS"): also reorder/flip the axes to the closest such orientation, as
    MONAI's ``Orientation`` would (exact: index permutation only). The one full-size copy (the
    cast to ``dtype``) is written in the volume's own memory order, with the flips applied while
    reading; the axis permutation is a strided view (a transposing copy of a 512x512x300 CT
    costs about 1 s more). MONAI's transforms accept the strided tensor (tested equal).
    """
    import torch
    from monai.data import MetaTensor

    dtype = dtype or torch.float32
    arr = np.asarray(volume.array)  # [k, j, i]; spatial axis a of [x, y, z] is array axis 2 - a
    affine = lps_kji_to_ras_xyz(volume.affine)
    perm = [0, 1, 2]
    if axcodes:
        from nibabel import orientations as nio

        transform = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(tuple(axcodes.upper())))
        affine = affine @ nio.inv_ornt_aff(transform, arr.shape[::-1])
        arr = arr[tuple(slice(None, None, -1) if transform[2 - ax, 1] == -1 else slice(None) for ax in range(3))]
        perm = np.argsort(transform[:, 0]).tolist()  # output axis b takes input axis perm[b]
    np_dtype = torch.empty((), dtype=dtype).numpy().dtype
    data = np.empty(arr.shape, np_dtype)
    np.copyto(data, arr, casting="unsafe")  # the one full-size copy, in memory order
    xyz = torch.from_numpy(data).permute(2, 1, 0).permute(*perm)
    return MetaTensor(xyz[None], affine=torch.as_tensor(affine, dtype=torch.float64))


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
