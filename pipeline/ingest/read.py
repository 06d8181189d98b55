"""Read a DICOM series (or a single multi-frame file) into a :class:`pipeline.types.Volume`.

What makes this right on real data (each a documented trap):

- slices are ordered by position along the slice normal ``cross(row, col) . IPP``, never by
  file name or InstanceNumber;
- RescaleSlope/Intercept are applied per slice (they may differ); the result is int16 when the
  mapping is exact and fits, else float32;
- enhanced multi-frame objects are read from their functional groups (PlanePosition,
  PlaneOrientation, PixelMeasures, PixelValueTransformation);
- gantry tilt and uneven spacing are resampled to a regular orthogonal grid (or refused), and
  missing or duplicate slices are errors unless duplicates are byte-identical; every such
  decision is written to ``Volume.source['notes']`` / ``source['resampled']``;
- every failure is a :class:`DicomError` naming the file or series and the rule broken.

Array convention: ``Volume.array[k, j, i]`` = [slice, row, column], affine -> LPS mm (see
:mod:`pipeline.types`).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, DicomError
from ..types import Volume
from . import _common as c
from ._common import quiet_pydicom
from ._pixels import decode, stored_bounds, transfer_syntax
from ._stack import plan_stack, regrid
from .imagefile import NIFTI_SUFFIXES, check_nifti

MISSING_RULE = "no missing slices (gap = k x spacing)"
IMAGE_FILE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
OPTION_DEFAULTS: dict[str, Any] = {"on_uneven": "resample", "uneven_spacing": "median", "on_missing": "error",
                                   "on_tilt": "resample", "spacing_tolerance": 0.01, "max_workers": 4}
_CHOICES = {"on_uneven": ("resample", "refuse"), "on_missing": ("error", "resample"), "on_tilt": ("resample", "keep")}


def load_ingest_options(path=None) -> dict:
    """Reader options from the ``ingest:`` section of a pipeline YAML (defaults filled in)."""
    import yaml

    from .select import DEFAULT_CONFIG

    p = Path(path) if path is not None else DEFAULT_CONFIG
    if path is None and not p.exists():
        return dict(OPTION_DEFAULTS)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read ingest options: {e}", path=str(p)) from None
    section = data.get("ingest") or {}
    return check_options({**OPTION_DEFAULTS, **section}, where=f"{p}: ingest")


def check_options(opts: dict, where: str = "ingest") -> dict:
    unknown = set(opts) - set(OPTION_DEFAULTS)
    if unknown:
        raise ConfigError(f"{where}: unknown options {sorted(unknown)}; allowed: {sorted(OPTION_DEFAULTS)}")
    for k, allowed in _CHOICES.items():
        if opts.get(k) not in allowed:
            raise ConfigError(f"{where}.{k}: must be one of {list(allowed)}; found {opts.get(k)!r}")
    us = opts.get("uneven_spacing")
    if not (us in ("median", "min") or (isinstance(us, (int, float)) and not isinstance(us, bool) and us > 0)):
        raise ConfigError(f"{where}.uneven_spacing: must be 'median', 'min' or a positive number of mm; found {us!r}")
    if not (isinstance(opts.get("spacing_tolerance"), (int, float)) and 0 < opts["spacing_tolerance"] < 0.5):
        raise ConfigError(f"{where}.spacing_tolerance: must be a fraction in (0, 0.5); found {opts.get('spacing_tolerance')!r}")
    return opts


# -- one file -----------------------------------------------------------------------------------

@dataclass
class _File:
    path: str
    pixels: np.ndarray  # (frames, rows, cols) stored values (rescaled already when prescaled)
    prescaled: bool
    decoder: str
    geo: list[dict]
    meta: dict
    bounds: tuple[float, float] | None


def _read_file(path: str, full: bool = True) -> _File:
    """Read and decode one file. ``full=False`` skips descriptive tags (taken from the first file)."""
    import pydicom

    why = c.sniff_dicom(Path(path))
    if why:
        raise DicomError(why, path=path, rule="input files must be DICOM")
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as e:  # noqa: BLE001 - any parser failure: report it as this file's problem
        raise DicomError(f"unreadable DICOM: {type(e).__name__}: {' '.join(str(e).split())[:200]}", path=path,
                         rule="file must parse as DICOM") from None
    h = c.fast_header(ds)
    sop = h["sop"] or str(c.get(getattr(ds, "file_meta", None) or {}, "MediaStorageSOPClassUID", "") or "")
    modality = (h["modality"] or "").upper()
    if sop == c.DICOMDIR_SOP or "DirectoryRecordSequence" in ds:
        raise DicomError("is a DICOMDIR (media directory), not an image", path=path, rule="input files must be images")
    if c.is_non_image(modality, sop):
        raise DicomError(f"is not an image volume instance (Modality {modality or '?'}, SOP class {sop or '?'})",
                         path=path, rule="only image instances (CT, MR, PT, ...) become a Volume")
    pixels, prescaled, decoder = decode(ds, path, h)
    nf = pixels.shape[0]
    if c.is_enhanced(ds):
        geo = [c.frame_geometry(ds, f) for f in range(nf)]
    else:
        g = c.classic_geometry(h)
        geo = [g] * nf
        offsets = h["grid_offsets"]
        if nf > 1 and offsets is not None and len(offsets) == nf and g["ipp"] is not None and g["iop"] is not None:
            # classic multi-frame (NM/RT style): frame f lies offsets[f] mm along the normal
            nrm = c.slice_normal(g["iop"])
            geo = [{**g, "ipp": g["ipp"] + o * nrm} for o in offsets]
    meta = {"series_uid": h["series_uid"] or "", "for_uid": h["for_uid"] or None,
            "ts": transfer_syntax(ds) or "?", "image_type": c.str_tuple(h["image_type"])}
    if full:  # ~0.2 ms per file of tag conversions: only the first file's are reported
        meta.update(_describe(ds, modality, sop))
    return _File(path, pixels, prescaled, decoder, geo, meta, None if prescaled else stored_bounds(h))


def _describe(ds, modality: str, sop: str) -> dict:
    tilt = c.get(ds, "GantryDetectorTilt")
    return {
        "study_uid": str(c.get(ds, "StudyInstanceUID", "") or ""),
        "modality": modality, "description": c.text(c.get(ds, "SeriesDescription", "")), "sop_class": sop,
        "series_number": c.get(ds, "SeriesNumber"),
        "photometric": str(c.get(ds, "PhotometricInterpretation", "") or ""),
        "tilt": float(tilt) if c.floats(tilt, 1) is not None else None,
        "between": c.floats(c.get(ds, "SpacingBetweenSlices"), 1), "manufacturer": c.text(c.get(ds, "Manufacturer", "")),
        "body_part": c.text(c.get(ds, "BodyPartExamined", "")), "study_description": c.text(c.get(ds, "StudyDescription", "")),
    }


def _safe_read(path: str, full: bool = False) -> _File | DicomError:
    try:
        return _read_file(path, full)
    except DicomError as e:
        return e
    except Exception as e:  # noqa: BLE001 - broken files never surface as raw tracebacks
        return DicomError(f"failed to read: {type(e).__name__}: {' '.join(str(e).split())[:200]}", path=path,
                          rule="file must be a readable DICOM image")


def read_pixels(path) -> tuple[np.ndarray, str]:
    """Decoded pixel values of one file, without geometry: for decoder checks and QA.

    Returns
    -------
    pixels : (frames, rows, columns) ndarray of stored values (already rescaled when the
        decoder is 'simpleitk', whose GDCM applies RescaleSlope/Intercept)
    decoder : 'native' | 'pydicom' | 'simpleitk'
    """
    import pydicom

    path = str(path)
    why = c.sniff_dicom(Path(path))
    if why:
        raise DicomError(why, path=path, rule="input files must be DICOM")
    with quiet_pydicom():
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception as e:  # noqa: BLE001 - any parser failure is this file's DicomError
            raise DicomError(f"unreadable DICOM: {type(e).__name__}: {e}", path=path, rule="file must parse as DICOM") from None
        pixels, _, decoder = decode(ds, path)
    return pixels, decoder


# -- many files -> one volume ------------------------------------------------------------------------

def _resolve(source) -> list[str]:
    from .index import Series

    if isinstance(source, Series):
        return list(source.files)
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir():
            raise DicomError("read_series takes a Series or files; for a folder use read_input (index + select)",
                             path=str(p), rule="read_series input is files")
        return [str(p)]
    files = [str(f) for f in source]
    if not files:
        raise DicomError("no files given: a series needs at least one instance", rule="non-empty series")
    return files


def _series_name(meta: dict, files: Sequence[str]) -> str:
    folder = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files]) if files else "?"
    desc = f" '{meta['description']}'" if meta.get("description") else ""
    return f"series {meta.get('series_uid') or '?'}{desc} ({len(files)} file{'s' if len(files) != 1 else ''} in {folder})"


def _check_consistent(data: list[_File], where: str) -> None:
    def fail(rule: str, what: str):
        raise DicomError(f"{where}: {rule}; {what}", rule=rule)

    uids = {}
    for f in data:
        uids.setdefault(f.meta["series_uid"], []).append(os.path.basename(f.path))
    if len(uids) > 1:
        fail("all files must belong to one series", "found " + ", ".join(f"{u or '(none)'} ({len(v)} files, e.g. {v[0]})" for u, v in uids.items()))
    fors = {str(f.meta["for_uid"]) for f in data if f.meta["for_uid"]}
    if len(fors) > 1:
        fail("all slices must share one FrameOfReferenceUID", f"found {sorted(fors)}")
    ref = data[0]
    r0, c0 = ref.pixels.shape[1:]
    g0 = ref.geo[0]
    for f in data:
        if f.pixels.shape[1:] != (r0, c0):
            fail("all slices must share Rows/Columns", f"{os.path.basename(f.path)} is {f.pixels.shape[1]}x"
                 f"{f.pixels.shape[2]}, {os.path.basename(ref.path)} is {r0}x{c0}")
    geos = [(f, k, g) for f in data for k, g in enumerate(f.geo)]

    def label(f, k):
        name = os.path.basename(f.path)
        return name if len(f.geo) == 1 else f"{name} frame {k + 1}"

    for key, tag in (("ipp", "ImagePositionPatient"), ("iop", "ImageOrientationPatient"), ("pixel_spacing", "PixelSpacing")):
        bad = [label(f, k) for f, k, g in geos if g[key] is None]
        if bad:
            fail(f"every slice needs {tag} to be placed in patient space",
                 f"{len(bad)} slice(s) have none (or a malformed one), e.g. {', '.join(bad[:3])}")
    row, col = g0["iop"][:3], g0["iop"][3:]
    if abs(np.linalg.norm(row) - 1) > 1e-2 or abs(np.linalg.norm(col) - 1) > 1e-2 or abs(row @ col) > 1e-2:
        fail("ImageOrientationPatient must hold two orthogonal unit vectors",
             f"{label(ref, 0)} has {np.round(g0['iop'], 5).tolist()}")
    if np.any(g0["pixel_spacing"] <= 0):
        fail("PixelSpacing must be positive", f"{label(ref, 0)} has {g0['pixel_spacing'].tolist()}")
    # vectorised: per-frame np.allclose calls cost more than reading the files
    iop = np.array([g["iop"] for _, _, g in geos])
    bad = np.flatnonzero(np.abs(iop - g0["iop"]).max(axis=1) > 1e-4)
    if bad.size:
        f, k, g = geos[bad[0]]
        fail("all slices must share ImageOrientationPatient",
             f"{label(f, k)} has {np.round(g['iop'], 5).tolist()}, first slice {np.round(g0['iop'], 5).tolist()}")
    ps = np.array([g["pixel_spacing"] for _, _, g in geos])
    bad = np.flatnonzero(np.abs(ps - g0["pixel_spacing"]).max(axis=1) > 1e-4 * np.abs(g0["pixel_spacing"]).max() + 1e-6)
    if bad.size:
        f, k, g = geos[bad[0]]
        fail("all slices must share PixelSpacing", f"{label(f, k)} has {g['pixel_spacing'].tolist()}, "
             f"first slice {g0['pixel_spacing'].tolist()}")
    for f, k, g in geos:
        if not (np.isfinite(g["slope"]) and np.isfinite(g["intercept"]) and g["slope"] != 0):
            fail("RescaleSlope/Intercept must be finite numbers (slope non-zero)", f"{label(f, k)} has {g['slope']}, {g['intercept']}")


def _output_dtype(raws: list[np.ndarray], slopes: np.ndarray, icpts: np.ndarray, bounds: list) -> np.dtype:
    """int16 when stored->rescaled is exact and fits, the stored type when there is no rescale, else float32."""
    if not all(np.issubdtype(r.dtype, np.integer) for r in raws):
        return np.dtype(np.float32)
    identity = bool(np.all(slopes == 1) and np.all(icpts == 0))
    if identity:
        dt = np.result_type(*{r.dtype.newbyteorder("=") for r in raws})
        return dt if dt.itemsize <= 2 else (np.dtype(np.int32) if np.can_cast(dt, np.int32) else np.dtype(np.float32))
    if not (np.all(np.mod(slopes, 1) == 0) and np.all(np.mod(icpts, 1) == 0)):
        return np.dtype(np.float32)
    i16 = np.iinfo(np.int16)
    if np.abs(slopes).max() > i16.max or np.abs(icpts).max() > i16.max:
        return np.dtype(np.float32)
    lo_all, hi_all = np.inf, -np.inf
    for r, s, i, b in zip(raws, slopes, icpts, bounds):
        lo, hi = b if b is not None else (np.iinfo(r.dtype).min, np.iinfo(r.dtype).max)
        # the bit depth alone may not prove the result fits: then look at the values, only at
        # the end that can overflow (one pass instead of two)
        if (s * lo if s > 0 else s * hi) + i < i16.min:
            if s > 0:
                lo = float(r.min())
            else:
                hi = float(r.max())
        if (s * hi if s > 0 else s * lo) + i > i16.max:
            if s > 0:
                hi = float(r.max())
            else:
                lo = float(r.min())
        lo_all, hi_all = min(lo_all, min(s * lo, s * hi) + i), max(hi_all, max(s * lo, s * hi) + i)
    if i16.min <= lo_all and hi_all <= i16.max:
        return np.dtype(np.int16)
    return np.dtype(np.int32) if -(2**31) <= lo_all and hi_all < 2**31 else np.dtype(np.float32)


def _rescaled_stack(raws: list[np.ndarray], slopes: np.ndarray, icpts: np.ndarray, bounds: list) -> tuple[np.ndarray, str]:
    """(n, rows, cols) rescaled values from per-slice stored arrays; note says what was applied."""
    from concurrent.futures import ThreadPoolExecutor

    from ..config import cap_threads

    dtype = _output_dtype(raws, slopes, icpts, bounds)
    out = np.empty((len(raws),) + raws[0].shape, dtype=dtype)
    s_t, i_t = slopes.astype(dtype), icpts.astype(dtype)
    scale, shift = bool(np.any(slopes != 1)), bool(np.any(icpts != 0))

    def one(k: int) -> None:  # copy and rescale each slice while it is in cache (numpy frees the GIL)
        # integer targets wrap modulo 2^n in these in-place ops: exact once the result fits
        o = out[k]
        np.copyto(o, raws[k], casting="unsafe")
        if scale:
            np.multiply(o, s_t[k], out=o, casting="unsafe")
        if shift:
            np.add(o, i_t[k], out=o, casting="unsafe")

    n = max(1, min(cap_threads(2) or 1, len(raws)))
    if n > 1:
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(one, range(len(raws))))
    else:
        for k in range(len(raws)):
            one(k)
    if np.all(slopes == 1) and np.all(icpts == 0):
        note = f"no rescale (stored values), {dtype.name}"
    elif np.ptp(slopes) == 0 and np.ptp(icpts) == 0:
        note = f"value = stored x {slopes[0]:g} + {icpts[0]:g} (RescaleSlope/Intercept), {dtype.name}"
    else:
        note = f"per-slice RescaleSlope {slopes.min():g}..{slopes.max():g}, Intercept {icpts.min():g}..{icpts.max():g} applied, {dtype.name}"
    return out, note


def read_series(source, *, on_uneven: str = "resample", uneven_spacing="median", on_missing: str = "error",
                on_tilt: str = "resample", spacing_tolerance: float = 0.01, max_workers: int = 4) -> Volume:
    """Read one series (a :class:`~pipeline.ingest.index.Series`, a list of files, or one
    multi-frame file) into a Volume with ``array[k, j, i]`` = [slice, row, column].

    Parameters
    ----------
    source : Series | sequence of paths | path of one file
    on_uneven : 'resample' | 'refuse'
        Unevenly spaced slices: resample to a regular grid (spacing per ``uneven_spacing``:
        'median' gap, 'min' gap or a number of mm) or raise a DicomError listing the gaps.
    on_missing : 'error' | 'resample'
        Gaps of k x the spacing (k >= 2, slices missing): raise naming the positions, or interpolate.
    on_tilt : 'resample' | 'keep'
        Gantry tilt (slice step not along the normal): resample to an orthogonal grid like
        dcm2niix, or keep a sheared affine (exact, but not writable as NIfTI).
    spacing_tolerance : float
        Gaps within this fraction of the median gap count as equal.
    max_workers : int
        Threads decoding compressed files (JPEG 2000 etc. release the GIL); native files are
        parsed in one thread, which measured faster than threads.

    Returns
    -------
    Volume
        ``array`` (nk, nj, ni) int16 (exact rescale), the stored dtype (no rescale) or float32
        (non-integer rescale or resampled); ``source`` holds UIDs, files and notes of every
        decision.
    """
    check_options({**OPTION_DEFAULTS, "on_uneven": on_uneven, "uneven_spacing": uneven_spacing,
                   "on_missing": on_missing, "on_tilt": on_tilt, "spacing_tolerance": spacing_tolerance},
                  where="read_series")
    files = _resolve(source)
    data = _read_files(files, max_workers)
    where = _series_name(data[0].meta, files)
    _check_consistent(data, where)
    fr = _Frames.of(data)
    g0, m0 = data[0].geo[0], data[0].meta
    step1 = (float(m0["between"][0]) if m0["between"] is not None and m0["between"][0] > 0 else g0["thickness"])
    plan = plan_stack(fr.ipp, g0["iop"], g0["pixel_spacing"], fr.labels, same_pixels=fr.same_pixels, where=where,
                      on_uneven=on_uneven, uneven_spacing=uneven_spacing, on_missing=on_missing, on_tilt=on_tilt,
                      spacing_tolerance=spacing_tolerance, single_slice_step=step1,
                      shape=data[0].pixels.shape[1:], gantry_tilt_tag=m0["tilt"])
    raws = [fr.pixels(i) for i in plan.order]
    arr, rescale_note = _rescaled_stack(raws, fr.slopes[plan.order], fr.icpts[plan.order],
                                        [data[fr.refs[i][0]].bounds for i in plan.order])
    del raws
    notes = list(plan.notes)
    if plan.regrid is not None:
        cval = float(arr.min())
        arr = regrid(arr, plan.regrid, cval)
        affine = plan.regrid.affine
        notes.append(f"voxels outside the acquired slices filled with {cval:g} (the data minimum)")
    else:
        affine = plan.affine
    info = _source_info(data, files, [data[fr.refs[i][0]].path for i in plan.order], plan, len(fr.labels))
    info.update({"rescale": rescale_note, "slice_spacing_mm": plan.slice_spacing, "resampled": plan.resampled,
                 "notes": notes + _reader_notes(data)})
    return Volume(arr, affine, info["frame_of_reference_uid"], info)


def _read_files(files: list[str], max_workers: int) -> list[_File]:
    """Every file read and decoded; one DicomError listing the files that cannot be."""
    with quiet_pydicom():
        results = [_safe_read(files[0], full=True)]
        compressed = not isinstance(results[0], _File) or results[0].decoder != "native"
        if compressed and max_workers > 1 and len(files) > 2:
            # decoders (openjpeg, libjpeg) release the GIL; threads pay off only for them
            with ThreadPoolExecutor(max_workers=max_workers) as pool:
                results += list(pool.map(_safe_read, files[1:]))
        else:
            # parsing native files is GIL-bound: threads were slower here (2 cores, measured)
            results += [_safe_read(f) for f in files[1:]]
    errors = [r for r in results if isinstance(r, DicomError)]
    if errors:
        if len(files) == 1:
            raise errors[0]
        listed = "; ".join(str(e) for e in errors[:5]) + (f"; and {len(errors) - 5} more" if len(errors) > 5 else "")
        raise DicomError(f"{len(errors)} of {len(files)} files of the series cannot be read: {listed}",
                         path=errors[0].path, rule="every instance of a series must be readable"
                         + (f" ({errors[0].rule})" if errors[0].rule else ""))
    return results  # type: ignore[return-value]


@dataclass
class _Frames:
    """Every frame of the series' files, in file order: its name for messages, (file, frame)
    reference, position and rescale (identity for files decoded with the rescale applied)."""

    data: list[_File]
    labels: list[str]
    refs: list[tuple[int, int]]
    ipp: np.ndarray
    slopes: np.ndarray
    icpts: np.ndarray

    @classmethod
    def of(cls, data: list[_File]) -> "_Frames":
        labels, refs, ipp, slopes, icpts = [], [], [], [], []
        for fi, f in enumerate(data):
            name = os.path.basename(f.path)
            for k, g in enumerate(f.geo):
                labels.append(name if len(f.geo) == 1 else f"{name} frame {k + 1}")
                refs.append((fi, k))
                ipp.append(g["ipp"])
                slopes.append(1.0 if f.prescaled else g["slope"])
                icpts.append(0.0 if f.prescaled else g["intercept"])
        return cls(data, labels, refs, np.array(ipp), np.array(slopes), np.array(icpts))

    def pixels(self, i: int) -> np.ndarray:
        fi, k = self.refs[i]
        return self.data[fi].pixels[k]

    def same_pixels(self, a: int, b: int) -> bool:
        return (self.slopes[a] == self.slopes[b] and self.icpts[a] == self.icpts[b]
                and np.array_equal(self.pixels(a), self.pixels(b)))


def _reader_notes(data: list[_File]) -> list[str]:
    """What the reader did not do or did otherwise (decoders, mosaics, MONOCHROME1)."""
    notes = []
    if "simpleitk" in {f.decoder for f in data}:
        notes.append("some files decoded by SimpleITK/GDCM (pydicom could not); GDCM applied their rescale")
    if any("MOSAIC" in f.meta["image_type"] for f in data):
        notes.append("Siemens MOSAIC image: frames hold tiled slices and are not de-mosaiced")
    if data[0].meta["photometric"] == "MONOCHROME1":
        notes.append("MONOCHROME1: low values display bright; values are kept as stored x slope + intercept")
    return notes


def _source_info(data: list[_File], files, ordered: list[str], plan, n_frames: int) -> dict:
    """The Volume's ``source``: UIDs and descriptions of the series, what was read and how."""
    m0 = data[0].meta
    return {
        "reader": "pipeline.ingest.read_series",
        "study_instance_uid": m0["study_uid"], "series_instance_uid": m0["series_uid"],
        "modality": m0["modality"], "series_description": m0["description"],
        "series_number": None if m0["series_number"] is None else int(m0["series_number"]),
        "frame_of_reference_uid": None if m0["for_uid"] is None else str(m0["for_uid"]),
        "sop_class_uid": m0["sop_class"], "manufacturer": m0["manufacturer"],
        "body_part_examined": m0["body_part"], "study_description": m0["study_description"],
        "n_files": len(files), "n_frames": n_frames, "n_slices_read": len(plan.order),
        "files": [ordered[0], ordered[-1]] if len(ordered) > 1 else ordered[:1],
        "transfer_syntaxes": sorted({f.meta["ts"] for f in data}), "decoders": sorted({f.decoder for f in data}),
    }


def damaged_files(studies) -> list[tuple[str, str]]:
    """(file, reason) for files of an index that look like DICOM instances but cannot be used.

    A file the index skipped although it passed the DICOM sniff (a header that does not
    parse), and image instances whose header stops before Rows/Columns (cut short).
    """
    out = [(f, why) for f, why in studies.skipped
           if why.startswith(("unreadable DICOM header", "not a DICOM instance"))]
    for s in studies.all_series():
        if not s.is_image and not c.is_non_image(s.modality, s.sop_class):
            out += [(f, "image instance without Rows/Columns: its header stops early (truncated?)") for f in s.files]
    return out


def _refuse_damaged_neighbours(studies, series) -> None:
    """A damaged file next to the chosen series is probably one of its instances: refuse.

    Without this, the index drops it and the series reads with a hole (or, at an end, silently
    one slice short); the error must name the corrupt file, not suggest interpolating over it.
    """
    dirs = {os.path.dirname(os.path.abspath(f)) for f in series.files}
    bad = [(f, why) for f, why in damaged_files(studies) if os.path.dirname(os.path.abspath(f)) in dirs]
    if not bad:
        return
    listed = "; ".join(f"{os.path.basename(f)}: {why}" for f, why in bad[:5]) + (
        f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
    raise DicomError(f"series {series.series_uid or series.key} ({series.n_instances} readable files): {len(bad)} "
                     f"file(s) in its folder look like DICOM instances but cannot be read, so the series is "
                     f"probably incomplete: {listed}", path=bad[0][0],
                     rule="every instance of a series must be readable")


def _explain_missing(e: DicomError, studies, series) -> None:
    """Slices missing from a series while files of the same SeriesInstanceUID sit in another
    stack (a different Rows/Columns, no orientation...): those files are the cause. Name them,
    and never suggest interpolating over them."""
    others = [s for s in studies.all_series() if s is not series and s.series_uid
              and s.series_uid == series.series_uid and s.study_uid == series.study_uid]
    if not others:
        return
    def what(s) -> str:
        shape = f"{s.rows}x{s.cols}" if s.rows else "no Rows/Columns"
        return f"{', '.join(os.path.basename(f) for f in s.files[:3])} ({shape}, orientation {s.orientation})"
    core = str(e).split(" Pass on_missing=")[0].rstrip(".")
    raise DicomError(f"{core}; file(s) of the same series that do not fit its stack ({series.rows}x{series.cols}, "
                     f"{series.orientation}) are the likely cause: {'; '.join(what(s) for s in others[:5])}",
                     path=others[0].files[0], rule="every instance of a series must be readable "
                     "(one damaged file must not become a gap to interpolate over)") from None


def read_configured(path, cfg: dict) -> Volume:
    """:func:`read_input` with a pipeline configuration's ``selection`` rules and ``ingest`` options:
    how `surgitwin run` and `surgitwin segment --config F` read their input."""
    return read_input(path, rules=(cfg.get("selection") or {}).get("rules"), options=cfg.get("ingest"))


def read_input(path, *, rules=None, series_uid: str | None = None, options: dict | None = None) -> Volume:
    """Any supported input -> Volume.

    - a folder: :func:`index_folder`, :func:`select_series` (``rules``: list, YAML path or None for
      configs/pipeline.yaml), then :func:`read_series` on the one selected series (or
      ``series_uid``); several studies with a selection is an error (which patient?);
    - a NIfTI/NRRD/MHA file: :func:`pipeline.geometry.read_image_file`;
    - any other file: a DICOM file (multi-frame or a single slice) via :func:`read_series`.
    ``options`` are read_series keyword options (default: the ``ingest:`` section of the config).
    """
    from ..geometry import read_image_file
    from .index import index_folder
    from .select import load_rules, select_series

    p = Path(path)
    opts = load_ingest_options() if options is None else check_options({**OPTION_DEFAULTS, **options}, "options")
    if not p.exists():
        raise DicomError("input does not exist", path=str(p), rule="input must exist")
    if not p.is_dir() and c.not_regular(p):
        raise DicomError(f"input is {c.not_regular(p)}", path=str(p), rule="inputs are regular files or folders")
    if p.is_file():
        if p.name.lower().endswith(IMAGE_FILE_SUFFIXES):
            if p.name.lower().endswith(NIFTI_SUFFIXES):
                check_nifti(p)  # SimpleITK zero-fills truncated data and reads pixdim 0 as 1 mm
            vol = read_image_file(p)
            return Volume(vol.array, vol.affine, vol.frame_of_reference_uid,
                          {**vol.source, "reader": "pipeline.geometry.read_image_file"})
        return read_series([str(p)], **opts)
    studies = index_folder(p, max_workers=opts["max_workers"])
    if isinstance(rules, (str, os.PathLike)):
        rules = load_rules(rules)
    sels = select_series(studies, rules)
    if series_uid:
        match = [s for s in sels if series_uid in (s.series.series_uid, s.series.key)]
        if not match:
            raise DicomError(f"series {series_uid} is not in the folder ({len(sels)} series indexed)", path=str(p),
                             rule="requested series must exist")
        chosen = match[0]
    else:
        picks = [s for s in sels if s.selected]
        if not picks:
            why = "; ".join(f"{s.series.modality} '{s.series.description}' ({s.series.n_frames} slices): "
                            f"{s.reasons[0] if s.reasons else s.status}" for s in sels[:8])
            raise DicomError(f"no series matches the selection rules ({len(sels)} series, "
                             f"{len(studies.skipped)} non-DICOM files skipped): {why or 'no DICOM series found'}",
                             path=str(p), rule="a selection rule must match one series")
        if len(picks) > 1:
            listing = "; ".join(f"study {s.study_uid}: series {s.series.series_number} '{s.series.description}'" for s in picks)
            raise DicomError(f"folder holds {len(picks)} studies with a selectable series ({listing}); "
                             f"pass series_uid or a folder with one study", path=str(p), rule="one study per input")
        chosen = picks[0]
    _refuse_damaged_neighbours(studies, chosen.series)
    try:
        vol = read_series(chosen.series, **opts)
    except DicomError as e:
        if e.rule == MISSING_RULE:
            _explain_missing(e, studies, chosen.series)
        raise
    vol.source["selection"] = {"rule": chosen.rule, "series_key": chosen.series.key, "folder": str(p)}
    return vol
