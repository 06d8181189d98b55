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


def _label_sums(labels: np.ndarray, n: int, hu, unc, slab: int = 16):
    """Per label: voxel count, sum of HU, sum of HU^2, sum of uncertainty, in one pass of slabs
    (each slab read once; float64 sums)."""
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

