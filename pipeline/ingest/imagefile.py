"""Checks on NIfTI files before SimpleITK reads them.

SimpleITK (ITK's NiftiImageIO) zero-fills a file whose data stops early and reads a voxel size
of 0 as 1 mm; both give a plausible-looking, wrong volume. :func:`check_nifti` reads the
header itself (NIfTI-1 and NIfTI-2, either byte order, gzipped or not) and refuses:

- data shorter than the header's dimensions x bitpix (nibabel refuses the same file);
- a voxel size (pixdim 1..3 of the spatial axes) that is zero, negative or not finite;
- dimensions that are zero or negative;
- NaN or infinite voxels of float images (SimpleITK reads them as 0).
"""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import DicomError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes of real floating-point voxels
_CHUNK = 1 << 20


def _open_head(path: Path, n: int) -> bytes:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            return f.read(n)
    except (OSError, EOFError, zlib.error) as e:
        raise DicomError(f"cannot read the NIfTI header: {e}", path=str(path), rule="NIfTI file must be readable") from None


def _chunks(path: Path):
    """The (decompressed) bytes of the file in chunks; a broken gzip stream ends where it breaks."""
    with open(path, "rb") as f:
        if not path.name.lower().endswith(".gz"):
            while chunk := f.read(_CHUNK):
                yield chunk
            return
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while chunk := f.read(_CHUNK):
            try:
                yield d.decompress(chunk)
                while d.eof and d.unused_data:  # concatenated gzip members
                    rest = d.unused_data
                    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    yield d.decompress(rest)
            except zlib.error:
                return


def _scan(path: Path, offset: int, dtype: np.dtype | None) -> tuple[int, int]:
    """(bytes after ``offset``, count of non-finite values when ``dtype`` is a float type)."""
    if dtype is None and not path.name.lower().endswith(".gz"):
        return path.stat().st_size - offset, 0
    total, bad, skip, carry = 0, 0, offset, b""
    for chunk in _chunks(path):
        if skip:
            cut = min(skip, len(chunk))
            chunk, skip = chunk[cut:], skip - cut
        total += len(chunk)
        if dtype is not None and chunk:
            buf = carry + chunk
            n = len(buf) // dtype.itemsize * dtype.itemsize
            bad += int(np.count_nonzero(~np.isfinite(np.frombuffer(buf[:n], dtype=dtype))))
            carry = buf[n:]
    return total, bad


def _header(path: Path) -> dict:
    head = _open_head(path, 540)
    if len(head) < 348:
        raise DicomError(f"NIfTI header needs 348 bytes; the file holds {len(head)}", path=str(path),
                         rule="NIfTI file must hold a complete header")
    for end in ("<", ">"):
        size = struct.unpack(end + "i", head[:4])[0]
        if size == 348:
            dim = struct.unpack(end + "8h", head[40:56])
            bitpix = struct.unpack(end + "h", head[72:74])[0]
            pixdim = struct.unpack(end + "8f", head[76:108])
            vox_offset = struct.unpack(end + "f", head[108:112])[0]
            dtype = struct.unpack(end + "h", head[70:72])[0]
            return {"dim": dim, "bitpix": bitpix, "pixdim": pixdim, "vox_offset": vox_offset, "version": 1,
                    "datatype": dtype, "endian": end}
        if size == 540 and len(head) >= 540:
            bitpix = struct.unpack(end + "h", head[14:16])[0]
            dim = struct.unpack(end + "8q", head[16:80])
            pixdim = struct.unpack(end + "8d", head[104:168])
            vox_offset = struct.unpack(end + "q", head[168:176])[0]
            dtype = struct.unpack(end + "h", head[12:14])[0]
            return {"dim": dim, "bitpix": bitpix, "pixdim": pixdim, "vox_offset": vox_offset, "version": 2,
                    "datatype": dtype, "endian": end}
    raise DicomError("not a NIfTI-1 or NIfTI-2 header (sizeof_hdr is neither 348 nor 540)", path=str(path),
                     rule="NIfTI file must start with a NIfTI header")


def check_nifti(path) -> None:
    """Raise :class:`DicomError` naming the file and the rule when a NIfTI file cannot be read correctly."""
    path = Path(path)
    h = _header(path)
    dim, pixdim = h["dim"], h["pixdim"]
    ndim = dim[0]
    if not 1 <= ndim <= 7:
        raise DicomError(f"dim[0] (number of dimensions) must be 1..7; found {ndim}", path=str(path),
                         rule="NIfTI dim[0] in 1..7")
    sizes = dim[1:ndim + 1]
    if any(n < 1 for n in sizes):
        raise DicomError(f"every dimension must be >= 1; found dim {list(sizes)}", path=str(path),
                         rule="NIfTI dim[1..dim[0]] >= 1")
    spatial = min(3, ndim)
    bad = [(i, pixdim[i]) for i in range(1, spatial + 1) if not (math.isfinite(pixdim[i]) and pixdim[i] > 0)]
    if bad:
        raise DicomError(f"voxel size must be positive: pixdim {', '.join(f'[{i}] = {v:g}' for i, v in bad)} "
                         f"(a reader would silently use 1 mm)", path=str(path),
                         rule="NIfTI pixdim[1..3] > 0")
    if h["bitpix"] <= 0 or h["bitpix"] % 8:
        raise DicomError(f"bitpix must be a positive multiple of 8; found {h['bitpix']}", path=str(path),
                         rule="NIfTI bitpix in {8, 16, 32, 64, 128}")
    need = math.prod(sizes) * h["bitpix"] // 8
    offset = int(h["vox_offset"]) if math.isfinite(h["vox_offset"]) else 0
    offset = max(offset, 352 if h["version"] == 1 else 544)
    floats = _FLOAT_TYPES.get(h["datatype"])
    have, nonfinite = _scan(path, offset, None if floats is None else np.dtype(h["endian"] + floats))
    if have < need:
        pct = 100.0 * max(0, have) / need if need else 0.0
        raise DicomError(f"image data holds {max(0, have)} bytes but the header's dimensions {list(sizes)} x "
                         f"{h['bitpix']} bits need {need} ({pct:.1f} % present): the file is truncated",
                         path=str(path), rule="NIfTI data size == product(dim) x bitpix / 8")
    if nonfinite:
        raise DicomError(f"{nonfinite} voxel(s) are NaN or infinite (a reader would silently turn them into 0)",
                         path=str(path), rule="voxel values are finite numbers")
