"""Corrections become training data: a scene's image and (corrected) label map as an nnU-Net case.

``surgitwin dataset add-scene SCENE DATASET`` writes ``imagesTr/<case>_0000.nii.gz`` and
``labelsTr/<case>.nii.gz`` on exactly the scene's grid, with the scene's structures renumbered
to the dataset's label ids **by name** (a new dataset takes the scene's names, numbered 1..N in
the scene's order). A scene whose structures do not match the dataset's labels is refused,
naming them in both directions: a structure the dataset lacks would be lost, and a dataset
label the scene lacks would be taught as background. ``--background NAME`` turns a structure
into background on purpose (e.g. a lesion for an organ-only dataset: the organ keeps its hole).

``lineage/<case>.json`` records where the case came from: the source series UIDs, the model
that made the first labels (the segment stage's record), every edit (the scene's ``edit``
provenance records and ``edits/history.json``), and the scene folder. ``dataset validate`` runs
on the result; ``surgitwin train`` fine-tunes on it like on any dataset.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np

from .dataset import DatasetError, read_dataset_json, validate_dataset, write_case, write_dataset_json


def _case_id(scene_case_id: str) -> str:
    cid = re.sub(r"[^A-Za-z0-9_-]+", "_", scene_case_id).strip("_") or "scene"
    return cid


def _dataset_labels(root: Path, scene_names: list[str]) -> tuple[dict[str, int], bool]:
    """The dataset's {name: id} (background left out) and whether the dataset is new."""
    if (root / "dataset.json").exists():
        d = read_dataset_json(root)
        return {k: int(v) for k, v in d["labels"].items() if int(v) != 0}, False
    return {n: i for i, n in enumerate(scene_names, start=1)}, True


def _lineage(scene, scene_dir: Path) -> dict:
    from ..scene.edit import read_history

    seg = next((r for r in scene.provenance if r.stage == "segment"), None)
    edits = [r.to_dict() for r in scene.provenance if r.stage == "edit"]
    try:
        history = read_history(scene_dir)
    except Exception:  # noqa: BLE001 - an unreadable edit history is reported, not fatal to the lineage
        history = [{"error": "edits/history.json could not be read"}]
    return {
        "scene": str(scene_dir.resolve()), "scene_case_id": scene.case_id,
        "source": {k: scene.source.get(k) for k in ("study_instance_uid", "series_instance_uid",
                                                     "frame_of_reference_uid", "modality", "series_description")
                   if scene.source.get(k) is not None},
        "first_labels": None if seg is None else {"model": (seg.inputs or {}).get("model"),
                                                  "weights_sha256": (seg.inputs or {}).get("weights_sha256"),
                                                  "software": dict(seg.software), "started_at": seg.started_at},
        "edits": edits, "edit_history": history,
        "added_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def add_scene(scene_path, dataset_dir, *, case_id: str | None = None, background: tuple[str, ...] = (),
              replace: bool = False, name: str | None = None):
    """Add the scene at ``scene_path`` to the nnU-Net dataset ``dataset_dir`` (created if absent).

    Returns ``(case_id, ValidationReport)``. Raises :class:`DatasetError` naming the scene or the
    dataset and the rule broken; nothing is written then.
    """
    from ..scene import load_scene

    scene_dir = Path(scene_path)
    scene_dir = scene_dir.parent if scene_dir.name == "scene.json" else scene_dir
    root = Path(dataset_dir)
    scene = load_scene(scene_dir, load_meshes=False)
    lm = scene.load_labelmap()
    image = scene.load_image()
    present = {int(v) for v in np.unique(lm.array) if v}
    names = [l.name for l in lm.labels if l.id in present]
    unknown_bg = sorted(set(background) - set(names))
    if unknown_bg:
        raise DatasetError(f"--background names structures the scene does not have: {unknown_bg}; it has {names}",
                           path=str(scene_dir), rule="background structures exist")
    kept = [n for n in names if n not in background]
    labels, new = _dataset_labels(root, kept)
    missing_in_dataset = sorted(set(kept) - set(labels))
    missing_in_scene = sorted(set(labels) - set(kept))
    if missing_in_dataset or missing_in_scene:
        parts = []
        if missing_in_dataset:
            parts.append(f"structures the dataset has no label for: {missing_in_dataset} (they would be lost; "
                         f"--background NAME makes one background on purpose)")
        if missing_in_scene:
            parts.append(f"dataset labels the scene lacks: {missing_in_scene} (they would be taught as background)")
        raise DatasetError(f"scene {scene_dir} does not match dataset {root}: " + "; ".join(parts),
                           path=str(scene_dir), rule="the scene's structures match the dataset's labels by name")
    if max(labels.values(), default=0) > 255:
        raise DatasetError("label ids above 255 do not fit the dataset's uint8 label files", path=str(root),
                           rule="label ids 1..255")
    cid = _case_id(case_id or scene.case_id)
    ending = ".nii.gz"
    if (root / "labelsTr" / f"{cid}{ending}").exists() and not replace:
        raise DatasetError(f"case '{cid}' is already in the dataset (pass --replace to write it again, or --case-id)",
                           path=str(root / "labelsTr" / f"{cid}{ending}"), rule="case ids are unique")
    lut = np.zeros(max(lm.labels.ids) + 1, np.uint8)
    for l in lm.labels:
        if l.name in labels:
            lut[l.id] = labels[l.name]
    out = lut[lm.array]
    hu = image.array
    img = image.with_array(hu.astype(np.int16) if np.issubdtype(hu.dtype, np.integer) else hu)
    write_case(root, cid, img, image.with_array(out), ending)
    (root / "lineage").mkdir(exist_ok=True)
    lineage = _lineage(scene, scene_dir)
    lineage.update({"case": cid, "labels": labels, "background": sorted(background)})
    from ..fileio import atomic_write_json

    atomic_write_json(root / "lineage" / f"{cid}.json", lineage)
    n_cases = len(list((root / "labelsTr").glob(f"*{ending}")))
    if new:
        write_dataset_json(root, labels, n_cases, name=name or root.name, channel="CT")
    else:
        d = read_dataset_json(root)
        d["numTraining"] = n_cases
        from ..fileio import atomic_write_text

        atomic_write_text(root / "dataset.json", json.dumps(d, indent=1))
    return cid, validate_dataset(root)
