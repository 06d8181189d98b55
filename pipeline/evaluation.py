"""Compare a scene's label map with a ground-truth label map, in patient space."""
from __future__ import annotations

from pathlib import Path

import numpy as np


# structures that one label map keeps whole and another splits (HU-rule bone = spine + ribs)
GROUPS = {"bone": ("spine", "ribs", "bone"), "lungs": ("lungs", "lung_left", "lung_right")}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap 2|a & b| / (|a| + |b|) of two masks on one grid; 1.0 when both are empty.
    The one Dice of the project (scene vs truth, training validation, ``surgitwin evaluate``)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(a & b) / total


def compare_to_truth(scene_path, truth_path, names=None) -> list[dict]:
    """Dice, volumes and centroid distance per structure present in both (matched by name).

    The truth is resampled (nearest) onto the scene's grid through both affines, so a flipped
    or differently ordered truth file still compares correctly. ``body`` is compared as the
    whole-body outline (every non-zero voxel), since each map nests other structures in it.
    """
    import json

    from .geometry import read_image_file, resample_like
    from .scene import load_scene
    from .types import LabelTable

    scene = load_scene(scene_path, load_meshes=False)
    lm = scene.load_labelmap()
    truth_path = Path(truth_path)
    truth = read_image_file(truth_path)
    table_file = truth_path.with_name("labels.json")
    truth_labels = LabelTable.from_list(json.loads(table_file.read_text())) if table_file.exists() else scene.labels
    truth_on_grid = resample_like(truth, lm.volume, order=0, dtype=np.int32).array
    vox_ml = lm.volume.voxel_volume_ml
    rows = []
    for label in scene.labels:
        if names is not None and label.name not in names:
            continue
        members = [n for n in GROUPS.get(label.name, (label.name,)) if n in truth_labels]
        if not members:
            continue
        if label.name == "body":
            # 'body' is what is left after the nested structures in each map, and the maps nest
            # different structures: compare the whole-body outline (any label) instead
            t, f = truth_on_grid != 0, lm.array != 0
        else:
            t = np.isin(truth_on_grid, [truth_labels.by_name(n).id for n in members])
            f = lm.array == label.id
        if not t.any() and not f.any():
            continue
        ct = lm.volume.index_to_lps(np.argwhere(t).mean(0)) if t.any() else np.full(3, np.nan)
        cf = lm.volume.index_to_lps(np.argwhere(f).mean(0)) if f.any() else np.full(3, np.nan)
        rows.append({"name": label.name, "dice": dice(t, f), "truth_ml": float(t.sum() * vox_ml),
                     "found_ml": float(f.sum() * vox_ml), "centroid_error_mm": float(np.linalg.norm(ct - cf))})
    return rows
