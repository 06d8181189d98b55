"""Per-label clean-up of a label map: keep N largest components, fill holes, drop small islands.

Each label is processed inside its own bounding box (``ndimage.find_objects`` finds all boxes
in one pass), so a 105-label map costs about one pass over the volume, not 105.

Rules, per label (``Label.components`` = N):

* N >= 1 keeps the N largest 26-connected components (paired organs: 2); N = 0 keeps all
  components (bone, vessels) except islands smaller than ``min_island_ml``.
* The largest component is never dropped for being small: a small structure stays a structure.
* Holes (background enclosed by the structure in 3-D) are filled; a hole that contains another
  label keeps that label (a cyst labelled inside a kidney is not overwritten).
* Removed voxels become background (0).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from pydantic import BaseModel, ConfigDict

from ..types import LabelTable

_FULL = np.ones((3, 3, 3), bool)  # 26-connectivity for structures (6 for their background)


class PostprocessConfig(BaseModel):
    """``postprocess`` section of a model entry (and ``segment.postprocess`` overrides)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    keep_largest: bool = True
    fill_holes: bool = True
    min_island_ml: float = 1.0


def label_compact(mask: np.ndarray, structure=None) -> tuple[np.ndarray, int]:
    """``ndimage.label`` into uint16 when the components fit (half of int32's memory on a
    full-resolution body mask), else int32."""
    from scipy import ndimage

    try:
        out = np.empty(mask.shape, np.uint16)
        n = ndimage.label(mask, structure=structure, output=out)
        return out, int(n)
    except RuntimeError:  # more than 65535 components
        lab, n = ndimage.label(mask, structure=structure)
        return lab, int(n)


ITK_MIN_VOXELS = 1 << 21  # masks at least this big are labelled by ITK (tests lower it) ...
ITK_MAX_VOXELS = 40_000_000  # ... and at most this big: ITK's ids are uint32 (4 bytes a voxel, scipy's
# uint16 2): the body's box of a 512x512x300 CT (55 M voxels) would lift the stage's peak by ~200 MB


@contextmanager
def components(mask: np.ndarray, full: bool) -> Iterator[tuple[np.ndarray, int]]:
    """(component ids, count) of a 3-D mask: 26-connected when ``full``, else 6-connected.

    Ids follow the raster order of each component's first voxel, so ITK's labelling (used for
    big masks: multi-threaded and about 3x less CPU than ``ndimage.label``) is identical to
    scipy's (tested). The id array is only valid inside the ``with`` block (an ITK buffer).
    """
    if mask.ndim != 3 or not ITK_MIN_VOXELS <= mask.size <= ITK_MAX_VOXELS:
        yield label_compact(mask, _FULL if full else None)
        return
    import SimpleITK as sitk

    from ..config import cap_threads

    f = sitk.ConnectedComponentImageFilter()
    f.SetFullyConnected(full)
    threads = cap_threads(None)
    if threads:
        f.SetNumberOfThreads(threads)
    img = f.Execute(sitk.GetImageFromArray(np.ascontiguousarray(mask).view(np.uint8)))
    del mask  # a temporary of the caller's (the complement) is freed before the ids are used
    try:
        yield sitk.GetArrayViewFromImage(img), int(f.GetObjectCount())
    finally:
        del img


def lookup(table: np.ndarray, ids: np.ndarray, slab: int = 16) -> np.ndarray:
    """``table[ids]`` by slabs (indexing casts the whole index array to intp: 8 bytes a voxel)."""
    out = np.empty(ids.shape, table.dtype)
    for k in range(0, ids.shape[0], slab):
        out[k:k + slab] = table[ids[k:k + slab]]
    return out


def select(wanted: np.ndarray, ids: np.ndarray, few: int = 6) -> np.ndarray:
    """``wanted[ids]`` for a boolean table: when few ids are wanted (or few are not), a handful
    of comparisons, each several times cheaper than the gather (the usual case: keep the largest
    component, fill the few enclosed holes)."""
    on, off = np.flatnonzero(wanted), np.flatnonzero(~wanted)
    if len(on) <= few:
        out = np.zeros(ids.shape, bool)
        for v in on:
            out |= ids == v
        return out
    if len(off) <= few:
        out = np.ones(ids.shape, bool)
        for v in off:
            out &= ids != v
        return out
    return lookup(wanted, ids)


def fill_holes_3d(mask: np.ndarray) -> np.ndarray:
    """Mask with its enclosed background filled (6-connected background, one labelling pass).

    Faster than ``scipy.ndimage.binary_fill_holes`` (iterated dilation) on large masks.
    """
    with components(~mask, full=False) as (lab, n):
        if n == 0:
            return mask.copy()
        outside = np.zeros(n + 1, bool)
        for ax in range(3):
            for end in (0, mask.shape[ax] - 1):
                outside[lab.take(end, axis=ax)] = True  # repeated ids: fine for an assignment
        outside[0] = True
        return mask | select(~outside, lab)


def keep_components(mask: np.ndarray, n_keep: int, min_voxels: int) -> tuple[np.ndarray, int, int]:
    """Keep the ``n_keep`` largest components (0 = all) and drop others under ``min_voxels``.

    Returns
    -------
    kept : bool array like ``mask``
    n_components : components found
    n_kept : components kept
    """
    with components(mask, full=True) as (lab, n):
        if n <= 1:
            return mask.copy(), n, n
        sizes = np.zeros(n + 1, np.int64)
        for k0 in range(0, lab.shape[0], 16):  # by slabs: bincount would copy the whole map to int64
            sizes += np.bincount(lab[k0:k0 + 16].ravel(), minlength=n + 1)
        sizes[0] = 0
        order = np.argsort(sizes)[::-1]  # component ids by decreasing size, background last
        keep = np.zeros(n + 1, bool)
        candidates = order[: n if n_keep <= 0 else min(n_keep, n)]
        keep[candidates] = sizes[candidates] >= min_voxels
        keep[order[0]] = True  # the largest always stays
        keep[0] = False
        return select(keep, lab), n, int(keep.sum())


def postprocess_labels(labels: np.ndarray, table: LabelTable, cfg: PostprocessConfig,
                       voxel_ml: float, *, copy: bool = True) -> tuple[np.ndarray, dict[str, dict]]:
    """Clean every label of ``labels`` (in a copy, or in place with ``copy=False``).

    Parameters
    ----------
    labels : (nk, nj, ni) integer array, 0 = background
    table : LabelTable giving each label's ``components``
    cfg : PostprocessConfig
    voxel_ml : volume of one voxel in ml
    copy : False edits ``labels`` itself (the segment stage: one label map less in memory)

    Returns
    -------
    out : (nk, nj, ni) array of the same dtype
    report : name -> {components_found, components_kept, removed_ml, filled_ml}
    """
    from scipy import ndimage

    out = labels.copy() if copy else labels
    report: dict[str, dict] = {}
    if not cfg.enabled or not (cfg.keep_largest or cfg.fill_holes or cfg.min_island_ml > 0):
        return out, report
    min_vox = int(np.ceil(cfg.min_island_ml / voxel_ml)) if cfg.min_island_ml > 0 else 0
    boxes = ndimage.find_objects(out)
    for label in table:
        if label.id > len(boxes) or boxes[label.id - 1] is None:
            continue
        report[label.name] = _clean_label(out[boxes[label.id - 1]], label, cfg, min_vox, voxel_ml)
    return out, report


def _clean_label(sub: np.ndarray, label, cfg: PostprocessConfig, min_vox: int, voxel_ml: float) -> dict:
    """One label inside its box ``sub`` (a view: edits land in the label map). Holds at most a
    few box-sized masks at a time (the body's box is most of a CT)."""
    mask = sub == label.id
    entry = {"components_found": None, "components_kept": None, "removed_ml": 0.0, "filled_ml": 0.0}
    if cfg.keep_largest or min_vox:
        n_keep = label.components if cfg.keep_largest else 0
        kept, n_found, n_kept = keep_components(mask, n_keep, min_vox)
        removed = int(np.count_nonzero(mask)) - int(np.count_nonzero(kept))  # kept is a subset of mask
        if removed:
            mask &= ~kept  # now: the removed voxels
            sub[mask] = 0
        del mask
        entry.update(components_found=n_found, components_kept=n_kept, removed_ml=round(removed * voxel_ml, 3))
        mask = kept
    if cfg.fill_holes:
        holes = fill_holes_3d(mask)
        holes &= ~mask
        holes &= sub == 0
        sub[holes] = label.id
        entry["filled_ml"] = round(float(np.count_nonzero(holes)) * voxel_ml, 3)
    return entry
