"""Body-region check: no abdominal organ where the scan shows no abdomen (issue 15, Part B).

A network trained on abdominal CT answers every input with its organs: on a chest CT it
found a 42 ml "liver" on the patient's left and a 13 ml right kidney. The model-fit check
(:func:`pipeline.run.check_model_fits`) refuses a scan as a whole from its tags and a head
test; this module looks at every axial slice of a CT and removes the organs, or the parts of
them, that lie outside the body regions where such an organ can be.

Slices, from the image alone (no training, no weights), on a coarse grid (about 4 mm pixels,
one sample per ``step_mm`` along the head-feet axis):

* ``head``: a small cross-section (< ``head_max_area_cm2``) that is largely bone (the skull);
* ``thorax``: lung (``gas_hu`` .. ``lung_hu``: air with parenchyma in it, not the pure gas of
  bowel) fills at least ``thorax_lung_fraction`` of the body's cross-section (1 cm inside its
  outline), with a third of that on each side of the body's centre;
* ``neck``: a slice that is neither, above the highest thorax slice or below a head slice
  with no thorax under it (neck and shoulders: the abdomen never lies above the lungs);
* ``pelvis``: below the thorax, bone ``deep_mm`` inside the outline and lateral to the spine
  (outer 60 % of the half-width) with a connected cross-section of at least
  ``pelvis_bone_cm2`` on *both* sides: iliac wings, acetabula, femoral heads (ribs are thin);
* ``abdomen``: every other slice with a body; ``none``: no body.

An organ named in ``organs`` (fnmatch patterns, lower case) may lie in its regions' slices plus
``tolerance_mm`` above and below them (the liver dome rises into slices where the lungs
dominate; the IVC reaches the right atrium). Its voxels in other slices become background;
when no slice of its regions exists the whole organ goes, and the QC entry says why
("removed: scan contains no abdomen (thorax z -120..-20 mm)"). Uncertain cues fall to
``abdomen`` (a slice that is not clearly thorax or pelvis keeps its organs): the check removes
only what the image shows cannot be there.

Cost: one strided pass over at most ``max_samples`` slices; well under a second on a
512 x 512 x 300 CT.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..types import LabelTable, Volume

REGIONS = ("head", "neck", "thorax", "abdomen", "pelvis")

#: Where each organ can be. Names of this project's models and TotalSegmentator's.
DEFAULT_ORGANS: dict[str, list[str]] = {
    "liver": ["abdomen"], "liver_*": ["abdomen"], "spleen": ["abdomen"], "kidney*": ["abdomen"],
    "gallbladder": ["abdomen"], "pancreas": ["abdomen"], "stomach": ["abdomen"], "duodenum": ["abdomen"],
    "adrenal_gland*": ["abdomen"], "inferior_vena_cava": ["abdomen"], "portal_vein*": ["abdomen"],
    "aorta": ["thorax", "abdomen"],
    "small_bowel": ["abdomen", "pelvis"], "colon": ["abdomen", "pelvis"],
    "urinary_bladder": ["pelvis"], "bladder": ["pelvis"], "prostate": ["pelvis"],
}


class RegionConfig(BaseModel):
    """``segment.region`` of configs/pipeline.yaml: the body-region check's settings."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    tolerance_mm: float = Field(50.0, ge=0)
    organs: dict[str, list[str]] = Field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_ORGANS.items()})
    step_mm: float = Field(5.0, gt=0)
    pixel_mm: float = Field(4.0, gt=0)
    max_samples: int = Field(120, ge=2)
    body_hu: float = -300.0
    lung_hu: float = -500.0
    gas_hu: float = -985.0  # air below this is pure gas (bowel, free air), not lung parenchyma
    bone_hu: float = 200.0
    thorax_lung_fraction: float = Field(0.25, gt=0, lt=1)
    head_max_area_cm2: float = 400.0
    head_min_bone_fraction: float = 0.10
    pelvis_bone_cm2: float = Field(6.0, gt=0)
    deep_mm: float = Field(10.0, ge=0)

    @field_validator("organs")
    @classmethod
    def _known_regions(cls, organs: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, regions in organs.items():
            bad = sorted(set(regions) - set(REGIONS))
            if bad:
                raise ValueError(f"organs.{name}: unknown region(s) {bad}; known: {list(REGIONS)}")
        return organs


@dataclass
class SliceRegions:
    """Per sampled slice: its head-feet coordinate (mm, LPS z of the slice centre) and region."""

    z_mm: np.ndarray
    region: list[str]
    step_mm: float
    features: list[dict] = field(default_factory=list)

    def ranges(self) -> dict[str, list[tuple[float, float]]]:
        """Region -> merged z intervals (mm) its samples cover (each sample +- half a step)."""
        out: dict[str, list[tuple[float, float]]] = {}
        for z, r in sorted(zip(self.z_mm.tolist(), self.region)):
            iv = out.setdefault(r, [])
            lo, hi = z - self.step_mm / 2, z + self.step_mm / 2
            if iv and lo <= iv[-1][1] + 1e-6:
                iv[-1] = (iv[-1][0], max(iv[-1][1], hi))
            else:
                iv.append((lo, hi))
        return out

    def summary(self) -> str:
        parts = []
        for r in REGIONS + ("none",):
            for lo, hi in self.ranges().get(r, []):
                parts.append((lo, f"{r} z {lo:.0f}..{hi:.0f} mm"))
        return ", ".join(p for _, p in sorted(parts, reverse=True)) or "no body in the scan"


def _slice_axis(volume: Volume) -> int:
    """The array axis closest to the patient's head-feet (LPS z) direction."""
    d = volume.affine[:3, :3] / np.linalg.norm(volume.affine[:3, :3], axis=0)
    return int(np.argmax(np.abs(d[2])))


def _slice_z(volume: Volume, axis: int) -> np.ndarray:
    """LPS z (mm) of the centre of every slice along ``axis``."""
    shape = np.asarray(volume.shape, float)
    n = volume.shape[axis]
    idx = np.tile((shape - 1) / 2, (n, 1))
    idx[:, axis] = np.arange(n)
    return idx @ volume.affine[2, :3] + volume.affine[2, 3]


def _features(sl: np.ndarray, px_cm2: float, px_mm: float, cfg: RegionConfig) -> dict | None:
    """Cross-section, lung fraction and bone of one strided slice (rows = posterior, cols = left)."""
    from scipy import ndimage

    body = sl > cfg.body_hu
    lab, n = ndimage.label(body)
    if n == 0:
        return None
    sizes = np.bincount(lab.ravel())[1:]
    mask = ndimage.binary_fill_holes(lab == int(np.argmax(sizes)) + 1)
    area = float(mask.sum())
    if area * px_cm2 < 20.0:
        return None
    r = max(1, int(round(cfg.deep_mm / px_mm)))
    inner = ndimage.binary_erosion(mask, iterations=r)
    cols = np.nonzero(mask.any(axis=0))[0]
    xc = float(np.mean(np.nonzero(mask)[1]))
    half = max((cols[-1] - cols[0] + 1) / 2.0, 1.0)
    colx = (np.arange(sl.shape[1]) - xc)[None, :]
    air = (sl < cfg.lung_hu) & (sl >= cfg.gas_hu) & inner
    side_area = [float((mask & (colx < 0)).sum()) or 1.0, float((mask & (colx >= 0)).sum()) or 1.0]
    side_air = [float((air & (colx < 0)).sum()) / side_area[0], float((air & (colx >= 0)).sum()) / side_area[1]]
    bone = sl > cfg.bone_hu
    lateral_bone = []
    for side in (colx < -0.4 * half, colx > 0.4 * half):
        b = bone & inner & side
        bl, nb = ndimage.label(b)
        lateral_bone.append(float(np.bincount(bl.ravel())[1:].max()) * px_cm2 if nb else 0.0)
    return {"area_cm2": area * px_cm2, "lung": float(air.sum()) / area, "lung_sides": side_air,
            "bone": float((bone & mask).sum()) / area, "lateral_bone_cm2": lateral_bone}


def _canonical_view(volume: Volume):
    """(view, axes, z): the array as a view ordered (S, P, L) by the axes closest to those LPS
    directions, each increasing (flips and a transpose, no copy), so sampling does not depend on
    how the scan was stored; ``axes`` are the stored axes; ``z`` the LPS z of each view slice."""
    d = volume.affine[:3, :3] / np.linalg.norm(volume.affine[:3, :3], axis=0)
    zax = _slice_axis(volume)
    rest = [a for a in range(3) if a != zax]
    xax = max(rest, key=lambda a: abs(d[0, a]))
    yax = next(a for a in rest if a != xax)
    axes = (zax, yax, xax)
    view = np.transpose(volume.array, axes)
    z = _slice_z(volume, zax)
    for n, (ax, row) in enumerate(zip(axes, (2, 1, 0))):
        if d[row, ax] < 0:
            view = np.flip(view, axis=n)
            if n == 0:
                z = z[::-1]
    return view, axes, z


def classify_slices(volume: Volume, cfg: RegionConfig | None = None) -> SliceRegions:
    """Region of sampled slices of a CT (HU) volume, from the feet up (see the module doc)."""
    cfg = cfg or RegionConfig()
    view, axes, z_all = _canonical_view(volume)
    sp = volume.spacing
    n = view.shape[0]
    kstep = max(1, int(round(cfg.step_mm / max(sp[axes[0]], 1e-6))), int(np.ceil(n / cfg.max_samples)))
    ks = np.arange(0, n, kstep)
    strides = [max(1, int(round(cfg.pixel_mm / sp[a]))) for a in axes[1:]]
    px_mm = [float(sp[a]) * s for a, s in zip(axes[1:], strides)]
    px_cm2 = px_mm[0] * px_mm[1] / 100.0
    feats = [_features(np.asarray(view[k, ::strides[0], ::strides[1]], dtype=np.float32), px_cm2,
                       float(np.mean(px_mm)), cfg) for k in ks]
    region = _assign(feats, z_all[ks], cfg)
    return SliceRegions(z_all[ks], region, float(kstep * sp[axes[0]]), feats)


def _assign(feats: list[dict | None], z: np.ndarray, cfg: RegionConfig) -> list[str]:
    """Region per sample: head and thorax from the slice; neck, abdomen, pelvis from the order."""
    base = []
    for f in feats:
        if f is None:
            base.append("none")
        elif f["area_cm2"] < cfg.head_max_area_cm2 and f["bone"] > cfg.head_min_bone_fraction:
            base.append("head")
        elif f["lung"] >= cfg.thorax_lung_fraction and min(f["lung_sides"]) >= cfg.thorax_lung_fraction / 3:
            base.append("thorax")
        else:
            base.append("")
    zs = np.asarray(z, float)
    thorax_z = zs[[b == "thorax" for b in base]]
    head_z = zs[[b == "head" for b in base]]
    out = []
    for b, f, zz in zip(base, feats, zs):
        if b:
            out.append(b)
        elif thorax_z.size and zz > thorax_z.max():
            out.append("neck")  # above the lungs: neck and shoulders
        elif head_z.size and not thorax_z.size and zz < head_z.min():
            out.append("neck")  # under a head with no chest below it
        elif min(f["lateral_bone_cm2"]) >= cfg.pelvis_bone_cm2:
            out.append("pelvis")
        else:
            out.append("abdomen")
    return out


def _allowed(name: str, cfg: RegionConfig) -> list[str] | None:
    for pattern, regions in cfg.organs.items():
        if fnmatch.fnmatchcase(name.lower(), pattern.lower()):
            return list(regions)
    return None


def _fmt_ranges(iv: list[tuple[float, float]]) -> str:
    return ", ".join(f"z {lo:.0f}..{hi:.0f} mm" for lo, hi in iv)


def apply_region_check(labels: np.ndarray, volume: Volume, table: LabelTable,
                       cfg: RegionConfig | None = None) -> tuple[np.ndarray, dict]:
    """Remove configured organs from slices outside their body regions (``labels`` is edited in place).

    Returns ``(labels, report)``; report: ``{"slices": summary, "regions": {region: [[lo, hi]]},
    "removed": {name: {removed_ml, kept_ml, reason}}, "note": str}``.
    """
    cfg = cfg or RegionConfig()
    report: dict = {"checked": False, "removed": {}}
    if not cfg.enabled:
        report["note"] = "body-region check off (segment.region.enabled: false)"
        return labels, report
    modality = str((volume.source or {}).get("modality") or "").upper()
    if modality not in ("", "CT") or volume.array.min() > -500:
        report["note"] = "body-region check not run: not a CT in HU"
        return labels, report
    targets = [(lab, _allowed(lab.name, cfg)) for lab in table]
    targets = [(lab, r) for lab, r in targets if r is not None]
    if not targets:
        report["note"] = "body-region check: no structure of this model is tied to a body region"
        return labels, report
    regions = classify_slices(volume, cfg)
    ranges = regions.ranges()
    report.update(checked=True, slices=regions.summary(),
                  regions={r: [[round(lo, 1), round(hi, 1)] for lo, hi in iv] for r, iv in ranges.items()})
    axis = _slice_axis(volume)
    z = _slice_z(volume, axis)
    voxel_ml = volume.voxel_volume_ml
    moved = np.moveaxis(labels, axis, 0)  # a view: edits land in ``labels``
    for lab, allowed in targets:
        iv = [iv for r in allowed for iv in ranges.get(r, [])]
        ok = np.zeros(z.shape, bool)
        for lo, hi in iv:
            ok |= (z >= lo - cfg.tolerance_mm) & (z <= hi + cfg.tolerance_mm)
        if ok.all():
            continue
        bad = np.nonzero(~ok)[0]
        n_removed = 0
        for k in bad:  # slice by slice: no full-size temporaries
            hit = moved[k] == lab.id
            n = int(np.count_nonzero(hit))
            if n:
                moved[k][hit] = 0
                n_removed += n
        if not n_removed:
            continue
        n_kept = sum(int(np.count_nonzero(moved[k] == lab.id)) for k in np.nonzero(ok)[0])
        where = " or ".join(allowed)
        if not iv:
            reason = f"scan contains no {where} ({regions.summary()})"
        else:
            reason = (f"{n_removed * voxel_ml:.1f} ml outside the {where} ({_fmt_ranges(iv)}, "
                      f"+-{cfg.tolerance_mm:g} mm; scan: {regions.summary()})")
        report["removed"][lab.name] = {"removed_ml": round(n_removed * voxel_ml, 3),
                                       "kept_ml": round(n_kept * voxel_ml, 3), "reason": reason}
    n = len(report["removed"])
    report["note"] = (f"body regions by slice: {regions.summary()}; "
                      + (f"{n} structure(s) cut or removed outside their regions" if n else "nothing removed"))
    return labels, report


def region_qc(qc: dict[str, dict], report: dict, table: LabelTable) -> dict[str, dict]:
    """``qc`` with the check's findings: a removed structure gets an entry (status ``removed``,
    0 ml, the reason as its warning); a cut one gets ``region_removed_ml`` and a warning."""
    for name, r in (report.get("removed") or {}).items():
        if r["kept_ml"] > 0 and name in qc:
            e = qc[name]
            e["region_removed_ml"] = r["removed_ml"]
            e["warning"] = "; ".join(filter(None, [e.get("warning"), f"{r['reason']}: removed"]))
        else:
            qc[name] = {"id": table.by_name(name).id, "voxels": 0, "volume_ml": 0.0, "status": "removed",
                        "region_removed_ml": r["removed_ml"], "warning": f"removed, {r['reason']}"}
    return qc
