"""The twin over time: follow-up studies become time points of a scene, with what changed.

Public API::

    follow_up(scene, new_input, out=None, ...) -> FollowUpResult     (:mod:`.run`)
    change_between(scene, from_id=None, to_id=None) -> dict           (below)
    register(fixed, fixed_labels, moving, moving_labels, cfg)         (:mod:`.register`)
    change_report(earlier, later, meshes..., later_to_earlier)        (:mod:`.change`)
    list_timepoints(scene) -> list[dict]                              (:mod:`.timepoints`)

Nothing here imports torch; SimpleITK, scipy and trimesh load when a function runs.
"""
from __future__ import annotations

from ..errors import SceneError


def change_between(scene_path, from_id: str | None = None, to_id: str | None = None, *, force: bool = False) -> dict:
    """Change report between two time points of a scene (default: the one before the current -> current).

    Refuses (SceneError) when the later time point's registration residual is above its limit,
    unless ``force``.
    """
    import json

    from ..scene import load_scene
    from ..scene.scene import resolve_scene_path
    from .change import change_report, is_lesion
    from .timepoints import find_timepoint, list_timepoints, previous_timepoint, rigid_between

    root = resolve_scene_path(scene_path)
    tps = list_timepoints(root)
    if len(tps) < 2:
        raise SceneError("the scene has one time point; add a follow-up first (surgitwin follow-up SCENE NEW_INPUT)",
                         path=str(root), rule="a change needs two time points")
    b = find_timepoint(tps, to_id, root)
    a = find_timepoint(tps, from_id, root) if from_id else previous_timepoint(tps, b)
    if a is None:
        raise SceneError(f"time point '{b['id']}' is the first; pass --from and --to", path=str(root),
                         rule="a change needs two time points")
    if a["id"] == b["id"]:
        raise SceneError("--from and --to must be two different time points", path=str(root), rule="two time points")
    ids = [t["id"] for t in tps]
    if ids.index(a["id"]) > ids.index(b["id"]):
        a, b = b, a
    for t in (a, b):
        if t.get("path") == ".":
            continue
        info = json.loads((root / t["registration"]).read_text())
        if not info.get("reliable", True) and not force:
            raise SceneError(f"time point '{t['id']}': registration residual {info.get('residuals')} is above the "
                             f"{info.get('residual_limit_mm')} mm limit; changes are not reported (--force to override)",
                             path=str(root / t["registration"]), rule="registration residual within its limit")
    sa, sb = load_scene(root / a["path"]), load_scene(root / b["path"])
    la, lb = sa.load_labelmap(), sb.load_labelmap()
    shown = {m.name for m in sb.meshes} | {l.name for l in lb.labels if is_lesion(l)}
    rep, _ = change_report(la, lb, {m.name: m.mesh for m in sa.meshes}, {m.name: m.mesh for m in sb.meshes},
                           rigid_between(root, a, b), names=shown)
    rep.update({"from": a["id"], "to": b["id"]})
    return rep


def format_change(rep: dict) -> str:
    """The change report as a fixed-width table (what the CLI prints)."""
    lines = [f"what changed: {rep.get('from')} -> {rep.get('to')} ({rep.get('frame')})",
             f"{'structure':<22}{'ml before':>10}{'ml after':>10}{'change %':>10}{'shift mm':>9}  {'direction':<15}"
             f"{'surf mean':>10}{'surf p95':>9}  notes"]
    for r in rep["structures"]:
        pct = "-" if r["volume_change_percent"] is None else f"{r['volume_change_percent']:+.1f}"
        s = r.get("surface") or {}
        notes = []
        if r["components"]["new"]:
            notes.append(f"{len(r['components']['new'])} new component(s)")
        if r["components"]["vanished"]:
            notes.append(f"{len(r['components']['vanished'])} vanished")
        if r.get("cut_by_field_of_view"):
            notes.append("cut by the field of view")
        if s.get("growth_side") not in (None, "none") and s.get("p95_mm", 0) >= 2.0:
            notes.append(f"grows most on the {s['growth_side']} side ({s['max_growth_mm']:+.1f} mm)")
        lines.append(f"{r['name']:<22}{r['volume_ml'][0]:>10.1f}{r['volume_ml'][1]:>10.1f}{pct:>10}"
                     f"{r.get('centroid_shift_mm', float('nan')):>9.1f}  {r.get('centroid_shift_direction', '-'):<15}"
                     f"{s.get('mean_mm', float('nan')):>+10.1f}{s.get('p95_mm', float('nan')):>+9.1f}  {'; '.join(notes)}")
    rc = rep.get("recist")
    if rc:
        pct = "n/a" if rc["change_percent"] is None else f"{rc['change_percent']:+.1f} %"
        lines.append(f"RECIST 1.1 ({', '.join(rc['lesions'])}): sum of longest axial diameters {rc['sum_before_mm']:.1f} -> "
                     f"{rc['sum_after_mm']:.1f} mm ({pct}), new lesions {rc['new_lesions']}: "
                     f"{rc['category'].replace('_', ' ').upper()}")
        lines.append("  thresholds: CR disappearance; PR sum -30 % or more; PD sum +20 % or more and +5 mm or more, "
                     "or a new lesion; else SD (reference: the earlier time point)")
    lines.append("surface distances: mm, + = the later surface lies outside the earlier one (growth)")
    return "\n".join(lines)


__all__ = ["change_between", "format_change"]
