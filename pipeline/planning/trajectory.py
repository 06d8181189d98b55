"""Straight tool trajectories (needle, probe, screw, drill): entry -> target with a radius.

The tool is modelled as a capsule (its axis segment swept by the radius: a cylinder with
rounded ends), which contains the flat-ended cylinder, so clearances are never optimistic.
For every structure: ``distance_mm`` = exact axis-to-surface distance minus the radius
(negative = the tool cuts into it), sorted ascending. Which structures warn comes from the
structure classes of ``configs/planning.yaml`` (:mod:`.rules`): a critical class (vessels,
bone, lung and airway, nerves, hollow organs) warns when crossed or closer than its margin;
other organs warn when crossed; the body envelope never. The target structure (the one the
tool is meant to reach) and its host organ (crossed, touching the target) never warn.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from ..errors import PlanningError
from .records import check_point, lps_list



def trajectory_geometry(entry, target) -> dict:
    """Length (mm), unit direction (LPS) and angulation of the path entry -> target.

    ``craniocaudal_deg``: angle out of the axial plane (+ towards Superior);
    ``axial_deg``: in-plane angle from the anterior direction towards patient Left.
    """
    e, t = check_point(entry, "entry"), check_point(target, "target")
    v = t - e
    length = float(np.linalg.norm(v))
    if length < 1e-6:
        raise PlanningError("trajectory: entry and target must differ; found the same point")
    d = v / length
    return {"length_mm": round(length, 4), "direction": lps_list(d),
            "craniocaudal_deg": round(float(np.degrees(np.arcsin(np.clip(d[2], -1, 1)))), 3),
            "axial_deg": round(float(np.degrees(np.arctan2(d[0], -d[1]))), 3) if np.hypot(d[0], d[1]) > 1e-9 else None}


def clearances(indexes, entry, target, radius_mm: float) -> list[dict]:
    """One entry per structure, sorted by ``distance_mm`` (tool surface to structure surface).

    Parameters
    ----------
    indexes : iterable of :class:`~.distance.MeshIndex` (named)
    entry, target : (3,) LPS mm; radius_mm : tool radius (>= 0)
    """
    from .distance import segment_distance

    e, t = check_point(entry, "entry"), check_point(target, "target")
    length = float(np.linalg.norm(t - e))
    rows = []
    for idx in indexes:
        q = segment_distance(idx, e, t)
        # a path lying wholly inside a structure has no clearance from it: distance 0 to it
        axis = 0.0 if (q.contains_start or q.contains_end) else q.distance
        rows.append({
            "structure": idx.name,
            "distance_mm": round(axis - radius_mm, 4),
            "axis_distance_mm": round(axis, 4),
            "crossed": bool(axis < radius_mm or len(q.crossings) > 0),
            "inside_length_mm": round(q.inside_length, 3),
            "at_depth_mm": 0.0 if q.contains_start else round(q.t * length, 3),  # along the path from the entry
            "point_on_path": lps_list(q.point_on_segment),
            "point_on_structure": lps_list(q.point_on_mesh),
            "contains_entry": q.contains_start, "contains_target": q.contains_end,
        })
    rows.sort(key=lambda r: (r["distance_mm"], r["structure"]))
    return rows


HOST_TOLERANCE_MM = 2.0  # a crossed organ within this of the target structure holds it (its host)


def _hosts(planner, rows: list[dict], target_structure: str | None) -> set[str]:
    """Crossed, non-critical structures that hold the target structure: the organ around a
    lesion (its box holds the lesion's box and the two surfaces touch)."""
    if target_structure is None:
        return set()
    t = planner.index(target_structure)
    out = set()
    for r in rows:
        if not r["crossed"] or r["structure"] == target_structure or r["critical"] or not r["warn_on_cross"]:
            continue
        h = planner.index(r["structure"])
        if np.any(t.bounds[0] < h.bounds[0] - HOST_TOLERANCE_MM) or np.any(t.bounds[1] > h.bounds[1] + HOST_TOLERANCE_MM):
            continue
        gap = float(h.vtree.query(t.vertices, k=1)[0].min())  # vertex to vertex: an upper bound
        if gap <= HOST_TOLERANCE_MM + max(h.max_edge, t.max_edge):
            out.add(r["structure"])
    return out


def _warning(r: dict, radius_mm: float) -> str | None:
    """The warning of one clearance row under its class rule (None when it is clear)."""
    where = f"at {r['at_depth_mm']:.0f} mm from the entry"
    what = f"{r['structure']} ({r['class']})"
    if r["crossed"] and (r["critical"] or r["warn_on_cross"]):
        lead = "CRITICAL: the tool crosses" if r["critical"] else "the tool crosses"
        inside = f", {r['inside_length_mm']:.1f} mm inside it" if r["inside_length_mm"] > 0 else ""
        return (f"{lead} {what}{inside} (axis {r['axis_distance_mm']:.1f} mm from it, tool radius "
                f"{radius_mm:.1f} mm) {where}")
    if r["critical"] and not r["crossed"] and r["distance_mm"] < r["margin_mm"]:
        return (f"CRITICAL: {what} is {r['distance_mm']:.1f} mm from the tool, inside its "
                f"{r['margin_mm']:.1f} mm safety margin, {where}")
    return None


def trajectory_record(planner, entry, target, radius_mm: float, *, safety_margin_mm: float | None = None,
                      structures: Iterable[str] | None = None, rules=None) -> dict:
    """Plan record of a trajectory with its clearance table, crossings and warnings.

    Every row carries its structure class, whether it is critical and its safety margin (from
    ``configs/planning.yaml``, see :mod:`.rules`; ``safety_margin_mm`` overrides every margin).
    A structure flagged implausible by QC is still listed, with its flag, and warns.
    """
    from .rules import load_rules

    rules = rules or load_rules()
    radius_mm = float(radius_mm)
    if not np.isfinite(radius_mm) or radius_mm < 0:
        raise PlanningError(f"trajectory: tool radius must be a finite number >= 0 mm; found {radius_mm}")
    if safety_margin_mm is not None and (not np.isfinite(float(safety_margin_mm)) or float(safety_margin_mm) < 0):
        raise PlanningError(f"trajectory: safety margin must be a finite number >= 0 mm; found {safety_margin_mm}")
    geo = trajectory_geometry(entry, target)
    names = list(structures) if structures is not None else planner.scene.structure_names
    rows = clearances([planner.index(n) for n in names], entry, target, radius_mm)
    holding = [r["structure"] for r in rows if r["contains_target"]]
    target_structure = None
    if holding:  # the innermost (smallest) structure holding the target is the one aimed at
        target_structure = min(holding, key=lambda n: abs(float(planner.mesh(n).volume)))
    for r in rows:
        rule = rules.structure_class(r["structure"], planner.critical(r["structure"]))
        if safety_margin_mm is not None:
            rule["margin_mm"] = float(safety_margin_mm)
        r.update({"class": rule["class"], "critical": rule["critical"], "margin_mm": rule["margin_mm"],
                  "warn_on_cross": rule["warn_on_cross"]})
    hosts = _hosts(planner, rows, target_structure)
    warnings = []
    for r in rows:
        r["target"] = r["structure"] == target_structure
        r["host"] = r["structure"] in hosts
        r["near"] = bool(not r["crossed"] and r["critical"] and r["distance_mm"] < r["margin_mm"])
        flags = planner.qc_flags(r["structure"])
        r["qc_flags"] = flags
        if flags and (r["crossed"] or r["near"] or r["target"]):
            warnings.append(f"{r['structure']} is flagged by QC ({'; '.join(flags)}): its "
                            f"{'role as the target' if r['target'] else 'clearance'} is not reliable")
        if r["target"] or r["host"]:
            continue
        w = _warning(r, radius_mm)
        if w:
            warnings.append(w)
    crossed = [r["structure"] for r in sorted((r for r in rows if r["crossed"]), key=lambda r: r["at_depth_mm"])]
    near = [r["structure"] for r in rows if r["near"]]
    return {
        "kind": "trajectory", "entry": lps_list(check_point(entry)), "target": lps_list(check_point(target)),
        "points": lps_list([check_point(entry), check_point(target)]), "radius_mm": radius_mm,
        **geo, "value": geo["length_mm"], "unit": "mm",
        "safety_margin_mm": None if safety_margin_mm is None else float(safety_margin_mm),
        "structures": names, "target_structure": target_structure, "hosts": sorted(hosts),
        "clearance": rows, "crossed": crossed, "near": near, "warnings": warnings,
        "provenance": planner.provenance("pipeline.planning.trajectory.trajectory_record", names),
    }
