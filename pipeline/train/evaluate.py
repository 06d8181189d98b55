"""``surgitwin evaluate --model NAME DATASET``: per-class Dice, HD95 and surface Dice.

Metrics are MONAI's (``DiceMetric``, ``HausdorffDistanceMetric(percentile=95)``,
``SurfaceDiceMetric``) computed on the *image's* grid with its voxel spacing, after the
reference labels are brought onto that grid in physical space (nearest neighbour through both
affines), so a reference file with flipped or reordered axes still compares correctly.

A model is anything ``segment --model`` accepts (registry name, model YAML, MONAI bundle, or a
training output folder: ``model.json`` + ``best.safetensors``), resolved by the same resolver
and segmented through :func:`pipeline.segment.segment`, exactly as the pipeline runs it, so a
training folder and its exported entry give the same numbers. :class:`Predictor` runs a
checkpoint on the training's own canonical grid (tests, quick looks).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..types import Label, LabelMap, LabelTable, Volume
from .labels import read_reference  # noqa: F401 - this module's API


class Predictor:
    """Sliding-window inference of a training checkpoint on the training's canonical grid.

    Parameters
    ----------
    model_dir : training output folder (model.json + weights)
    weights : 'best' | 'last' | a path
    """

    def __init__(self, model_dir, weights: str = "best", threads: int | None = None):
        import torch
        from .train import build_network, load_weights

        self.dir = Path(model_dir)
        mj = self.dir / "model.json"
        if not mj.exists():
            raise ModelError("not a training output folder: model.json missing", path=str(self.dir))
        self.meta = json.loads(mj.read_text())
        self.labels = list(self.meta["labels"])
        w = Path(weights) if weights not in ("best", "last") else self.dir / f"{weights}.safetensors"
        self.net = build_network({"name": self.meta["network"]["name"],
                                  "args": {k: v for k, v in self.meta["network"]["args"].items() if k != "out_channels"}},
                                 len(self.labels) + 1)
        self.net.load_state_dict(load_weights(w))
        self.net.eval()
        self.weights_path = str(w)
        if threads:
            torch.set_num_threads(threads)

    def predict(self, volume: Volume, postprocess: bool = True) -> LabelMap:
        """Label map on exactly ``volume``'s grid. volume.array (nk, nj, ni) in HU."""
        import torch
        from monai.inferers import sliding_window_inference

        from ..geometry import resample_to_grid
        from .canonical import canonical_grid
        from .train import normalize

        sp = float(self.meta["preprocessing"]["spacing"][0])
        shape, aff = canonical_grid(volume, sp)
        can = resample_to_grid(volume, shape, aff, order=1, cval=-1024.0)
        x = torch.from_numpy(normalize(can.array, self.meta["preprocessing"]["intensity"])[None, None])
        roi = [min(r, 16 * math.ceil(s / 16)) for r, s in zip(self.meta.get("roi_size", [96] * 3), shape)]
        with torch.no_grad():
            lab = sliding_window_inference(x, roi, 1, self.net, overlap=0.25, mode="gaussian").argmax(1)[0].numpy()
        pred = Volume(lab.astype(np.uint8), aff)
        out = resample_to_grid(pred, volume.shape, volume.affine, order=0, dtype=np.uint8).array
        table = self.label_table()
        if postprocess:
            from ..segment.postprocess import PostprocessConfig, postprocess_labels
            out, _ = postprocess_labels(out, table, PostprocessConfig(), volume.voxel_volume_ml)
        return LabelMap(volume.with_array(out, kind="labelmap"), table)

    def label_table(self) -> LabelTable:
        from .labels import TARGET_LABELS

        return LabelTable(TARGET_LABELS.by_name(n) if n in TARGET_LABELS.names and TARGET_LABELS.by_name(n).id == i
                          else Label(i, n) for i, n in enumerate(self.labels, start=1))


def resolve(model):
    """Registry name, model YAML, MONAI bundle or training folder -> ModelSpec (the one resolver
    ``segment --model`` uses too)."""
    from ..segment.registry import ModelSpec, resolve_model

    return model if isinstance(model, ModelSpec) else resolve_model(str(model))


def segment_with(model, volume: Volume) -> LabelMap:
    """Segment through :func:`pipeline.segment.segment`, exactly as the pipeline runs the model
    (a training folder included: its recorded inference settings apply), without HU rules."""
    from ..segment.api import segment

    return segment(volume, resolve(model), {"uncertainty": False, "combine_with": "none"}).labelmap


def settings_of(spec) -> dict:
    """The settings that change a model's output: preprocessing, inference, post-processing."""
    return {"preprocessing": spec.preprocessing.model_dump(),
            "inference": spec.inference.model_dump(exclude={"threads", "max_buffer_mb", "buffer_dtype"}),
            "postprocess": spec.postprocess.model_dump()}


def settings_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """``["inference.resample: probabilities vs labels", ...]`` for two :func:`settings_of` dicts."""
    out = []
    for k in sorted(set(a) | set(b), key=str):
        va, vb, key = a.get(k), b.get(k), f"{prefix}{k}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out += settings_differences(va, vb, key + ".")
        elif va != vb:
            out.append(f"{key}: {va!r} vs {vb!r}")
    return out


# --- metrics ---------------------------------------------------------------------------------

def label_metrics(pred: np.ndarray, truth: np.ndarray, ids: dict[str, tuple[int, int]], spacing,
                  surface_tol_mm: float = 2.0) -> dict[str, dict]:
    """Per-structure Dice, HD95 (mm) and surface Dice at ``surface_tol_mm`` (MONAI metrics).

    Parameters
    ----------
    pred, truth : (nk, nj, ni) integer arrays on the same grid
    ids : name -> (id in pred, id in truth)
    spacing : (3,) mm along the array axes
    """
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    from ..evaluation import dice as dice_of

    out = {}
    for name, (pid, tid) in ids.items():
        p, t = pred == pid, truth == tid
        if not t.any():
            out[name] = {"dice": None, "hd95_mm": None, "surface_dice": None, "truth_ml": 0.0,
                         "pred_ml": float(p.sum()), "note": "absent from the reference"}
            continue
        # crop to the union's bounding box (+margin): the metrics' distance transforms are the cost
        nz = np.argwhere(p | t)
        lo, hi = np.maximum(nz.min(0) - 3, 0), np.minimum(nz.max(0) + 4, p.shape)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        yp = torch.from_numpy(np.stack([~p[sl], p[sl]])[None].astype(np.float32))
        yt = torch.from_numpy(np.stack([~t[sl], t[sl]])[None].astype(np.float32))
        dice = dice_of(p[sl], t[sl])
        if p.any():
            hd = float(compute_hausdorff_distance(yp, yt, include_background=False, percentile=95,
                                                  spacing=[float(s) for s in spacing])[0, 0])
            sd = float(compute_surface_dice(yp, yt, [surface_tol_mm], include_background=False,
                                            spacing=[float(s) for s in spacing])[0, 0])
        else:
            hd, sd = float("inf"), 0.0
        out[name] = {"dice": dice, "hd95_mm": hd, "surface_dice": sd}
    return out


def compare_labelmaps(pred: LabelMap, truth: Volume, truth_names: dict[int, str],
                      surface_tol_mm: float = 2.0) -> dict[str, dict]:
    """Metrics of ``pred`` against a reference label volume (any grid), matched by name."""
    from ..geometry import resample_like

    t = resample_like(truth, pred.volume, order=0, dtype=np.int32).array
    ids = {}
    for lab in pred.labels:
        tid = next((i for i, n in truth_names.items() if n == lab.name), None)
        if tid is not None:
            ids[lab.name] = (lab.id, tid)
    vox = pred.volume.voxel_volume_ml
    res = label_metrics(pred.array, t, ids, pred.volume.spacing, surface_tol_mm)
    for name, (pid, tid) in ids.items():
        res[name]["truth_ml"] = round(float((t == tid).sum() * vox), 2)
        res[name]["pred_ml"] = round(float((pred.array == pid).sum() * vox), 2)
    return res


def evaluate(model, dataset, surface_tol_mm: float = 2.0, cases: list[str] | None = None) -> dict:
    """Evaluate ``model`` on every case of an nnU-Net dataset; returns per-case and mean metrics."""
    import time

    from ..geometry import read_image_file
    from .dataset import list_cases, read_dataset_json

    d = read_dataset_json(dataset)
    names = {int(v): k for k, v in d["labels"].items() if int(v) != 0}
    spec = resolve(model)
    per_case = {}
    t0 = time.perf_counter()
    for c in list_cases(dataset):
        if cases and c["id"] not in cases:
            continue
        img = read_image_file(c["images"][0])
        lm = segment_with(spec, img)
        per_case[c["id"]] = compare_labelmaps(lm, read_image_file(c["label"]), names, surface_tol_mm)
    return {"model": str(model), "dataset": str(dataset), "surface_tolerance_mm": surface_tol_mm,
            "cases": per_case, "mean": mean_metrics(per_case), "seconds": round(time.perf_counter() - t0, 1),
            "settings": settings_of(spec)}


def mean_metrics(per_case: dict) -> dict:
    agg: dict[str, dict] = {}
    for res in per_case.values():
        for name, m in res.items():
            a = agg.setdefault(name, {"dice": [], "hd95_mm": [], "surface_dice": []})
            for k in a:
                if m.get(k) is not None:
                    a[k].append(m[k])
    return {n: {k: (float(np.mean(v)) if v else None) for k, v in a.items()} | {"n": len(a["dice"])}
            for n, a in agg.items()}


def format_table(results: list[dict]) -> str:
    """Side-by-side table of mean metrics for one or more evaluate() results."""
    names = []
    for r in results:
        names += [n for n in r["mean"] if n not in names]
    head = f"{'structure':<22}" + "".join(f"| {Path(r['model']).name[:30]:<30} " for r in results)
    sub = f"{'':<22}" + "".join(f"| {'Dice':>7} {'HD95mm':>8} {'sDice':>7}      " for _ in results)
    lines = [head, sub, "-" * len(sub)]
    for n in names:
        row = f"{n:<22}"
        for r in results:
            m = r["mean"].get(n)
            if not m or m["dice"] is None:
                row += f"| {'-':>7} {'-':>8} {'-':>7}      "
            else:
                hd = m["hd95_mm"]
                row += f"| {m['dice']:7.3f} {hd if hd is not None else float('nan'):8.1f} {m['surface_dice']:7.3f}      "
        lines.append(row)
    return "\n".join(lines)


def write_json(obj, path) -> None:
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    def clean(o):  # JSON has no Infinity/NaN: an undefined distance is written as null
        if isinstance(o, float):
            return o if math.isfinite(o) else None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    tmp.write_text(json.dumps(clean(obj), indent=1))
    os.replace(tmp, path)


def evaluate_reference_image(model, image_path, labels_file, names_file=None, surface_tol_mm: float = 2.0) -> dict:
    """Evaluate on one image (DICOM folder or image file) against a reference label file.

    The reference may lie on a differently ordered grid (e.g. rows flipped): comparison is in
    physical space. Returns the same structure as :func:`evaluate` with one case.
    """
    import time

    from ..geometry import read_image_file

    t0 = time.perf_counter()
    p = Path(image_path)
    if p.is_dir():
        from ..ingest import read_input
        img = read_input(p)
    else:
        img = read_image_file(p)
    truth, names = read_reference(labels_file, names_file)
    spec = resolve(model)
    t1 = time.perf_counter()
    lm = segment_with(spec, img)
    seg_s = time.perf_counter() - t1
    res = compare_labelmaps(lm, truth, names, surface_tol_mm)
    case = {p.name: res}
    return {"model": str(model), "dataset": str(image_path), "reference": str(labels_file),
            "surface_tolerance_mm": surface_tol_mm, "cases": case, "mean": mean_metrics(case),
            "segment_seconds": round(seg_s, 2), "seconds": round(time.perf_counter() - t0, 1),
            "settings": settings_of(spec)}


def benchmark_inference(model, image_path, n_slices: int = 300, threads: int = 2) -> dict:
    """Time ``segment`` on a CT stretched to ``n_slices`` (tiling a real series along k).

    A 512x512x300 CT is the issue's yardstick; tiling a real 20-slice series keeps real content
    (body, table, organs) in every window. Reports wall and process CPU seconds: on a shared
    machine the CPU time is the fairer number.
    """
    import time

    from ..segment.api import segment

    p = Path(image_path)
    if p.is_dir():
        from ..ingest import read_input
        img = read_input(p)
    else:
        from ..geometry import read_image_file
        img = read_image_file(p)
    reps = int(np.ceil(n_slices / img.shape[0]))
    arr = np.concatenate([img.array] * reps, axis=0)[:n_slices]
    big = Volume(arr, img.affine, img.frame_of_reference_uid, {"note": "tiled for timing"})
    c0, t0 = time.process_time(), time.perf_counter()
    res = segment(big, str(model), {"threads": threads, "uncertainty": False})
    return {"shape": list(big.shape), "spacing_mm": [round(float(s), 3) for s in big.spacing],
            "wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - c0, 1),
            "threads": threads, "timings": {k: round(v, 2) for k, v in res.timings.items()}}
