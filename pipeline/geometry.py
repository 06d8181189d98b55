"""Affine helpers and the only places where RAS or SimpleITK's index order appear.

See :mod:`pipeline.types` for the axis convention (``array[k, j, i]``, affine -> LPS mm).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import GeometryError
from .types import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_to_ras_affine(affine_lps: np.ndarray) -> np.ndarray:
    """LPS affine -> RAS affine for the same index space (NIfTI/nibabel boundary)."""
    return LPS_TO_RAS @ np.asarray(affine_lps, dtype=np.float64)


def ras_to_lps_affine(affine_ras: np.ndarray) -> np.ndarray:
    return LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64)


def affine_from_dicom(position, orientation, row_spacing, col_spacing, slice_step) -> np.ndarray:
    """Affine for ``array[k, j, i]`` from DICOM geometry.

    position: ImagePositionPatient of slice 0; orientation: ImageOrientationPatient (row dir,
    col dir); row_spacing/col_spacing: PixelSpacing[0]/[1]; slice_step: (3,) LPS vector from
    slice k to slice k+1 (not necessarily along the normal: gantry tilt shears it).
    """
    o = np.asarray(orientation, dtype=np.float64)
    row_dir, col_dir = o[:3], o[3:]
    a = np.eye(4)
    a[:3, 0] = np.asarray(slice_step, dtype=np.float64)
    a[:3, 1] = col_dir * float(row_spacing)
    a[:3, 2] = row_dir * float(col_spacing)
    a[:3, 3] = np.asarray(position, dtype=np.float64)
    return a


def orientation_code(affine: np.ndarray) -> str:
    """Three letters naming the LPS direction each array axis (k, j, i) increases towards.

    E.g. an axial CT stacked feet->head gives 'SPL'. Oblique axes get their dominant letter.
    """
    letters = ("LR", "PA", "SI")
    out = []
    for col in range(3):
        v = affine[:3, col]
        ax = int(np.argmax(np.abs(v)))
        out.append(letters[ax][0] if v[ax] > 0 else letters[ax][1])
    return "".join(out)


def is_oblique(affine: np.ndarray, tol_deg: float = 0.5) -> bool:
    d = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    cosines = np.max(np.abs(d), axis=0)
    return bool(np.any(np.degrees(np.arccos(np.clip(cosines, -1, 1))) > tol_deg))


# --- SimpleITK boundary ------------------------------------------------------------------

def volume_from_sitk(img, source: dict | None = None) -> Volume:
    """SimpleITK image (LPS physical space, index (x,y,z)) -> Volume (array[k, j, i])."""
    import SimpleITK as sitk

    if img.GetDimension() != 3:
        raise GeometryError(f"expected a 3-D image; found {img.GetDimension()}-D")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise GeometryError(f"expected a scalar image; found {img.GetNumberOfComponentsPerPixel()} components per voxel")
    arr = sitk.GetArrayFromImage(img)  # (z, y, x)
    sp = np.array(img.GetSpacing())
    d = np.array(img.GetDirection()).reshape(3, 3)
    a = np.eye(4)
    # sitk index (x, y, z) == our (i, j, k)
    a[:3, 2] = d[:, 0] * sp[0]
    a[:3, 1] = d[:, 1] * sp[1]
    a[:3, 0] = d[:, 2] * sp[2]
    a[:3, 3] = img.GetOrigin()
    return Volume(arr, a, None, source or {})


def volume_to_sitk(vol: Volume, array: np.ndarray | None = None):
    """Volume -> SimpleITK image. Requires orthogonal axes (SimpleITK has no shear)."""
    import SimpleITK as sitk

    arr = vol.array if array is None else array
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    sp = vol.spacing
    d = vol.direction
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
        raise GeometryError("volume axes must be orthogonal to be written as NIfTI/NRRD/MHA; found a sheared grid (resample first)")
    img.SetSpacing((float(sp[2]), float(sp[1]), float(sp[0])))
    img.SetOrigin(tuple(float(x) for x in vol.origin))
    dd = np.stack([d[:, 2], d[:, 1], d[:, 0]], axis=1)
    img.SetDirection(tuple(float(x) for x in dd.ravel()))
    return img


def read_image_file(path) -> Volume:
    """NIfTI / NRRD / MHA via SimpleITK (which converts the file's RAS to LPS on read)."""
    import SimpleITK as sitk
    from .errors import SurgitwinError

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise SurgitwinError(f"cannot read image file: {str(e).strip().splitlines()[-1]}", path=str(path)) from None
    if img.GetDimension() == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
    vol = volume_from_sitk(img, {"file": str(path)})
    return vol


def write_image_file(vol: Volume, path, array: np.ndarray | None = None, compress: bool = True) -> None:
    """Write NIfTI/NRRD/MHA atomically (temp name, then rename)."""
    import SimpleITK as sitk
    from .fileio import atomic_write

    img = volume_to_sitk(vol, array)
    if compress and str(path).endswith(".nii.gz"):
        atomic_write(path, lambda p: _write_nifti_gz(img, p))
    else:
        atomic_write(path, lambda p: sitk.WriteImage(img, str(p), compress))


def _write_nifti_gz(img, path, slope: float | None = None) -> None:
    """SimpleITK writes the NIfTI uncompressed (its geometry conventions, 0.1 s), then the file
    is gzipped on several threads at level 1 (SimpleITK's own gzip: one thread, level 6).
    ``slope``: the header's scl_slope (readers return stored value x slope as floats)."""
    import SimpleITK as sitk

    from .fileio import gzip_parallel

    raw = Path(path).with_name(Path(path).name[:-3] + ".raw.nii")
    try:
        sitk.WriteImage(img, str(raw), False)
        if slope is not None:
            with open(raw, "r+b") as f:  # NIfTI-1: scl_slope, scl_inter are float32 at bytes 112, 116
                f.seek(112)
                f.write(np.array([slope, 0.0], "<f4").tobytes())
        gzip_parallel(raw, path)
    finally:
        raw.unlink(missing_ok=True)


UNIT_STEPS = 255  # a 0..1 map on disk: uint8 with scl_slope 1/255 (steps of 0.004)


def _unit_steps(v: np.ndarray) -> np.ndarray:
    """0..1 values -> uint8 steps of 1/UNIT_STEPS (clipped; NaN -> 0)."""
    f = np.nan_to_num(np.clip(v.astype(np.float32), 0, 1), nan=0.0)
    return np.rint(f * UNIT_STEPS).astype(np.uint8)


def write_unit_map(vol: Volume, path, values: np.ndarray | None = None) -> None:
    """Write a 0..1 map (uncertainty) as uint8 NIfTI with scl_slope 1/255: a quarter of float32's
    size; SimpleITK, nibabel and Slicer read it back as floats 0..1 (quantised to 1/255)."""
    from .fileio import atomic_write

    v = vol.array if values is None else values
    q = np.empty(v.shape, np.uint8)
    if v.dtype == np.float16:  # one lookup per voxel: numpy's float16 arithmetic is slow
        lut = _unit_steps(np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16))
        for k0 in range(0, v.shape[0], 16):
            q[k0:k0 + 16] = lut[v[k0:k0 + 16].view(np.uint16)]
    else:
        for k0 in range(0, v.shape[0], 32):  # by slabs: no float32 copy of the whole map
            q[k0:k0 + 32] = _unit_steps(v[k0:k0 + 32])
    if not str(path).endswith(".nii.gz"):
        raise GeometryError(f"{path}: a 0..1 map is written as .nii.gz (uint8 with scl_slope)", path=path)
    img = volume_to_sitk(vol, q)
    atomic_write(path, lambda p: _write_nifti_gz(img, p, slope=1.0 / UNIT_STEPS))


# --- resampling ----------------------------------------------------------------------------

def resample_to_grid(vol: Volume, shape, affine, order: int = 1, cval: float = 0.0, dtype=None) -> Volume:
    """Resample ``vol`` onto the grid (shape, affine): pure index mapping, any affines (shear OK).

    order=0 nearest (labels), 1 linear. Uses scipy.ndimage.map_coordinates with one
    composed affine, so geometry is exact up to interpolation.
    """
    from scipy import ndimage

    affine = np.asarray(affine, dtype=np.float64)
    m = np.linalg.inv(vol.affine) @ affine  # target index -> source index
    # snap float noise (1e-12 from composing affines): an identical or flipped grid must map
    # voxel centres exactly, or edge voxels fall a hair outside and become cval
    near = np.abs(m - np.rint(m)) < 1e-6
    m[near] = np.rint(m[near])
    out = ndimage.affine_transform(
        vol.array.astype(np.float32) if order > 0 else vol.array,
        m[:3, :3], offset=m[:3, 3], output_shape=tuple(int(s) for s in shape),
        order=order, mode="constant", cval=cval, prefilter=False,
    )
    if dtype is not None:
        out = out.astype(dtype)
    return Volume(out, affine, vol.frame_of_reference_uid, dict(vol.source))


def resample_like(vol: Volume, reference: Volume, order: int = 1, cval: float = 0.0, dtype=None) -> Volume:
    return resample_to_grid(vol, reference.shape, reference.affine, order, cval, dtype)
