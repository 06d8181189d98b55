"""Checks on NIfTI files before SimpleITK reads them.

SimpleITK (ITK's NiftiImageIO) zero-fills a file whose data stops early and reads a voxel size
of 0 as 1 mm; both give a plausible-looking, wrong volume. :func:`check_nifti` reads the
header itself (NIfTI-1 and NIfTI-2, either byte order, gzipped or not) and refuses:

- data shorter than the header's dimensions x bitpix (nibabel refuses the same file);
- a voxel size (pixdim 1..3 of the spatial axes) that is zero, negative or not finite;
- dimensions that are zero or negative.
"""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

from ..errors import DicomError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_CHUNK = 1 << 20


def _open_head(path: Path, n: int) -> bytes:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            return f.read(n)
    except (OSError, EOFError, zlib.error) as e:
        raise DicomError(f"cannot read the NIfTI header: {e}", path=str(path), rule="NIfTI file must be readable") from None


def _data_size(path: Path) -> int:
    """Bytes in the (decompressed) file; a broken gzip stream counts up to where it breaks."""
    if not path.name.lower().endswith(".gz"):
        return path.stat().st_size
    total = 0
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            try:
                total += len(d.decompress(chunk))
                while d.eof and d.unused_data:  # concatenated gzip members
                    rest = d.unused_data
                    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    total += len(d.decompress(rest))
            except zlib.error:
                break
    return total


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
            return {"dim": dim, "bitpix": bitpix, "pixdim": pixdim, "vox_offset": vox_offset, "version": 1}
        if size == 540 and len(head) >= 540:
            bitpix = struct.unpack(end + "h", head[14:16])[0]
            dim = struct.unpack(end + "8q", head[16:80])
            pixdim = struct.unpack(end + "8d", head[104:168])
            vox_offset = struct.unpack(end + "q", head[168:176])[0]
            return {"dim": dim, "bitpix": bitpix, "pixdim": pixdim, "vox_offset": vox_offset, "version": 2}
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
    have = _data_size(path) - offset
    if have < need:
        pct = 100.0 * max(0, have) / need if need else 0.0
        raise DicomError(f"image data holds {max(0, have)} bytes but the header's dimensions {list(sizes)} x "
                         f"{h['bitpix']} bits need {need} ({pct:.1f} % present): the file is truncated",
                         path=str(path), rule="NIfTI data size == product(dim) x bitpix / 8")
