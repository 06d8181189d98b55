"""DICOM SEG of a scene's label map, referencing the source CT/MR series (highdicom).

The one SEG writer of the project: ``surgitwin export --format dicom-seg`` and the PACS
push (STOW-RS / C-STORE) both call :func:`build_segmentation`.

The label map is sampled at the centre of every pixel of every source slice (nearest
neighbour, in patient space), so each SEG frame lines up pixel-for-pixel with its source
image whatever the slice order, orientation or spacing of the series (including gantry
tilt and uneven gaps). The source is either a series of single-frame images or one enhanced
multi-frame image (Enhanced CT/MR: per-frame positions from the functional groups); then the
SEG frames reference the source frames.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from . import ExportError

TUMOUR_WORDS = ("tumour", "tumor", "lesion", "mass", "neoplasm", "metastasis", "nodule", "cancer", "carcinoma")
SERIES_NUMBER = 901
SEG_SERIES_DESCRIPTION = "surgitwin segmentation"


def source_candidates(scene, dicom_dir=None) -> list[Path]:
    """Files that may hold the source series: ``dicom_dir`` argument, then the scene's
    ``source['files']``, ``source['dicom_dir']``, ``source['input']`` (a folder or a file)."""
    src = scene.source or {}
    roots = [dicom_dir] if dicom_dir else []
    if not roots and src.get("files"):
        return [Path(f) for f in src["files"] if Path(f).is_file()]
    roots += [src.get("dicom_dir"), src.get("input")]
    for r in roots:
        if not r:
            continue
        r = Path(r)
        if r.is_dir():
            return sorted(p for p in r.rglob("*") if p.is_file() and not p.name.startswith("."))
        if r.is_file():
            return [r]
    return []


def load_source_series(scene, dicom_dir=None) -> list:
    """Headers (no pixel data) of the scene's source series, found via :func:`source_candidates`.

    Raises
    ------
    ExportError : no file of series ``source['series_instance_uid']`` was found.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    uid = (scene.source or {}).get("series_instance_uid")
    if not uid:
        raise ExportError("DICOM SEG needs the source series: the scene's source has no series_instance_uid "
                          "(it was not made from DICOM)")
    files = source_candidates(scene, dicom_dir)
    out = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
        except (InvalidDicomError, OSError, ValueError, AttributeError):
            continue
        if getattr(ds, "SeriesInstanceUID", None) == uid and ("ImagePositionPatient" in ds
                                                              or "PerFrameFunctionalGroupsSequence" in ds):
            out.append(ds)
    if not out:
        where = dicom_dir or (scene.source or {}).get("dicom_dir") or (scene.source or {}).get("input")
        raise ExportError(f"DICOM SEG must reference the source series {uid}; none of its images were found in "
                          f"{where!s} ({len(files)} files looked at). Pass the folder with --source-dicom")
    multi = [ds for ds in out if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1]
    if multi and len(out) > 1:
        raise ExportError(f"DICOM SEG: series {uid} mixes {len(multi)} multi-frame image(s) with other images; "
                          "a SEG references either single-frame images or one multi-frame image")
    return out


def frame_pixel_centres(ds) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per frame of ``ds``: (origin, row_step, col_step) in LPS mm; pixel (r, c) of the frame is at
    origin + r*row_step + c*col_step. One entry for a single-frame image. Geometry as the reader
    takes it (:func:`pipeline.ingest._common.frame_geometry`: functional groups of enhanced
    objects, per-frame before shared; top-level tags otherwise)."""
    from ..ingest._common import frame_geometry, n_frames

    out = []
    for f in range(n_frames(ds)):
        g = frame_geometry(ds, f)
        if g["ipp"] is None or g["iop"] is None or g["pixel_spacing"] is None:
            raise ExportError(f"DICOM SEG: frame {f + 1} of the source has no image position, orientation or "
                              "pixel spacing", path=getattr(ds, "filename", None) or None)
        iop = np.asarray(g["iop"], dtype=np.float64)
        dr, dc = (float(x) for x in g["pixel_spacing"])  # between rows, between columns
        out.append((np.asarray(g["ipp"], dtype=np.float64), iop[3:] * dr, iop[:3] * dc))
    return out


def labels_on_series(labelmap, datasets: Sequence) -> np.ndarray:
    """Label ids at every source pixel: (n_frames, rows, cols), frames in the order of ``datasets``
    (and of the frames within a multi-frame image)."""
    inv = np.linalg.inv(labelmap.volume.affine)
    arr = labelmap.array
    shape = np.array(arr.shape)
    out = []
    for ds, (o, rs, cs) in ((ds, g) for ds in datasets for g in frame_pixel_centres(ds)):
        rows, cols = int(ds.Rows), int(ds.Columns)
        base = inv[:3, :3] @ o + inv[:3, 3]
        idx = base + np.arange(rows)[:, None, None] * (inv[:3, :3] @ rs) + np.arange(cols)[None, :, None] * (inv[:3, :3] @ cs)
        idx = np.rint(idx).astype(np.int64)
        ok = np.all((idx >= 0) & (idx < shape), axis=-1)
        frame = np.zeros((rows, cols), dtype=arr.dtype)
        frame[ok] = arr[idx[ok][:, 0], idx[ok][:, 1], idx[ok][:, 2]]
        out.append(frame)
    return np.stack(out)


def segment_codes(label):
    """(category, type) codes for a label: SNOMED type when the label has a code."""
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    is_lesion = any(w in label.name for w in TUMOUR_WORDS)
    category = (CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure") if is_lesion
                else codes.SCT.AnatomicalStructure)
    meaning = label.name.replace("_", " ").capitalize()
    if label.code:
        prop = CodedConcept(str(label.code), "SCT", meaning)
    else:
        prop = codes.SCT.Neoplasm if is_lesion else codes.SCT.Tissue
    return category, prop


def build_segmentation(scene, datasets: Sequence, labelmap=None, *, structures: Iterable[str] | None = None,
                       segmentation_type: str = "BINARY", series_number: int = SERIES_NUMBER):
    """A ``highdicom.seg.Segmentation`` of the scene's structures over ``datasets``.

    Parameters
    ----------
    scene : Scene; datasets : source series headers (see :func:`load_source_series`)
    labelmap : LabelMap, default ``scene.load_labelmap()``
    structures : names to include (default: every structure present on the source slices)
    segmentation_type : "BINARY" (every PACS) or "LABELMAP" (DICOM 2024+, not dcmtk 3.6.7)
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    from ..config import software_versions

    lm = labelmap if labelmap is not None else scene.load_labelmap()
    on_series = labels_on_series(lm, datasets)
    wanted = set(structures) if structures else None
    present = set(np.unique(on_series).tolist()) - {0}
    labels = [l for l in lm.labels if l.id in present and (wanted is None or l.name in wanted)]
    if wanted:
        missing = sorted(wanted - {l.name for l in labels})
        if missing:
            raise ExportError(f"DICOM SEG: structures {missing} have no voxels on the source series' slices "
                              f"(or are not in the label table {lm.labels.names})")
    if not labels:
        raise ExportError("DICOM SEG: no structure has voxels on the source series' slices")
    remap = np.zeros(int(on_series.max()) + 1, dtype=np.uint16)
    for n, l in enumerate(labels, start=1):
        remap[l.id] = n
    pixel = remap[on_series]
    version = software_versions("highdicom")["surgitwin"]
    algo = hd.AlgorithmIdentificationSequence(name="surgitwin", family=codes.cid7162.ArtificialIntelligence,
                                              version=version)
    descriptions = []
    for n, l in enumerate(labels, start=1):
        category, prop = segment_codes(l)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=n, segment_label=l.name, segmented_property_category=category,
            segmented_property_type=prop, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo, tracking_uid=generate_uid(), tracking_id=l.name,
            display_color=hd.color.CIELabColor.from_rgb(*l.rgb)))
    return hd.seg.Segmentation(
        source_images=list(datasets), pixel_array=pixel, segmentation_type=segmentation_type,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="surgitwin",
        manufacturer_model_name="surgitwin", software_versions=version, device_serial_number="0",
        content_description=f"surgitwin segmentation of case {scene.case_id}"[:64], content_label="SURGITWIN",
        series_description=SEG_SERIES_DESCRIPTION, omit_empty_frames=True)


def write_dicom_seg(scene, out_path, *, dicom_dir=None, structures: Iterable[str] | None = None,
                    segmentation_type: str = "BINARY") -> Path:
    """Build the SEG (see :func:`build_segmentation`) and write it atomically to ``out_path``."""
    seg = build_segmentation(scene, load_source_series(scene, dicom_dir), structures=structures,
                             segmentation_type=segmentation_type)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".dcm", dir=out.parent)
    os.close(fd)
    try:
        seg.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
