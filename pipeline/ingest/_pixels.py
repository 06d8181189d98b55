"""Decode the stored pixel values of one DICOM dataset: (frames, rows, columns).

Order of attempts, fastest first:
1. native little-endian data (explicit/implicit/deflated): ``np.frombuffer`` on Pixel Data,
   no copy; sign-extend / mask when BitsStored < BitsAllocated (what pydicom would do);
2. ``ds.pixel_array`` (pydicom 3 with the pylibjpeg plugins: RLE, JPEG, JPEG-LS, JPEG 2000,
   big endian);
3. SimpleITK/GDCM on the file (12-bit JPEG Extended and other streams pylibjpeg rejects).
   GDCM applies the modality rescale itself, so those values come back flagged ``prescaled``.
Every failure becomes a :class:`DicomError` naming the file and what was expected.
"""
from __future__ import annotations

import numpy as np

from ..errors import DicomError
from . import _common as c

NATIVE_LE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99"}


def transfer_syntax(ds) -> str | None:
    """TransferSyntaxUID, or the one pydicom inferred for a headerless file."""
    ts = c.get(getattr(ds, "file_meta", None) or {}, "TransferSyntaxUID")
    if ts:
        return str(ts)
    enc = getattr(ds, "original_encoding", None)  # (is_implicit_VR, is_little_endian) when parsed
    if enc and enc[0] is not None:
        implicit, little = enc
        if little:
            return "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"
        return "1.2.840.10008.1.2.2"
    return None


def stored_bounds(h: dict) -> tuple[float, float] | None:
    """(min, max) a stored value can take by BitsStored/PixelRepresentation (None if unknown).

    ``h`` is :func:`pipeline.ingest._common.fast_header`'s dict.
    """
    bs, pr = h.get("bs"), h.get("pr") or 0
    if bs is None or not 1 <= bs <= 32:
        return None
    return (-(2 ** (bs - 1)), 2 ** (bs - 1) - 1) if pr == 1 else (0, 2**bs - 1)


def _check_monochrome(ds, h: dict, path: str) -> None:
    spp = h["spp"] if h["spp"] is not None else 1
    if spp != 1:
        pi = h["photometric"] or "?"
        raise DicomError(f"a scalar volume needs one sample per pixel (MONOCHROME1/2); found SamplesPerPixel={spp} ({pi})",
                         path=path, rule="SamplesPerPixel == 1")
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DicomError("has no Pixel Data element: not an image instance (or truncated before its pixels)",
                         path=path, rule="image instances carry Pixel Data")


def _native(ds, h: dict, path: str, frames: int, rows: int, cols: int) -> np.ndarray | None:
    ba = h["ba"]
    elem = ds.get_item(0x7FE00010) if "PixelData" in ds else None
    data = None if elem is None else elem.value  # raw bytes: no conversion needed for native data
    if ba not in (8, 16, 32) or not isinstance(data, (bytes, bytearray)):
        return None
    signed = h["pr"] == 1
    dtype = np.dtype(("i" if signed else "u") + str(ba // 8)).newbyteorder("<")
    count = frames * rows * cols
    need = count * dtype.itemsize
    # DICOM pads an odd length with one byte; any other difference means the header does not
    # describe the data (BitsAllocated 8 over 16-bit pixels, wrong Rows/Columns/NumberOfFrames)
    # or the file is truncated: reading it anyway gives a garbage volume.
    if len(data) not in (need, need + (need % 2)):
        what = "the file is truncated or its header is wrong" if len(data) < need else (
            f"{len(data) - need} bytes too many: BitsAllocated, Rows, Columns or NumberOfFrames do not describe the data")
        raise DicomError(f"Pixel Data holds {len(data)} bytes; {frames} frame(s) x {rows} x {cols} x {ba} bits "
                         f"need {need}: {what}",
                         path=path, rule="len(PixelData) == NumberOfFrames*Rows*Columns*BitsAllocated/8 (+1 pad byte)")
    arr = np.frombuffer(data, dtype=dtype, count=count).reshape(frames, rows, cols)
    bs = h["bs"] if h["bs"] is not None else ba
    if 0 < bs < ba:
        if signed:  # sign-extend the BitsStored-bit value (writers differ in what they put above it)
            shift = ba - bs
            arr = (arr << shift) >> shift
        else:  # bits above BitsStored may hold overlays or garbage
            arr = arr & dtype.type((1 << bs) - 1)
    return arr


def _via_sitk(path: str, frames: int, rows: int, cols: int) -> np.ndarray:
    import SimpleITK as sitk

    img = sitk.ReadImage(path)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise RuntimeError(f"SimpleITK decoded {img.GetNumberOfComponentsPerPixel()} components per pixel")
    arr = sitk.GetArrayFromImage(img)
    if arr.size != frames * rows * cols:
        raise RuntimeError(f"SimpleITK decoded shape {arr.shape}, header says {frames}x{rows}x{cols}")
    return arr.reshape(frames, rows, cols)


def decode(ds, path: str, h: dict | None = None) -> tuple[np.ndarray, bool, str]:
    """Stored pixel values of all frames (``h``: the file's fast_header, computed when None).

    Returns
    -------
    pixels : (frames, rows, columns) ndarray, stored values (or rescaled when ``prescaled``)
    prescaled : bool, True when GDCM decoded the file and already applied the modality rescale
    decoder : str, which path decoded it ('native', 'pydicom', 'simpleitk')
    """
    h = c.fast_header(ds) if h is None else h
    _check_monochrome(ds, h, path)
    rows, cols = h["rows"], h["cols"]
    frames = max(1, int(h["frames"][0])) if h["frames"] else 1
    if not rows or not cols:
        raise DicomError("Rows/Columns missing or zero", path=path, rule="image instances state Rows and Columns")
    ts = transfer_syntax(ds)
    if ts in NATIVE_LE:
        arr = _native(ds, h, path, frames, int(rows), int(cols))
        if arr is not None:
            return arr, False, "native"
    if ts is None:
        raise DicomError("no Transfer Syntax UID and the encoding could not be inferred", path=path,
                         rule="pixel data needs a known transfer syntax")
    if not c.get(ds.file_meta, "TransferSyntaxUID"):
        ds.file_meta.TransferSyntaxUID = ts  # headerless file: pydicom's decoders need it stated
    try:
        arr = ds.pixel_array
        return np.asarray(arr).reshape(frames, int(rows), int(cols)), False, "pydicom"
    except Exception as e:  # noqa: BLE001 - decoder plugins raise anything; fall back, then report
        first = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
    try:
        return _via_sitk(path, frames, int(rows), int(cols)), True, "simpleitk"
    except Exception as e:  # noqa: BLE001 - SimpleITK/GDCM raise anything too; both reasons are reported below
        second = " ".join(str(e).split())[-200:]
    try:
        import pydicom

        ts_name = pydicom.uid.UID(ts).name
    except Exception:  # noqa: BLE001 - an unknown UID keeps its number in the message
        ts_name = ts
    raise DicomError(f"cannot decode pixel data ({ts_name}): pydicom: {first}; SimpleITK/GDCM: {second}",
                     path=path, rule="pixel data must decode with pydicom/pylibjpeg or GDCM")
