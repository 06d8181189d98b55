"""Rerun the later stages of a case on an existing scene folder (``surgitwin run --from mesh SCENE``).

The stages before ``from_stage`` are not run again: their results are read back from the scene
(the label map, qc, input checks, source) and their provenance records are kept. The stages from
``from_stage`` on are the same functions a full run calls (:data:`pipeline.run.STAGES`), so the
result is what a full run gives for them; the folder is republished atomically, as a full run's.
Only the files of the earlier stages are carried over (image, label map, uncertainty, the edit
history; for ``--from scene`` the meshes too): what the rerun stages write is written afresh,
and derived files such as an HTML report are left behind, as a full run leaves them.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np

from .configuration import load_pipeline_config
from .errors import ConfigError, SceneError
from .run import CaseResult, CaseState, Progress, _existing_plan, _quiet, publish, stages_from, staging_dir

# the stages a scene can be rerun from, and the earlier stages whose records it must hold
RERUN_FROM = {"mesh": ("ingest", "segment"), "scene": ("ingest", "segment", "mesh")}
IDENTITY_KEYS = ("patient_id", "study_date", "deidentified")  # scene.json only (see run._identity)
EDIT_DIR = "edits"


def rerun_case(scene_dir, from_stage: str, out_dir=None, *, config=None, progress: Progress | None = None,
               snapshot: bool = True, existing_plan: str = "refuse") -> CaseResult:
    """Run the stages from ``from_stage`` on (``mesh``: re-mesh the stored label map; ``scene``:
    rewrite scene.json and the snapshot from the stored meshes) into ``out_dir`` (default:
    the scene folder itself, replaced atomically). ``config`` and ``existing_plan`` as in
    :func:`pipeline.run.run_case`; only the sections of the rerun stages are used.
    """
    if from_stage not in RERUN_FROM:
        raise ConfigError(f"--from must be one of {', '.join(RERUN_FROM)}; found {from_stage!r}",
                          rule="a scene is rerun from the mesh or the scene stage")
    cfg = config if isinstance(config, dict) else load_pipeline_config(config)
    scene_dir = Path(scene_dir)
    if scene_dir.name == "scene.json" and scene_dir.is_file():  # the scene's index names its folder too
        scene_dir = scene_dir.parent
    scene = _load_for_rerun(scene_dir, from_stage)
    out_dir = Path(out_dir) if out_dir is not None else scene_dir
    old_plan = _existing_plan(out_dir, existing_plan)
    st = CaseState(out_dir, staging_dir(out_dir), cfg, progress or _quiet, old_plan=old_plan)
    try:
        _restore(st, scene, from_stage)
    except BaseException:
        shutil.rmtree(st.tmp, ignore_errors=True)
        raise
    st.progress(from_stage, f"rerunning {scene_dir} from the {from_stage} stage "
                            f"(kept: {', '.join(r.stage for r in st.records) or 'no records'})")
    return publish(st, stages_from(from_stage, snapshot))


def _load_for_rerun(scene_dir: Path, from_stage: str):
    """The scene, checked to hold what the stages before ``from_stage`` left (files and records)."""
    from .scene import load_scene
    from .scene.scene import SCENE_FILE

    rule = f"run --from {from_stage} needs a scene folder written by surgitwin run"
    if not (scene_dir / SCENE_FILE).is_file():
        raise SceneError(f"no {SCENE_FILE} in {scene_dir}: not a scene folder", path=str(scene_dir / SCENE_FILE),
                         rule=rule)
    scene = load_scene(scene_dir, load_meshes=from_stage != "mesh")
    have = {r.stage for r in scene.provenance}
    missing = [s for s in RERUN_FROM[from_stage] if s not in have]
    if missing:
        raise SceneError(f"the scene's provenance holds no record of the {', '.join(missing)} stage(s), so it "
                         f"cannot be rerun from {from_stage}", path=str(scene_dir / SCENE_FILE), rule=rule)
    for key, rel in (("image", scene.image), ("labelmap", scene.labelmap), ("uncertainty", scene.uncertainty)):
        if rel is not None and not scene.path(rel, key).is_file():
            raise SceneError(f"the scene's {key} file '{rel}' is missing", path=str(scene_dir / rel), rule=rule)
    return scene


def _restore(st: CaseState, scene, from_stage: str) -> None:
    """Fill ``st`` as the stages before ``from_stage`` would have, and carry their files into ``st.tmp``."""
    rerun = {s.name for s in stages_from(from_stage)}
    st.case_id = scene.case_id
    st.source = {k: v for k, v in scene.source.items() if k not in IDENTITY_KEYS}
    st.identity = {k: v for k, v in scene.source.items() if k in IDENTITY_KEYS}
    st.extra = dict(scene.extra)
    st.unc_rel = scene.uncertainty
    st.records = [r for r in scene.provenance if r.stage not in rerun]
    st.labels = scene.labels
    carried = [scene.image, scene.labelmap, scene.uncertainty, EDIT_DIR]
    if from_stage == "mesh":
        st.labelmap = _labelmap(scene)
    else:
        st.meshes = scene.meshes
        carried += [m.qa["mesh_path"] for m in scene.meshes]
    for rel in carried:
        if rel is not None and (scene.root / rel).exists():
            _link_or_copy(scene.root / rel, st.tmp / rel)


def _labelmap(scene):
    """The stored label map on the grid the ingest stage recorded.

    NIfTI keeps the affine in float32 (about 1e-5 mm off at 200 mm from the origin); the ingest
    record keeps it to 1e-6 mm. Where the two agree to 1e-3 mm the record's is used, so that the
    meshes are the ones a full run gives; otherwise (a file from elsewhere) the file's.
    """
    from .types import LabelMap

    lm = scene.load_labelmap()
    ingest = next(r for r in scene.provenance if r.stage == "ingest")
    affine = ingest.outputs.get("affine_lps")
    if affine is None:
        return lm
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.allclose(affine, lm.volume.affine, rtol=0, atol=1e-3):
        return lm
    return LabelMap(dataclasses.replace(lm.volume, affine=affine), lm.labels)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link (same file system: no copy; the old folder can then go) or copy a file or folder."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=_link_file)
    else:
        _link_file(src, dst)


def _link_file(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
