"""Plan records -> drawing primitives (points, tubes, tool cylinders, planes, meshes) in LPS mm.

Shared by the headless renderer (:mod:`.offscreen`) and the viewer window (:mod:`viewer.tools`
re-exports these names); pure numpy, no Open3D, no GUI.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# structures drawn as a translucent shell and never named as the obstacle a trajectory meets
BODY_NAMES = frozenset({"body", "skin", "body_surface", "body_trunc", "body_extremities"})


@dataclass
class Primitive:
    """Something to draw for a plan record, in LPS mm.

    kind: 'points' (spheres), 'polyline' (tubes through points), 'tool' (cylinder entry ->
    target of ``radius``), 'plane' (square of side ``size`` through points[0] with ``normal``),
    'mesh' (a PLY relative to the scene folder in ``path``). ``label``/``label_at``: 3-D text.
    """

    kind: str
    points: np.ndarray
    rgb: tuple[float, float, float]
    label: str = ""
    label_at: np.ndarray | None = None
    radius: float = 0.0
    normal: np.ndarray | None = None
    size: float = 0.0
    opacity: float = 1.0
    path: str = ""
    lit: bool = True  # False: flat colour (a cut's frame shows its exact colour from any side)


COLOURS = {
    "landmark": (1.0, 0.55, 0.0), "distance": (0.05, 0.75, 0.95), "angle": (0.95, 0.2, 0.85),
    "structure_distance": (0.1, 0.9, 0.3), "extents": (0.6, 0.6, 0.6), "cut": (0.9, 0.15, 0.15),
    "trajectory": (0.1, 0.6, 1.0), "trajectory_warn": (1.0, 0.15, 0.1), "pending": (1.0, 1.0, 0.2),
}


def _fmt(v, unit: str = "", nd: int = 1) -> str:
    if v is None:
        return "n/a"
    unit = "°" if unit == "deg" else unit
    return f"{float(v):.{nd}f}{'' if unit in ('', '°', '%') else ' '}{unit}"



def marker_scale(vertices: np.ndarray) -> float:
    """Radius (mm) of plan markers for a scene spanning ``vertices``: 0.6 % of its diagonal."""
    v = np.asarray(vertices, dtype=float).reshape(-1, 3)
    return max(float(np.linalg.norm(v.max(0) - v.min(0))) * 0.006, 0.5) if len(v) else 0.5


def superseded_pieces(plan: dict) -> set[str]:
    """Ids of plan records whose pieces (cut halves, Couinaud segments) are not drawn because a
    later record replaces the same structure with its own pieces (they would overlap)."""
    latest: dict[str, tuple] = {}
    for sec in ("segments", "cuts"):
        for r in plan.get(sec, []):
            if r.get("meshes"):
                key = (str(r.get("created", "")), sec == "cuts", r.get("id"))
                if r.get("structure") not in latest or key > latest[r["structure"]]:
                    latest[r.get("structure")] = key
    return {r.get("id") for sec in ("segments", "cuts") for r in plan.get(sec, [])
            if r.get("meshes") and latest.get(r.get("structure"), (None, None, None))[2] != r.get("id")}


def square_corners(center, normal, size: float) -> np.ndarray:
    """(4, 3) corners (LPS mm) of the square of side ``size`` through ``center`` with ``normal``
    (the same square :func:`pipeline.render.drawing.square` draws)."""
    n = np.asarray(normal, float)
    n = n / np.linalg.norm(n)
    a = np.cross(n, [0.0, 0.0, 1.0] if abs(n[2]) < 0.9 else [0.0, 1.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(n, a)
    h = size / 2.0
    c = np.asarray(center, float)
    return np.array([c - h * a - h * b, c + h * a - h * b, c + h * a + h * b, c - h * a + h * b])


def record_primitives(rec: dict, scale: float, rgb: tuple[float, float, float] | None = None) -> list[Primitive]:
    """What to draw for a plan record; ``scale`` is the marker radius in mm. ``rgb`` (0..1): the
    record's own display colour (a cut's, from :func:`pipeline.scene.colors.cut_colors`), used
    for its planes, their frames and the resected piece so two cuts never look alike."""
    kind = rec.get("kind")
    pts = np.asarray(rec.get("points") or np.zeros((0, 3)), dtype=float).reshape(-1, 3)
    c = tuple(rgb) if rgb is not None else COLOURS.get(kind, (0.8, 0.8, 0.8))
    if kind == "landmark":
        return [Primitive("points", pts, c, rec.get("name", rec.get("id", "")), pts[0] if len(pts) else None, scale * 1.3)]
    if kind in ("distance", "structure_distance", "extents") and len(pts) == 2:
        mid = pts.mean(axis=0)
        return [Primitive("points", pts, c, radius=scale),
                Primitive("polyline", pts, c, f"{rec.get('id')}: {_fmt(rec.get('value'), 'mm')}", mid, scale * 0.35)]
    if kind == "angle" and len(pts) == 3:
        return [Primitive("points", pts, c, radius=scale),
                Primitive("polyline", pts, c, f"{rec.get('id')}: {_fmt(rec.get('value'), 'deg')}", pts[1], scale * 0.35)]
    if kind == "cut":
        out = []
        for part, rgb, op in (("remnant", None, 1.0), ("resected", c, 0.45)):
            if rec.get("meshes", {}).get(part):
                out.append(Primitive("mesh", np.zeros((0, 3)), rgb or (-1, -1, -1), opacity=op, path=rec["meshes"][part]))
        for n, pl in enumerate(rec.get("planes", [])):
            corners = square_corners(pl["point"], pl["normal"], scale * 40)
            out.append(Primitive("plane", np.asarray([pl["point"]]), c, "", None,
                                 normal=np.asarray(pl["normal"]), size=scale * 40, opacity=0.35))
            # an opaque frame in the cut's colour: the plane reads (and its colour shows) over
            # any background; the label sits at a corner, off the organ
            out.append(Primitive("polyline", np.vstack([corners, corners[:1]]), c, rec.get("id", "") if n == 0 else "",
                                 corners[2], radius=scale * 0.45, lit=False))
        return out
    if kind == "segments":  # Couinaud segments: one translucent piece each, in its colour
        from pipeline.planning.segments import SEGMENT_RGB

        segs = rec.get("segments") or {}
        out = []
        for seg, rel in (rec.get("meshes") or {}).items():
            at = (segs.get(seg) or {}).get("centroid_lps")
            out.append(Primitive("mesh", np.zeros((0, 3)), tuple(c / 255 for c in SEGMENT_RGB[seg]), seg,
                                 None if at is None else np.asarray(at, float), opacity=1.0, path=rel))
        return out
    if kind == "trajectory" and len(pts) == 2:
        col = COLOURS["trajectory_warn"] if rec.get("warnings") else COLOURS["trajectory"]
        close = rec.get("clearance") or []
        # the structure that matters: closest one that is neither the target nor the skin the
        # tool enters through
        first = next((r for r in close if not r.get("target") and not r.get("contains_entry")
                      and r["structure"] not in BODY_NAMES), None)
        lab = f"{rec.get('id')}: {_fmt(rec.get('length_mm'), 'mm')}"
        if first is not None:
            lab += f", {first['structure']} {_fmt(first['distance_mm'], 'mm')}"
        return [Primitive("tool", pts, col, lab, pts[0], radius=max(float(rec.get("radius_mm", 1.0)), scale * 0.3)),
                Primitive("points", pts[:1], (0.1, 0.8, 0.2), radius=scale),
                Primitive("points", pts[1:], (0.9, 0.1, 0.1), radius=scale)]
    return []
