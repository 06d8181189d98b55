"""``surgitwin demo-follow-up``: the sample scan, a synthetic follow-up, the change report.

The follow-up is :func:`.synthetic.follow_up_phantom` (seed 1): the patient moved 5 mm left,
3 mm anterior, 4 mm up and turned (2, -1, 3) degrees; the liver tumour's radius grew by
4 mm (about +110 % volume, +29 % diameter: RECIST progression). With ``model="ground_truth"``
(the default) the phantoms' exact labels stand in for a segmentation model, so the numbers
check registration and change measurement alone; any registry model runs the real pipeline on
both studies.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

DEMO_MOTION = {"rotation_deg": (2.0, -1.0, 3.0), "shift_mm": (5.0, -3.0, 4.0), "tumor_growth_mm": 4.0}
DEMO_TRAJECTORY = {"entry": (-150.0, -40.0, -262.0), "target": (-85.0, -20.0, -270.0), "radius_mm": 1.0}  # biopsy
DEMO_PASSING = {"entry": (-150.0, -39.0, -270.0), "target": (-60.0, -39.0, -270.0), "radius_mm": 1.0}  # 5.5 mm in front


def _truth_scene(sample: Path, out: Path) -> Path:
    """Scene of the sample scan with its ground-truth labels (read through the DICOM reader)."""
    from ..geometry import read_image_file, write_image_file
    from ..ingest import read_input
    from ..mesh import MeshConfig, labelmap_to_meshes
    from ..scene import Scene, save_scene
    from ..types import LabelMap, LabelTable, StageRecord

    image = read_input(sample / "dicom")
    gt = read_image_file(sample / "ground_truth_labels.nii.gz")
    table = LabelTable.from_list(json.loads((sample / "labels.json").read_text()))
    lm = LabelMap(image.with_array(np.rint(gt.array).astype(np.uint8)), table)
    out.mkdir(parents=True)
    write_image_file(image, out / "image.nii.gz")
    write_image_file(lm.volume, out / "labels.nii.gz")
    names = {l.name for l in table if l.name not in ("body", "lungs", "ribs")}
    meshes = labelmap_to_meshes(lm, MeshConfig(), names=names)
    src = image.source
    source = {k: src.get(k) for k in ("study_instance_uid", "series_instance_uid", "frame_of_reference_uid", "modality",
                                      "series_description", "n_files")}
    source.update(input=str((sample / "dicom").resolve()), study_date="20250101")
    scene = Scene("sample_phantom_ct", source, table, meshes, provenance=[
        StageRecord("segment", {"surgitwin": "demo"}, inputs={"model": "ground_truth"},
                    notes=("the phantom's exact labels stand in for a segmentation model",))])
    save_scene(scene, out)
    return out


def _truth_segmenter(labels):
    from ..types import LabelMap, StageRecord

    def seg(volume):
        lm = LabelMap(volume.with_array(labels.array.copy()), labels.labels)
        return lm, None, {}, StageRecord("segment", {"surgitwin": "demo"}, inputs={"model": "ground_truth"},
                                         notes=("the follow-up phantom's exact labels stand in for a model",))
    return seg


def run_demo(out: Path, sample: Path, *, model: str = "ground_truth", report: bool = True, progress=None):
    """Baseline scene in ``out``, the follow-up added to it; returns (FollowUpResult, report HTML or None)."""
    from ..dicom_writer import DicomMeta, write_dicom_series
    from ..phantom import generate_sample
    from ..planning import Planner
    from .run import follow_up
    from .synthetic import follow_up_phantom

    out = Path(out)
    if not (sample / "dicom").exists():
        generate_sample(sample, seed=0)
    if out.exists():
        shutil.rmtree(out)
    inputs = out.with_name(out.name + "_inputs")
    shutil.rmtree(inputs, ignore_errors=True)
    if model == "ground_truth":
        _truth_scene(sample, out)
    else:
        from ..run import run_case

        run_case(sample / "dicom", out, model=model, progress=progress, snapshot=False)
    planner = Planner(out)
    for t in (DEMO_TRAJECTORY, DEMO_PASSING):
        planner.add_trajectory(t["entry"], t["target"], t["radius_mm"])
    planner.save()
    ct, labels, _ = follow_up_phantom(1, **DEMO_MOTION)
    write_dicom_series(ct, inputs / "followup_dicom", DicomMeta(study_date="20250601", uid_seed="demo-follow-up",
                                                                series_description="Phantom CT follow-up"))
    res = follow_up(out, inputs / "followup_dicom", model=None if model == "ground_truth" else model,
                    segmenter=_truth_segmenter(labels) if model == "ground_truth" else None, progress=progress)
    html = None
    if report:  # slice pictures and the change pictures need no renderer; 3D views are left out for speed
        from ..scene.report import build_report

        html = build_report(out, render=False).html
    return res, html
