"""Straight tool trajectories (needle, probe, screw, drill): entry -> target with a radius.

The tool is modelled as a capsule (its axis segment swept by the radius: a cylinder with
rounded ends), which contains the flat-ended cylinder, so clearances are never optimistic.
For every structure: ``distance_mm`` = exact axis-to-surface distance minus the radius
(negative = the tool cuts into it), sorted ascending. A structure marked ``critical`` in the
label table and closer than the safety margin (or crossed) raises a warning, except the
structure holding the target (the one the tool is meant to reach).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from ..errors import PlanningError
from .plan import check_point, lps_list

DEFAULT_SAFETY_MARGIN_MM = 5.0


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


def trajectory_record(planner, entry, target, radius_mm: float, *, safety_margin_mm: float | None = None,
                      structures: Iterable[str] | None = None) -> dict:
    """Plan record of a trajectory with its clearance table, crossings and warnings."""
    radius_mm = float(radius_mm)
    if not np.isfinite(radius_mm) or radius_mm < 0:
        raise PlanningError(f"trajectory: tool radius must be a finite number >= 0 mm; found {radius_mm}")
    margin = DEFAULT_SAFETY_MARGIN_MM if safety_margin_mm is None else float(safety_margin_mm)
    geo = trajectory_geometry(entry, target)
    names = list(structures) if structures is not None else planner.scene.structure_names
    rows = clearances([planner.index(n) for n in names], entry, target, radius_mm)
    holding = [r["structure"] for r in rows if r["contains_target"]]
    target_structure = None
    if holding:  # the innermost (smallest) structure holding the target is the one aimed at
        target_structure = min(holding, key=lambda n: abs(float(planner.mesh(n).volume)))
    warnings = []
    for r in rows:
        r["critical"] = planner.critical(r["structure"])
        r["target"] = r["structure"] == target_structure
        if not r["critical"] or r["target"]:
            continue
        if r["crossed"]:
            warnings.append(f"CRITICAL: the tool crosses {r['structure']} (axis {r['axis_distance_mm']:.1f} mm from it, "
                            f"tool radius {radius_mm:.1f} mm) at {r['at_depth_mm']:.0f} mm from the entry")
        elif r["distance_mm"] < margin:
            warnings.append(f"CRITICAL: {r['structure']} is {r['distance_mm']:.1f} mm from the tool, inside the "
                            f"{margin:.1f} mm safety margin, at {r['at_depth_mm']:.0f} mm from the entry")
    crossed = [r["structure"] for r in sorted((r for r in rows if r["crossed"]), key=lambda r: r["at_depth_mm"])]
    return {
        "kind": "trajectory", "entry": lps_list(check_point(entry)), "target": lps_list(check_point(target)),
        "points": lps_list([check_point(entry), check_point(target)]), "radius_mm": radius_mm,
        **geo, "value": geo["length_mm"], "unit": "mm", "safety_margin_mm": margin,
        "structures": names, "target_structure": target_structure, "clearance": rows, "crossed": crossed,
        "warnings": warnings,
        "provenance": planner.provenance("pipeline.planning.trajectory.trajectory_record", names),
    }
