"""Corrections of one structure in a saved scene: brush, islands, grow/shrink, undo.

Every edit changes the label map voxels of ONE structure, then brings the scene back in line:

1. the new label array is computed in memory (nothing on disk changes when an edit is refused);
2. the structure's mesh is rebuilt with the mesh stage's own function
   (:func:`pipeline.mesh.labelmap_to_meshes` with ``names={structure}``, budgets from the
   pipeline configuration's ``mesh`` section);
3. the label map, the mesh, the undo entry (``edits/NNNN.npz``) and scene.json are written,
   each atomically (label map first, scene.json last: scene.json never names a state that is
   not on disk);
4. the structure's QC (volume, HU, expected range, truncation) is recomputed;
5. plan records that depend on the structure are recomputed on the new surfaces (cuts,
   trajectories, structure distances, volumes/extents) or, when they cannot be (landmarks
   snapped to it, lesions), marked ``changed_by_edit``; both carry the edit's id;
6. a provenance record ``stage="edit"`` says who, when, what, and how many voxels were added
   and removed.

Operations (points and radii in patient LPS mm):

=================  =======================================================================
erase_sphere       voxels of the structure within ``radius_mm`` of ``center`` -> background
paint_sphere       voxels within the sphere that are background or body -> the structure
                   (other organs are spared unless ``overwrite``)
keep_largest       keep the largest connected piece (26-connected), erase the others
remove_island      erase the connected piece that contains ``point``
grow               background/body voxels within ``mm`` of the structure -> the structure
shrink             voxels of the structure within ``mm`` of its outside -> background
undo               restore the voxels the last not-yet-undone edit changed
=================  =======================================================================

Erased voxels become background (0). The core never imports :mod:`viewer`.
"""
from __future__ import annotations

import getpass
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SceneError

OPS = ("erase_sphere", "paint_sphere", "keep_largest", "remove_island", "grow", "shrink")
EDIT_DIR = "edits"
HISTORY = "history.json"
BODY_LIKE = frozenset({"body", "skin", "body_surface", "body_trunc", "body_extremities"})


class EditError(SceneError):
    """An edit that cannot be applied (unknown structure, point outside the scan, empty result)."""


@dataclass
class EditResult:
    """What an edit did; ``record`` is the provenance record's dict."""

    id: str
    structure: str
    op: str
    voxels_added: int
    voxels_removed: int
    volume_ml_before: float
    volume_ml_after: float
    mesh: dict = field(default_factory=dict)
    qc: dict = field(default_factory=dict)
    plan: list = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# -- voxel operations (pure: label array in, new label array out) -----------------------------
def _sphere_box(volume, center, radius_mm: float):
    """(index box slices, boolean ball in the box) of voxels whose centre is within the sphere."""
    c = np.asarray(center, float)
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]) * radius_mm + c
    idx = volume.lps_to_index(corners)
    lo = np.clip(np.floor(idx.min(0)).astype(int), 0, None)
    hi = np.minimum(np.ceil(idx.max(0)).astype(int) + 1, volume.shape)
    if np.any(hi <= lo):
        return None, None
    sub = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij"), -1)
    lps = volume.index_to_lps(sub.reshape(-1, 3)).reshape(sub.shape)
    ball = np.linalg.norm(lps - c, axis=-1) <= radius_mm
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi)), ball


def _paintable(arr: np.ndarray, body_ids: set[int]) -> np.ndarray:
    ok = arr == 0
    for b in body_ids:
        ok |= arr == b
    return ok


def _components(mask: np.ndarray):
    from scipy import ndimage

    return ndimage.label(mask, structure=np.ones((3, 3, 3), bool))


def _crop(mask: np.ndarray, pad: np.ndarray) -> tuple[slice, ...]:
    from scipy import ndimage

    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    return tuple(slice(max(s.start - int(p), 0), min(s.stop + int(p), n)) for s, p, n in zip(box, pad, mask.shape))


def apply_op(volume, arr: np.ndarray, lid: int, op: str, params: dict, body_ids: set[int]) -> np.ndarray:
    """New label array after ``op`` on label ``lid`` (``volume`` gives the grid's geometry)."""
    from scipy import ndimage

    new = arr.copy()
    mask = arr == lid
    if op in ("erase_sphere", "paint_sphere"):
        box, ball = _sphere_box(volume, params["center"], float(params["radius_mm"]))
        if box is None:
            raise EditError(f"{op}: the sphere at {params['center']} (r {params['radius_mm']} mm) lies outside the scan",
                            rule="brush inside the image grid")
        sub = new[box]
        if op == "erase_sphere":
            sub[ball & (sub == lid)] = 0
        else:
            sub[ball & (True if params.get("overwrite") else _paintable(sub, body_ids))] = lid
        return new
    if not mask.any():
        raise EditError(f"{op}: the structure has no voxels", rule="edit a present structure")
    if op == "keep_largest":
        lab, n = _components(mask)
        if n > 1:
            sizes = np.bincount(lab.ravel())[1:]
            new[(lab > 0) & (lab != 1 + int(np.argmax(sizes)))] = 0
        return new
    if op == "remove_island":
        lab, _ = _components(mask)
        k = _voxel_at(volume, params["point"], lab, what="remove_island")
        new[lab == k] = 0
        return new
    if op in ("grow", "shrink"):
        # the surface lies half a voxel beyond the outermost voxel centres: a voxel centre's
        # distance to it is its distance to the nearest centre across, less half a voxel
        mm = float(params["mm"])
        sp = volume.spacing
        reach = mm + 0.5 * float(np.prod(sp) ** (1 / 3))
        box = _crop(mask, np.ceil(reach / sp) + 2)
        m = mask[box]
        sub = new[box]
        if op == "grow":
            dist = ndimage.distance_transform_edt(~m, sampling=sp)
            sub[(dist < reach) & ~m & _paintable(sub, body_ids)] = lid
        else:
            dist = ndimage.distance_transform_edt(np.pad(m, 1), sampling=sp)[1:-1, 1:-1, 1:-1]
            sub[m & (dist < reach)] = 0
        return new
    raise EditError(f"unknown edit operation {op!r}; known: {list(OPS)}", rule="known edit operation")


def _voxel_at(volume, point, lab: np.ndarray, what: str) -> int:
    """Component id of the structure at LPS ``point`` (the nearest voxel of it within 3 voxels)."""
    idx = np.rint(volume.lps_to_index(np.asarray(point, float)[None])[0]).astype(int)
    if np.any(idx < 0) or np.any(idx >= volume.shape):
        raise EditError(f"{what}: point {list(point)} mm lies outside the scan", rule="point inside the image grid")
    r = 3
    box = tuple(slice(max(i - r, 0), min(i + r + 1, n)) for i, n in zip(idx, volume.shape))
    sub = lab[box]
    hits = np.argwhere(sub > 0)
    if not len(hits):
        raise EditError(f"{what}: no voxel of the structure at or next to {list(point)} mm",
                        rule="click on the structure")
    lo = np.array([b.start for b in box])
    pts = volume.index_to_lps(hits + lo)
    best = hits[np.argmin(np.linalg.norm(pts - np.asarray(point, float), axis=1))]
    return int(sub[tuple(best)])


# -- history ----------------------------------------------------------------------------------
def _history_path(root: Path) -> Path:
    return root / EDIT_DIR / HISTORY


def read_history(scene_dir) -> list[dict]:
    """The scene's edit history (oldest first); [] when there is none."""
    p = _history_path(Path(scene_dir))
    if not p.is_file():
        return []
    try:
        return list(json.loads(p.read_text()))
    except (OSError, ValueError) as e:
        raise EditError(f"edit history is unreadable ({e})", path=str(p), rule="edits/history.json is a JSON list") from None


def _next_id(history: list[dict]) -> str:
    return f"E{len(history) + 1}"


def _save_delta(root: Path, eid: str, flat: np.ndarray, old: np.ndarray, new: np.ndarray) -> str:
    from ..fileio import atomic_write

    rel = f"{EDIT_DIR}/{eid}.npz"
    (root / EDIT_DIR).mkdir(exist_ok=True)
    def write(p):
        with open(p, "wb") as f:
            np.savez_compressed(f, index=flat, old=old, new=new)

    atomic_write(root / rel, write)
    return rel


# -- the scene update ---------------------------------------------------------------------------
def _mesh_config(config):
    from ..config import load_pipeline_config
    from ..mesh import MeshConfig

    cfg = config if isinstance(config, dict) else load_pipeline_config(config)
    return MeshConfig.from_dict(cfg.get("mesh"))


def _who(user: str | None) -> str:
    if user:
        return user
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in a container
        return os.environ.get("USER", "unknown")


def edit_structure(scene_path, structure: str, op: str, *, center=None, radius_mm: float | None = None,
                   point=None, mm: float | None = None, overwrite: bool = False, user: str | None = None,
                   config=None) -> EditResult:
    """Apply one correction to ``structure`` of the scene at ``scene_path`` and save the scene.

    Parameters
    ----------
    op : one of :data:`OPS`
    center, radius_mm : the sphere of ``erase_sphere`` / ``paint_sphere`` (LPS mm)
    point : LPS mm inside the piece ``remove_island`` removes
    mm : distance of ``grow`` / ``shrink``
    overwrite : ``paint_sphere`` paints over other structures too (they lose those voxels)
    user : who made the edit (default: the login name)
    config : pipeline configuration (dict or YAML path; default configs/pipeline.yaml)
    """
    from .scene import load_scene

    if op not in OPS:
        raise EditError(f"unknown edit operation {op!r}; known: {list(OPS)}", rule="known edit operation")
    params = _check_params(op, center=center, radius_mm=radius_mm, point=point, mm=mm)
    if overwrite and op == "paint_sphere":
        params["overwrite"] = True
    scene = load_scene(scene_path)
    if structure not in scene.labels:
        raise EditError(f"structure '{structure}' is not in scene '{scene.case_id}'; known: {scene.labels.names}",
                        path=str(scene.root), rule="edit a structure of the scene")
    t0 = time.perf_counter()
    lm = scene.load_labelmap()
    arr = lm.array
    lid = scene.labels.by_name(structure).id
    body_ids = {l.id for l in scene.labels if l.name in BODY_LIKE and l.id != lid}
    try:
        new = apply_op(lm.volume, arr, lid, op, params, body_ids)
    except EditError as e:
        if e.path:
            raise
        raise EditError(f"{structure}: {e}", path=str(scene.root), rule=e.rule) from None
    return _commit(scene, lm, new, structure, op, params, user, config, t0)


def undo_last(scene_path, *, user: str | None = None, config=None) -> EditResult:
    """Undo the last edit not yet undone (its voxels get their old labels back)."""
    from .scene import load_scene

    scene = load_scene(scene_path)
    history = read_history(scene.root)
    undone = {h.get("undoes") for h in history if h.get("op") == "undo"}
    todo = [h for h in history if h.get("op") != "undo" and h["id"] not in undone]
    if not todo:
        raise EditError("nothing to undo: the scene has no edit that is not undone yet", path=str(scene.root),
                        rule="undo follows an edit")
    last = todo[-1]
    t0 = time.perf_counter()
    lm = scene.load_labelmap()
    with np.load(Path(scene.root) / last["delta"]) as d:
        flat, old, expect = d["index"], d["old"], d["new"]
    new = lm.array.copy()
    if not np.array_equal(new.ravel()[flat], expect):
        raise EditError(f"cannot undo {last['id']}: its voxels were changed since (by a later edit or another tool)",
                        path=str(scene.root), rule="undo restores only unchanged voxels")
    new.ravel()[flat] = old
    return _commit(scene, lm, new, last["structure"], "undo", {"undoes": last["id"]}, user, config, t0)


def _check_params(op: str, *, center, radius_mm, point, mm) -> dict:
    def xyz(v, what):
        a = np.asarray(v, float).reshape(-1) if v is not None else np.zeros(0)
        if a.shape != (3,) or not np.all(np.isfinite(a)):
            raise EditError(f"{op}: {what} must be 3 finite LPS coordinates (x y z mm); found {v!r}",
                            rule="points are LPS mm")
        return [round(float(x), 4) for x in a]

    def positive(v, what, upper):
        if v is None or not np.isfinite(v) or not 0 < float(v) <= upper:
            raise EditError(f"{op}: {what} must be in (0, {upper}] mm; found {v!r}", rule="sizes in mm")
        return float(v)

    if op in ("erase_sphere", "paint_sphere"):
        return {"center": xyz(center, "the centre"), "radius_mm": positive(radius_mm, "the radius", 200)}
    if op == "remove_island":
        return {"point": xyz(point, "the point")}
    if op in ("grow", "shrink"):
        return {"mm": positive(mm, "the distance", 50)}
    return {}


def _commit(scene, lm, new: np.ndarray, structure: str, op: str, params: dict, user, config, t0) -> EditResult:
    from ..config import software_versions
    from ..fileio import atomic_write
    from ..geometry import write_image_file
    from ..mesh import labelmap_to_meshes
    from ..types import LabelMap, StageRecord
    from .scene import save_scene

    arr = lm.array
    lid = scene.labels.by_name(structure).id
    changed = np.flatnonzero(arr.ravel() != new.ravel())
    if not len(changed):
        raise EditError(f"{op} on '{structure}' changes no voxel (nothing of the structure there)",
                        path=str(scene.root), rule="an edit changes the label map")
    old_v, new_v = arr.ravel()[changed], new.ravel()[changed]
    added, removed = int(np.count_nonzero(new_v == lid)), int(np.count_nonzero(old_v == lid))
    touched = {structure} | {scene.labels.by_id(int(v)).name for v in np.unique(np.concatenate([old_v, new_v])) if v}
    n_after = int(np.count_nonzero(new == lid))
    if n_after == 0:
        raise EditError(f"{op} would leave '{structure}' empty; a structure is removed by re-running the "
                        f"segmentation, not by erasing it", path=str(scene.root), rule="a structure keeps voxels")
    vox_ml = lm.volume.voxel_volume_ml
    new_lm = LabelMap(lm.volume.with_array(new), scene.labels)
    touched = {structure} | (touched & set(scene.structure_names))  # unmeshed neighbours stay unmeshed
    meshes = {m.name: m for m in labelmap_to_meshes(new_lm, _mesh_config(config), names=touched)}
    root = Path(scene.root)
    history = read_history(root)
    eid = _next_id(history)
    # write: label map, meshes, undo delta, history, scene.json (last)
    write_image_file(new_lm.volume, root / scene.labelmap, new.astype(arr.dtype, copy=False))
    for nm, am in meshes.items():
        rel = _mesh_rel(scene, nm)
        am.qa["mesh_path"] = rel
        atomic_write(root / rel, lambda p, mesh=am.mesh: mesh.export(str(p), file_type="ply", encoding="binary"))
    delta = _save_delta(root, eid, changed, old_v, new_v) if op != "undo" else None
    qc = _update_qc(scene, new_lm, meshes, touched)
    _replace_meshes(scene, meshes, touched)
    plan_notes = _revalidate_plan(scene, touched, eid)
    seconds = round(time.perf_counter() - t0, 3)
    who, when = _who(user), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    entry = {"id": eid, "op": op, "structure": structure, "params": params, "user": who, "at": when,
             "voxels_added": added, "voxels_removed": removed, "delta": delta, **params}
    result = EditResult(eid, structure, op, added, removed, round(int(np.count_nonzero(arr == lid)) * vox_ml, 4),
                        round(n_after * vox_ml, 4),
                        {k: meshes[structure].qa.get(k) for k in ("n_faces", "watertight", "volume_ml")}
                        if structure in meshes else {}, qc.get(structure, {}), plan_notes, seconds)
    scene.provenance.append(StageRecord(
        "edit", software_versions("numpy", "scipy", "vtk"), inputs={"structure": structure, "op": op, **params},
        outputs={"id": eid, "voxels_added": added, "voxels_removed": removed,
                 "volume_ml_before": result.volume_ml_before, "volume_ml_after": result.volume_ml_after,
                 "structures_changed": sorted(touched), "mesh": result.mesh, "plan": plan_notes},
        duration_s=seconds, notes=(f"user: {who}",), started_at=when))
    history.append(entry)
    (root / EDIT_DIR).mkdir(exist_ok=True)
    from ..fileio import atomic_write_json

    atomic_write_json(_history_path(root), history)
    save_scene(scene, write_meshes=False)
    return result


def _mesh_rel(scene, name: str) -> str:
    if name in scene.structure_names:
        return scene.mesh(name).qa.get("mesh_path", f"meshes/{name}.ply")
    return f"meshes/{name}.ply"


def _update_qc(scene, new_lm, meshes: dict, touched: set[str]) -> dict:
    """Recompute QC of the touched structures (volume, HU, range, truncation); keeps the other
    keys the segmentation wrote (post-processing, plausibility) and marks ``edited``."""
    from ..segment.qc import structure_qc

    try:
        image = scene.load_image()
        if image.shape != new_lm.volume.shape:
            image = None
    except Exception:  # noqa: BLE001 - QC without HU statistics rather than no edit
        image = None
    try:
        unc = scene.load_uncertainty()
        if unc is not None and unc.shape != new_lm.volume.shape:
            unc = None
    except Exception:  # noqa: BLE001 - QC without uncertainty figures rather than no edit
        unc = None
    fresh = structure_qc(new_lm, image, unc)
    plaus = _plausibility(new_lm, image, fresh)
    qc_all = scene.extra.setdefault("qc", {})
    out = {}
    for name in touched:
        e = {**(qc_all.get(name) or {}), **fresh.get(name, {}), "edited": True}
        if name in plaus:  # side, position and size checked again on the corrected voxels
            p = plaus[name]
            e.update(plausible=p["plausible"], flags=p["flags"], centroid_lps=p["centroid_lps"])
            e.pop("status", None)
            if p["flags"]:
                e["status"] = "fail"
                w = "implausible: " + "; ".join(p["flags"])
                e["warning"] = w if not e.get("warning") else f"{e['warning']}; {w}"
        qc_all[name] = e
        out[name] = e
        if name in meshes:
            meshes[name].qa["qc"] = {**(_old_qa(scene, name).get("qc") or {}), **e}
    return out


def _plausibility(labelmap, image, qc: dict) -> dict:
    from .plausibility import plausibility

    try:
        return plausibility(labelmap, image, qc)
    except Exception:  # noqa: BLE001 - a rules file problem must not lose the edit; QC keeps its numbers
        return {}


def _old_qa(scene, name: str) -> dict:
    return scene.mesh(name).qa if name in scene.structure_names else {}


def _replace_meshes(scene, meshes: dict, touched: set[str]) -> None:
    from ..types import AnatomyMesh

    present = set(scene.structure_names)
    out = []
    for m in scene.meshes:
        if m.name in meshes:
            out.append(meshes[m.name])
        elif m.name in touched:  # too small to mesh now: keep the entry without a surface change
            out.append(AnatomyMesh(m.label, m.mesh, m.qa))
        else:
            out.append(m)
    out += [m for n, m in meshes.items() if n not in present]
    scene.meshes = out


def _depends(rec: dict, touched: set[str]) -> bool:
    names = set(rec.get("structures") or []) | {rec.get("structure"), rec.get("within"), rec.get("snapped_to")}
    return bool(names & touched) or rec.get("kind") == "trajectory"  # clearances to every structure


def _revalidate_plan(scene, touched: set[str], eid: str) -> list[str]:
    """Recompute the plan records that depend on the edited structures; mark the others."""
    from ..errors import SurgitwinError
    from ..planning.plan import Planner

    planner = Planner(scene)
    notes: list[str] = []
    at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for section, recs in scene.plan.items():
        if not isinstance(recs, list):
            continue
        for n, rec in enumerate(recs):
            if not isinstance(rec, dict) or not _depends(rec, touched):
                continue
            old = rec.get("value")
            try:
                new = _recompute(planner, section, rec)
            except (SurgitwinError, KeyError, TypeError, ValueError) as e:
                new = None
                why = str(e).splitlines()[0] if str(e) else type(e).__name__
                notes.append(f"{rec.get('id')}: not recomputed ({why})")
            if new is None:
                rec = {**rec, "changed_by_edit": {"edit": eid, "at": at, "recomputed": False}}
                if not any(n_.startswith(f"{rec.get('id')}:") for n_ in notes):
                    notes.append(f"{rec.get('id')}: marked changed (not recomputable: {rec.get('kind')})")
            else:
                rec = {**new, "changed_by_edit": {"edit": eid, "at": at, "recomputed": True, "previous_value": old}}
                val = new.get("value")
                notes.append(f"{rec.get('id')} ({rec.get('kind')}) recomputed: {old} -> {val} {rec.get('unit', '')}".rstrip())
            recs[n] = rec
    return notes


def _recompute(planner, section: str, rec: dict) -> dict | None:
    """A fresh record for ``rec`` on the current surfaces (same id and creation time), or None."""
    from ..planning.measure import structure_distance_record, structure_records
    from ..planning.revalidate import _redo

    keep = {"id": rec["id"], "created": rec.get("created")}
    kind = rec.get("kind")
    if section in ("cuts", "trajectories") and kind in ("cut", "trajectory"):
        new = _redo(planner, section, rec)
        new.pop("revalidation", None)
        return {**rec, **new, **keep}
    if kind == "structure_distance":
        a, b = rec["structures"][:2]
        new = structure_distance_record(planner.index(a), planner.index(b))
        new["provenance"] = planner.provenance("pipeline.planning.measure.structure_distance", [a, b])
        return {**rec, **new, **keep}
    if kind in ("volume", "extents"):
        name = rec["structures"][0]
        recs = {r["kind"]: r for r in structure_records(name, planner.mesh(name), planner.labelmap)}
        new = recs[kind]
        new["provenance"] = planner.provenance("pipeline.planning.measure.structure_records", [name], labelmap=True)
        return {**rec, **new, **keep}
    return None
