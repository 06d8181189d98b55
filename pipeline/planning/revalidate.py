"""Carry a plan over to a re-segmented scene: every number recomputed, or marked as not.

`surgitwin run --out DIR` on a folder whose scene holds a plan must never drop it silently:
it refuses, or (``--keep-plan``) carries the plan over with :func:`revalidate_plan`. Cuts and
trajectories are recomputed on the new structures (same planes, same entry/target), lesions
are segmented again from their seeds; landmarks and measurements are kept as they were and
marked ``carried_over`` (the report marks them stale when their input files changed). A record
that cannot be recomputed (its structure is gone) is kept with ``revalidation.ok = false`` and a
warning.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import SurgitwinError

RECOMPUTED = ("lesions", "cuts", "trajectories")


def plan_size(plan: dict | None) -> int:
    return sum(len(v) for v in (plan or {}).values() if isinstance(v, list))


def read_plan(scene_dir) -> dict | None:
    """The plan of an existing scene folder, or None (no folder, no scene.json, unreadable)."""
    p = Path(scene_dir) / "scene.json"
    try:
        return json.loads(p.read_text()).get("plan") or None
    except (OSError, ValueError):
        return None


def _failed(rec: dict, reason: str) -> dict:
    rec = dict(rec)
    rec["revalidation"] = {"ok": False, "reason": reason, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    rec["warnings"] = list(rec.get("warnings") or []) + [f"not recomputed on the new segmentation: {reason}"]
    return rec


def _redo(planner, section: str, rec: dict) -> dict:
    from .cut import cut_record
    from .trajectory import trajectory_record

    if section == "cuts":
        new = cut_record(planner, rec["structure"], rec["planes"], margin_to=(rec.get("margin") or {}).get("structure"),
                         cut_id=rec["id"], liver_state=(rec.get("remnant_threshold") or {}).get("liver_state"))
    elif section == "trajectories":
        new = trajectory_record(planner, rec["entry"], rec["target"], rec["radius_mm"],
                                safety_margin_mm=rec.get("safety_margin_mm"))
    else:
        from .lesion import segment_lesion

        new = segment_lesion(planner, rec["seed_lps"], name=rec["name"], within=rec.get("within"),
                             options=rec.get("options"))
    return {"id": rec["id"], "created": rec.get("created"), **new,
            "revalidation": {"ok": True, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                             "previous_value": rec.get("value")}}


def revalidate_plan(scene, old_plan: dict) -> tuple[dict, list[str]]:
    """Recompute ``old_plan`` on ``scene`` (saved, with its folder); returns (plan, warnings).

    The scene's plan is replaced by the result (lesions first: cuts and margins see them).
    """
    from .plan import Planner

    scene.plan = {k: [] for k in ("landmarks", "measurements", "lesions", "cuts", "trajectories")}
    notes: list[str] = []
    for section in ("landmarks", "measurements"):
        for rec in old_plan.get(section, []):
            scene.plan[section].append({**rec, "carried_over": True})
    planner = Planner(scene)
    for section in RECOMPUTED:
        for rec in old_plan.get(section, []):
            try:
                new = _redo(planner, section, rec)
            except (SurgitwinError, KeyError, TypeError, ValueError) as e:
                new = _failed(rec, str(e).splitlines()[0] if str(e) else type(e).__name__)
                notes.append(f"plan {rec.get('id')}: {new['revalidation']['reason']}")
            scene.plan[section].append(new)
            if section == "lesions" and new.get("revalidation", {}).get("ok"):
                planner = Planner(scene)  # the label map and meshes changed
            old, val = rec.get("value"), new.get("value")
            if new.get("revalidation", {}).get("ok") and isinstance(old, (int, float)) and isinstance(val, (int, float)):
                notes.append(f"plan {rec['id']} ({rec['kind']}) recomputed: {old:.2f} -> {val:.2f} {rec.get('unit', '')}".rstrip())
    planner.save()
    return scene.plan, notes
