"""Index a folder of DICOM files into studies and series, reading headers only.

``index_folder(path)`` walks the folder recursively, reads every file's header with
``pydicom.dcmread(stop_before_pixels=True, force=True)`` and groups instances by
StudyInstanceUID -> SeriesInstanceUID. A series whose instances do not share one image plane
and size (a localizer saved with its three planes, two echoes) is split into stacks, because
only a single stack can become one :class:`pipeline.types.Volume`.

Files that are not DICOM (text, NIfTI, the DICOMDIR itself) are not errors: they are listed in
``Index.skipped`` with the reason.
"""
from __future__ import annotations

import hashlib
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DicomError
from . import _common as c

# Tags kept from the first instance of each series so selection rules can test them.
RULE_TAGS = ("BodyPartExamined", "ProtocolName", "ConvolutionKernel", "ContrastBolusAgent",
             "Manufacturer", "ManufacturerModelName", "PatientPosition", "ScanningSequence",
             "SequenceName", "MRAcquisitionType", "EchoTime", "RepetitionTime", "KVP",
             "SpacingBetweenSlices", "StudyDescription")
_LOCALIZER_DESC = re.compile(r"(?i)\b(scout|topogram|localizer|localiser|survey|scanogram)\b")


@dataclass
class Series:
    """One stack of images (or one non-image object series) found by the index.

    Attributes
    ----------
    spacing : (3,) float tuple or None
        mm along the array axes of the volume it would become: (slice gap, row spacing,
        column spacing); the slice gap is the median gap between sorted slice positions
        (SliceThickness when there is a single slice).
    files : list of str
        Instance files, sorted by name (read order is decided by the reader, by position).
    orientation : 'axial' | 'coronal' | 'sagittal' | 'oblique' | 'unknown'
        Plane within 10 degrees of a cardinal plane carries its name; ``obliquity_deg`` says how far.
    n_instances : files; ``n_frames``: slices (frames of multi-frame objects summed).
    """

    study_uid: str
    series_uid: str
    modality: str
    description: str
    series_number: int | None
    files: list[str]
    n_instances: int
    n_frames: int
    orientation: str
    obliquity_deg: float
    spacing: tuple[float, float, float] | None
    slice_thickness: float | None
    image_type: tuple[str, ...]
    sop_class: str
    sop_class_name: str
    rows: int | None
    cols: int | None
    frame_of_reference_uid: str | None
    is_image: bool
    is_localizer: bool
    is_multiframe: bool
    transfer_syntaxes: tuple[str, ...]
    stack: int = 0  # >0 when one SeriesInstanceUID was split into several stacks
    group_key: str = ""  # grouping key used when SeriesInstanceUID is blank (de-identified data)
    tags: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        """Unique name of this stack: the series UID, plus '#stack' when split."""
        base = self.series_uid or "no-uid-" + hashlib.sha1(self.group_key.encode()).hexdigest()[:12]
        return base if not self.stack else f"{base}#{self.stack}"

    def attribute(self, name: str) -> Any:
        """Value a selection rule tests: derived names first, then DICOM keywords of instance 1."""
        derived = {
            "Modality": self.modality, "SeriesDescription": self.description,
            "SeriesInstanceUID": self.series_uid, "StudyInstanceUID": self.study_uid,
            "SeriesNumber": self.series_number, "ImageType": list(self.image_type),
            "SOPClassUID": self.sop_class, "SOPClassName": self.sop_class_name,
            "NumberOfSlices": self.n_frames, "NumberOfInstances": self.n_instances,
            "NumberOfFrames": self.n_frames, "Rows": self.rows, "Columns": self.cols,
            "Orientation": self.orientation, "ObliquityDeg": self.obliquity_deg,
            "SliceThickness": self.slice_thickness,
            "SliceSpacing": None if self.spacing is None else self.spacing[0],
            "PixelSpacing": None if self.spacing is None else min(self.spacing[1:]),
            "IsImage": self.is_image, "IsLocalizer": self.is_localizer,
            "IsMultiframe": self.is_multiframe, "FrameOfReferenceUID": self.frame_of_reference_uid,
        }
        if name in derived:
            return derived[name]
        return self.tags.get(name)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["files"] = list(self.files)
        d["image_type"] = list(self.image_type)
        d["transfer_syntaxes"] = list(self.transfer_syntaxes)
        d["spacing"] = None if self.spacing is None else [round(float(x), 4) for x in self.spacing]
        d["key"] = self.key
        return d


@dataclass
class Study:
    study_uid: str
    patient_id: str
    study_date: str
    description: str
    series: list[Series] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"study_uid": self.study_uid, "patient_id": self.patient_id, "study_date": self.study_date,
                "description": self.description, "series": [s.to_dict() for s in self.series]}


class Index(list):
    """``list[Study]`` with ``skipped``: (path, reason) for each file that is not indexed."""

    def __init__(self, studies=(), skipped=(), root: str = ""):
        super().__init__(studies)
        self.skipped: list[tuple[str, str]] = list(skipped)
        self.root = root

    def all_series(self) -> list[Series]:
        return [s for st in self for s in st.series]


# -- per-file header ---------------------------------------------------------------------------

def _read_header(path: Path) -> dict | tuple[str, str]:
    """Header facts of one file, or (path, reason) when it is not an indexable DICOM instance."""
    import pydicom

    why = c.sniff_dicom(path)
    if why:
        return (str(path), why)
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
    except Exception as e:  # noqa: BLE001 - any parser failure means "not a readable DICOM file"
        return (str(path), f"unreadable DICOM header: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
    h = c.fast_header(ds)  # raw-element parsing: ~20x cheaper than ds.get per tag
    sop = h["sop"] or str(c.get(ds.file_meta, "MediaStorageSOPClassUID", "") or "")
    if sop == c.DICOMDIR_SOP or path.name.upper() == "DICOMDIR" or "DirectoryRecordSequence" in ds:
        return (str(path), "DICOMDIR (media directory): the files it references are indexed by the walk")
    rows, cols = h["rows"], h["cols"]
    if not sop and not (rows and cols):
        return (str(path), "not a DICOM instance: no SOPClassUID and no Rows/Columns")
    modality = (h["modality"] or "").upper()
    study_uid, series_uid = h["study_uid"] or "", h["series_uid"] or ""
    group = series_uid
    if not series_uid:
        # Heavily de-identified exports blank the UIDs: group by what still identifies a series.
        group = "|".join(["no-uid", str(path.parent), h["for_uid"] or "", str(h["series_number"]),
                          h["description"] or "", modality])
    if not study_uid:
        study_uid = f"(no StudyInstanceUID: {path.parent})"
    nf = c.n_frames(ds)
    # per-frame geometry only where it decides slice spacing: a SEG with thousands of frames
    # must not cost a Python loop over its functional groups here
    if c.is_enhanced(ds):
        per_frame = not c.is_non_image(modality, sop)
        geo = [c.frame_geometry(ds, f) for f in range(nf)] if per_frame else [c.frame_geometry(ds, 0)]
    else:
        geo = [c.classic_geometry(h)]
    ts = c.get(ds.file_meta, "TransferSyntaxUID")
    return {
        "path": str(path), "study_uid": study_uid, "series_uid": series_uid, "group": group,
        "modality": modality, "sop_class": sop, "rows": rows, "cols": cols, "for_uid": h["for_uid"] or None,
        "n_frames": nf, "geometry": geo, "ts": str(ts) if ts else "(none: headerless file)",
        "echo": h["echo"] or "", "instance_number": h["instance"][0] if h["instance"] else None,
    }


def _describe(path: str) -> dict:
    """Descriptive tags of a series' first instance (read once per series, not per file)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 - it parsed a moment ago; a race with a writer is not fatal
        ds = pydicom.Dataset()
    sop = str(c.get(ds, "SOPClassUID", "") or "")
    try:
        sop_name = pydicom.uid.UID(sop).name if sop else ""
    except Exception:  # noqa: BLE001 - an unknown UID keeps its number
        sop_name = sop
    return {
        "description": c.text(c.get(ds, "SeriesDescription", "")), "series_number": c.get(ds, "SeriesNumber"),
        "image_type": c.str_tuple(c.get(ds, "ImageType")), "sop_name": sop_name,
        "tags": {k: _plain(c.get(ds, k)) for k in RULE_TAGS if c.get(ds, k) is not None},
        "study": (c.text(c.get(ds, "PatientID", "")), c.text(c.get(ds, "StudyDate", "")),
                  c.text(c.get(ds, "StudyDescription", ""))),
    }


def _plain(v):
    """pydicom value -> JSON-friendly plain value."""
    if type(v).__name__ == "MultiValue" or isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, bool):
        return v
    if isinstance(v, int):  # pydicom IS
        return int(v)
    if isinstance(v, float):  # pydicom DSfloat
        return float(v)
    return str(v)


# -- grouping ---------------------------------------------------------------------------------

def _stack_of(stacks: list[dict], h: dict) -> int:
    """Index of the stack in ``stacks`` that instance ``h`` belongs to (appending a new one)."""
    iop = h["geometry"][0]["iop"]
    for n, s in enumerate(stacks):
        if (s["rows"], s["cols"], s["echo"]) != (h["rows"], h["cols"], h["echo"]):
            continue
        if (s["iop"] is None) != (iop is None):
            continue
        if iop is None or np.allclose(s["iop"], iop, atol=1e-3):
            return n
    stacks.append({"rows": h["rows"], "cols": h["cols"], "echo": h["echo"], "iop": iop, "items": []})
    return len(stacks) - 1


def _make_series(items: list[dict], stack: int, n_stacks: int) -> tuple[Series, tuple[str, str, str]]:
    """The Series of one stack, and (PatientID, StudyDate, StudyDescription) of its study."""
    first = min(items, key=lambda h: (_int(h["instance_number"]), h["path"]))
    first = {**first, **_describe(first["path"])}
    modality, sop = first["modality"], first["sop_class"]
    geos = [g for h in items for g in h["geometry"]]
    iop = first["geometry"][0]["iop"]
    ps = first["geometry"][0]["pixel_spacing"]
    thick = first["geometry"][0]["thickness"]
    orientation, obl = c.plane_name(iop) if iop is not None else ("unknown", float("nan"))
    gap, uneven = None, None
    if iop is not None:
        normal = c.slice_normal(iop)
        d = np.unique(np.round([g["ipp"] @ normal for g in geos if g["ipp"] is not None], 4))
        if d.size > 1:
            gaps = np.diff(d)
            gap = float(np.median(gaps))
            if gaps.max() - gaps.min() > 0.01 * gap + 1e-3:
                uneven = f"slice gaps vary {gaps.min():.2f}..{gaps.max():.2f} mm (the reader resamples or refuses)"
    if gap is None:
        gap = thick
    spacing = None if ps is None else (float(gap) if gap else float("nan"), float(ps[0]), float(ps[1]))
    desc = first["description"]
    image_type = first["image_type"]
    is_image = not c.is_non_image(modality, sop) and first["rows"] is not None
    is_loc = any(w in t for t in image_type for w in c.LOCALIZER_WORDS) or bool(_LOCALIZER_DESC.search(desc))
    notes = [uneven] if uneven else []
    if not first["series_uid"]:
        notes.append("no SeriesInstanceUID (de-identified?): grouped by folder, FrameOfReferenceUID, SeriesNumber, description and modality")
    if first["rows"] is None and not c.is_non_image(modality, sop):
        notes.append("no image pixel module (Rows/Columns absent)")
    if n_stacks > 1:
        notes.append(f"the series holds {n_stacks} stacks (different plane, size or echo); this is stack {stack}")
    return Series(
        study_uid=first["study_uid"], series_uid=first["series_uid"], modality=modality, description=desc,
        series_number=_int(first["series_number"], None), files=sorted(h["path"] for h in items),
        n_instances=len(items), n_frames=sum(h["n_frames"] for h in items), orientation=orientation,
        obliquity_deg=round(obl, 2) if obl == obl else obl, spacing=spacing, slice_thickness=thick,
        image_type=image_type, sop_class=sop, sop_class_name=first["sop_name"], rows=first["rows"],
        cols=first["cols"], frame_of_reference_uid=None if first["for_uid"] is None else str(first["for_uid"]),
        is_image=is_image, is_localizer=is_loc, is_multiframe=any(h["n_frames"] > 1 for h in items),
        transfer_syntaxes=tuple(sorted({h["ts"] for h in items})), stack=stack if n_stacks > 1 else 0,
        group_key=first["group"], tags=dict(first["tags"]), notes=notes,
    ), first["study"]


def _int(v, default=1 << 30):
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def index_folder(path, *, max_workers: int = 4, deadline: float | None = None) -> Index:
    """Walk ``path`` recursively and group its DICOM instances into studies and series.

    Parameters
    ----------
    path : str or Path
        A folder (walked recursively, symlinks not followed) or a single file.
    max_workers : int
        Threads reading headers (file IO overlaps; parsing is GIL-bound).
    deadline : float, optional
        ``time.monotonic()`` value after which indexing stops with a :class:`DicomError`
        (batch discovery's time limit per input). Only regular files are ever opened: a named
        pipe, socket or device is listed in ``skipped``.

    Returns
    -------
    Index
        ``list[Study]`` sorted by study date/UID, series sorted by number; ``.skipped`` lists
        (file, reason) for everything that was not indexed.
    """
    root = Path(path)
    if not root.exists():
        raise DicomError("folder to index does not exist", path=str(root), rule="input must exist")
    not_files: list[tuple[str, str]] = []
    if root.is_dir():
        files, not_files = c.walk_files(root, deadline=deadline)
    else:  # a file (symlinks followed); a FIFO or device is listed, never opened
        why = c.not_regular(root)
        files, not_files = ([], [(str(root), why)]) if why else ([root], [])
    with c.quiet_pydicom():
        with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
            results = []
            for r in pool.map(_read_header, files):
                results.append(r)
                if deadline is not None and time.monotonic() > deadline:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise DicomError(f"reading headers exceeded its time limit after {len(results)} of {len(files)} "
                                     f"files", path=str(root), rule="discovery finishes within its time limit per input")
        skipped = not_files + [r for r in results if isinstance(r, tuple)]
        headers = [r for r in results if isinstance(r, dict)]
        studies: dict[str, dict] = {}
        for h in headers:
            groups = studies.setdefault(h["study_uid"], {})
            stacks = groups.setdefault(h["group"], [])
            stacks[_stack_of(stacks, h)]["items"].append(h)
        out = []
        for uid, groups in studies.items():
            made = [_make_series(s["items"], n, len(stacks))
                    for stacks in groups.values() for n, s in enumerate(stacks, start=1)]
            series = sorted((m[0] for m in made), key=lambda s: (_int(s.series_number), s.series_uid, s.stack))
            patient, date, desc = made[0][1]
            out.append(Study(uid, patient, date, desc, series))
    out.sort(key=lambda s: (s.study_date, s.study_uid))
    return Index(out, skipped, str(root))
