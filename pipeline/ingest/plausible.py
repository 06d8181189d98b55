"""Plausibility checks on a volume before it is segmented.

A volume can be read correctly and still be no patient scan: all air, a 4x4-pixel strip, a
RescaleSlope of 1e30, NaNs. Segmenting it gives an empty or absurd scene with exit 0. These
checks run between ingest and segment: a volume that cannot hold anatomy is refused
(:class:`DicomError` naming the input and the rule), a doubtful one passes with warnings that
:func:`pipeline.run.run_case` writes into scene.json (``input_checks``).

The thresholds are deliberately loose: they catch inputs that are wrong by orders of
magnitude, never a real scan.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import DicomError
from ..types import Volume

MIN_FOV_MM = 30.0  # the two largest extents of a scan that can hold an organ
MIN_AXIS_VOXELS = 16  # ... each sampled by at least this many voxels
THIN_SLAB_MM = 20.0  # smallest extent below this: a slab, warned
HU_MIN, HU_MAX = -10000.0, 100000.0  # beyond any scanner's (extended) HU scale
HU_MEDIAN = (-1100.0, 3000.0)  # where the median of a CT lies (air, padding, tissue, bone)
TISSUE_HU = -500.0
MIN_TISSUE_FRACTION = 0.005
SAMPLE_VOXELS = 2_000_000


@dataclass
class InputChecks:
    """Outcome of :func:`check_volume` (stored in scene.json under ``input_checks``)."""

    modality: str
    extent_mm: list[float]
    value_range: list[float]
    tissue_fraction: float | None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"modality": self.modality, "extent_mm": self.extent_mm, "value_range": self.value_range,
                "tissue_fraction": self.tissue_fraction, "warnings": list(self.warnings)}


def _sample(arr: np.ndarray) -> np.ndarray:
    step = max(1, int(np.ceil((arr.size / SAMPLE_VOXELS) ** (1 / 3))))
    return np.asarray(arr[::step, ::step, ::step], dtype=np.float64).ravel()


def check_volume(vol: Volume, where: str) -> InputChecks:
    """Refuse a volume that cannot be a patient scan; return the checks with warnings.

    ``where`` names the input in messages (a path or series).
    """
    def refuse(rule: str, what: str):
        raise DicomError(f"{what}; refusing to segment it", path=where, rule=rule)

    arr = vol.array
    shape = np.array(arr.shape)
    spacing = np.asarray(vol.spacing, dtype=np.float64)
    extent = shape * spacing
    order = np.argsort(-extent)
    big = order[:2]
    if extent[big[1]] < MIN_FOV_MM or shape[big].min() < MIN_AXIS_VOXELS:
        refuse("field of view: two axes of at least 30 mm and 16 voxels",
               f"the image is {'x'.join(str(int(n)) for n in shape)} voxels = "
               f"{' x '.join(f'{e:.1f}' for e in extent)} mm: too small a field of view to hold anatomy")
    lo, hi = float(arr.min()), float(arr.max())  # NaN anywhere makes these NaN
    if not (np.isfinite(lo) and np.isfinite(hi)):
        refuse("voxel values are finite numbers", "the image holds NaN or infinite values")
    s = _sample(arr)
    if lo == hi:
        refuse("the image holds more than one value", f"every voxel is {lo:g}")
    modality = str((vol.source or {}).get("modality") or "").upper()
    if not modality:  # NIfTI & co. carry no modality: values on the HU scale are treated as CT
        modality = "CT?" if lo <= -900 else "unknown"
    warnings: list[str] = []
    tissue = None
    if modality.startswith("CT"):
        med = float(np.median(s))
        if lo < HU_MIN or hi > HU_MAX or not HU_MEDIAN[0] <= med <= HU_MEDIAN[1]:
            refuse("CT values on the Hounsfield scale (RescaleSlope/Intercept plausible)",
                   f"CT values range {lo:.4g}..{hi:.4g} with median {med:.4g}: not Hounsfield units "
                   f"(a CT lies within {HU_MIN:g}..{HU_MAX:g}, median {HU_MEDIAN[0]:g}..{HU_MEDIAN[1]:g}); "
                   f"check RescaleSlope/RescaleIntercept")
        tissue = float(np.mean(s > TISSUE_HU))
        if tissue < MIN_TISSUE_FRACTION:
            refuse("the scan contains tissue (> 0.5 % of voxels above -500 HU)",
                   f"only {100 * tissue:.2f} % of voxels are above {TISSUE_HU:g} HU: the scan holds air only")
        if lo > -500:
            warnings.append(f"no voxel below -500 HU (minimum {lo:g}): no air in the field of view, or values "
                            f"are not HU")
    if extent[order[2]] < THIN_SLAB_MM:
        warnings.append(f"thin slab: the image covers only {extent[order[2]]:.1f} mm along one axis "
                        f"({int(shape[order[2]])} voxels); structures are cut at its ends")
    return InputChecks(modality, [round(float(e), 2) for e in extent], [lo, hi],
                       None if tissue is None else round(tissue, 4), warnings)
