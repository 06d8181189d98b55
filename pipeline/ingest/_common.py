"""Helpers shared by :mod:`index` and :mod:`read`: file sniffing, tolerant tag access,
slice geometry (classic and enhanced multi-frame) and plane naming.

Everything here works on pydicom datasets and plain numpy; nothing here raises anything but
:class:`pipeline.errors.DicomError` on purpose.
"""
from __future__ import annotations

import contextlib
import logging
import os
import stat
import struct
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

# SOP classes / modalities that carry no image volume for us (they may carry pixels: RTDOSE, SEG).
NON_IMAGE_MODALITIES = frozenset({"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "RTIMAGE",
                                  "SR", "PR", "KO", "REG", "RWV", "DOC", "PLAN", "FID", "AU", "ECG"})
NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.66",   # SEG, raw data, spatial registration, surface
    "1.2.840.10008.5.1.4.1.1.481",  # RT objects (dose, struct, plan, ...)
    "1.2.840.10008.5.1.4.1.1.88",   # structured reports
    "1.2.840.10008.5.1.4.1.1.11",   # presentation states
    "1.2.840.10008.5.1.4.1.1.104",  # encapsulated PDF/CDA
)
DICOMDIR_SOP = "1.2.840.10008.1.3.10"
LOCALIZER_WORDS = ("LOCALIZER", "SCOUT", "TOPOGRAM", "SURVEY")


@contextlib.contextmanager
def quiet_pydicom():
    """Silence pydicom's per-element validation warnings (and their log copies) while reading
    messy real data: a malformed UI in one file is not the user's problem unless it breaks a rule
    we check, and then our own error says so."""
    log = logging.getLogger("pydicom")
    level = log.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        log.setLevel(logging.ERROR)
        try:
            yield
        finally:
            log.setLevel(level)


def not_regular(path) -> str | None:
    """None for a regular file (symlinks followed), else why it must never be opened.

    Opening a named pipe (FIFO) blocks until a writer appears: forever, in an unattended run.
    Sockets and devices are no scans either.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return f"unreadable: {e.strerror}"
    if stat.S_ISREG(mode):
        return None
    kind = ("named pipe (FIFO)" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode)
            else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "folder" if stat.S_ISDIR(mode)
            else "special file")
    return f"not a regular file ({kind}): never opened"


def walk_files(root, *, deadline: float | None = None) -> tuple[list[Path], list[tuple[str, str]]]:
    """Regular files under ``root`` (sorted, dot-names and symlinked folders left out) and
    (path, reason) for everything else. ``deadline`` (time.monotonic()) bounds the walk: a
    :class:`DicomError` names the folder when it is passed."""
    from ..errors import DicomError

    files: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        if deadline is not None and time.monotonic() > deadline:
            raise DicomError(f"listing the folder exceeded its time limit after {len(files)} files (at {dirpath})",
                             path=str(root), rule="discovery finishes within its time limit per input")
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            p = Path(dirpath) / f
            why = not_regular(p)
            if why:
                skipped.append((str(p), why))
            else:
                files.append(p)
    return files, skipped


def sniff_dicom(path: Path) -> str | None:
    """Cheap check before pydicom: None if the file may be DICOM, else the reason it is not.

    Accepts a Part-10 file ('DICM' at byte 128) or a raw dataset whose first tag is a plausible
    group (0002..0028, little or big endian): headerless exports start that way, while text,
    NIfTI, PNG, ZIP... do not. Parsing garbage with ``force=True`` can produce nonsense
    datasets, so this filter is what keeps ``force=True`` safe.
    """
    why = not_regular(path)
    if why:
        return why
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as e:
        return f"unreadable: {e.strerror}"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return None
    if len(head) < 8:
        return f"not DICOM: only {len(head)} bytes"
    g_le, e_le = struct.unpack("<HH", head[:4])
    g_be = struct.unpack(">H", head[:2])[0]
    if (0x0002 <= g_le <= 0x0028 and g_le % 2 == 0) or (0x0002 <= g_be <= 0x0028 and g_be % 2 == 0):
        return None
    return "not DICOM: no 'DICM' marker at byte 128 and the first tag is not a plausible DICOM group"


def get(ds, keyword: str, default: Any = None) -> Any:
    """``ds.keyword`` that never raises (malformed values read as ``default``)."""
    try:
        v = ds.get(keyword, default)
        return default if v is None or v == "" else v
    except Exception:  # noqa: BLE001 - a malformed element must not abort indexing
        return default


def floats(value, n: int | None = None) -> np.ndarray | None:
    """DS/FD multi-value -> float64 array (None when absent, malformed or of the wrong length)."""
    if value is None:
        return None
    try:
        arr = np.array([float(x) for x in (value if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)) else [value])])
    except (TypeError, ValueError):
        return None
    if n is not None and arr.size != n:
        return None
    if not np.all(np.isfinite(arr)):
        return None
    return arr


def text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def str_tuple(value) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(v.strip().upper() for v in value.split("\\") if v.strip())
    try:
        return tuple(str(v).strip().upper() for v in value)
    except TypeError:
        return (str(value).strip().upper(),)


def slice_normal(iop) -> np.ndarray:
    """(3,) unit normal = cross(row direction, column direction) of ImageOrientationPatient."""
    iop = np.asarray(iop, dtype=np.float64)
    n = np.cross(iop[:3], iop[3:])
    norm = np.linalg.norm(n)
    return n / norm if norm > 0 else n


def plane_name(iop, oblique_deg: float = 10.0) -> tuple[str, float]:
    """Name the slice plane of an ImageOrientationPatient and its angle to that plane.

    Returns ('axial' | 'coronal' | 'sagittal' | 'oblique', obliquity in degrees). A plane within
    ``oblique_deg`` of a cardinal plane carries that plane's name (a 5 degree AC-PC tilt is
    still read as 'axial'); beyond it, 'oblique'.
    """
    n = slice_normal(iop)
    if not np.any(n):
        return "unknown", float("nan")
    ax = int(np.argmax(np.abs(n)))
    angle = float(np.degrees(np.arccos(min(1.0, abs(n[ax])))))
    name = ("sagittal", "coronal", "axial")[ax]
    return (name if angle <= oblique_deg else "oblique"), angle


def is_non_image(modality: str, sop_class: str) -> bool:
    return modality.upper() in NON_IMAGE_MODALITIES or any(sop_class.startswith(p) for p in NON_IMAGE_SOP_PREFIXES)


def _first(seq):
    try:
        return seq[0] if seq is not None and len(seq) else None
    except Exception:  # noqa: BLE001 - a malformed sequence reads as absent
        return None


def frame_group(ds, frame: int, seq_keyword: str):
    """Item of a functional-group macro for one frame: per-frame first, then shared."""
    per = get(ds, "PerFrameFunctionalGroupsSequence")
    if per is not None and frame < len(per):
        item = _first(get(per[frame], seq_keyword))
        if item is not None:
            return item
    shared = _first(get(ds, "SharedFunctionalGroupsSequence"))
    if shared is not None:
        return _first(get(shared, seq_keyword))
    return None


def n_frames(ds) -> int:
    try:
        return max(1, int(get(ds, "NumberOfFrames", 1)))
    except (TypeError, ValueError):
        return 1


def is_enhanced(ds) -> bool:
    return "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds


def frame_geometry(ds, frame: int) -> dict:
    """Geometry and rescale of one frame.

    Returns dict with ``ipp`` (3,) | None, ``iop`` (6,) | None, ``pixel_spacing`` (2,) | None
    (row spacing, column spacing), ``thickness``, ``slope``, ``intercept``. Enhanced objects read
    the functional groups (per-frame overrides shared); classic objects the top-level tags.
    """
    if is_enhanced(ds):
        pos = frame_group(ds, frame, "PlanePositionSequence")
        ori = frame_group(ds, frame, "PlaneOrientationSequence")
        meas = frame_group(ds, frame, "PixelMeasuresSequence")
        pvt = frame_group(ds, frame, "PixelValueTransformationSequence")
        ipp = floats(get(pos, "ImagePositionPatient"), 3) if pos is not None else None
        iop = floats(get(ori, "ImageOrientationPatient"), 6) if ori is not None else None
        ps = floats(get(meas, "PixelSpacing"), 2) if meas is not None else None
        thick = get(meas, "SliceThickness") if meas is not None else None
        slope = get(pvt, "RescaleSlope") if pvt is not None else None
        icpt = get(pvt, "RescaleIntercept") if pvt is not None else None
        # Some writers keep the classic tags at top level as well; fall back to them.
        ipp = ipp if ipp is not None else floats(get(ds, "ImagePositionPatient"), 3)
        iop = iop if iop is not None else floats(get(ds, "ImageOrientationPatient"), 6)
        ps = ps if ps is not None else floats(get(ds, "PixelSpacing"), 2)
        slope = slope if slope is not None else get(ds, "RescaleSlope")
        icpt = icpt if icpt is not None else get(ds, "RescaleIntercept")
        thick = thick if thick is not None else get(ds, "SliceThickness")
    else:
        ipp = floats(get(ds, "ImagePositionPatient"), 3)
        iop = floats(get(ds, "ImageOrientationPatient"), 6)
        ps = floats(get(ds, "PixelSpacing"), 2)
        thick, slope, icpt = get(ds, "SliceThickness"), get(ds, "RescaleSlope"), get(ds, "RescaleIntercept")
    try:
        slope = 1.0 if slope is None else float(slope)
        icpt = 0.0 if icpt is None else float(icpt)
    except (TypeError, ValueError):
        slope, icpt = float("nan"), float("nan")
    try:
        thick = None if thick is None else float(thick)
    except (TypeError, ValueError):
        thick = None
    return {"ipp": ipp, "iop": iop, "pixel_spacing": ps, "thickness": thick, "slope": slope, "intercept": icpt}


# -- fast header access ------------------------------------------------------------------------
# ``ds.get(keyword)`` converts and validates each value (~20 us per tag); on a 300-file series
# that cost more than parsing the files. ``get_item`` returns the raw element, whose bytes are
# parsed here for the handful of tags the reader needs on every file.
_FAST = {"sop": (0x00080016, "s"), "modality": (0x00080060, "s"), "series_uid": (0x0020000E, "s"),
         "for_uid": (0x00200052, "s"), "image_type": (0x00080008, "s"), "ipp": (0x00200032, "f"),
         "iop": (0x00200037, "f"), "ps": (0x00280030, "f"), "intercept": (0x00281052, "f"),
         "slope": (0x00281053, "f"), "thickness": (0x00180050, "f"), "spp": (0x00280002, "u"),
         "rows": (0x00280010, "u"), "cols": (0x00280011, "u"), "ba": (0x00280100, "u"),
         "bs": (0x00280101, "u"), "pr": (0x00280103, "u"), "frames": (0x00280008, "f"),
         "photometric": (0x00280004, "s"), "grid_offsets": (0x3004000C, "f"),
         "study_uid": (0x0020000D, "s"), "instance": (0x00200013, "f"), "echo": (0x00180086, "s"),
         "series_number": (0x00200011, "f"), "description": (0x0008103E, "s")}


def _parse_raw(value, kind: str, little: bool):
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        if kind == "u":
            return int.from_bytes(value[:2], "little" if little else "big") if len(value) >= 2 else None
        txt = value.decode("latin-1").strip("\x00 ")
        if kind == "s":
            return txt
        try:
            return [float(x) for x in txt.split("\\")] if txt else None
        except ValueError:
            return None
    # already converted by pydicom (element accessed before)
    if kind == "u":
        return int(value)
    if kind == "s":
        return text(value)
    try:
        return [float(x) for x in value] if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [float(value)]
    except (TypeError, ValueError):
        return None


def fast_header(ds) -> dict:
    """The reader's per-file tags, parsed from raw elements: str, int, or list of float (or None)."""
    out = {}
    for key, (tag, kind) in _FAST.items():
        try:
            elem = ds.get_item(tag)
        except Exception:  # noqa: BLE001 - a malformed element reads as absent
            elem = None
        if elem is None:
            out[key] = None
            continue
        try:
            out[key] = _parse_raw(elem.value, kind, getattr(elem, "is_little_endian", True))
        except Exception:  # noqa: BLE001 - a malformed value reads as absent
            out[key] = None
    return out


def classic_geometry(h: dict) -> dict:
    """:func:`frame_geometry`'s dict for a classic (single-plane) image from :func:`fast_header`."""
    def vec(v, n):
        return np.array(v, dtype=np.float64) if v is not None and len(v) == n and np.all(np.isfinite(v)) else None

    slope = h["slope"][0] if h["slope"] else 1.0
    icpt = h["intercept"][0] if h["intercept"] else 0.0
    return {"ipp": vec(h["ipp"], 3), "iop": vec(h["iop"], 6), "pixel_spacing": vec(h["ps"], 2),
            "thickness": h["thickness"][0] if h["thickness"] else None, "slope": float(slope), "intercept": float(icpt)}
