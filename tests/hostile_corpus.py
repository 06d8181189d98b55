"""A corpus of hostile inputs for `surgitwin run`, generated at test time (no committed binaries).

Each case is a :class:`Case`: an input path and what must happen —

- ``error``: exit 1, the message names ``names`` (the file or folder at fault) and ``rule``
  (a fragment of the rule broken); never a traceback;
- ``ok``: exit 0 and ``check(scene_json)`` holds (a correct result, warnings in the scene).

Run ``python tests/hostile_corpus.py DIR`` to write the corpus and list the cases.
"""
from __future__ import annotations

import gzip
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dicom_synth as ds_  # noqa: E402

SHAPE = (12, 64, 64)  # slices, rows, columns
SPACING = (0.8, 0.8)  # mm in-plane
STEP = 2.5  # mm between slices
BODY = (slice(None), slice(16, 48), slice(12, 52))  # a 40 HU block in air
BODY_ML = SHAPE[0] * 32 * 40 * SPACING[0] * SPACING[1] * STEP / 1000.0


@dataclass
class Case:
    name: str
    input: Path
    expect: str  # "error" | "ok"
    names: str = ""  # error: the file/folder the message must name
    rule: str = ""  # error: fragment of the rule the message must state
    check: Callable[[dict], None] | None = None


def _ct_stored(value_body: int = 40, value_air: int = -1000) -> np.ndarray:
    a = np.full(SHAPE, value_air, np.int16)
    a[BODY] = value_body
    return a


def _positions(n: int = SHAPE[0], step: float = STEP) -> np.ndarray:
    return np.array([[-25.0, -25.0, step * k] for k in range(n)])


def _series(folder: Path, stored=None, **kw) -> list[Path]:
    stored = _ct_stored() if stored is None else stored
    kw.setdefault("spacing", SPACING)
    return ds_.write_series(folder, stored, _positions(len(stored)), **kw)


def _edit(path: Path, **tags) -> None:
    import pydicom

    d = pydicom.dcmread(path)
    for k, v in tags.items():
        setattr(d, k, v)
    d.save_as(path)


def _nifti(path: Path, arr: np.ndarray, pixdim=(1.0, 1.0, 2.0)) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(arr, np.diag([*pixdim, 1.0])), str(path))
    return path


def _body_ok(scene: dict) -> None:
    s = {x["name"]: x for x in scene["structures"]}
    assert "body" in s, list(s)
    assert abs(s["body"]["voxel_volume_ml"] - BODY_ML) / BODY_ML < 0.05, (s["body"]["voxel_volume_ml"], BODY_ML)


def names() -> list[str]:
    """The case names, without writing anything (for test parametrisation)."""
    return [s[0] for s in _specs()]


def build(root, only: str | None = None) -> list[Case]:
    """Write every case (or the one named ``only``) under ``root``; return them."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cases = []
    for name, make, expect, check in _specs():
        if only is None or name == only:
            inp, names_, rule = make(root / name)
            cases.append(Case(name, Path(inp), expect, str(names_), rule, check))
    return cases


def _specs() -> list[tuple]:
    specs: list[tuple] = []

    def add(name, make: Callable[[Path], tuple], expect="error", check=None):
        specs.append((name, make, expect, check))

    # a good series, and good series with hostile neighbours ---------------------------------
    add("good_series", lambda d: (_series(d) and d, "", ""), "ok", _body_ok)

    def fifo_beside(d):
        _series(d)
        os.mkfifo(d / "zz_pipe.dcm")
        return d, "", ""
    add("fifo_beside_series", fifo_beside, "ok", _body_ok)

    def self_link(d):
        _series(d)
        os.symlink("loop.dcm", d / "loop.dcm")  # a symlink to itself (ELOOP)
        os.symlink("/nonexistent/x.dcm", d / "dangling.dcm")
        (d / "notes.txt").write_text("not an image\n")
        return d, "", ""
    add("symlink_loop_and_text_beside", self_link, "ok", _body_ok)

    def fifo_input(d):
        d.mkdir(parents=True)
        os.mkfifo(d / "pipe.dcm")
        return d / "pipe.dcm", "pipe.dcm", "regular files"
    add("fifo_as_input", fifo_input)

    # pixel data that does not match its header -----------------------------------------------
    def bits8(d):
        files = _series(d)
        for f in files:
            _edit(f, BitsAllocated=8, BitsStored=8, HighBit=7)
        return d, files[0].name, "len(PixelData)"
    add("bits_allocated_8_over_16bit_data", bits8)

    def wrong_rows(d):
        files = _series(d)
        _edit(files[3], Rows=32)
        return d, files[3].name, ""  # a smaller stack: the series is split, or the length refused
    add("rows_smaller_than_data", wrong_rows)

    def pixel_truncated(d):
        files = _series(d)
        f = files[5]
        f.write_bytes(f.read_bytes()[:-3000])
        return d, f.name, "PixelData"
    add("pixel_data_truncated", pixel_truncated)

    def header_cut(d):
        files = _series(d)
        f = files[5]
        f.write_bytes(f.read_bytes()[:700])
        return d, f.name, "every instance of a series must be readable"
    add("one_file_header_cut", header_cut)

    def garbage(d):
        files = _series(d)
        f = files[-1]
        b = bytearray(f.read_bytes())
        b[140:420] = bytes((i * 37) % 256 for i in range(280))
        f.write_bytes(bytes(b))
        return d, f.name, "every instance of a series must be readable"
    add("last_file_garbage_header", garbage)

    def all_cut(d):
        files = _series(d)
        for f in files:
            f.write_bytes(f.read_bytes()[:900])  # Rows/Columns kept, Pixel Data gone
        return d, files[0].name, "every instance of a series must be readable"
    add("all_headers_cut", all_cut)

    def zero_bytes(d):
        d.mkdir(parents=True)
        for k in range(5):
            (d / f"IM{k}.dcm").write_bytes(b"")
        return d, d.name, "selection rule"
    add("zero_byte_files", zero_bytes)

    def dicm_noise(d):
        d.mkdir(parents=True)
        rng = np.random.default_rng(7)
        for k in range(5):
            (d / f"IM{k}.dcm").write_bytes(bytes(128) + b"DICM" + rng.bytes(4000))
        return d, d.name, "selection rule"
    add("dicm_marker_then_noise", dicm_noise)

    # geometry and rescale ------------------------------------------------------------------
    def no_iop(d):
        files = _series(d)
        import pydicom

        x = pydicom.dcmread(files[4])
        del x.ImageOrientationPatient
        x.save_as(files[4])
        return d, files[4].name, "every instance of a series must be readable"  # its own stack: named as the cause
    add("missing_orientation_in_one_slice", no_iop)

    def spacing0(d):
        files = _series(d)
        for f in files:
            _edit(f, PixelSpacing=[0.0, 0.0])
        return d, d.name, "PixelSpacing must be positive"
    add("pixel_spacing_zero", spacing0)

    def two_for(d):
        files = _series(d)
        _edit(files[2], FrameOfReferenceUID="1.2.3.4.5")
        return d, d.name, "FrameOfReferenceUID"
    add("two_frames_of_reference", two_for)

    def dup_pos(d):
        stored = _ct_stored()
        pos = _positions()
        pos[6] = pos[5]
        stored[6] += 7
        ds_.write_series(d, stored, pos, spacing=SPACING)
        return d, "slice0", "one image per slice position"
    add("different_images_same_position", dup_pos)

    def slope0(d):
        files = _series(d)
        _edit(files[1], RescaleSlope=0)
        return d, files[1].name, "RescaleSlope"
    add("rescale_slope_zero", slope0)

    def slope_huge(d):
        files = _series(d)
        for f in files:
            _edit(f, RescaleSlope="1e30")
        return d, d.name, "Hounsfield"
    add("rescale_slope_1e30", slope_huge)

    # implausible content ------------------------------------------------------------------
    add("all_air", lambda d: (_series(d, np.full(SHAPE, -1000, np.int16)
                                      + (np.arange(64) % 3).astype(np.int16)) and d, d.name, "tissue"))
    add("strip_4x4", lambda d: (_series(d, np.full((60, 4, 4), 40, np.int16)) and d, d.name, "field of view"))
    add("two_slices", lambda d: (_series(d, _ct_stored()[:2]) and d, d.name, "selection rule"))
    def mr_into_ct_model(d):
        rng = np.random.default_rng(3)
        _series(d, rng.integers(0, 900, SHAPE).astype(np.int16), modality="MR")
        return d, d.name, "modality and body region match the model"
    add("mr_series_into_ct_model", mr_into_ct_model)
    add("mr_constant", lambda d: (_series(d, np.full(SHAPE, 300, np.int16), modality="MR") and d, d.name,
                                  "more than one value"))

    # folders without a scan ----------------------------------------------------------------
    def empty(d):
        d.mkdir(parents=True)
        return d, d.name, "selection rule"
    add("empty_folder", empty)

    def text_only(d):
        d.mkdir(parents=True)
        (d / "readme.txt").write_text("hello\n" * 50)
        (d / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
        return d, d.name, "selection rule"
    add("text_and_png_only", text_only)
    add("does_not_exist", lambda d: (d, d.name, "input must exist"))

    # NIfTI --------------------------------------------------------------------------------
    def nii(d, arr, name="img.nii.gz", pixdim=(1.0, 1.0, 2.0)):
        d.mkdir(parents=True)
        return _nifti(d / name, arr, pixdim)

    body = np.full((64, 64, 24), -1000, np.int16)
    body[16:48, 16:48, :] = 40
    add("nifti_good", lambda d: (nii(d, body), "", ""), "ok",
        lambda sc: None if any(s["name"] == "body" for s in sc["structures"]) else (_ for _ in ()).throw(AssertionError(sc["structures"])))

    def nii_trunc(d):
        p = nii(d, body, "img.nii")
        data = p.read_bytes()
        p.write_bytes(data[: 352 + (len(data) - 352) // 50])
        return p, p.name, "NIfTI data size"
    add("nifti_truncated", nii_trunc)

    def nii_gz_trunc(d):
        p = nii(d, body, "img.nii")
        data = p.read_bytes()[: 352 + 20000]
        gz = d / "img.nii.gz"
        gz.write_bytes(gzip.compress(data))
        p.unlink()
        return gz, gz.name, "NIfTI data size"
    add("nifti_gz_truncated", nii_gz_trunc)

    def nii_pix0(d):
        import nibabel as nib

        p = nii(d, body)
        img = nib.load(str(p))
        img.header["pixdim"][1] = 0.0
        nib.save(img, str(p))
        return p, p.name, "pixdim"
    add("nifti_pixdim_zero", nii_pix0)

    def nii_nan(d):
        arr = body.astype(np.float32)
        arr[3, 3, 3] = np.nan
        return nii(d, arr), "img.nii.gz", "finite"
    add("nifti_nan", nii_nan)

    def nii_garbage(d):
        d.mkdir(parents=True)
        p = d / "img.nii"
        p.write_bytes(b"\x00" * 100)
        return p, p.name, "NIfTI"
    add("nifti_garbage", nii_garbage)
    return specs


if __name__ == "__main__":  # pragma: no cover - a tool for looking at the corpus
    for c in build(sys.argv[1]):
        print(f"{c.name:36} {c.expect:5} {c.input}  {c.rule}")
