"""Write a CT :class:`~pipeline.types.Volume` as a DICOM CT Image Storage series (one file per slice).

Every Type 1 and Type 2 attribute of the CT Image IOD's modules is written (Patient, General
Study, General Series, Frame of Reference, General Equipment, General Acquisition, General
Image, Image Plane, Image Pixel, Contrast/Bolus, CT Image, VOI LUT, SOP Common), so that
``dciodvfy`` finds no errors. Geometry comes from the affine only (see :mod:`pipeline.types`):

- ImagePositionPatient of slice k = ``affine @ (k, 0, 0, 1)``;
- ImageOrientationPatient = normalised ``affine[:3, 2]`` (row direction), ``affine[:3, 1]``
  (column direction); PixelSpacing = [row spacing, column spacing] = norms of columns 1, 2.

UIDs are derived from a seed (``pydicom.uid.generate_uid(entropy_srcs=...)``), dates are fixed,
so writing the same volume twice gives byte-identical files.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DicomError, GeometryError
from .types import Volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RESCALE_INTERCEPT = -1024


@dataclass(frozen=True)
class DicomMeta:
    """Patient, study and series attributes. UIDs left as None are derived from ``uid_seed``
    (default: the volume's ``source['seed']``, else 0)."""

    patient_name: str = "PHANTOM^SURGITWIN"
    patient_id: str = "SW-0001"
    patient_birth_date: str = "19700101"
    patient_sex: str = "O"
    study_description: str = "Synthetic abdominal CT phantom"
    study_id: str = "SW1"
    accession_number: str = ""
    study_date: str = "20250101"
    study_time: str = "120000"
    series_description: str = "Phantom CT abdomen"
    series_number: int = 1
    body_part: str = "ABDOMEN"
    patient_position: str = "HFS"
    manufacturer: str = "surgitwin"
    model_name: str = "pipeline.phantom"
    institution: str = "surgitwin synthetic data"
    kvp: float = 120.0
    convolution_kernel: str = "STANDARD"
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    uid_seed: int | str | None = None


def _uid(*parts) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["surgitwin"] + [str(p) for p in parts])


def _ds_number(v: float) -> str:
    """A DS value (max 16 characters) that round-trips to within 1e-6 mm."""
    s = f"{v:.6f}".rstrip("0").rstrip(".")
    if s in ("-0", ""):
        s = "0"
    return s if len(s) <= 16 else f"{v:.10g}"[:16]


def slice_geometry(vol: Volume) -> tuple[np.ndarray, list[float], list[float]]:
    """(nk, 3) ImagePositionPatient per slice, ImageOrientationPatient, PixelSpacing."""
    a = vol.affine
    row_sp, col_sp = float(np.linalg.norm(a[:3, 1])), float(np.linalg.norm(a[:3, 2]))
    row_dir, col_dir = a[:3, 2] / col_sp, a[:3, 1] / row_sp
    if abs(float(row_dir @ col_dir)) > 1e-4:
        raise GeometryError(f"DICOM rows and columns must be orthogonal; found cos = {row_dir @ col_dir:.2e} between affine columns 2 and 1")
    k = np.arange(vol.shape[0], dtype=np.float64)
    ipp = a[:3, 3][None, :] + k[:, None] * a[:3, 0][None, :]
    return ipp, [float(v) for v in (*row_dir, *col_dir)], [row_sp, col_sp]


def write_dicom_series(ct: Volume, out_dir, meta: DicomMeta | None = None, *,
                       series_description: str | None = None, reverse_order: bool = False,
                       shuffle_names: bool = False, signed: bool = False,
                       slice_thickness: float | None = None) -> list[Path]:
    """Write ``ct`` (integer HU, ``array[k, j, i]``) as one CT Image file per slice.

    Parameters
    ----------
    ct : Volume of integer HU. Stored value = HU + 1024 (RescaleIntercept -1024, slope 1).
    out_dir : folder (created); files are written under temporary names then renamed.
    meta : patient/study/series attributes (:class:`DicomMeta`).
    series_description : overrides ``meta.series_description``.
    reverse_order : InstanceNumber 1 is the last slice (k = nk-1) instead of the first.
    shuffle_names : file names follow a seeded permutation, so name order != slice order.
    signed : PixelRepresentation 1 (int16, BitsStored 16) instead of unsigned 12/16-bit.
    slice_thickness : mm; default the distance between slice planes.

    Returns
    -------
    list of Path, one per slice, in array order k = 0..nk-1.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    meta = meta or DicomMeta()
    arr = np.asarray(ct.array)
    if not np.issubdtype(arr.dtype, np.integer):
        raise DicomError(f"CT volume must hold integer HU to be written as DICOM; found dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    stored_min, stored_max = lo - RESCALE_INTERCEPT, hi - RESCALE_INTERCEPT
    if signed:
        if stored_min < -32768 or stored_max > 32767:
            raise DicomError(f"signed 16-bit storage needs HU in [-33792, 31743]; found [{lo}, {hi}]")
        bits, dtype = 16, "<i2"
    else:
        if stored_min < 0 or stored_max > 65535:
            raise DicomError(f"unsigned storage needs HU in [-1024, 64511]; found [{lo}, {hi}] (use signed=True)")
        bits, dtype = (12 if stored_max < 4096 else 16), "<u2"
    ipp, iop, pixel_spacing = slice_geometry(ct)
    normal = np.cross(iop[:3], iop[3:])
    step = ct.affine[:3, 0]
    thickness = float(abs(step @ normal)) if slice_thickness is None else float(slice_thickness)

    seed = meta.uid_seed if meta.uid_seed is not None else ct.source.get("seed", 0)
    desc = series_description or meta.series_description
    study_uid = meta.study_instance_uid or _uid("study", seed, meta.patient_id, meta.study_id)
    geom_key = np.round(ct.affine, 4).tobytes().hex()
    series_uid = meta.series_instance_uid or _uid("series", seed, study_uid, meta.series_number, desc, geom_key, reverse_order)
    for_uid = ct.frame_of_reference_uid or _uid("frame-of-reference", seed)

    nk = ct.shape[0]
    instance = np.arange(nk, 0, -1) if reverse_order else np.arange(1, nk + 1)
    names = instance.copy()
    if shuffle_names:
        names = np.random.default_rng([zlib.crc32(str(seed).encode()), nk]).permutation(nk) + 1
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(nk):
        sop_uid = _uid("instance", series_uid, k)
        fm = FileMetaDataset()
        fm.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        fm.MediaStorageSOPInstanceUID = sop_uid
        fm.TransferSyntaxUID = ExplicitVRLittleEndian
        fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        fm.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]
        ds = Dataset()
        ds.file_meta = fm
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = meta.study_date
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = meta.study_time
        ds.AccessionNumber = meta.accession_number
        ds.Modality = "CT"
        ds.Manufacturer = meta.manufacturer
        ds.InstitutionName = meta.institution
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = meta.study_description
        ds.SeriesDescription = desc
        ds.ManufacturerModelName = meta.model_name
        ds.PatientName = meta.patient_name
        ds.PatientID = meta.patient_id
        ds.PatientBirthDate = meta.patient_birth_date
        ds.PatientSex = meta.patient_sex
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "Synthetic phantom; no patient data"
        ds.ContrastBolusAgent = "IODINE"
        ds.BodyPartExamined = meta.body_part
        ds.SliceThickness = _ds_number(thickness)
        ds.KVP = _ds_number(meta.kvp)
        ds.DataCollectionDiameter = _ds_number(500.0)
        ds.SoftwareVersions = "surgitwin"
        ds.ReconstructionDiameter = _ds_number(max(pixel_spacing[0] * ct.shape[1], pixel_spacing[1] * ct.shape[2]))
        ds.GantryDetectorTilt = "0"
        ds.ConvolutionKernel = meta.convolution_kernel
        ds.PatientPosition = meta.patient_position
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = meta.study_id
        ds.SeriesNumber = int(meta.series_number)
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = int(instance[k])
        ds.ImagePositionPatient = [_ds_number(v) for v in ipp[k]]
        ds.ImageOrientationPatient = [_ds_number(v) for v in iop]
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds_number(float(ipp[k] @ normal))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(ct.shape[1]), int(ct.shape[2])
        ds.PixelSpacing = [_ds_number(v) for v in pixel_spacing]
        ds.BitsAllocated = 16
        ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = 1 if signed else 0
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.RescaleIntercept = str(RESCALE_INTERCEPT)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.LossyImageCompression = "00"
        ds.PixelData = (arr[k].astype(np.int32) - RESCALE_INTERCEPT).astype(dtype).tobytes()
        path = out / f"IM{int(names[k]):04d}.dcm"
        tmp = out / f".tmp-{os.getpid()}-{path.name}"
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
        paths.append(path)
    return paths
