"""Plans carry over: the previous time point's records, mapped and re-evaluated on the new anatomy.

Points go previous space -> baseline (inverse) -> new space (forward), through the stored
rigid + B-spline; a plane normal goes through the local Jacobian (inverse transpose, by
central differences). Each record is recomputed with :class:`pipeline.planning.Planner` on the
new time point's meshes and label map, so the numbers are the new anatomy's, and compared with
the old ones: a change beyond the thresholds below is flagged, e.g. "trajectory T1: clearance to
aorta 8.0 mm -> 3.0 mm".
"""
from __future__ import annotations

import numpy as np

from ..errors import PlanningError

THRESHOLDS = {"mm": 2.0, "ml_percent": 10.0, "percent_points": 5.0, "deg": 5.0}


def _mapper(prev_reg, new_reg):
    def f(pts):
        pts = np.atleast_2d(np.asarray(pts, float))
        base = prev_reg.map_inverse(pts, deformable=True)
        return new_reg.map_forward(base, deformable=True)
    return f


def _map_normal(f, point, normal, h: float = 2.0) -> np.ndarray:
    p = np.asarray(point, float)
    jac = np.zeros((3, 3))
    for i in range(3):
        e = np.zeros(3)
        e[i] = h
        jac[:, i] = (f(p + e)[0] - f(p - e)[0]) / (2 * h)
    n = np.linalg.inv(jac).T @ np.asarray(normal, float)
    return n / np.linalg.norm(n)


def _compare(what: str, before, after, unit: str) -> dict:
    row = {"what": what, "before": before, "after": after, "unit": unit, "flag": False}
    if before is None or after is None:
        row["flag"] = before != after
        return row
    diff = float(after) - float(before)
    row["change"] = round(diff, 3)
    if unit == "ml":
        row["flag"] = bool(before and abs(diff) / abs(float(before)) * 100 > THRESHOLDS["ml_percent"])
    elif unit == "%":
        row["flag"] = abs(diff) > THRESHOLDS["percent_points"]
    else:
        row["flag"] = abs(diff) > THRESHOLDS.get(unit, THRESHOLDS["mm"])
    return row


def _carry_one(planner, section: str, rec: dict, f) -> tuple[dict, list[dict]]:
    kind = rec.get("kind")
    names = set(planner.scene.structure_names)
    if section == "landmarks":
        snap = rec.get("snapped_to") if rec.get("snapped_to") in names else None
        new = planner.add_landmark(rec.get("name") or rec["id"], f(rec["point"])[0], snap_to=snap)
        moved = float(np.linalg.norm(np.asarray(new["point"]) - f(rec["point"])[0]))
        return new, [_compare("snap to surface after mapping", 0.0, round(moved, 3), "mm")]
    if kind == "distance":
        p, q = f(rec["points"])
        new = planner.measure_distance(p, q, label=rec.get("label"))
    elif kind == "angle":
        a, v, c = f(rec["points"])
        new = planner.measure_angle(a, v, c, label=rec.get("label"))
    elif kind == "structure_distance":
        new = planner.measure_between(*rec["structures"][:2])
    elif kind in ("volume", "extents"):
        recs = planner.measure_structure(rec["structures"][0])
        new = recs[0] if kind == "volume" else recs[1]
        for other in recs:  # measure_structure adds both; keep only the matching one
            if other is not new:
                planner.scene.plan["measurements"].remove(other)
    elif kind == "cut":
        planes = [{"point": f(pl["point"])[0], "normal": _map_normal(f, pl["point"], pl["normal"])}
                  for pl in rec["planes"]]
        mt = (rec.get("margin") or {}).get("structure")
        new = planner.add_cut(rec["structure"], planes, margin_to=mt if mt in names else None)
        rows = [_compare("resected volume", rec.get("resected_ml"), new.get("resected_ml"), "ml"),
                _compare("remnant", rec.get("remnant_percent"), new.get("remnant_percent"), "%")]
        if rec.get("margin") and new.get("margin"):
            rows.append(_compare(f"margin to {mt}", rec["margin"]["margin_mm"], new["margin"]["margin_mm"], "mm"))
        return new, rows
    elif kind == "trajectory":
        entry, target = f([rec["entry"], rec["target"]])
        structs = [s for s in rec.get("structures", []) if s in names]
        new = planner.add_trajectory(entry, target, rec["radius_mm"], safety_margin_mm=rec.get("safety_margin_mm"),
                                     structures=structs)
        before = {r["structure"]: r for r in rec.get("clearance", [])}
        rows = []
        for r in new["clearance"]:
            b = before.get(r["structure"])
            if b is None:
                continue
            rows.append(_compare(f"clearance to {r['structure']}", b["distance_mm"], r["distance_mm"], "mm"))
            if bool(b.get("crossed")) != bool(r.get("crossed")):
                rows.append({"what": f"crosses {r['structure']}", "before": bool(b.get("crossed")),
                             "after": bool(r.get("crossed")), "unit": "", "flag": True})
        return new, rows
    else:
        raise PlanningError(f"record {rec.get('id')}: kind '{kind}' cannot be carried over")
    return new, [_compare(kind, rec.get("value"), new.get("value"), rec.get("unit") or "mm")]


def carry_plan(prev_plan: dict, prev_reg, new_reg, tp_scene) -> list[dict]:
    """Map and recompute every record of ``prev_plan`` on ``tp_scene`` (a loaded time point scene);
    saves its plan and returns one summary per record: ids, comparisons, flagged."""
    from ..planning import Planner

    f = _mapper(prev_reg, new_reg)
    planner = Planner(tp_scene)
    out = []
    for section in ("landmarks", "measurements", "cuts", "trajectories"):
        for rec in prev_plan.get(section, []):
            try:
                new, rows = _carry_one(planner, section, rec, f)
            except PlanningError as e:
                out.append({"id": rec.get("id"), "kind": rec.get("kind"), "error": str(e), "flagged": True,
                            "changes": []})
                continue
            new["carried_from"] = {"id": rec.get("id"), "points": rec.get("points")}
            label = rec.get("name") or rec.get("label") or rec.get("structure") or ""
            msgs = [f"{rec.get('id')} {rec.get('kind')}{' ' + label if label else ''}: {r['what']} "
                    f"{_fmt(r['before'])} -> {_fmt(r['after'])} {r['unit']}".rstrip() for r in rows if r["flag"]]
            out.append({"id": rec.get("id"), "new_id": new["id"], "kind": rec.get("kind"), "changes": rows,
                        "flagged": any(r["flag"] for r in rows), "messages": msgs})
    tp_scene.extra["carried_plan"] = {"thresholds": THRESHOLDS, "records": out}
    from ..scene import save_scene

    save_scene(tp_scene, write_meshes=False)
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)
