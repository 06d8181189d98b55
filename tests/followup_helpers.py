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


VIEW_STRUCTURES = ("liver", "liver_tumor", "spleen", "kidney_left", "kidney_right")


def write_timepoint_pair(dest, *, growth_mm: float = 6.0, rotation_deg=(3.0, -2.0, 10.0), shift_mm=(14.0, -8.0, 6.0),
                         shape=(56, 112, 112), spacing=(4.5, 3.1, 3.1)):
    """A baseline scene and one follow-up time point written directly (no registration run): the
    phantom on a coarse grid, the follow-up moved by a known rigid motion with the liver tumour's
    radius grown by ``growth_mm``; the *true* motion is stored as the time point's transforms, in
    the layout :func:`pipeline.followup.run.follow_up` writes. Seconds, for viewer tests.

    Returns ``(scene_dir, truth)``; the follow-up is time point ``FOLLOWUP_DATE`` (current).
    """
    from pipeline.fileio import atomic_write_json
    from pipeline.followup.timepoints import add_timepoint
    from pipeline.geometry import write_image_file
    from pipeline.mesh import MeshConfig, labelmap_to_meshes
    from pipeline.phantom import make_phantom
    from pipeline.scene import Scene, save_scene

    root = Path(dest) / "pair"

    def bundle(folder, ct, lm, date, extra=None):
        folder.mkdir(parents=True, exist_ok=True)
        write_image_file(ct, folder / "image.nii.gz")
        write_image_file(lm.volume, folder / "labels.nii.gz")
        meshes = labelmap_to_meshes(lm, MeshConfig(), names=set(VIEW_STRUCTURES))
        sc = Scene("timepoint_pair", {"modality": "CT", "study_date": date,
                                      "series_instance_uid": f"1.2.826.0.1.3680043.10.99.{date}"}, PHANTOM_LABELS, meshes)
        sc.extra.update(extra or {})
        save_scene(sc, folder)

    ct, lm = make_phantom(0, shape, spacing, noise_sd=0.0)
    bundle(root, ct, lm, "20250101")
    fct, flm, truth = follow_up_phantom(1, rotation_deg=rotation_deg, shift_mm=shift_mm, tumor_growth_mm=growth_mm,
                                        shape=shape, spacing=spacing, noise_sd=0.0)
    tp = root / "timepoints" / FOLLOWUP_DATE
    bundle(tp, fct, flm, FOLLOWUP_DATE, {"timepoint": {"id": FOLLOWUP_DATE, "baseline": "../.."}})
    atomic_write_json(tp / "transforms" / "registration.json", {
        "baseline_to_timepoint": truth.motion.tolist(), "timepoint_to_baseline": np.linalg.inv(truth.motion).tolist()})
    add_timepoint(root, {"id": FOLLOWUP_DATE, "path": f"timepoints/{FOLLOWUP_DATE}", "study_date": FOLLOWUP_DATE,
                         "registration": f"timepoints/{FOLLOWUP_DATE}/transforms/registration.json"})
    return root, truth
