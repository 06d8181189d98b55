"""Slice ordering and grid decisions for one stack of parallel frames.

Given each frame's ImagePositionPatient and the shared orientation, :func:`plan_stack` sorts
frames along the slice normal, removes byte-identical duplicates, classifies the gaps
(regular / missing slices / uneven) and detects gantry tilt (slice step not parallel to the
normal). It returns either a direct affine (regular, orthogonal or kept sheared) or a
:class:`Regrid` that :func:`regrid` applies: each input slice is shifted in-plane onto a common
orthogonal grid and values are interpolated linearly along the normal, as dcm2niix does for
tilted and unevenly spaced CT.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..errors import DicomError
from ..geometry import affine_from_dicom
from ._common import slice_normal

DUPLICATE_MM = 0.01  # positions closer than this along the normal are the same slice


@dataclass
class Regrid:
    """Target of a resampling: output (shape, affine) and per-input-slice placement.

    d : (n,) input slice positions along the normal (mm, ascending)
    offset_rows, offset_cols : (n,) in-plane offsets of each input slice from slice 0, in voxels
    shape : (nk, nj, ni) output shape; affine : (4, 4) output affine (orthogonal)
    j0, i0 : output in-plane index of input slice 0's pixel (0, 0) is (-j0, -i0)
    """

    d: np.ndarray
    offset_rows: np.ndarray
    offset_cols: np.ndarray
    shape: tuple[int, int, int]
    affine: np.ndarray
    j0: int
    i0: int
    spacing: float


@dataclass
class StackPlan:
    order: list[int]  # indices of the kept frames, in slice order
    affine: np.ndarray | None  # direct stacking when not None
    regrid: Regrid | None
    notes: list[str] = field(default_factory=list)
    resampled: str | None = None
    slice_spacing: float | None = None


def _runs(gaps: np.ndarray, tol: float) -> list[tuple[int, int, float]]:
    """Run-length groups of similar gaps: (first gap index, count, mean gap)."""
    runs: list[list] = []
    for k, g in enumerate(gaps):
        if runs and abs(g - runs[-1][2]) <= tol:
            runs[-1][1] += 1
        else:
            runs.append([k, 1, float(g)])
    return [(a, n, g) for a, n, g in runs]


def describe_gaps(gaps: np.ndarray, tol: float) -> str:
    return "; ".join(f"slices {a}-{a + n}: {n} gap{'s' if n > 1 else ''} of {g:.2f} mm" for a, n, g in _runs(gaps, tol))


def plan_stack(ipp: np.ndarray, iop: np.ndarray, pixel_spacing: np.ndarray, labels: Sequence[str], *,
               same_pixels: Callable[[int, int], bool], where: str, on_uneven: str = "resample",
               uneven_spacing="median", on_missing: str = "error", on_tilt: str = "resample",
               spacing_tolerance: float = 0.01, single_slice_step: float | None = None,
               shape: tuple[int, int] = (0, 0), gantry_tilt_tag: float | None = None) -> StackPlan:
    """Decide slice order and output grid for frames with positions ``ipp`` (n, 3).

    Parameters
    ----------
    ipp : (n, 3) float, ImagePositionPatient per frame (LPS mm)
    iop : (6,) float, shared ImageOrientationPatient; pixel_spacing : (2,) (row, column) mm
    labels : n strings naming each frame in messages ('12.dcm', 'mf.dcm frame 3')
    same_pixels : callable (a, b) -> True when frames a and b hold identical stored pixels
    where : series description for messages
    shape : (rows, columns) of every frame
    """
    normal = slice_normal(iop)
    rs, cs = float(pixel_spacing[0]), float(pixel_spacing[1])
    d_all = ipp @ normal
    order, notes = _drop_duplicates(ipp, d_all, labels, same_pixels, where)
    d = d_all[order]
    n = len(order)
    if n == 1:
        step = single_slice_step or 1.0
        notes.append(f"single slice: slice step {step:g} mm from SpacingBetweenSlices/SliceThickness")
        return StackPlan(order, affine_from_dicom(ipp[order[0]], iop, rs, cs, normal * step), None, notes,
                         None, step)

    gaps = np.diff(d)
    g_med = float(np.median(gaps))
    g_mean = float((d[-1] - d[0]) / (n - 1))
    tol = spacing_tolerance * g_med + 1e-4
    tilt = _Tilt.of(ipp[order], iop, rs, cs, d, notes)
    if gantry_tilt_tag:
        notes.append(f"GantryDetectorTilt {gantry_tilt_tag:g} deg; tilt measured from positions {tilt.degrees:.2f} deg")
    spacing, resampled = g_mean, []
    if (np.abs(gaps - g_med) > tol).any():
        spacing, why = _irregular_gaps(gaps, g_med, tol, d, [labels[i] for i in order], where, on_uneven=on_uneven,
                                       uneven_spacing=uneven_spacing, on_missing=on_missing)
        resampled.append(why)
    if tilt.tilted:
        if on_tilt == "keep" and not resampled:
            step = (ipp[order[-1]] - ipp[order[0]]) / (n - 1)
            notes.append(f"gantry tilt {tilt.degrees:.1f} deg kept as a sheared affine (no resampling)")
            return StackPlan(order, affine_from_dicom(ipp[order[0]], iop, rs, cs, step), None, notes, None, g_mean)
        resampled.insert(0, f"gantry_tilt {tilt.degrees:.1f} deg")
    if not resampled:
        # regular and orthogonal: the step is the normal times the mean gap (exactly orthogonal
        # axes; positions agree with it within the tolerance)
        return StackPlan(order, affine_from_dicom(ipp[order[0]], iop, rs, cs, normal * g_mean), None, notes, None, g_mean)
    rg = _regrid_target(ipp[order[0]], iop, rs, cs, d, tilt, spacing, shape, notes)
    return StackPlan(order, None, rg, notes, "; ".join(resampled), rg.spacing)


def _drop_duplicates(ipp, d_all, labels, same_pixels, where: str) -> tuple[list[int], list[str]]:
    """Frames in slice order without byte-identical duplicates (noted); different pixels at one
    position are an error."""
    kept: list[int] = []
    notes: list[str] = []
    conflicts: list[str] = []
    for idx in np.argsort(d_all, kind="stable"):
        if kept and abs(d_all[idx] - d_all[kept[-1]]) < DUPLICATE_MM:
            if same_pixels(kept[-1], idx):
                notes.append(f"dropped {labels[idx]}: byte-identical duplicate of {labels[kept[-1]]} at the same position")
                continue
            conflicts.append(f"{labels[kept[-1]]} and {labels[idx]} at ({', '.join(f'{x:.2f}' for x in ipp[idx])}) mm")
            continue
        kept.append(idx)
    if conflicts:
        more = f" (and {len(conflicts) - 5} more)" if len(conflicts) > 5 else ""
        raise DicomError(f"{where}: each slice position must hold one image; found different images at the same "
                         f"position: {'; '.join(conflicts[:5])}{more}. Several acquisitions, echoes or "
                         f"phases share this series: split it (index_folder does) or pass one stack's files",
                         rule="one image per slice position")
    return kept, notes


@dataclass
class _Tilt:
    """In-plane offsets of each slice from slice 0 (voxels): zero for an orthogonal stack, linear
    in the slice position under gantry tilt."""

    off_rows: np.ndarray
    off_cols: np.ndarray
    tilted: bool
    degrees: float

    @classmethod
    def of(cls, ipp_sorted, iop, rs: float, cs: float, d, notes: list[str]) -> "_Tilt":
        row_dir, col_dir = iop[:3], iop[3:]
        rel = ipp_sorted - ipp_sorted[0]
        off_cols, off_rows = rel @ row_dir / cs, rel @ col_dir / rs
        drift = float(max(np.abs(off_cols).max(), np.abs(off_rows).max()))  # voxels, over the whole stack
        # below half a voxel over the whole stack, stacking without correction misplaces nothing
        # visible; rounding in written positions must not trigger a resampling
        tilted = drift > 0.5
        if 0.05 < drift <= 0.5:
            notes.append(f"in-plane position drift of {drift:.2f} voxel over the stack ignored (< 0.5 voxel)")
        degrees = 0.0
        if tilted:
            inplane = math.hypot(float(rel[-1] @ row_dir), float(rel[-1] @ col_dir))
            degrees = math.degrees(math.atan2(inplane, abs(d[-1] - d[0])))
        return cls(off_rows, off_cols, tilted, degrees)


def _irregular_gaps(gaps, g_med: float, tol: float, d, names: Sequence[str], where: str, *, on_uneven: str,
                    uneven_spacing, on_missing: str) -> tuple[float, str]:
    """(output spacing, what is resampled) for gaps that are not all equal: missing slices
    (each odd gap a whole multiple of the usual one) or uneven spacing; or the error the options ask for."""
    k = np.rint(gaps / g_med)
    irregular = np.abs(gaps - g_med) > tol
    missing = irregular & (k >= 2) & (np.abs(gaps - k * g_med) <= tol * k)
    if np.all(missing[irregular]):
        holes = [f"between {names[a]} at {d[a]:.2f} mm and {names[a + 1]} at {d[a + 1]:.2f} mm "
                 f"(gap {gaps[a]:.2f} mm = {int(k[a])} x {g_med:.2f} mm)" for a in np.flatnonzero(missing)]
        if on_missing != "resample":
            raise DicomError(f"{where}: slices must be contiguous; {int(sum(k[missing] - 1))} slice(s) missing "
                             f"{'; '.join(holes[:5])} (positions along the slice normal). Pass "
                             f"on_missing='resample' to interpolate across the gap",
                             rule="no missing slices (gap = k x spacing)")
        return g_med, f"missing slices interpolated: {'; '.join(holes[:5])}"
    desc = describe_gaps(gaps, tol)
    if on_uneven == "refuse":
        raise DicomError(f"{where}: slice positions must be evenly spaced; found gaps {desc} "
                         f"(along the slice normal, tolerance {tol:.3f} mm). Pass on_uneven='resample' "
                         f"to resample to a regular grid", rule="even slice spacing")
    if uneven_spacing == "median":
        spacing, how = g_med, "median gap"
    elif uneven_spacing == "min":
        spacing, how = float(gaps.min()), "smallest gap"
    else:
        spacing, how = float(uneven_spacing), "requested spacing"
    return spacing, f"uneven spacing ({desc}) -> {spacing:.3f} mm ({how})"


def _regrid_target(first_ipp, iop, rs: float, cs: float, d, tilt: _Tilt, spacing: float, shape,
                   notes: list[str]) -> Regrid:
    """The orthogonal output grid covering every slice (grown in-plane under tilt)."""
    row_dir, col_dir, normal = iop[:3], iop[3:], slice_normal(iop)
    n = len(d)
    off_cols, off_rows = (tilt.off_cols, tilt.off_rows) if tilt.tilted else (np.zeros(n), np.zeros(n))
    extent = float(d[-1] - d[0])
    # never coarser than asked (ceil), but no extra slice for a hair over a whole number of steps
    nk = max(1, int(math.ceil(extent / spacing - 0.05))) + 1
    out_spacing = extent / (nk - 1) if nk > 1 else spacing
    i0 = int(math.floor(off_cols.min() + 1e-6))
    j0 = int(math.floor(off_rows.min() + 1e-6))
    ni = shape[1] + int(math.ceil(off_cols.max() - 1e-6)) - i0
    nj = shape[0] + int(math.ceil(off_rows.max() - 1e-6)) - j0
    origin = first_ipp + i0 * cs * row_dir + j0 * rs * col_dir
    affine = affine_from_dicom(origin, iop, rs, cs, normal * out_spacing)
    notes.append(f"resampled to an orthogonal grid of {nk} slices x {out_spacing:.4f} mm along the slice normal "
                 f"(linear interpolation){'; in-plane grid grown to ' + str(nj) + ' x ' + str(ni) if (nj, ni) != tuple(shape) else ''}")
    return Regrid(d - d[0], off_rows, off_cols, (nk, nj, ni), affine, j0, i0, out_spacing)


def regrid(stack: np.ndarray, rg: Regrid, cval: float) -> np.ndarray:
    """Apply a :class:`Regrid` to ``stack`` (n, rows, cols) in slice order -> float32 (nk, nj, ni)."""
    from scipy import ndimage

    n = stack.shape[0]
    same_plane = rg.shape[1:] == stack.shape[1:] and not rg.offset_rows.any() and not rg.offset_cols.any()
    cache: dict[int, np.ndarray] = {}

    def placed(k: int) -> np.ndarray:
        # input slice k on the output's in-plane grid; a pure translation (slices share axes)
        if k not in cache:
            if len(cache) > 2:
                cache.pop(min(cache))
            src = stack[k].astype(np.float32, copy=False)
            if same_plane:
                cache[k] = src
            else:
                cache[k] = ndimage.affine_transform(
                    src, np.ones(2), offset=(rg.j0 - rg.offset_rows[k], rg.i0 - rg.offset_cols[k]),
                    output_shape=rg.shape[1:], order=1, mode="constant", cval=cval, prefilter=False)
        return cache[k]

    out = np.empty(rg.shape, dtype=np.float32)
    for m in range(rg.shape[0]):
        dm = m * rg.spacing
        a = int(np.clip(np.searchsorted(rg.d, dm, side="right") - 1, 0, n - 2))
        t = float(np.clip((dm - rg.d[a]) / (rg.d[a + 1] - rg.d[a]), 0.0, 1.0))
        if t < 1e-6:
            out[m] = placed(a)
        elif t > 1 - 1e-6:
            out[m] = placed(a + 1)
        else:
            np.multiply(placed(a), 1.0 - t, out=out[m])
            out[m] += t * placed(a + 1)
    return out
