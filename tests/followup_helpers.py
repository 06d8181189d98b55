"""A baseline scene and a follow-up study of the phantom with known motion and growth (tests only).

The baseline is the shipped sample scan with its ground truth (``scene_factory.sample_scan_scene``);
the follow-up is :func:`pipeline.followup.synthetic.follow_up_phantom` written as a DICOM series
(study date 2025-06-01), and :func:`truth_segmenter` stands in for the model with its exact labels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.dicom_writer import DicomMeta, write_dicom_series
from pipeline.followup.synthetic import follow_up_phantom
from pipeline.phantom import PHANTOM_LABELS
from pipeline.types import LabelMap, StageRecord
from scene_factory import sample_scan_scene

FOLLOWUP_DATE = "20250601"


def write_follow_up(dest, *, date: str = FOLLOWUP_DATE, **kwargs):
    """Follow-up DICOM folder under ``dest``; returns (folder, truth labels LabelMap, FollowUpTruth)."""
    ct, labels, truth = follow_up_phantom(**kwargs)
    folder = Path(dest) / f"followup_dicom_{date}"
    write_dicom_series(ct, folder, DicomMeta(study_date=date, uid_seed=f"followup-{date}-{sorted(kwargs.items())}",
                                             series_description="Phantom CT follow-up"))
    return folder, labels, truth


def truth_segmenter(truth_labels: LabelMap):
    """A segmenter returning the follow-up's exact labels on the grid that was read."""
    def seg(volume):
        if not volume.geometry_equal(truth_labels.volume, atol=1e-3):
            raise AssertionError("follow-up read onto another grid than it was written on")
        lm = LabelMap(volume.with_array(truth_labels.array.copy()), PHANTOM_LABELS)
        rec = StageRecord("segment", {"surgitwin": "test"}, inputs={"model": "ground_truth"},
                          notes=("ground-truth labels of the synthetic follow-up stand in for a model",))
        return lm, None, {}, rec
    return seg


def baseline_scene(dest):
    return sample_scan_scene(dest)


def rotation_angle_deg(r: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))
