"""Batch and PACS: a study of a patient who already has a scene becomes a follow-up of it.

Use it as the batch's case function (no change to the batch itself)::

    surgitwin batch INPUT... --out DIR --case-fn pipeline.followup.batch:study_or_follow_up \\
        [--case-arg model=abdomen_unet_3mm] [--case-arg rigid_only=true] [--deidentify]

The rule, in order:

1. The study's **patient key** is ``sha256("surgitwin-patient-key", IssuerOfPatientID,
   PatientID)[:16]`` of its first DICOM header. With ``--deidentify`` the case function sees
   the de-identified copy, so the key comes from the pseudonymous PatientID (stable for one
   de-identification salt): the *de-identified patient key*. A study without a PatientID never
   matches (it becomes a new case).
2. Every case the batch wrote (``DIR/cases/*/scene.json``, or ``scenes=`` another folder) whose
   ``source.patient_key`` equals the study's key is that patient's scene; when there are
   several, the one with the earliest study date (then name) is used.
3. A study whose StudyInstanceUID is already a time point of that scene (or its baseline) is
   skipped; otherwise it is added with :func:`pipeline.follow_up` into that scene (under a
   file lock, so two follow-ups of one patient never interleave), and the study's own case
   folder holds only ``followup.json`` pointing to it.
4. No matching scene: the study is processed as a new case (:func:`pipeline.batch.run_case.run_study`)
   and its scene is tagged with the key, so later studies find it.

A patient's first study must finish before the follow-ups are recognised: studies of one
patient processed at the same moment by two workers both become new cases (run follow-ups in
a later batch, or with one worker).
"""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

KEY_PREFIX = "surgitwin-patient-key"


def _first_header(input_path: Path):
    import pydicom

    p = Path(input_path)
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    for f in files[:200]:
        try:
            return pydicom.dcmread(str(f), stop_before_pixels=True,
                                   specific_tags=["PatientID", "IssuerOfPatientID", "StudyInstanceUID", "StudyDate"])
        except Exception:  # noqa: BLE001 - any parser failure means not DICOM: keep looking
            continue
    return None


def patient_key(input_path) -> tuple[str | None, str | None]:
    """(patient key, StudyInstanceUID) of a DICOM input; (None, None) when it has no PatientID."""
    ds = _first_header(Path(input_path))
    if ds is None:
        return None, None
    pid = str(ds.get("PatientID", "") or "").strip()
    if not pid:
        return None, str(ds.get("StudyInstanceUID", "") or "") or None
    issuer = str(ds.get("IssuerOfPatientID", "") or "").strip()
    key = hashlib.sha256("\0".join((KEY_PREFIX, issuer, pid)).encode()).hexdigest()[:16]
    return key, str(ds.get("StudyInstanceUID", "") or "") or None


def tag_scene(scene_dir, key: str) -> None:
    """Record the patient key in a scene's ``source`` (atomic read-modify-write of scene.json)."""
    from ..fileio import atomic_write_json

    path = Path(scene_dir) / "scene.json"
    d = json.loads(path.read_text())
    d.setdefault("source", {})["patient_key"] = key
    atomic_write_json(path, d)


def find_patient_scene(root, key: str | None) -> Path | None:
    """The scene of the patient with ``key`` among ``root/*/scene.json`` (see the module's rule)."""
    if not key or not Path(root).is_dir():
        return None
    found = []
    for f in sorted(Path(root).glob("*/scene.json")):
        if f.parent.name.startswith("."):
            continue
        try:
            src = json.loads(f.read_text()).get("source") or {}
        except (OSError, ValueError):
            continue
        if src.get("patient_key") == key:
            found.append((src.get("study_date") or "99999999", f.parent.name, f.parent))
    return min(found)[2] if found else None


def _studies_of(scene_dir: Path) -> set[str]:
    from .timepoints import list_timepoints

    uids = set()
    d = json.loads((scene_dir / "scene.json").read_text())
    uids.add((d.get("source") or {}).get("study_instance_uid"))
    for t in list_timepoints(scene_dir):
        if t.get("path") != ".":
            tp = json.loads((scene_dir / t["path"] / "scene.json").read_text())
            uids.add((tp.get("source") or {}).get("study_instance_uid"))
    return {u for u in uids if u}


@contextmanager
def scene_lock(scene_dir: Path):
    """An exclusive lock on a scene folder (POSIX flock on ``.followup.lock``)."""
    import fcntl

    with open(Path(scene_dir) / ".followup.lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def study_or_follow_up(input_path, out_dir, *, scenes=None, model: str | None = None, config=None,
                       snapshot: bool = False, case_id: str | None = None, rigid_only: bool = False) -> dict:
    """Batch case function: a follow-up of the patient's scene when there is one, else a new case."""
    from ..batch.run_case import run_study
    from .register import RegistrationConfig
    from .run import follow_up

    out_dir = Path(out_dir)
    root = Path(scenes) if scenes else out_dir.parent
    key, study_uid = patient_key(input_path)
    scene = find_patient_scene(root, key)
    if scene is None:
        res = run_study(input_path, out_dir, model=model, config=config, snapshot=snapshot, case_id=case_id)
        if key:
            tag_scene(out_dir, key)
        res["followup"] = None
        return res
    with scene_lock(scene):
        if study_uid and study_uid in _studies_of(scene):
            return {"status": "skipped", "reason": f"study already in scene {scene.name} (as its baseline or a time point)"}
        r = follow_up(scene, input_path, model=model, config=config,
                      registration=RegistrationConfig(deformable=not rigid_only))
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"scene": str(scene), "timepoint": r.timepoint["id"], "folder": str(r.folder),
               "registration": {k: r.registration[k] for k in ("residuals", "reliable", "rotation_deg", "translation_mm")},
               "recist": (r.change or {}).get("recist", {}).get("category")}
    from ..fileio import atomic_write_json

    atomic_write_json(out_dir / "followup.json", summary)
    if not r.registration["reliable"]:
        r.warnings.append("registration residual above its limit: no change reported")
    return {"status": "done", "timings": r.timings, "warnings": [f"follow-up of {scene.name}: time point "
                                                                  f"{r.timepoint['id']}", *r.warnings],
            "followup": summary}


__all__ = ["study_or_follow_up", "patient_key", "find_patient_scene", "tag_scene"]
