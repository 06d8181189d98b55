"""nnU-Net-layout datasets: write, validate, build from DICOM, feed to MONAI.

Layout (nnU-Net v2, ``documentation/dataset_format.md``)::

    DatasetNNN_Name/
      dataset.json        {channel_names: {"0": "CT"}, labels: {"background": 0, "liver": 1, ...},
                           numTraining: N, file_ending: ".nii.gz"}
      imagesTr/<case>_0000.nii.gz
      labelsTr/<case>.nii.gz
      labelsGen/<map>.nii.gz   (surgitwin extension, optional: generation maps for synthesis)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SurgitwinError
from ..fileio import atomic_write_text
from ..types import Volume


class DatasetError(SurgitwinError):
    """A dataset folder that breaks the nnU-Net convention (names the file and the rule)."""


def _atomic_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def write_case(root, case_id: str, image: Volume, labels: Volume, ending: str = ".nii.gz") -> None:
    """Write one case: ``imagesTr/<case>_0000`` (float32 or int16) and ``labelsTr/<case>`` (uint8)."""
    from ..geometry import write_image_file

    root = Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    if not image.geometry_equal(labels, atol=1e-3):
        raise DatasetError(f"case {case_id}: label grid must equal the image grid", path=str(root))
    write_image_file(image, root / "imagesTr" / f"{case_id}_0000{ending}")
    write_image_file(labels, root / "labelsTr" / f"{case_id}{ending}", labels.array.astype(np.uint8))


def write_generation_map(root, name: str, gen: Volume) -> None:
    from ..geometry import write_image_file

    d = Path(root) / "labelsGen"
    d.mkdir(parents=True, exist_ok=True)
    write_image_file(gen, d / f"{name}.nii.gz", gen.array.astype(np.uint8))


def write_dataset_json(root, labels: dict[str, int], num_training: int, name: str = "", channel: str = "CT",
                       ending: str = ".nii.gz", extra: dict | None = None) -> None:
    """``dataset.json`` with background 0 added; ``labels`` maps name -> id."""
    d = {"name": name, "channel_names": {"0": channel},
         "labels": {"background": 0, **{k: int(v) for k, v in labels.items() if int(v) != 0}},
         "numTraining": int(num_training), "file_ending": ending}
    d.update(extra or {})
    _atomic_text(Path(root) / "dataset.json", json.dumps(d, indent=1))


def read_dataset_json(root) -> dict:
    p = Path(root) / "dataset.json"
    if not p.exists():
        raise DatasetError("dataset.json not found (nnU-Net layout: DatasetNNN_Name/dataset.json)", path=str(p))
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"dataset.json is not valid JSON: {e}", path=str(p)) from None
    for key in ("channel_names", "labels", "numTraining", "file_ending"):
        if key not in d:
            raise DatasetError(f"dataset.json must have key '{key}'; found keys {sorted(d)}", path=str(p), rule=key)
    return d


def list_cases(root) -> list[dict]:
    """[{id, images: [paths per channel], label: path}] for every case in imagesTr/labelsTr."""
    root = Path(root)
    d = read_dataset_json(root)
    ending = d["file_ending"]
    n_ch = len(d["channel_names"])
    cases = []
    for lab in sorted((root / "labelsTr").glob(f"*{ending}")):
        cid = lab.name[: -len(ending)]
        imgs = [root / "imagesTr" / f"{cid}_{c:04d}{ending}" for c in range(n_ch)]
        cases.append({"id": cid, "images": [str(p) for p in imgs], "label": str(lab)})
    return cases


def load_generation_maps(root, spacing: float = 3.0) -> list[Volume]:
    """Generation maps in ``labelsGen/`` resampled onto canonical grids."""
    from ..geometry import read_image_file
    from .canonical import to_canonical

    out = []
    for p in sorted((Path(root) / "labelsGen").glob("*.nii.gz")):
        v = to_canonical(read_image_file(p), spacing)
        out.append(v.with_array(v.array.astype(np.uint8), name=p.name.split(".")[0]))
    return out


@dataclass
class ValidationReport:
    root: str
    cases: int = 0
    labels: dict = field(default_factory=dict)
    voxels_per_label: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        lines = [f"{self.root}: {self.cases} cases, labels {self.labels}"]
        lines += [f"ERROR {e}" for e in self.errors] + [f"warning {w}" for w in self.warnings]
        lines.append("OK" if self.ok else f"{len(self.errors)} error(s)")
        return "\n".join(lines)


def validate_dataset(root, tol_mm: float = 1e-3) -> ValidationReport:
    """Check the nnU-Net convention; every problem is listed (not only the first).

    Rules: dataset.json has channel_names/labels/numTraining/file_ending; labels are named
    ids with background 0; every label file has its image(s) with the same geometry (shape
    and affine within ``tol_mm``); label values are declared ids; no case is empty (all
    background); numTraining equals the number of cases.
    """
    import SimpleITK as sitk

    root = Path(root)
    rep = ValidationReport(str(root))
    try:
        d = read_dataset_json(root)
    except DatasetError as e:
        rep.errors.append(str(e))
        return rep
    labels = d["labels"]
    rep.labels = labels
    try:
        ids = {int(v) for v in labels.values()}
    except (TypeError, ValueError):
        rep.errors.append(f"dataset.json: 'labels' must map names to integer ids (region-based labels are "
                          f"not supported); found {labels}")
        return rep
    if labels.get("background") != 0:
        rep.errors.append(f"dataset.json: labels must contain 'background': 0; found {labels.get('background')!r}")
    if sorted(ids) != list(range(len(ids))):
        rep.errors.append(f"dataset.json: label values must be consecutive integers 0..{len(ids) - 1} (nnU-Net v2 "
                          f"refuses gaps); found {sorted(ids)}")
    cases = list_cases(root)
    rep.cases = len(cases)
    if not cases:
        rep.errors.append(f"labelsTr/ has no *{d['file_ending']} files")
    if int(d["numTraining"]) != len(cases):
        rep.errors.append(f"dataset.json: numTraining must equal the number of cases in labelsTr ({len(cases)}); "
                          f"found {d['numTraining']}")
    rep.errors += _image_file_errors(root, d, {c["id"] for c in cases})
    counts = {int(i): 0 for i in ids}
    for c in cases:
        try:
            lab = sitk.ReadImage(c["label"])
        except RuntimeError as e:
            rep.errors.append(f"{c['label']}: cannot read: {str(e).strip().splitlines()[-1]}")
            continue
        arr = sitk.GetArrayViewFromImage(lab)
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.mod(arr, 1) == 0):
            rep.errors.append(f"{c['label']}: label values must be integers; found non-integer values")
        vals, n = np.unique(arr.astype(np.int64), return_counts=True)
        undeclared = sorted(set(vals.tolist()) - ids)
        if undeclared:
            rep.errors.append(f"{c['label']}: label values must be declared in dataset.json labels {sorted(ids)}; "
                              f"found undeclared {undeclared}")
        if vals.tolist() == [0]:
            rep.errors.append(f"{c['label']}: case is empty (only background)")
        for v, k in zip(vals.tolist(), n.tolist()):
            if v in counts:
                counts[v] += k
        for img_path in c["images"]:
            if not Path(img_path).exists():
                ch = int(Path(img_path).name[len(c["id"]) + 1:][:4])
                rep.errors.append(f"{img_path}: missing; channel {ch} ({d['channel_names'].get(str(ch), '?')!r}) of "
                                  f"case '{c['id']}' (labelsTr/{Path(c['label']).name}) must be this file")
                continue
            r = sitk.ImageFileReader()
            r.SetFileName(img_path)
            r.ReadImageInformation()
            problems = []
            if tuple(r.GetSize()[:3]) != tuple(lab.GetSize()):
                problems.append(f"size {tuple(r.GetSize())} vs label {lab.GetSize()}")
            if not np.allclose(r.GetSpacing()[:3], lab.GetSpacing(), atol=tol_mm):
                problems.append(f"spacing {np.round(r.GetSpacing(), 4).tolist()} vs label {np.round(lab.GetSpacing(), 4).tolist()}")
            if not np.allclose(r.GetOrigin()[:3], lab.GetOrigin(), atol=max(tol_mm, 1e-2)):
                problems.append(f"origin {np.round(r.GetOrigin(), 3).tolist()} vs label {np.round(lab.GetOrigin(), 3).tolist()}")
            if not np.allclose(np.array(r.GetDirection()[:9]), np.array(lab.GetDirection()), atol=1e-4):
                problems.append("direction cosines differ")
            if problems:
                rep.errors.append(f"{img_path}: image geometry must equal its label's ({Path(c['label']).name}); "
                                  + "; ".join(problems))
    rep.voxels_per_label = counts
    for name, v in labels.items():
        if int(v) != 0 and counts.get(int(v), 0) == 0 and cases:
            rep.warnings.append(f"label '{name}' ({v}) is declared but appears in no case")
    return rep


def _image_file_errors(root: Path, d: dict, case_ids: set) -> list[str]:
    """Every file in imagesTr/ must be ``<case>_<CCCC><ending>`` for a case with a label and a
    declared channel; errors name the file as it is on disk."""
    import re

    ending, n_ch = d["file_ending"], len(d["channel_names"])
    errors = []
    for p in sorted((root / "imagesTr").glob(f"*{ending}")):
        m = re.match(r"^(.+)_(\d{4})$", p.name[: -len(ending)])
        if not m:
            errors.append(f"{p}: image file names must be <case>_<4-digit channel>{ending} (e.g. "
                          f"case_001_0000{ending}); found no channel suffix")
        elif m.group(1) not in case_ids:
            errors.append(f"{p}: image without a label file (labelsTr/{m.group(1)}{ending} missing)")
        elif int(m.group(2)) >= n_ch:
            errors.append(f"{p}: channel {int(m.group(2))} is not declared in dataset.json channel_names "
                          f"({n_ch} channel(s): {d['channel_names']})")
    return errors


def check_dataset(root) -> ValidationReport:
    """:func:`validate_dataset`, raising :class:`DatasetError` listing all errors when any."""
    rep = validate_dataset(root)
    if not rep.ok:
        raise DatasetError("dataset breaks the nnU-Net convention:\n  " + "\n  ".join(rep.errors), path=str(root))
    return rep


# --- building a dataset from DICOM ----------------------------------------------------------------

def _snake(name: str) -> str:
    import re

    s = re.sub(r"[^a-z0-9]+", "_", str(name).strip().lower()).strip("_")
    return s if s and s[0].isalpha() else f"label_{s}"


def read_label_source(path, image: Volume) -> tuple[np.ndarray, dict[str, int]]:
    """A DICOM SEG or a label image file, on ``image``'s grid (nearest, physical space).

    Returns (labels (nk, nj, ni) uint16, name -> value in that array). For a SEG the names are
    the segment labels (lower_snake_case); for a label file they come from a ``labels.json``
    next to it (``{"1": "liver"}`` or a label table list ``[{"id": 1, "name": "liver"}]``) or default to ``label_<value>``.
    """
    from ..geometry import read_image_file, resample_like

    path = Path(path)
    is_seg = False
    if path.is_file() and path.suffix.lower() not in (".gz", ".nii", ".nrrd", ".mha", ".mhd"):
        import pydicom
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
            is_seg = getattr(ds, "Modality", "") == "SEG"
        except Exception:  # noqa: BLE001 - any parser failure means not DICOM: read it as an image file below
            is_seg = False
    if is_seg:
        import highdicom as hd

        seg = hd.seg.segread(str(path))
        try:
            hv = seg.get_volume(combine_segments=True, relabel=False, dtype=np.uint16)
        except Exception as e:  # noqa: BLE001 - highdicom raises anything (overlapping segments, irregular frames)
            raise DatasetError(f"DICOM SEG cannot be read as one label volume: {e}", path=str(path)) from None
        vol = Volume(np.asarray(hv.array), np.asarray(hv.affine), getattr(seg, "FrameOfReferenceUID", None))
        names = {_snake(s.SegmentLabel): int(s.SegmentNumber) for s in seg.SegmentSequence}
    else:
        vol = read_image_file(path)
        side = path.parent / "labels.json"
        if side.exists():
            from .labels import parse_label_names

            try:
                raw = json.loads(side.read_text())
            except json.JSONDecodeError as e:
                raise DatasetError(f"labels.json is not valid JSON: {e}", path=str(side)) from None
            names = {_snake(v): k for k, v in parse_label_names(raw, side).items()}
        else:
            names = {f"label_{int(v)}": int(v) for v in np.unique(vol.array) if v != 0}
    if (image.frame_of_reference_uid and vol.frame_of_reference_uid
            and image.frame_of_reference_uid != vol.frame_of_reference_uid):
        raise DatasetError(f"labels' FrameOfReferenceUID {vol.frame_of_reference_uid} must equal the image's "
                           f"{image.frame_of_reference_uid}", path=str(path))
    on_grid = resample_like(vol, image, order=0, dtype=np.uint16).array
    return on_grid, names


def dataset_from_dicom(out_dir, cases: list[tuple[str, str]], name: str | None = None,
                       label_names: list[str] | None = None) -> ValidationReport:
    """Build an nnU-Net dataset from (DICOM series folder, SEG or label file) pairs.

    Label ids in the dataset follow ``label_names`` (default: union of names in order of
    first appearance); every case's labels are renumbered by name, so SEGs that number the
    same organ differently end up consistent. Returns the validation report of the result.
    """
    from ..ingest import read_input

    out_dir = Path(out_dir)
    table: dict[str, int] = {n: i for i, n in enumerate(label_names or [], start=1)}
    written = 0
    for ci, (series, lab_path) in enumerate(cases):
        img = read_input(series)
        arr, names = read_label_source(lab_path, img)
        out = np.zeros(img.shape, np.uint8)
        for n, v in names.items():
            if n not in table:
                if label_names:
                    continue  # not requested
                table[n] = len(table) + 1
            out[arr == v] = table[n]
        if not out.any():
            raise DatasetError(f"case {ci}: no requested label is present in {lab_path}", path=str(lab_path))
        write_case(out_dir, f"case_{ci:03d}", img.with_array(img.array.astype(np.int16) if np.issubdtype(img.array.dtype, np.integer) else img.array),
                   img.with_array(out))
        written += 1
    write_dataset_json(out_dir, table, written, name=name or out_dir.name, channel="CT")
    return validate_dataset(out_dir)


# --- MONAI training data (kind: dataset) ----------------------------------------------------------

def split_cases(root, n_val: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Deterministic train/validation split (dataset.json 'surgitwin'.'validation' wins)."""
    cases = list_cases(root)
    d = read_dataset_json(root)
    fixed = (d.get("surgitwin") or {}).get("validation")
    if fixed:
        return [c for c in cases if c["id"] not in fixed], [c for c in cases if c["id"] in fixed]
    order = np.random.default_rng(seed).permutation(len(cases))
    n_val = min(n_val, max(len(cases) - 1, 0))
    val = [cases[i] for i in order[:n_val]]
    return [cases[i] for i in order[n_val:]], val


def _plain(t):
    """A MONAI MetaTensor (or array) as a plain torch tensor."""
    import torch

    return t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(np.asarray(t))


class CaseBatches:
    """Batches for iterations start, start+1, ...: batch ``it`` is a function of (seed, it) only.

    Cases are picked and augmented with a generator seeded by the iteration number, so a run
    resumed at iteration N draws exactly the batches an uninterrupted run would have drawn
    (with any number of loader workers: worker w makes batches start+w, start+w+W, ...).
    """

    def __init__(self, cached, aug, cases_per_batch: int, seed: int, start: int):
        self.cached, self.aug = cached, aug
        self.cases_per_batch, self.seed, self.start = cases_per_batch, seed, start

    def batch(self, it: int):
        import copy

        import torch

        rng = np.random.default_rng([self.seed, it, 1])
        xs, ys = [], []
        for i in rng.integers(len(self.cached), size=self.cases_per_batch):
            self.aug.set_random_state(seed=int(rng.integers(2**31 - 1)))
            out = self.aug(copy.deepcopy(self.cached[int(i)]))
            for d in (out if isinstance(out, list) else [out]):
                xs.append(_plain(d["image"]).float())
                ys.append(_plain(d["label"]).long())
        return torch.stack(xs), torch.stack(ys)


def monai_training_data(cfg, labels: list[str], start_iteration: int):
    """(infinite batch iterator, validation pairs, validation case ids) from an nnU-Net dataset.

    Cases are loaded, oriented to RAS, resampled to ``data.spacing`` and windowed once, then
    cached (``CacheDataset``, as many as ``data.cache_memory_gb`` allows); random crops balanced
    over labels (``RandCropByLabelClassesd``) and augmentation run every iteration, seeded by the
    iteration number (:class:`CaseBatches`). There is no flip: mirroring would swap left and
    right organs.
    """
    import torch
    from monai import transforms as T
    from monai.data import CacheDataset

    root = cfg.data.dataset
    train_cases, val_cases = split_cases(root, cfg.data.val_cases, cfg.seed)
    if not train_cases:
        raise DatasetError("no training cases", path=str(root))
    d = read_dataset_json(root)
    ds_labels = {k: int(v) for k, v in d["labels"].items()}
    lut = np.zeros(max(ds_labels.values()) + 1, np.int64)
    for ci, n in enumerate(labels, start=1):
        if n in ds_labels:
            lut[ds_labels[n]] = ci
    it = cfg.intensity
    norm = (T.ScaleIntensityRanged("image", it.a_min, it.a_max, it.b_min, it.b_max, clip=bool(it.clip))
            if it.kind == "window" else
            T.NormalizeIntensityd("image", nonzero=it.kind == "zscore_nonzero") if it.kind != "none" else
            T.Identityd("image"))
    relabel = T.Lambdad("label", lambda x: x.new_tensor(lut[np.asarray(x).astype(np.int64)]))
    det = [T.LoadImaged(["image", "label"], image_only=True), T.EnsureChannelFirstd(["image", "label"]),
           T.Orientationd(["image", "label"], axcodes="RAS"),
           T.Spacingd(["image", "label"], pixdim=cfg.data.spacing, mode=("bilinear", "nearest")),
           norm, relabel, T.EnsureTyped(["image", "label"], dtype=(torch.float32, torch.int64))]
    patch = list(cfg.data.patch)
    n_cls = len(labels) + 1
    rot = [np.deg2rad(a) for a in cfg.data.rotate_deg]
    aug = [T.SpatialPadd(["image", "label"], patch),
           T.RandCropByLabelClassesd(["image", "label"], "label", spatial_size=patch, num_classes=n_cls,
                                     ratios=[1.0] * n_cls, num_samples=cfg.data.samples_per_case, warn=False),
           T.RandAffined(["image", "label"], prob=0.8, rotate_range=rot,
                         scale_range=[(cfg.data.scale[0] - 1.0, cfg.data.scale[1] - 1.0)] * 3,
                         mode=("bilinear", "nearest"), padding_mode="zeros"),
           T.RandGaussianSmoothd("image", prob=0.3, sigma_x=(0.3, 1.0), sigma_y=(0.3, 1.0), sigma_z=(0.3, 1.5)),
           T.RandScaleIntensityd("image", factors=0.15, prob=0.5),
           T.RandShiftIntensityd("image", offsets=0.1, prob=0.5),
           T.RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=0.3),
           T.RandBiasFieldd("image", coeff_range=(0.0, 0.1), prob=0.2),
           T.RandGaussianNoised("image", std=0.03, prob=0.4)]
    items = [{"image": c["images"][0], "label": c["label"]} for c in train_cases]
    per_case = _estimate_case_bytes(items[0], cfg.data.spacing)
    cache_num = int(max(0, min(len(items), cfg.data.cache_memory_gb * 2**30 // max(per_case, 1))))
    cached = CacheDataset(items, T.Compose(det), cache_num=cache_num, num_workers=0, progress=False)
    batches = CaseBatches(cached, T.Compose(aug), max(1, cfg.data.batch_size // cfg.data.samples_per_case),
                          cfg.seed, start_iteration)
    val = []
    vt = T.Compose(det)
    for c in val_cases:
        v = vt({"image": c["images"][0], "label": c["label"]})
        val.append((np.asarray(v["image"]), np.asarray(v["label"])[0]))
    return batches, val, [c["id"] for c in val_cases]


def _estimate_case_bytes(item: dict, spacing) -> int:
    """Bytes one cached case takes after resampling (image float32 + label int64)."""
    import SimpleITK as sitk

    r = sitk.ImageFileReader()
    r.SetFileName(item["image"])
    r.ReadImageInformation()
    n = np.prod([sz * sp / s for sz, sp, s in zip(r.GetSize()[:3], r.GetSpacing()[:3], spacing)])
    return int(n * (4 + 8))
