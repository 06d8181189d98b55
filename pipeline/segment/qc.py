"""Per-structure quality control: volume, HU statistics, expected range, uncertainty, warning.

All statistics come from ``np.bincount`` over slabs of the label map (one pass, bounded
memory), never from a per-label mask loop.

Entry per present structure (JSON-ready)::

    {id, voxels, volume_ml, mean_hu, sd_hu, expected_ml: [lo, hi] | None,
     in_range: bool | None (None: no range, or the structure is cut by the scan's edge),
     truncated: bool, uncertainty: mean normalised entropy 0..1 | None,
     uncertainty_level: "low" | "moderate" | "high" | None, warning: str | None, ...}

``warning`` is None when nothing is suspicious; otherwise a short sentence (the pipeline
prints it and the viewer shows it next to the structure).
"""
from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from ..types import LabelMap, Volume


class QCConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uncertainty_moderate: float = 0.15
    uncertainty_high: float = 0.30


_HIST_MAX_LABELS = 256  # per-label histograms of 65536 bins: 128 MB of int64 at most


def _float16_values() -> np.ndarray:
    """float64 value of every float16 bit pattern (non-finite patterns: 0, flagged apart)."""
    v = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float64)
    return v


def _histograms(labels: np.ndarray, n: int, slab: int, *values) -> list[np.ndarray]:
    """Per value array (int16 HU or float16 0..1 map): (n, 65536) counts of each 16-bit pattern
    per label, by slabs: integer bincounts (no float conversion; exact). int16 patterns are
    sign-flipped so that they order like the values."""
    hists = [np.zeros(n << 16, np.int64) for _ in values]
    for k in range(0, labels.shape[0], slab):
        base = labels[k:k + slab].astype(np.int64).ravel()
        base <<= 16
        for hist, v in zip(hists, values):
            bits = v[k:k + slab].view(np.uint16).ravel()
            hist += np.bincount(base + ((bits ^ np.uint16(0x8000)) if v.dtype == np.int16 else bits),
                                minlength=n << 16)
    return [h.reshape(n, 65536) for h in hists]


def _label_sums(labels: np.ndarray, n: int, hu, unc, slab: int = 16):
    """Per label: voxel count, sum of HU, sum of HU^2, sum of uncertainty, in one pass of slabs
    (each slab read once; float64 sums).

    int16 HU and float16 uncertainty (the pipeline's own arrays) go through per-label histograms
    of their 16-bit patterns: exact sums from integer bincounts, about twice as fast as weighted
    bincounts and free of numpy's slow float16 conversions; other dtypes use weighted bincounts.
    """
    fast = n <= _HIST_MAX_LABELS and labels.dtype.kind in "ub"
    count = s_hu = s_hu2 = s_unc = None
    hu_fast = hu is not None and fast and hu.dtype == np.int16
    unc_fast = unc is not None and fast and unc.dtype == np.float16
    wanted = [*([hu] if hu_fast else []), *([unc] if unc_fast else [])]
    hists = _histograms(labels, n, slab, *wanted) if wanted else []
    if hu_fast:
        h = hists.pop(0)
        v = (np.arange(65536) - 32768).astype(np.float64)  # pattern ^ 0x8000 -> HU, in order
        count = h.sum(1).astype(np.float64)
        s_hu, s_hu2 = h @ v, h @ (v * v)
        hu = None
    if unc_fast:
        h = hists.pop(0)
        v = _float16_values()
        bad = ~np.isfinite(v)
        v[bad] = 0.0
        s_unc = h @ v
        s_unc[h[:, bad].sum(1) > 0] = np.nan  # as a float sum over a NaN would be
        count = h.sum(1).astype(np.float64) if count is None else count
        unc = None
    if count is None or hu is not None or unc is not None:
        c, a, b, u = _weighted_sums(labels, n, hu, unc, slab)
        count = c if count is None else count
        s_hu, s_hu2 = (a, b) if hu is not None else (s_hu, s_hu2)
        s_unc = u if unc is not None else s_unc
    return count, s_hu, s_hu2, s_unc


def _weighted_sums(labels: np.ndarray, n: int, hu, unc, slab: int):
    count, s_hu, s_hu2, s_unc = (np.zeros(n, np.float64) for _ in range(4))
    for k in range(0, labels.shape[0], slab):
        lab = labels[k:k + slab].ravel()
        count += np.bincount(lab, minlength=n)[:n]
        if hu is not None:
            h = hu[k:k + slab].ravel().astype(np.float64)
            s_hu += np.bincount(lab, weights=h, minlength=n)[:n]
            h *= h
            s_hu2 += np.bincount(lab, weights=h, minlength=n)[:n]
        if unc is not None:
            s_unc += np.bincount(lab, weights=unc[k:k + slab].ravel().astype(np.float64), minlength=n)[:n]
    return count, (s_hu if hu is not None else None), (s_hu2 if hu is not None else None), \
        (s_unc if unc is not None else None)


def touching_edge(labels: np.ndarray) -> set[int]:
    """Label ids present on any face of the volume (the structure continues outside the scan)."""
    ids: set[int] = set()
    for ax in range(3):
        for end in (0, labels.shape[ax] - 1):
            ids.update(int(v) for v in np.unique(labels.take(end, axis=ax)))
    ids.discard(0)
    return ids


def structure_qc(labelmap: LabelMap, image: Volume | None = None, uncertainty: Volume | None = None,
                 cfg: QCConfig | None = None, extra: dict[str, dict] | None = None) -> dict[str, dict]:
    """QC of every structure present in ``labelmap``.

    Parameters
    ----------
    labelmap : LabelMap, (nk, nj, ni)
    image : Volume on the same grid (HU statistics), optional
    uncertainty : float Volume 0..1 on the same grid (normalised entropy), optional
    cfg : QCConfig thresholds for the uncertainty level
    extra : name -> dict merged into each entry (e.g. post-processing report)
    """
    cfg = cfg or QCConfig()
    lab = labelmap.array
    if lab.dtype.kind == "i" and lab.size and lab.min() < 0:
        raise ValueError("label map values must be non-negative")
    n = int(lab.max()) + 1 if lab.size else 1
    count, s_hu, s_hu2, s_unc = _label_sums(lab, n, None if image is None else image.array,
                                            None if uncertainty is None else uncertainty.array)
    voxel_ml = labelmap.volume.voxel_volume_ml
    edge = touching_edge(lab)
    out: dict[str, dict] = {}
    for label in labelmap.labels:
        if label.id >= n or count[label.id] == 0:
            continue
        c = count[label.id]
        vol = float(c * voxel_ml)
        e: dict = {"id": label.id, "voxels": int(c), "volume_ml": round(vol, 3)}
        if s_hu is not None:
            mean = s_hu[label.id] / c
            var = max(s_hu2[label.id] / c - mean * mean, 0.0)
            e["mean_hu"] = round(float(mean), 2)
            e["sd_hu"] = round(float(np.sqrt(var)), 2)
        truncated = label.id in edge
        e["truncated"] = truncated
        e["expected_ml"] = list(label.expected_ml) if label.expected_ml else None
        warnings = []
        if label.expected_ml and not truncated:
            lo, hi = label.expected_ml
            e["in_range"] = bool(lo <= vol <= hi)
            if not e["in_range"]:
                warnings.append(f"volume {vol:.1f} ml outside the expected {lo:g}-{hi:g} ml")
        else:
            e["in_range"] = None
        if s_unc is not None:
            u = float(s_unc[label.id] / c)
            level = "high" if u >= cfg.uncertainty_high else "moderate" if u >= cfg.uncertainty_moderate else "low"
            e["uncertainty"] = round(u, 4)
            e["uncertainty_level"] = level
            if level == "high":
                warnings.append(f"high uncertainty (mean entropy {u:.2f})")
        else:
            e["uncertainty"] = None
            e["uncertainty_level"] = None
        if extra and label.name in extra:
            e.update(extra[label.name])
        e["warning"] = "; ".join(warnings) or None
        out[label.name] = e
    return out

