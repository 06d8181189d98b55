"""A clinical-size CT series (default 512x512x300, 0.7 x 0.7 x 1.1 mm) built from real anatomy.

The source is the real Siemens thorax/abdomen CT in ``../shared/data/real/ct_thorax_abdomen_dicom_j2k``
(512x512x20, 0.98 mm pixels, 2 mm slices, JPEG 2000). It is resampled (linear) onto a grid of
``cols x rows`` pixels of ``pixel_mm`` centred on the body, and along z its 40 mm of anatomy is
mirror-tiled (feet-ward copy, head-ward copy, ...) to ``slices x slice_mm``: real HU, real
organ and bone shapes, real noise, no random volumes. The result is written as an uncompressed
CT series (signed 16-bit, Explicit VR Little Endian) with :func:`pipeline.dicom_writer.write_dicom_series`
and cached under ``cache_dir`` keyed by the parameters.

Used by ``benchmarks/bench_e2e.py``, ``benchmarks/bench_viewer.py`` and the real-scale tests.
Run alone: ``python benchmarks/clinical_ct.py OUT_DIR [--slices 300]``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REAL_CT = Path(os.environ.get("SURGITWIN_SHARED", ROOT.parent / "shared")) / "data" / "real" / \
    "ct_thorax_abdomen_dicom_j2k" / "series"


def _source_volume():
    from pipeline.ingest import read_input

    if not REAL_CT.exists():
        raise SystemExit(f"clinical_ct: the real CT is not available: {REAL_CT}")
    return read_input(REAL_CT)


def _z_fold(z: np.ndarray, length: float) -> np.ndarray:
    """Mirror-tile positions ``z`` (mm from the slab start) into ``[0, length]`` (a triangle wave)."""
    period = 2.0 * length
    t = np.mod(z, period)
    return np.where(t <= length, t, period - t)


def resample_clinical(src, slices: int = 300, rows: int = 512, cols: int = 512,
                      pixel_mm: float = 0.7, slice_mm: float = 1.1):
    """The clinical-size Volume (int16 HU) from the real slab ``src`` (see module doc)."""
    from scipy import ndimage

    from pipeline.types import Volume

    arr = src.array.astype(np.float32)
    sp = src.spacing  # (slice, row, column) mm
    body = arr > -500
    jj, ii = np.nonzero(body.any(axis=0))
    centre = np.array([(jj.min() + jj.max()) / 2.0, (ii.min() + ii.max()) / 2.0])  # source (j, i)
    # in-plane: target pixel (j, i) -> source continuous index, same axis directions as the source
    tj = (np.arange(rows) - (rows - 1) / 2.0) * pixel_mm / sp[1] + centre[0]
    ti = (np.arange(cols) - (cols - 1) / 2.0) * pixel_mm / sp[2] + centre[1]
    gj, gi = np.meshgrid(tj, ti, indexing="ij")
    plane = np.empty((src.shape[0], rows, cols), np.float32)
    for k in range(src.shape[0]):
        plane[k] = ndimage.map_coordinates(arr[k], [gj, gi], order=1, mode="constant", cval=-1024.0)
    # through-plane: mirror-tile the slab, linear between the two nearest source slices
    length = (src.shape[0] - 1) * sp[0]
    zk = _z_fold(np.arange(slices) * slice_mm, length) / sp[0]
    k0 = np.clip(np.floor(zk).astype(int), 0, src.shape[0] - 2)
    w = (zk - k0)[:, None, None].astype(np.float32)
    out = np.empty((slices, rows, cols), np.int16)
    for k in range(slices):
        out[k] = np.rint((1 - w[k]) * plane[k0[k]] + w[k] * plane[k0[k] + 1])
    aff = np.array(src.affine, dtype=np.float64)
    dirs = src.direction
    a = np.eye(4)
    a[:3, 0] = dirs[:, 0] * slice_mm
    a[:3, 1] = dirs[:, 1] * pixel_mm
    a[:3, 2] = dirs[:, 2] * pixel_mm
    corner_src = np.array([0.0, tj[0], ti[0]])
    a[:3, 3] = aff[:3, :3] @ corner_src + aff[:3, 3]
    return Volume(out, a, src.frame_of_reference_uid, {"note": "clinical_ct: resampled + mirror-tiled real CT"})


def build_series(out_dir=None, slices: int = 300, rows: int = 512, cols: int = 512,
                 pixel_mm: float = 0.7, slice_mm: float = 1.1) -> Path:
    """Write (or reuse) the series; returns its folder."""
    from pipeline.dicom_writer import DicomMeta, write_dicom_series

    key = f"ct_{slices}x{rows}x{cols}_{pixel_mm}x{slice_mm}"
    out_dir = Path(out_dir or Path(os.environ.get("TMPDIR", "/tmp")) / "surgitwin_clinical_ct") / key
    done = out_dir / ".complete"
    if done.exists():
        return out_dir
    vol = resample_clinical(_source_volume(), slices, rows, cols, pixel_mm, slice_mm)
    meta = DicomMeta(patient_name="CLINICAL^SIZE", patient_id="SW-CLIN", study_description="Abdomen CT (clinical size)",
                     series_description="Abdomen 1.1mm")
    write_dicom_series(vol, out_dir, meta, signed=True)
    done.write_text(key)
    return out_dir


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default=None)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    a = ap.parse_args(argv)
    print(build_series(a.out, a.slices, a.size, a.size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
