"""Read throughput of a 512x512x300 int16 CT series against baselines measured in the same run.

Generates (in a temp dir) 300 uncompressed Explicit VR Little Endian CT slices with GE-style
signed 16-bit storage (BitsStored 16, RescaleIntercept -1024, so the reader must check the
range before choosing int16), shuffled file names, then times, each after a warm-up pass so
all read from the page cache:

- ``cat`` of all files to /dev/null (the IO ceiling);
- a naive pydicom loop: dcmread + pixel_array + np.stack + rescale;
- SimpleITK ImageSeriesReader with the file names given (default output type, and sitkInt16);
- ``pipeline.ingest.read_series``.

Prints MB/s and each one's ratio to SimpleITK (sitkInt16). Run: ``python benchmarks/bench_read.py``.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_series(folder: Path, n: int = 300, size: int = 512, seed: int = 0) -> list[str]:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(seed)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) ** 2 / (0.42 * size) ** 2 + (xx - size / 2) ** 2 / (0.46 * size) ** 2) < 1
    order = rng.permutation(n)  # file names do not follow slice order
    files = []
    for k in range(n):
        img = np.where(body, 1024 + 40, 0).astype(np.int16)  # stored: HU + 1024
        img += rng.integers(-20, 20, img.shape, dtype=np.int16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.SeriesDescription, ds.ImageType = "CT", "bench", ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientID, ds.InstanceNumber = "BENCH", k + 1
        ds.ImagePositionPatient = [-250.0, -250.0, -300.0 + 1.0 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.9765625, 0.9765625], 1.0
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = img.tobytes()
        path = folder / f"IM{order[k]:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(str(path))
    return sorted(files)


def _naive(files):
    import pydicom

    dss = [pydicom.dcmread(f) for f in files]
    dss.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    arr = np.stack([d.pixel_array for d in dss]).astype(np.float32)
    return arr * float(dss[0].RescaleSlope) + float(dss[0].RescaleIntercept)


def _sitk(files, int16: bool):
    import SimpleITK as sitk

    r = sitk.ImageSeriesReader()
    r.SetFileNames(files)  # names given: no GDCM directory scan (fastest SimpleITK path)
    if int16:
        r.SetOutputPixelType(sitk.sitkInt16)
    return sitk.GetArrayFromImage(r.Execute())


def _ours(files):
    from pipeline.ingest.read import read_series

    return read_series(files).array


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3, help="best of N timed runs per method")
    args = ap.parse_args(argv)
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    with tempfile.TemporaryDirectory(prefix="bench_read_") as tmp:
        t = time.perf_counter()
        files = write_series(Path(tmp), n=args.slices)
        mb = sum(Path(f).stat().st_size for f in files) / 1e6
        print(f"wrote {len(files)} files, {mb:.1f} MB in {time.perf_counter() - t:.1f} s ({tmp})")
        methods = {
            "cat > /dev/null": lambda: subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True),
            "pydicom naive (dcmread+pixel_array+stack+rescale)": lambda: _naive(files),
            "SimpleITK ImageSeriesReader (default type)": lambda: _sitk(files, False),
            "SimpleITK ImageSeriesReader (sitkInt16)": lambda: _sitk(files, True),
            "surgitwin read_series": lambda: _ours(files),
        }
        times = {}
        for name, fn in methods.items():
            fn()  # warm-up: page cache, imports
            best = float("inf")
            for _ in range(args.repeat):
                t = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t)
            times[name] = best
        ref = times["SimpleITK ImageSeriesReader (sitkInt16)"]
        print(f"{'method':55s} {'time':>8s} {'MB/s':>8s} {'vs sitkInt16':>12s}")
        for name, s in times.items():
            print(f"{name:55s} {s * 1000:7.0f}ms {mb / s:8.0f} {ref / s:11.2f}x")
        ours = _ours(files)
        ref_arr = _sitk(files, True)
        # SimpleITK stacks in the (sorted-name, not positional) order given; compare as sets of slices
        same = np.array_equal(np.sort(ours.reshape(len(files), -1).astype(np.int64).sum(1)), np.sort(ref_arr.reshape(len(files), -1).astype(np.int64).sum(1)))
        print(f"read_series dtype {ours.dtype}, shape {ours.shape}; same slices as SimpleITK: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
