"""Generated studies for the batch, PACS and de-identification tests (good and broken ones).

Every study is the synthetic phantom (pipeline.phantom) on a small grid, written by
pipeline.dicom_writer with its own patient identity, so tests can grep outputs for the exact
name / ID / birth date strings. Broken variants are made by damaging a good study.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SMALL_SHAPE = (32, 64, 64)
SMALL_SPACING = (7.8, 5.4, 5.4)  # the default phantom field of view on a 32x64x64 grid


def patient(n: int) -> tuple[str, str, str]:
    """(PatientName, PatientID, PatientBirthDate): distinctive strings that occur nowhere else."""
    fam = ["QUIXBY", "ZELLWEGGER", "MORTVANGEN", "PLOOSHKA", "WRYNDALE", "KASTROVIC", "VELLOPIAN",
           "OSTRAGON", "FENWILDE", "TRUMBELLO", "GASKOVNY", "HEMMERSBY"][n % 12]
    return f"{fam}^JOSEPHINE{n}", f"MRN{734100 + n}X", f"19{40 + n % 50:02d}0{1 + n % 9}1{n % 10}"


def study_meta(n: int, **kw):
    from pipeline.dicom_writer import DicomMeta

    name, pid, dob = patient(n)
    return DicomMeta(patient_name=name, patient_id=pid, patient_birth_date=dob, uid_seed=f"test-study-{n}",
                     study_id=f"S{n}", accession_number=f"ACC{n:05d}", **kw)


def write_study(folder, n: int, *, shape=SMALL_SHAPE, spacing=SMALL_SPACING, **meta_kw) -> list[Path]:
    """A CT phantom series for patient ``n`` in ``folder``; returns the files (slice order)."""
    from pipeline.dicom_writer import write_dicom_series
    from pipeline.phantom import make_phantom

    ct, _ = make_phantom(seed=n, shape=shape, spacing=spacing)
    return write_dicom_series(ct, Path(folder), study_meta(n, **meta_kw))


def truncate_one(files: list[Path], cut: int | None = None) -> Path:
    """Cut the middle file short (a transfer interrupted mid-file): by half, or by ``cut`` bytes
    (small enough to stay inside the pixel data, so the header still reads)."""
    f = files[len(files) // 2]
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - cut] if cut else data[: len(data) // 2])
    return f


def remove_middle(files: list[Path], n: int = 3) -> list[Path]:
    mid = len(files) // 2
    gone = files[mid: mid + n]
    for f in gone:
        f.unlink()
    return gone


def write_mixed_series(folder, n: int) -> None:
    """One SeriesInstanceUID holding two different image stacks at the same positions
    (64x64 and 48x48 slices of one volume written under the same series UID)."""
    import pydicom

    files = write_study(Path(folder), n)
    uid = str(pydicom.dcmread(str(files[0]), stop_before_pixels=True).SeriesInstanceUID)
    other = Path(folder).parent / f".mixed-tmp-{n}"
    files2 = write_study(other, n, shape=(32, 48, 48), spacing=(7.8, 7.2, 7.2), series_instance_uid=uid)
    for f in files2:
        ds = pydicom.dcmread(str(f))
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["mixed", str(n), f.name])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(str(Path(folder) / f"b_{f.name}"), enforce_file_format=True)
        f.unlink()
    other.rmdir()


def write_non_image(folder, n: int, count: int = 3) -> list[Path]:
    """Only non-image objects: Basic Text SR documents and a Key Object Selection."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name, pid, dob = patient(n)
    study = generate_uid(entropy_srcs=["nonimage", str(n)])
    out = []
    for i in range(count):
        sop_class = "1.2.840.10008.5.1.4.1.1.88.11" if i < count - 1 else "1.2.840.10008.5.1.4.1.1.88.59"
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["nonimage", str(n), str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["nonimage-series", str(n), str(i == count - 1)])
        ds.Modality = "SR" if i < count - 1 else "KO"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = name, pid, dob
        ds.SeriesNumber, ds.InstanceNumber = 90 + (i == count - 1), i + 1
        ds.ContentDate, ds.ContentTime = "20250101", "120000"
        p = folder / f"doc{i}.dcm"
        ds.save_as(str(p), enforce_file_format=True)
        out.append(p)
    return out


def tiny_sop_uid(tag: str, i: int) -> str:
    """SOP Instance UID of instance ``i`` of :func:`write_tiny_series` (fixed length per tag)."""
    import zlib

    return f"1.2.826.0.1.3680043.8.498.77.{1000000000 + zlib.crc32(tag.encode()) % 8999999999}.{10000 + i}"


def write_tiny_series(folder, count: int, *, tag: str, patient_n: int = 0, size: int = 8) -> list[Path]:
    """``count`` tiny CT slices (size x size pixels) of one series: for network throughput tests.

    One instance is encoded by pydicom; the others are that byte string with the fixed-length
    SOP Instance UID, InstanceNumber, slice position and pixels replaced (pydicom would take
    ~10 ms per file; this takes ~0.1 ms).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name, pid, dob = patient(patient_n)
    placeholder_uid = tiny_sop_uid(tag, 89999)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = placeholder_uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["tiny-study", tag])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["tiny-series", tag])
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=["tiny-for", tag])
    ds.Modality, ds.PatientName, ds.PatientID, ds.PatientBirthDate = "CT", name, pid, dob
    ds.SeriesNumber, ds.InstanceNumber = 1, "99999"
    ds.ImagePositionPatient = ["0", "0", "99999.25"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1, 1]
    ds.SliceThickness = 1
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    pixels = (np.arange(size * size, dtype=np.uint16) % 4096).reshape(size, size)
    ds.PixelData = pixels.astype("<u2").tobytes()
    buf = DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    template = buf.getvalue()
    npix = size * size * 2
    inst = b"\x20\x00\x13\x00IS\x06\x0099999 "  # (0020,0013) InstanceNumber, explicit VR LE
    assert template.count(b"\\99999.25") == 1 and template.count(inst) == 1
    out = []
    for i in range(count):
        data = template.replace(placeholder_uid.encode(), tiny_sop_uid(tag, i).encode())
        data = data.replace(b"\\99999.25", b"\\" + f"{float(i):08.2f}".encode())
        data = data.replace(inst, inst[:-6] + f"{10000 + i} ".encode())
        data = data[:-npix] + (pixels + i % 7).astype("<u2").tobytes()
        p = folder / f"img{i:05d}.dcm"
        p.write_bytes(data)
        out.append(p)
    return out


def grep_tree(root, needles: list[str]) -> list[tuple[str, str]]:
    """(file, needle) for every file under ``root`` (or ``root`` itself, a file) whose bytes contain a
    needle (case-insensitive)."""
    hits = []
    low = [n.lower().encode() for n in needles]
    root = Path(root)
    walk = [(str(root.parent), [], [root.name])] if root.is_file() else os.walk(root)
    for dirpath, _, files in walk:
        for f in files:
            p = Path(dirpath) / f
            try:
                data = p.read_bytes().lower()
            except OSError:
                continue
            hits += [(str(p), needles[i]) for i, n in enumerate(low) if n in data]
    return hits


def write_mixed_phases(folder, n: int) -> None:
    """Two acquisitions under one SeriesInstanceUID with identical geometry (different pixels
    at every slice position): no single volume can be built from it."""
    import pydicom

    files = write_study(Path(folder), n)
    uid = str(pydicom.dcmread(str(files[0]), stop_before_pixels=True).SeriesInstanceUID)
    other = Path(folder).parent / f".phase-tmp-{n}"
    files2 = write_study(other, n + 1000, series_instance_uid=uid,
                         study_instance_uid=str(pydicom.dcmread(str(files[0]), stop_before_pixels=True).StudyInstanceUID))
    for f in files2:
        ds = pydicom.dcmread(str(f))
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = patient(n)
        ds.save_as(str(Path(folder) / f"p2_{f.name}"), enforce_file_format=True)
        f.unlink()
    other.rmdir()
