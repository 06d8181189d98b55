"""Time points of a scene: the list in scene.json and the folders under ``timepoints/``.

A scene folder is its first time point (the baseline, ``path: "."``). Every follow-up is a
complete scene bundle of its own in ``timepoints/<id>/`` (scene.json, image, labels, meshes:
the viewer, ``plan`` and ``report`` open it as they open any scene), in its own patient space,
plus::

    transforms/registration.json   rigid 4x4 LPS both ways, metrics, residuals, timings
    transforms/baseline_to_timepoint.tfm   rigid (ITK text; fixed = baseline, as ITK resamples)
    transforms/baseline_to_timepoint_bspline.tfm   the B-spline applied before the rigid (if any)
    transforms/timepoint_to_baseline_field.nii.gz  inverse of the B-spline (displacement field)
    image_in_baseline.nii.gz       the follow-up resampled onto the baseline grid (overlays)
    change_report.json             what changed since the previous current time point
    changes/<structure>.ply        the follow-up surface coloured by signed distance

scene.json of the baseline gets two keys (absent in older files, which load as one time point)::

    timepoints: [{id, path, study_date, series_instance_uid, added, current,
                  registration, change_report}, ...]   in study-date order
    current_timepoint: id of the time point marked current (the latest study)
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..errors import SceneError
from ..fileio import atomic_write_json

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def baseline_entry(d: dict) -> dict:
    src = d.get("source") or {}
    return {"id": src.get("study_date") or "baseline", "path": ".", "study_date": src.get("study_date"),
            "series_instance_uid": src.get("series_instance_uid"), "role": "baseline"}


def list_timepoints(scene_dir) -> list[dict]:
    """The time points of a scene in order (a scene written before time points existed has one)."""
    from ..scene.scene import resolve_scene_path

    root = resolve_scene_path(scene_dir)
    d = json.loads((root / "scene.json").read_text())
    tps = d.get("timepoints")
    if not tps:
        tps = [{**baseline_entry(d), "current": True}]
    return [dict(t) for t in tps]


def find_timepoint(tps: list[dict], tp_id: str | None, scene_dir) -> dict:
    if tp_id is None:
        cur = [t for t in tps if t.get("current")]
        return cur[0] if cur else tps[-1]
    for t in tps:
        if t["id"] == tp_id or (tp_id in ("baseline", "0") and t.get("path") == "."):
            return t
    raise SceneError(f"time point '{tp_id}' is not in the scene; known: {[t['id'] for t in tps]}", path=str(scene_dir),
                     rule="time point must exist")


def previous_timepoint(tps: list[dict], tp: dict) -> dict | None:
    i = [t["id"] for t in tps].index(tp["id"])
    return tps[i - 1] if i > 0 else None


def check_id(tp_id: str, scene_dir) -> str:
    if not _ID.match(tp_id):
        raise SceneError(f"time point id must be 1-64 letters, digits, '.', '-' or '_'; found {tp_id!r}",
                         path=str(scene_dir), rule="time point id")
    return tp_id


def choose_id(study_date: str | None, series_uid: str | None, existing: list[str], fallback: str) -> str:
    """The study date (YYYYMMDD), else the series UID, else ``fallback``; made unique with a suffix."""
    base = study_date or series_uid or fallback
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base)[:56] or "timepoint"
    out, n = base, 2
    while out in existing:
        out, n = f"{base}-{n}", n + 1
    return out


def add_timepoint(scene_dir: Path, entry: dict, *, replace: bool = False) -> list[dict]:
    """Add (or replace) a time point entry in the baseline's scene.json, atomically; returns the list.

    Entries are kept in study-date order (undated last, in order of addition); the latest is current.
    """
    path = Path(scene_dir) / "scene.json"
    d = json.loads(path.read_text())
    tps = d.get("timepoints") or [baseline_entry(d)]
    if any(t["id"] == entry["id"] for t in tps):
        if not replace:
            raise SceneError(f"time point '{entry['id']}' already exists (pass --replace to redo it)",
                             path=str(scene_dir), rule="time point ids are unique")
        tps = [t for t in tps if t["id"] != entry["id"]]
    tps.append(entry)
    base, rest = tps[0], tps[1:]
    rest.sort(key=lambda t: (t.get("study_date") or "99999999", t.get("added", "")))
    tps = [base, *rest]
    for t in tps:
        t["current"] = False
    tps[-1]["current"] = True
    d["timepoints"] = tps
    d["current_timepoint"] = tps[-1]["id"]
    atomic_write_json(path, d)
    return tps


def load_registration(scene_dir, tp: dict):
    """The :class:`~.register.Registration` baseline -> ``tp`` (identity for the baseline)."""
    import SimpleITK as sitk

    from .register import Registration

    if tp.get("path") == ".":
        return Registration(np.eye(4))
    folder = Path(scene_dir) / tp["path"] / "transforms"
    info = json.loads((folder / "registration.json").read_text())
    bs = inv = None
    if (folder / "baseline_to_timepoint_bspline.tfm").exists():
        t = sitk.ReadTransform(str(folder / "baseline_to_timepoint_bspline.tfm"))
        bs = sitk.BSplineTransform(t) if not isinstance(t, sitk.BSplineTransform) else t
    if (folder / "timepoint_to_baseline_field.nii.gz").exists():
        f = sitk.ReadImage(str(folder / "timepoint_to_baseline_field.nii.gz"), sitk.sitkVectorFloat64)
        inv = sitk.DisplacementFieldTransform(f)
    return Registration(np.array(info["baseline_to_timepoint"]), bs, inv, info.get("metric", {}))


def rigid_between(scene_dir, a: dict, b: dict) -> np.ndarray:
    """4x4 LPS mapping time point ``b``'s space into time point ``a``'s (rigid, via the baseline)."""
    ra, rb = load_registration(scene_dir, a), load_registration(scene_dir, b)
    return ra.rigid @ np.linalg.inv(rb.rigid)


def map_points_between(scene_dir, a: dict, b: dict, pts, deformable: bool = True) -> np.ndarray:
    """Points of time point ``a`` -> time point ``b`` (through the baseline, deformable where stored)."""
    ra, rb = load_registration(scene_dir, a), load_registration(scene_dir, b)
    base = ra.map_inverse(pts, deformable=deformable) if a.get("path") != "." else np.atleast_2d(np.asarray(pts, float))
    return rb.map_forward(base, deformable=deformable)
