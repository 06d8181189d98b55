"""Anatomical plausibility of a segmentation: side, position, inside the body, size.

An automatic model can put an organ where it cannot be (a 42 ml "liver" on the patient's left
in a chest CT, a 2.5 ml "kidney" in the anterior abdominal wall). :func:`plausibility` checks
each structure against ``configs/plausibility.yaml``: sides relative to the midline (liver and
IVC right of the aorta, spleen left, kidneys on their side), kidneys posterior and
paravertebral, every organ inside the body outline, and a size no smaller than plausible
(also when the scan's edge cuts the structure). The result is merged into the structures' QC
entries: ``plausible`` (bool) and ``flags`` (reasons); the viewer marks flagged structures and
planning carries the flag into every number that uses them.

Coordinates are LPS mm (x grows to the patient's left, y posterior, z superior).
"""
from __future__ import annotations

import fnmatch
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..config import CONFIG_DIR, load_yaml
from ..errors import pydantic_config_error

PLAUSIBILITY_CONFIG = CONFIG_DIR / "plausibility.yaml"


class PlausibilityRules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    midline: list[str] = ["aorta"]
    right: list[str] = []
    left: list[str] = []
    side_tolerance_mm: float = 0.0
    posterior: list[str] = []
    paravertebral_mm: float = Field(120.0, gt=0)
    inside_body_fraction: float = Field(0.9, ge=0, le=1)
    body: list[str] = ["body"]
    truncated_min_fraction: float = Field(0.1, ge=0, le=1)


def load_plausibility_rules(path=None) -> PlausibilityRules:
    from pydantic import ValidationError

    p = Path(path) if path else PLAUSIBILITY_CONFIG
    data = load_yaml(p)
    try:
        return PlausibilityRules.model_validate(data if isinstance(data, dict) else {})
    except ValidationError as e:
        raise pydantic_config_error(e, path=p, rule="plausibility rules schema") from None


def _match(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name.lower(), p) for p in patterns)


def body_outline(labels: np.ndarray, image: np.ndarray | None, body_ids: list[int]) -> np.ndarray | None:
    """The patient's outline on the 2x coarser grid ``[::2, ::2, ::2]``, or None when there is nothing to tell it by (no body
    label, no image). On a 2x coarser grid: every labelled voxel and the body tissue (the body
    label, else voxels above -500 HU), holes filled slice by slice along the first array axis;
    then only the connected pieces made of at least 20% body tissue: the trunk and the arms,
    not a structure lying in the air outside the patient."""
    from scipy import ndimage

    if not body_ids and image is None:
        return None
    lab2 = np.ascontiguousarray(labels[::2, ::2, ::2])  # a 2x coarser grid: plenty for "inside the body"
    if body_ids:
        tissue = lab2 == body_ids[0]
        for b in body_ids[1:]:
            tissue |= lab2 == b
    else:
        tissue = np.asarray(image)[::2, ::2, ::2] > -500
    mask = (lab2 > 0) | tissue
    from ..segment.hu_rules import fill_holes_slicewise

    filled = fill_holes_slicewise(mask, 0)  # = binary_fill_holes per slice, in one labelling pass
    comp, n = ndimage.label(filled)
    if n:
        size = np.bincount(comp.ravel(), minlength=n + 1)
        body = np.bincount(comp[tissue], minlength=n + 1)  # integer counts: no float weights
        keep = body >= 0.2 * np.maximum(size, 1)
        keep[0] = False
        filled = keep[comp]
    return filled


def _upsampled(coarse: np.ndarray, box) -> np.ndarray:
    """``coarse[np.ix_(*(arange(b.start, b.stop) // 2 for b in box))]``: the 2x coarser grid's value
    at every voxel of ``box``, by slicing and repeating (a gather over a bone's box of a CT costs
    seconds)."""
    sub = coarse[tuple(slice(b.start // 2, (b.stop - 1) // 2 + 1) for b in box)]
    for ax, b in enumerate(box):
        sub = np.repeat(sub, 2, axis=ax)[tuple(slice(b.start % 2, b.start % 2 + b.stop - b.start) if a == ax
                                               else slice(None) for a in range(3))]
    return sub


def _mean_index(mask: np.ndarray) -> np.ndarray:
    """Mean (k, j, i) index of a boolean array's True voxels, from its three projections."""
    out = np.zeros(3)
    total = float(np.count_nonzero(mask))
    for ax in range(3):
        w = mask.sum(axis=tuple(x for x in range(3) if x != ax), dtype=np.int64)
        out[ax] = float((w * np.arange(len(w))).sum()) / total if total else np.nan
    return out


def plausibility(labelmap, image=None, qc: dict | None = None, rules: PlausibilityRules | None = None) -> dict[str, dict]:
    """``{name: {plausible, flags, centroid_lps}}`` for every structure present.

    Parameters
    ----------
    labelmap : LabelMap; image : Volume on the same grid (body outline from HU), optional
    qc : structure QC entries (``truncated``, ``volume_ml``) from :func:`pipeline.segment.qc.structure_qc`
    """
    rules = rules or load_plausibility_rules()
    qc = qc or {}
    lab = np.asarray(labelmap.array)
    affine = labelmap.volume.affine
    from scipy import ndimage

    boxes = ndimage.find_objects(lab if lab.dtype.kind in "iu" else lab.astype(np.int32))
    present = [l for l in labelmap.labels if l.id <= len(boxes) and boxes[l.id - 1] is not None]
    to_lps = lambda idx: np.asarray(idx) @ affine[:3, :3].T + affine[:3, 3]  # noqa: E731
    masks = {l.id: lab[boxes[l.id - 1]] == l.id for l in present}
    counts = {l.id: int(np.count_nonzero(masks[l.id])) for l in present}
    cen = {l.id: to_lps(_mean_index(masks[l.id]) + [s.start for s in boxes[l.id - 1]]) for l in present}
    body_ids = [l.id for l in present if _match(l.name, rules.body)]
    body = body_outline(lab, None if image is None else np.asarray(image.array), body_ids)
    voxel_ml = labelmap.volume.voxel_volume_ml
    ref = next((l for p in rules.midline for l in present if _match(l.name, [p])), None)
    mid_x: float | None
    mid_name: str | None
    if ref is not None:
        mid_x, mid_name = float(cen[ref.id][0]), ref.name
    else:
        bc = to_lps(2 * _mean_index(body)) if body is not None and body.any() else None
        mid_x, mid_name = (None, None) if bc is None else (float(bc[0]), "the body's centre")
    out: dict[str, dict] = {}
    for l in present:
        flags: list[str] = []
        c = cen[l.id]
        is_body = _match(l.name, rules.body)
        if mid_x is not None and l is not ref and not is_body:
            tol = rules.side_tolerance_mm
            if _match(l.name, rules.right) and not c[0] < mid_x + tol:
                flags.append(f"on the patient's left of {mid_name} (centroid x {c[0]:.0f} mm, {mid_name} "
                             f"{mid_x:.0f} mm): {l.name} lies on the right")
            elif _match(l.name, rules.left) and not _match(l.name, rules.right) and not c[0] > mid_x - tol:
                flags.append(f"on the patient's right of {mid_name} (centroid x {c[0]:.0f} mm, {mid_name} "
                             f"{mid_x:.0f} mm): {l.name} lies on the left")
        box, mask = boxes[l.id - 1], masks[l.id]
        if not is_body and body is not None:
            coarse = _upsampled(body, box)  # the outline at each voxel of the box
            inside = float(np.count_nonzero(coarse & mask)) / float(counts[l.id])
            if inside < rules.inside_body_fraction:
                flags.append(f"outside the body: only {100 * inside:.0f}% of it lies inside the body outline")
            if _match(l.name, rules.posterior):
                k0, k1 = box[0].start // 2, (box[0].stop - 1) // 2 + 1
                slab = body[k0:k1]  # the body at the structure's slices
                if slab.any():
                    by = float(to_lps(2 * (_mean_index(slab) + [k0, 0, 0]))[1])
                    if not c[1] > by:
                        flags.append(f"not posterior: centroid y {c[1]:.0f} mm is anterior to the body's centre "
                                     f"({by:.0f} mm) at its level; {l.name} is retroperitoneal")
                if mid_x is not None and abs(c[0] - mid_x) > rules.paravertebral_mm:
                    flags.append(f"not paravertebral: {abs(c[0] - mid_x):.0f} mm from the midline")
        if l.expected_ml:
            vol = float(counts[l.id] * voxel_ml)
            lo = float(l.expected_ml[0])
            truncated = bool((qc.get(l.name) or {}).get("truncated"))
            limit = lo * rules.truncated_min_fraction if truncated else lo
            if vol < limit:
                flags.append(f"too small: {vol:.1f} ml, plausible at least {limit:.1f} ml"
                             + (f" even where the scan's edge cuts it ({rules.truncated_min_fraction:g} x {lo:g} ml)"
                                if truncated else ""))
        out[l.name] = {"plausible": not flags, "flags": flags, "centroid_lps": np.round(c, 2).tolist()}
    return out


def merge_into_qc(qc: dict[str, dict], result: dict[str, dict]) -> dict[str, dict]:
    """Merge :func:`plausibility` into QC entries (in place): ``plausible``, ``flags``, ``status``."""
    for name, p in result.items():
        e = qc.setdefault(name, {})
        e["plausible"] = p["plausible"]
        e["centroid_lps"] = p["centroid_lps"]
        old = [f for f in (e.get("flags") or []) if f not in p["flags"]]
        e["flags"] = old + p["flags"]
        if p["flags"]:
            e["status"] = "fail"
            w = "implausible: " + "; ".join(p["flags"])
            e["warning"] = w if not e.get("warning") else f"{e['warning']}; {w}"
    return qc
