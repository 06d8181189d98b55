"""Measurements in LPS mm: point distances, angles, structure volume/area/extents/diameter,
minimum distance between structures, landmarks. Each ``*_record`` returns a plan record (see
:mod:`.plan` for the common keys); the plain functions return numbers for other code.
"""
from __future__ import annotations

import numpy as np

from ..errors import PlanningError
from .records import check_point, lps_list

AXES = (("left_right", 0), ("anterior_posterior", 1), ("superior_inferior", 2))


def angle_deg(a, vertex, c) -> float:
    """Angle at ``vertex`` between the rays to ``a`` and ``c`` (degrees, 0..180)."""
    a, v, c = (check_point(x) for x in (a, vertex, c))
    u, w = a - v, c - v
    nu, nw = np.linalg.norm(u), np.linalg.norm(w)
    if nu < 1e-9 or nw < 1e-9:
        raise PlanningError("angle: the first and third points must differ from the vertex (second point)")
    return float(np.degrees(np.arctan2(np.linalg.norm(np.cross(u, w)), np.dot(u, w))))


def distance_record(p, q, *, label: str | None = None) -> dict:
    p, q = check_point(p, "first point"), check_point(q, "second point")
    d = float(np.linalg.norm(q - p))
    return {"kind": "distance", "label": label, "points": lps_list([p, q]), "value": round(d, 4), "unit": "mm",
            "structures": [], "distance_mm": round(d, 4),
            "provenance": {"function": "pipeline.planning.measure.distance_record", "inputs": {}}}


def angle_record(a, vertex, c, *, label: str | None = None) -> dict:
    deg = angle_deg(a, vertex, c)
    return {"kind": "angle", "label": label, "points": lps_list([a, vertex, c]), "value": round(deg, 4),
            "unit": "deg", "structures": [], "angle_deg": round(deg, 4),
            "provenance": {"function": "pipeline.planning.measure.angle_record", "inputs": {}}}


def structure_distance_record(index_a, index_b) -> dict:
    """Minimum distance between two structures' closed surfaces with the two closest points.

    ``index_a``/``index_b``: :class:`~.distance.MeshIndex` (named). Overlapping structures give
    0 mm and ``overlap: true``.
    """
    from .distance import mesh_distance

    r = mesh_distance(index_a, index_b)
    return {"kind": "structure_distance", "points": lps_list([r.point_a, r.point_b]), "value": round(r.distance, 4),
            "unit": "mm", "structures": [index_a.name, index_b.name], "distance_mm": round(r.distance, 4),
            "point_a": lps_list(r.point_a), "point_b": lps_list(r.point_b), "overlap": r.overlap}


def max_diameter(vertices: np.ndarray, chunk: int = 1024) -> tuple[float, np.ndarray, np.ndarray]:
    """Largest distance between two points of a vertex set (over its convex hull).

    Parameters
    ----------
    vertices : (n, 3) float LPS mm

    Returns
    -------
    diameter : float mm; p, q : (3,) its end points
    """
    from scipy.spatial import ConvexHull, QhullError
    from scipy.spatial.distance import cdist

    v = np.asarray(vertices, dtype=np.float64)
    try:
        h = v[ConvexHull(v).vertices]
    except (QhullError, ValueError):  # flat or tiny sets: all points
        h = v
    best, bi, bj = -1.0, 0, 0
    for s in range(0, len(h), chunk):
        d = cdist(h[s:s + chunk], h)
        k = int(np.argmax(d))
        i, j = divmod(k, len(h))
        if d[i, j] > best:
            best, bi, bj = float(d[i, j]), s + i, j
    return best, h[bi], h[bj]


def structure_metrics(mesh, mask: np.ndarray | None = None, voxel_volume_ml: float | None = None) -> dict:
    """Volume (mesh and voxels), area, extents along patient axes, maximal diameter.

    Parameters
    ----------
    mesh : trimesh.Trimesh (LPS mm)
    mask : (nk, nj, ni) bool, optional: the structure's voxels
    voxel_volume_ml : volume of one voxel (ml), required with ``mask``
    """
    v = np.asarray(mesh.vertices)
    lo, hi = v.min(0), v.max(0)
    diam, p, q = max_diameter(v)
    watertight = bool(mesh.is_watertight)
    out = {
        "mesh_volume_ml": round(abs(float(mesh.volume)) / 1000.0, 4) if watertight else None,
        "area_mm2": round(float(mesh.area), 3),
        "watertight": watertight,
        "bbox_min": lps_list(lo), "bbox_max": lps_list(hi),
        "max_diameter_mm": round(diam, 4), "diameter_points": lps_list([p, q]),
    }
    for name, ax in AXES:
        out[f"extent_{name}_mm"] = round(float(hi[ax] - lo[ax]), 4)
    if mask is not None:
        n = int(np.count_nonzero(mask))
        out["n_voxels"] = n
        out["voxel_volume_ml"] = round(n * float(voxel_volume_ml), 4)
        if out["mesh_volume_ml"] and out["voxel_volume_ml"]:
            out["mesh_vs_voxel_percent"] = round(100 * (out["mesh_volume_ml"] / out["voxel_volume_ml"] - 1), 3)
    return out


def structure_records(name: str, mesh, labelmap=None) -> list[dict]:
    """Two records for a structure: ``volume`` (ml) and ``extents`` (max diameter in mm)."""
    mask = labelmap.mask(name) if labelmap is not None else None
    m = structure_metrics(mesh, mask, labelmap.volume.voxel_volume_ml if labelmap is not None else None)
    vol = m.get("voxel_volume_ml") if m.get("voxel_volume_ml") is not None else m["mesh_volume_ml"]
    volume = {"kind": "volume", "points": [], "value": vol, "unit": "ml", "structures": [name],
              **{k: m.get(k) for k in ("voxel_volume_ml", "mesh_volume_ml", "mesh_vs_voxel_percent", "n_voxels",
                                       "area_mm2", "watertight")}}
    extents = {"kind": "extents", "points": m["diameter_points"], "value": m["max_diameter_mm"], "unit": "mm",
               "structures": [name],
               **{k: m[k] for k in m if k.startswith("extent_") or k.startswith("bbox_") or k == "max_diameter_mm"}}
    return [volume, extents]


def landmark_record(name: str, point, snap_index=None) -> dict:
    """A named point; with ``snap_index`` (a MeshIndex) moved to that structure's surface."""
    import re

    if not name or not re.match(r"^[\w .\-]{1,64}$", name):
        raise PlanningError(f"landmark name must be 1-64 letters, digits, spaces, '.', '-' or '_'; found {name!r}")
    p = check_point(point, f"landmark '{name}'")
    rec = {"kind": "landmark", "name": name, "points": lps_list([p]), "point": lps_list(p), "structures": [],
           "snapped_to": None}
    if snap_index is not None:
        from .distance import closest_point_on_mesh

        c, d, inside = closest_point_on_mesh(snap_index, p)
        rec.update(points=lps_list([c]), point=lps_list(c), structures=[snap_index.name], snapped_to=snap_index.name,
                   picked_point=lps_list(p), snap_distance_mm=round(d, 4), picked_inside=inside)
    return rec
