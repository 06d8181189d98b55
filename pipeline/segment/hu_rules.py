"""Hounsfield-unit rules: body, bone, lungs and airway from a CT without any network.

The logic that needs shape (table removal, slice-wise hole filling, which air is lung) runs on a
block-averaged copy (~``work_spacing_mm`` voxels, 8-30x fewer voxels); boundaries are then
re-decided at full resolution from the HU values inside a one-block band, so the output keeps
the input's resolution while the morphology stays cheap. Everything is vectorised
(scipy.ndimage labelling, bincount statistics); no per-voxel or per-slice Python loops.

Rules (defaults in :class:`HURulesConfig`):

* **body**: HU > ``body_hu``; an in-plane opening of ``table_mm`` cuts the patient table,
  blanket and cables (all thinner than that); the largest component and those at least
  ``keep_fraction`` of it (arms) are kept; pieces the opening shaved off come back when most
  of their voxels lie next to the body (skin folds do, a table does not); then holes are
  filled slice by slice (lungs and bowel are inside the body in every axial slice). A table
  in direct contact with the skin (no mattress) leaves a stub of about ``table_mm`` under
  the contact line.
* **lungs**: HU < ``lung_hu`` inside the body. A component is lung when it is big enough and
  mostly *parenchyma* (-950..-400 HU): bowel and stomach gas is mostly pure air
  (< ``pure_air_hu``), so ``pure_air_fraction`` separates them without needing to know where
  the diaphragm is. Vessels inside the lungs are filled.
* **airway**: an elongated, midline component of pure air (< ``airway_hu``) with a small
  cross-section that reaches the top of the scan or touches a lung; if it leaks into emphysema
  (> ``airway_max_ml``) a stricter threshold is tried. Removed from the lungs.
* **bone**: HU > ``bone_hu`` inside the body, plus the marrow each bone encloses: per bone
  component (3-D), the regions it alone surrounds -- holes in 3-D or in any axial, coronal or
  sagittal slice, so a vertebral body whose shell is open at the basivertebral foramen in
  axial slices is still filled from the sagittal ones -- up to ``max_marrow_ml`` each (a rib
  cage ring around the mediastinum is not marrow; lungs and airway never are). Inside the
  cortex band, cancellous voxels above ``marrow_hu`` count as bone too.

The full-resolution decision is one table lookup per voxel: bit flags from the block grid
(body interior/band, lung interior/band, airway band, marrow) plus the voxel's HU class
(int16 values index a 65536-entry table through an order-preserving XOR).

Uncertainty is the normalised binary entropy of a logistic membership around the nearest
threshold (width ``uncertainty_hu``): partial-volume voxels near a threshold are uncertain,
voxels far from every threshold are certain. It is a property of the rules, not a calibrated
probability.
"""
from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import ModelError
from ..types import Volume

STRUCTURES = ("body", "bone", "lungs", "airway")


class HURulesConfig(BaseModel):
    """Thresholds and sizes of the HU rules (``segment.hu_rules`` in pipeline.yaml)."""

    model_config = ConfigDict(extra="forbid")

    structures: list[str] = Field(default_factory=lambda: list(STRUCTURES))
    body_hu: float = -300.0
    bone_hu: float = 200.0
    lung_hu: float = -400.0
    pure_air_hu: float = -950.0
    airway_hu: float = -900.0
    work_spacing_mm: float = 3.0
    table_mm: float = 6.0
    keep_fraction: float = 0.05
    min_lung_ml: float = 20.0
    min_lung_fraction: float = 0.05  # of the largest lung candidate (drops small gas pockets)
    max_pure_air_fraction: float = 0.5
    airway_max_ml: float = 400.0
    airway_max_area_cm2: float = 8.0
    airway_max_offset_mm: float = 35.0
    uncertainty_hu: float = 20.0
    marrow_hu: float = 100.0        # cancellous bone next to the cortex: above this (muscle is below)
    max_marrow_ml: float = 250.0    # an enclosed region larger than this is not one bone's marrow

    @field_validator("structures")
    @classmethod
    def _known(cls, v):
        unknown = sorted(set(v) - set(STRUCTURES))
        if unknown:
            raise ValueError(f"structures must be among {list(STRUCTURES)}; found {unknown}")
        return v


# --- small array helpers -------------------------------------------------------------------

def _factors(spacing, target_mm: float) -> tuple[int, int, int]:
    return tuple(max(1, int(round(target_mm / float(s)))) for s in spacing)  # type: ignore[return-value]


def _block_shape(shape, f) -> tuple[int, int, int]:
    return tuple(-(-n // fa) for n, fa in zip(shape, f))  # type: ignore[return-value]


def _block_mean(a: np.ndarray, f) -> np.ndarray:
    """(nk, nj, ni) -> (ceil(nk/fk), ...) float32 means over blocks of ``f`` voxels.

    Summed over the prod(f) strided views (no padding copy; edge blocks average the voxels
    they have): each add touches only output-sized arrays, several times faster than a
    reshape + mean over interleaved axes.
    """
    out = np.zeros(_block_shape(a.shape, f), np.float32)
    count = np.ones(1, np.float32)
    for ax, fa in enumerate(f):  # voxels per block along each axis (the last block may be short)
        c = np.full(out.shape[ax], fa, np.float32)
        c[-1] = a.shape[ax] - fa * (out.shape[ax] - 1)
        count = np.multiply.outer(count, c) if ax else c
    for dk in range(f[0]):
        for dj in range(f[1]):
            for di in range(f[2]):
                v = a[dk::f[0], dj::f[1], di::f[2]]
                out[:v.shape[0], :v.shape[1], :v.shape[2]] += v
    out /= count
    return out


def _block_any(a: np.ndarray, f) -> np.ndarray:
    out = np.zeros(_block_shape(a.shape, f), bool)
    for dk in range(f[0]):
        for dj in range(f[1]):
            for di in range(f[2]):
                v = a[dk::f[0], dj::f[1], di::f[2]]
                out[:v.shape[0], :v.shape[1], :v.shape[2]] |= v
    return out


def _upsample(lr: np.ndarray, f, shape) -> np.ndarray:
    """Nearest upsampling of a block grid back onto the full grid (block b covers b*f .. b*f+f-1).

    Call it once on a uint8 of bit flags rather than once per mask: it is the only full-size
    gather of the rules.
    """
    idx = [np.arange(n) // fa for n, fa in zip(shape, f)]
    return lr[idx[0][:, None, None], idx[1][None, :, None], idx[2][None, None, :]]


def _plane_structure(axis: int) -> np.ndarray:
    """4-connected cross in the plane perpendicular to ``axis`` (slice-wise operations)."""
    s = np.zeros((3, 3, 3), bool)
    s[1, 1, 1] = True
    for ax in range(3):
        if ax != axis:
            idx = [1, 1, 1]
            for v in (0, 2):
                idx[ax] = v
                s[tuple(idx)] = True
    return s


def fill_holes_slicewise(mask: np.ndarray, axis: int) -> np.ndarray:
    """Fill holes of ``mask`` in each 2-D slice perpendicular to ``axis`` (one labelling pass).

    A background region is a hole when it does not touch the slice's border.
    """
    from scipy import ndimage

    lab, n = ndimage.label(~mask, structure=_plane_structure(axis))
    if n == 0:
        return mask.copy()
    border = np.zeros(n + 1, bool)
    for ax in range(3):
        if ax == axis:
            continue
        for end in (0, mask.shape[ax] - 1):
            border[np.unique(lab.take(end, axis=ax))] = True
    border[0] = True  # label 0 is the mask itself
    return mask | ~border[lab]


def _superior_axis(affine: np.ndarray) -> tuple[int, bool]:
    """Array axis closest to patient S-I, and whether increasing index goes superior."""
    ax = int(np.argmax(np.abs(affine[2, :3]) / np.linalg.norm(affine[:3, :3], axis=0)))
    return ax, bool(affine[2, ax] > 0)


def _component_stats(lab: np.ndarray, n: int, *weights: np.ndarray) -> list[np.ndarray]:
    flat = lab.ravel()
    out = [np.bincount(flat, minlength=n + 1)]
    for w in weights:
        out.append(np.bincount(flat, weights=w.ravel(), minlength=n + 1))
    return out


# --- the rules ------------------------------------------------------------------------------

def check_ct(volume: Volume) -> None:
    """Raise ModelError when the volume is evidently not a CT in Hounsfield units."""
    modality = str(volume.source.get("modality") or "").upper()
    if modality and modality != "CT":
        raise ModelError(f"HU rules need a CT in Hounsfield units; found modality {modality}",
                         path=volume.source.get("input"))
    lo = float(volume.array.min())
    if lo >= 0:
        raise ModelError("HU rules need a CT in Hounsfield units (air about -1000 HU); "
                         f"found no negative values (minimum {lo:g})", path=volume.source.get("input"))


def hu_rules_arrays(volume: Volume, cfg: HURulesConfig | None = None) -> tuple[np.ndarray, dict]:
    """Structure codes (full resolution, on ``volume``'s grid) and detection notes.

    Parameters
    ----------
    volume : Volume, CT in HU, ``array`` (nk, nj, ni), any orientation (the slice-wise steps
        use the array axis closest to patient S-I).
    cfg : HURulesConfig

    Returns
    -------
    codes : (nk, nj, ni) uint8, 0 none, 1 body, 2 bone, 3 lungs, 4 airway (:data:`CODES`;
        :func:`masks_from_codes` gives boolean masks)
    info : dict of what was detected (components, thresholds used), for the stage record.
    """
    from scipy import ndimage

    cfg = cfg or HURulesConfig()
    check_ct(volume)
    hu = volume.array
    shape = hu.shape
    axis, up = _superior_axis(volume.affine)
    f = _factors(volume.spacing, cfg.work_spacing_mm)
    sp_lr = volume.spacing * np.array(f)
    vox_ml_lr = float(abs(np.linalg.det(volume.affine[:3, :3])) * np.prod(f) / 1000.0)
    hu_lr = _block_mean(hu, f)
    info: dict = {"work_factors": list(f), "superior_axis": axis}
    plane = _plane_structure(axis)

    # body --------------------------------------------------------------------------------
    dense = hu_lr > cfg.body_hu
    r = max(1, int(round(cfg.table_mm / float(np.mean(np.delete(sp_lr, axis))))))
    opened = ndimage.binary_opening(dense, plane, iterations=r)
    lab, n = ndimage.label(opened)
    body_lr = np.zeros_like(dense)
    not_body_lr = np.zeros_like(dense)  # dense but rejected (table, cables): keeps the band off them
    if n:
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        sizes[0] = 0
        keep = sizes >= cfg.keep_fraction * sizes.max()
        keep[0] = False
        kept = keep[lab]
        # Give back what the opening shaved off the body (skin folds, thin edges) but not the
        # table: a shaved-off piece returns only if most of it lies next to the kept body; a
        # table the patient lies on touches the body along a line but extends far beyond it.
        shaved = dense & ~kept
        lab, n = ndimage.label(shaved, plane)
        near = ndimage.binary_dilation(kept, plane, iterations=r + 1)
        if n:
            size = np.bincount(lab.ravel(), minlength=n + 1)
            close = np.bincount(lab[near], minlength=n + 1)
            back = close >= 0.5 * size
            back[0] = False
            kept |= back[lab]
        body_lr = kept
        not_body_lr = dense & ~kept
    body_lr = fill_holes_slicewise(body_lr, axis)
    info["body_components"] = int(ndimage.label(body_lr)[1])

    # lungs -------------------------------------------------------------------------------
    air_lr = (hu_lr < cfg.lung_hu) & body_lr
    lab, n = ndimage.label(air_lr)
    lungs_lr = np.zeros_like(air_lr)
    if n:
        count, pure = _component_stats(lab, n, hu_lr < cfg.pure_air_hu)
        vol_ml = count * vox_ml_lr
        pure_frac = pure / np.maximum(count, 1)
        is_lung = (vol_ml >= cfg.min_lung_ml) & (pure_frac <= cfg.max_pure_air_fraction)
        is_lung[0] = False
        if is_lung.any():
            is_lung &= vol_ml >= cfg.min_lung_fraction * vol_ml[is_lung].max()
        lungs_lr = is_lung[lab]
        info["lung_candidates"] = int(is_lung.sum())
        info["gas_pockets"] = int(((vol_ml >= cfg.min_lung_ml) & ~is_lung)[1:].sum())

    # airway ------------------------------------------------------------------------------
    airway_lr = np.zeros_like(air_lr)
    airway_thr = None
    if "airway" in cfg.structures and body_lr.any():
        airway_lr, airway_thr = _find_airway(hu_lr, body_lr, lungs_lr, volume, f, axis, up, cfg)
        info["airway_hu"] = airway_thr
    lungs_lr &= ~ndimage.binary_dilation(airway_lr)
    lungs_lr = fill_holes_slicewise(lungs_lr, axis)

    # bone marrow: what each bone component alone encloses (3-D and slice-wise in 3 planes) --------
    bone_lr = _block_any(hu > cfg.bone_hu, f) & ndimage.binary_dilation(body_lr)
    keep_out = ndimage.binary_dilation(lungs_lr | airway_lr)
    marrow_lr = enclosed_marrow(bone_lr, keep_out, vox_ml_lr, cfg.max_marrow_ml)
    cortex_band = bone_lr & ndimage.binary_dilation(marrow_lr)  # blocks holding cortex and marrow
    info["marrow_ml"] = round(float(marrow_lr.sum() * vox_ml_lr), 1)

    # back to full resolution: one gather of bit flags, then one table lookup per voxel -------
    flags = (ndimage.binary_erosion(body_lr, border_value=1).astype(np.uint8)
             | ((ndimage.binary_dilation(body_lr) & ~not_body_lr).astype(np.uint8) << 1)
             | (ndimage.binary_erosion(lungs_lr, border_value=1).astype(np.uint8) << 2)
             | (ndimage.binary_dilation(lungs_lr).astype(np.uint8) << 3)
             | (ndimage.binary_dilation(airway_lr).astype(np.uint8) << 4)
             | (marrow_lr.astype(np.uint8) << 5)
             | (cortex_band.astype(np.uint8) << 6))
    info["airway_found"] = airway_thr is not None
    table = _decision_table(cfg, airway_thr is not None)
    out = np.empty(shape, table.dtype)
    idx = [np.arange(n) // fa for n, fa in zip(shape, f)]
    for k0 in range(0, shape[0], 32):  # by slabs: no full-size uint16 temporaries
        ks = slice(k0, k0 + 32)
        codes = flags[idx[0][ks][:, None, None], idx[1][None, :, None], idx[2][None, None, :]].astype(np.uint16)
        codes += _hu_class(hu[ks], cfg, airway_thr)  # HU class * 128 + flags
        out[ks] = table[codes]
    return out, info


# HU classes of the per-voxel decision (ordered by HU):
# 0: < airway threshold, 1: < lung_hu, 2: <= body_hu, 3: <= marrow_hu, 4: <= bone_hu, 5: > bone_hu
N_FLAGS = 128


def _hu_class_table(cfg: HURulesConfig, airway_thr) -> np.ndarray:
    """uint16 table over all int16 values (index = int16 bits XOR 0x8000): HU class * N_FLAGS."""
    hu = np.arange(-32768, 32768, dtype=np.float64)
    thr_air = cfg.lung_hu if airway_thr is None else airway_thr
    marrow = min(cfg.marrow_hu, cfg.bone_hu)
    cls = ((hu >= thr_air).astype(np.uint16) + (hu >= cfg.lung_hu) + (hu > cfg.body_hu) + (hu > marrow)
           + (hu > cfg.bone_hu))
    return (cls * N_FLAGS).astype(np.uint16)


def _int16_index(hu: np.ndarray) -> np.ndarray:
    """Order-preserving uint16 view of int16 values (one XOR): an index into 65536-entry tables."""
    return hu.view(np.uint16) ^ np.uint16(0x8000)


def _hu_class(hu: np.ndarray, cfg: HURulesConfig, airway_thr) -> np.ndarray:
    table = _hu_class_table(cfg, airway_thr)
    if hu.dtype == np.int16:
        return table[_int16_index(hu)]
    clipped = np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
    return table[_int16_index(clipped)]


def _decision_table(cfg: HURulesConfig, airway_found: bool) -> np.ndarray:
    """uint8 structure code (0 none, 1 body, 2 bone, 3 lungs, 4 airway) for every HU class * N_FLAGS + flags.

    flags bits: 0 body interior, 1 body band, 2 lung interior, 3 lung band, 4 airway band,
    5 marrow, 6 cortex next to marrow (all from the block grid).
    """
    want = set(cfg.structures)
    table = np.zeros(6 * N_FLAGS, np.uint8)
    for cls in range(6):
        for fl in range(N_FLAGS):
            b = [(fl >> i) & 1 == 1 for i in range(7)]
            body = b[0] or (b[1] and cls >= 3)
            airway = airway_found and b[4] and cls == 0 and body
            lungs = (b[2] or (b[3] and cls <= 1)) and body and not (airway and "airway" in want)
            bone = ((cls == 5 or (b[5] and cls >= 3) or (b[6] and cls >= 4))
                    and body and not lungs and not airway)
            code = 0
            for c, on, name in ((1, body, "body"), (2, bone, "bone"), (3, lungs, "lungs"), (4, airway, "airway")):
                if on and name in want:
                    code = c
            table[cls * N_FLAGS + fl] = code
    return table


def enclosed_marrow(bone: np.ndarray, keep_out: np.ndarray, vox_ml: float, max_ml: float) -> np.ndarray:
    """Regions enclosed by a single bone component: the marrow to add to the bone mask.

    A candidate is a hole of ``bone`` in 3-D or in any slice of the three array planes; it is
    kept when every bone voxel around it belongs to one 3-D component (ribs, sternum and spine
    together enclose the mediastinum in an axial slice: not marrow), it is at most ``max_ml``
    and touches nothing of ``keep_out`` (lungs, airway).
    """
    from scipy import ndimage

    if not bone.any():
        return np.zeros_like(bone)
    filled = ndimage.binary_fill_holes(bone)
    for ax in range(3):
        filled |= fill_holes_slicewise(bone, ax)
    holes = filled & ~bone
    hlab, nh = ndimage.label(holes)
    if nh == 0:
        return holes
    comp, nc = ndimage.label(bone, structure=np.ones((3, 3, 3), bool))
    ring = ndimage.binary_dilation(holes, structure=np.ones((3, 3, 3), bool)) & bone
    # the hole each ring voxel borders (a ring voxel next to two holes takes the larger label)
    near = ndimage.grey_dilation(hlab, size=(3, 3, 3))
    idx = np.arange(1, nh + 1)
    lo = ndimage.minimum(comp, near * ring, idx)
    hi = ndimage.maximum(comp, near * ring, idx)
    size_ml = np.bincount(hlab.ravel(), minlength=nh + 1)[1:] * vox_ml
    touches = np.bincount(hlab[keep_out].ravel(), minlength=nh + 1)[1:] > 0
    ok = (lo == hi) & (lo > 0) & (size_ml <= max_ml) & ~touches
    return np.concatenate([[False], ok])[hlab]


CODES = {"body": 1, "bone": 2, "lungs": 3, "airway": 4}


def masks_from_codes(codes: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean mask per structure from :func:`hu_rules_arrays`' code array (tests, combining)."""
    return {name: codes == c for name, c in CODES.items()}


def _find_airway(hu_lr, body_lr, lungs_lr, volume: Volume, f, axis: int, up: bool, cfg: HURulesConfig):
    """Trachea/main bronchi on the block grid: (mask, HU threshold used) or (empty, None)."""
    from scipy import ndimage

    lr_affine = volume.affine.copy()
    lr_affine[:3, :3] = volume.affine[:3, :3] * np.array(f)
    lr_affine[:3, 3] = volume.affine[:3, 3] + volume.affine[:3, :3] @ ((np.array(f) - 1) / 2.0)
    vox_ml = float(abs(np.linalg.det(lr_affine[:3, :3])) / 1000.0)
    slice_mm = float(np.linalg.norm(lr_affine[:3, axis]))
    n_slices_total = body_lr.shape[axis]
    top = n_slices_total - 1 if up else 0
    body_box = ndimage.find_objects(body_lr.astype(np.uint8))[0]
    body_x = float((lr_affine[:3, :3] @ np.array([(q.start + q.stop - 1) / 2.0 for q in body_box]) + lr_affine[:3, 3])[0])
    near_lung = ndimage.binary_dilation(lungs_lr, iterations=2)
    for thr in sorted({cfg.airway_hu, min(cfg.airway_hu, -950.0), min(cfg.airway_hu, -980.0)}, reverse=True):
        lab, n = ndimage.label((hu_lr < thr) & body_lr)
        if n == 0:
            return np.zeros_like(body_lr), None
        objs = ndimage.find_objects(lab)
        count = np.bincount(lab.ravel(), minlength=n + 1)
        touch_lung = np.bincount(lab[near_lung], minlength=n + 1) > 0
        best, best_count, leaked = 0, 0, False
        for c in range(1, n + 1):  # loop over components (tens), not voxels
            sl = objs[c - 1]
            n_sl = sl[axis].stop - sl[axis].start
            extent_mm = n_sl * slice_mm
            area_cm2 = count[c] * vox_ml / (n_sl * slice_mm / 10.0)
            centre = np.array([(q.start + q.stop - 1) / 2.0 for q in sl])  # bbox centre: cheap, enough here
            x = float((lr_affine[:3, :3] @ centre + lr_affine[:3, 3])[0])
            reaches_top = sl[axis].start <= top < sl[axis].stop
            if not (reaches_top or touch_lung[c]):
                continue
            if extent_mm < min(30.0, 0.5 * n_slices_total * slice_mm) or abs(x - body_x) > cfg.airway_max_offset_mm:
                continue
            if count[c] * vox_ml > cfg.airway_max_ml:
                leaked = True  # grew into emphysema or lung: retry stricter
                continue
            if area_cm2 > cfg.airway_max_area_cm2:
                continue
            if count[c] > best_count:
                best, best_count = c, count[c]
        if best:
            return lab == best, thr
        if not leaked:
            break
    return np.zeros_like(body_lr), None


def hu_uncertainty_lut(cfg: HURulesConfig, lo: int, hi: int) -> np.ndarray:
    """float32 table u[hu - lo] in 0..1: normalised binary entropy around the nearest threshold."""
    hu = np.arange(lo, hi + 1, dtype=np.float64)
    thresholds = [cfg.body_hu]
    if "lungs" in cfg.structures or "airway" in cfg.structures:
        thresholds.append(cfg.lung_hu)
    if "bone" in cfg.structures:
        thresholds.append(cfg.bone_hu)
    margin = np.min(np.abs(hu[:, None] - np.array(thresholds)[None, :]), axis=1)
    p = 1.0 / (1.0 + np.exp(-margin / max(cfg.uncertainty_hu, 1e-6)))
    q = np.clip(1.0 - p, 1e-12, 1.0)
    ent = -(p * np.log2(p) + q * np.log2(q))
    return ent.astype(np.float32)


def hu_uncertainty(hu: np.ndarray, cfg: HURulesConfig, dtype=np.float32) -> np.ndarray:
    """(nk, nj, ni) 0..1 voxel-wise uncertainty of the HU rules (one table lookup), float32 or
    float16 (the table is cast once: numpy casts float16 subnormals voxel by voxel slowly)."""
    lut = hu_uncertainty_lut(cfg, -32768, 32767).astype(dtype)
    if hu.dtype != np.int16:
        hu = np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
    return lut[_int16_index(hu)]
