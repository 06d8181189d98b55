"""A follow-up of the phantom with known answers: a rigid motion plus a grown (or moved) lesion.

The follow-up shows the same analytic anatomy as :func:`pipeline.phantom.make_phantom`, with
the liver tumour's radius grown by ``tumor_growth_mm`` and its centre moved by
``tumor_shift_mm`` (LPS, body frame), the liver and its tumour slid by ``liver_shift_mm`` inside the
body (breathing: a deformation, not a rigid motion), and the whole patient moved rigidly: a point ``x`` of
the baseline patient lies at ``motion @ x`` in the follow-up scanner space, where ``motion``
rotates by ``rotation_deg`` (x, y, z) about ``centre_lps`` and translates by ``shift_mm``.
Each follow-up voxel centre ``p`` therefore samples the anatomy at ``motion^-1 @ p``.
``motion`` is exactly what :func:`pipeline.followup.register.register` should find
(the earlier -> follow-up transform).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..phantom import (DEFAULT_SHAPE, DEFAULT_SPACING, PATIENT_OFFSET_LPS, PHANTOM_LABELS, Anatomy, phantom_grid,
                       sample_phantom)
from ..phantom_shapes import rotation
from ..types import LabelMap, Volume


@dataclass(frozen=True)
class FollowUpTruth:
    motion: np.ndarray  # 4x4 earlier -> follow-up, LPS mm
    anatomy: Anatomy
    tumor_growth_mm: float
    tumor_shift_mm: tuple
    liver_shift_mm: tuple = (0.0, 0.0, 0.0)


def rigid_motion(rotation_deg=(0.0, 0.0, 0.0), shift_mm=(0.0, 0.0, 0.0), centre_lps=PATIENT_OFFSET_LPS) -> np.ndarray:
    m = np.eye(4)
    r = rotation(rotation_deg)
    c = np.asarray(centre_lps, float)
    m[:3, :3] = r
    m[:3, 3] = c - r @ c + np.asarray(shift_mm, float)
    return m


def follow_up_phantom(seed: int = 1, *, rotation_deg=(2.0, -1.0, 3.0), shift_mm=(5.0, -3.0, 4.0),
                      tumor_growth_mm: float = 3.0, tumor_shift_mm=(0.0, 0.0, 0.0), liver_shift_mm=(0.0, 0.0, 0.0),
                      shape=DEFAULT_SHAPE, spacing=DEFAULT_SPACING, orientation="axial", reverse_slices: bool = False,
                      blur_sigma_vox: float = 0.7, noise_sd: float = 12.0,
                      anatomy: Anatomy | None = None) -> tuple[Volume, LabelMap, FollowUpTruth]:
    """Follow-up CT (int16 HU) and its exact labels on a phantom grid (shape, spacing, orientation as
    :func:`pipeline.phantom.phantom_grid`; by default the sample scan's), plus the truth."""
    from pydicom.uid import generate_uid
    from scipy import ndimage

    base = anatomy or Anatomy()
    liver = np.asarray(liver_shift_mm, float)  # the liver (and its tumour) slid inside the body
    an = replace(base, tumor_radius=base.tumor_radius + float(tumor_growth_mm),
                 liver_center=tuple(float(v) for v in np.asarray(base.liver_center) + liver),
                 tumor_center=tuple(float(v) for v in np.asarray(base.tumor_center) + np.asarray(tumor_shift_mm, float) + liver))
    motion = rigid_motion(rotation_deg, shift_mm)
    affine = phantom_grid(shape, spacing, orientation, reverse_slices=reverse_slices)
    hu, lab = sample_phantom(np.linalg.inv(motion) @ affine, shape, an)
    if blur_sigma_vox > 0:
        hu = ndimage.gaussian_filter(hu, float(blur_sigma_vox), mode="nearest")
    if noise_sd > 0:
        hu += np.random.default_rng([int(seed), 3]).normal(0.0, float(noise_sd), hu.shape).astype(np.float32)
    ct = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    for_uid = generate_uid(entropy_srcs=["surgitwin-phantom-followup", str(int(seed))])
    source = {"generator": "pipeline.followup.synthetic", "seed": int(seed), "modality": "CT",
              "study_date": "20250301", "motion_lps": np.round(motion, 6).tolist(),
              "tumor_growth_mm": float(tumor_growth_mm), "tumor_shift_mm": list(map(float, tumor_shift_mm))}
    vol = Volume(ct, affine, for_uid, source)
    labels = LabelMap(Volume(lab, affine, for_uid, {**source, "kind": "ground_truth_labels"}), PHANTOM_LABELS)
    return vol, labels, FollowUpTruth(motion, an, float(tumor_growth_mm), tuple(tumor_shift_mm), tuple(liver_shift_mm))
