"""Tiny synthetic DICOM writer for the ingest tests (no dependency on pipeline.phantom).

Each slice is written from explicit geometry so a test states exactly what the reader must
recover: ImagePositionPatient per slice, one ImageOrientationPatient, PixelSpacing, rescale.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as Seq
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def rotation(ax_deg: float = 0.0, ay_deg: float = 0.0, az_deg: float = 0.0) -> np.ndarray:
    """(3, 3) rotation Rz @ Ry @ Rx; its columns are (row dir, column dir, normal) of an oblique plane."""
    ax, ay, az = np.radians([ax_deg, ay_deg, az_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _base(modality: str, uids: dict, sop_class) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
    ds.FrameOfReferenceUID = uids["for"]
    ds.Modality, ds.SeriesDescription, ds.SeriesNumber = modality, uids.get("desc", "synthetic"), uids.get("number", 1)
    ds.PatientID, ds.StudyDate = "SYNTH", "20240101"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    return ds


def new_uids(desc: str = "synthetic", number: int = 1) -> dict:
    return {"study": generate_uid(), "series": generate_uid(), "for": generate_uid(), "desc": desc, "number": number}


def write_slice(path: Path, pixels: np.ndarray, ipp: Sequence[float], *, iop=AXIAL, spacing=(0.8, 0.7),
                slope: float = 1.0, intercept: float = 0.0, uids: dict, instance: int = 1, modality: str = "CT",
                image_type=("ORIGINAL", "PRIMARY", "AXIAL"), bits_stored: int | None = None,
                headerless: bool = False, thickness: float = 2.0, extra: dict | None = None) -> Path:
    """Write one single-frame image. ``pixels`` (rows, cols) int16 / uint16 are the *stored* values."""
    pixels = np.asarray(pixels)
    ds = _base(modality, uids, CTImageStorage)
    ds.ImageType = list(image_type)
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [float(x) for x in ipp]
    ds.ImageOrientationPatient = [float(x) for x in iop]
    ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
    ds.SliceThickness = thickness
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored or 16
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    for k, v in (extra or {}).items():
        setattr(ds, k, v)
    ds.PixelData = np.ascontiguousarray(pixels.astype(pixels.dtype.newbyteorder("<"))).tobytes()
    path = Path(path)
    if headerless:
        # raw dataset, implicit VR little endian, no 128-byte preamble, no 'DICM', no file meta
        pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    else:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.save_as(path, enforce_file_format=True)
    return path


def write_series(folder: Path, stored: np.ndarray, positions: np.ndarray, *, names: Sequence[str] | None = None,
                 instances: Sequence[int] | None = None, uids: dict | None = None, slopes=None, intercepts=None,
                 **kw) -> list[Path]:
    """Write ``stored`` (n, rows, cols) as n files, slice k at ``positions[k]`` (LPS mm)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    uids = uids or new_uids()
    n = len(stored)
    names = names or [f"slice{k:03d}.dcm" for k in range(n)]
    instances = instances or list(range(1, n + 1))
    out = []
    for k in range(n):
        extra = {}
        if slopes is not None:
            extra["slope"] = slopes[k]
        if intercepts is not None:
            extra["intercept"] = intercepts[k]
        out.append(write_slice(folder / names[k], stored[k], positions[k], uids=uids, instance=instances[k],
                               **{**kw, **extra}))
    return out


def write_enhanced_ct(path: Path, stored: np.ndarray, positions: np.ndarray, *, iop=AXIAL, spacing=(0.8, 0.7),
                      slopes=None, intercepts=None, uids: dict | None = None) -> Path:
    """One Enhanced CT file: frames in the given order, geometry in the functional groups."""
    uids = uids or new_uids("enhanced")
    n, rows, cols = stored.shape
    ds = _base("CT", uids, EnhancedCTImageStorage)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber, ds.NumberOfFrames = 1, n
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    meas = Dataset()
    meas.PixelSpacing, meas.SliceThickness = [float(spacing[0]), float(spacing[1])], 1.0
    ori = Dataset()
    ori.ImageOrientationPatient = [float(x) for x in iop]
    shared = Dataset()
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = Seq([meas]), Seq([ori])
    ds.SharedFunctionalGroupsSequence = Seq([shared])
    per = []
    for k in range(n):
        item, pos, pvt = Dataset(), Dataset(), Dataset()
        pos.ImagePositionPatient = [float(x) for x in positions[k]]
        pvt.RescaleSlope = 1.0 if slopes is None else slopes[k]
        pvt.RescaleIntercept = 0.0 if intercepts is None else intercepts[k]
        pvt.RescaleType = "HU"
        item.PlanePositionSequence, item.PixelValueTransformationSequence = Seq([pos]), Seq([pvt])
        per.append(item)
    ds.PerFrameFunctionalGroupsSequence = Seq(per)
    ds.PixelData = np.ascontiguousarray(stored.astype("<i2")).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


__all__ = ["AXIAL", "rotation", "new_uids", "write_slice", "write_series", "write_enhanced_ct"]
