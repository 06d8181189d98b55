"""Virtual resection: cutting planes applied to a structure, from the label map and the mesh.

Convention: a plane is ``{point, normal}`` in LPS mm; the *resected* part is the side the
normal points to. With several planes the resected part is the intersection of their
half-spaces (a wedge or a slab: the usual shape of a segmentectomy), and the remnant is the
rest of the structure.

Two independent computations are reported and compared:

* label map: voxels are classified by their centres, except voxels the plane passes through,
  which count the fraction of 5x5x5 sub-samples on the resected side (partial volume);
* mesh: the closed surface is split by manifold3d (exact, capped halves), volumes of the two
  closed pieces. The pieces are saved as PLY so the viewer shows them.

The margin to another structure (e.g. a tumour) is the signed distance from the cutting
surface to that structure, measured on the side where most of it lies: positive = fully on
one side with that clearance; negative = the plane crosses it, by that depth.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import PlanningError
from .records import check_point, lps_list

SUBSAMPLES = 5
AGREEMENT_LIMIT_PERCENT = 2.0


def normalise_planes(planes) -> list[dict]:
    """Accept one ``{point, normal}``, a (point, normal) pair, or a list of either."""
    if isinstance(planes, dict) or (isinstance(planes, (list, tuple)) and len(planes) == 2
                                     and np.asarray(planes[0], dtype=object).shape == (3,)
                                     and not isinstance(planes[0], dict)):
        planes = [planes]
    out = []
    for k, pl in enumerate(planes):
        p, n = (pl["point"], pl["normal"]) if isinstance(pl, dict) else pl
        p = check_point(p, f"plane {k + 1} point")
        n = check_point(n, f"plane {k + 1} normal")
        norm = np.linalg.norm(n)
        if norm < 1e-9:
            raise PlanningError(f"plane {k + 1}: the normal must be a non-zero vector; found {n.tolist()}")
        out.append({"point": p, "normal": n / norm})
    if not out:
        raise PlanningError("a cut needs at least one plane (point and normal)")
    return out


def signed_depth(points: np.ndarray, planes: list[dict]) -> np.ndarray:
    """(n,) depth of ``points`` (n, 3) into the resected region: min over planes of
    ``normal . (x - point)``; > 0 inside the region (resected side)."""
    s = [(np.asarray(points) - pl["point"]) @ pl["normal"] for pl in planes]
    return np.min(s, axis=0)


def resected_fraction_voxels(mask: np.ndarray, affine: np.ndarray, planes: list[dict],
                             subsamples: int = SUBSAMPLES) -> tuple[float, int]:
    """Voxel count (fractional) of ``mask`` on the resected side, and the mask's voxel count.

    Parameters
    ----------
    mask : (nk, nj, ni) bool; affine : (4, 4) index -> LPS
    """
    idx = np.argwhere(mask).astype(np.float64)
    if len(idx) == 0:
        return 0.0, 0
    m = affine[:3, :3]
    centres = idx @ m.T + affine[:3, 3]
    f = signed_depth(centres, planes)
    corners = np.array([[a, b, c] for a in (-.5, .5) for b in (-.5, .5) for c in (-.5, .5)])
    half_diag = float(np.linalg.norm(corners @ m.T, axis=1).max())
    inside = float(np.count_nonzero(f >= half_diag))
    near = np.nonzero(np.abs(f) < half_diag)[0]
    if len(near):
        g = (np.arange(subsamples) + 0.5) / subsamples - 0.5
        offs = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3) @ m.T  # (s^3, 3) mm
        for s in range(0, len(near), 20000):
            c = centres[near[s:s + 20000]]
            pts = (c[:, None, :] + offs[None]).reshape(-1, 3)
            inside += float((signed_depth(pts, planes) > 0).reshape(len(c), -1).mean(axis=1).sum())
    return inside, len(idx)


def _to_manifold(mesh, name: str):
    import manifold3d

    m = manifold3d.Manifold(manifold3d.Mesh64(
        vert_properties=np.ascontiguousarray(mesh.vertices, dtype=np.float64),
        tri_verts=np.ascontiguousarray(mesh.faces, dtype=np.uint64)))
    if m.status() != manifold3d.Error.NoError or m.is_empty():
        raise PlanningError(f"structure '{name}': its mesh must be a closed, oriented 2-manifold to be cut; "
                            f"manifold3d says {m.status().name}")
    return m


def _to_trimesh(m):
    import trimesh

    out = m.to_mesh64()
    return trimesh.Trimesh(np.asarray(out.vert_properties)[:, :3], np.asarray(out.tri_verts, dtype=np.int64),
                           process=False)


def split_mesh(mesh, planes: list[dict], name: str = "structure"):
    """Split a closed mesh into closed, capped pieces with manifold3d.

    Returns
    -------
    resected, remnant : trimesh.Trimesh (possibly empty)
    resected_mm3, remnant_mm3 : float, their exact volumes
    """
    whole = _to_manifold(mesh, name)
    if len(planes) == 1:
        pl = planes[0]
        resected, remnant = whole.split_by_plane(tuple(pl["normal"]), float(pl["point"] @ pl["normal"]))
    else:
        resected = whole
        for pl in planes:
            resected = resected.trim_by_plane(tuple(pl["normal"]), float(pl["point"] @ pl["normal"]))
        remnant = whole - resected
    return _to_trimesh(resected), _to_trimesh(remnant), resected.volume(), remnant.volume()


def _write_ply(mesh, path: Path) -> None:
    from ..fileio import atomic_write  # one atomic writer (a failed export leaves no temporary file)

    atomic_write(path, lambda p: mesh.export(str(p), file_type="ply", encoding="binary"))


def margin(mesh_vertices: np.ndarray, planes: list[dict], resected_fraction: float) -> dict:
    """Signed clearance of a structure from the cut, on the side holding most of it.

    With several planes, distances on the remnant side are a lower bound (conservative).
    """
    f = signed_depth(mesh_vertices, planes)
    side = "resected" if resected_fraction >= 0.5 else "remnant"
    depth = f if side == "resected" else -f
    k = int(np.argmin(depth))
    return {"margin_mm": round(float(depth[k]), 4), "side": side, "crossed": bool(f.min() < 0 < f.max()),
            "closest_point": lps_list(mesh_vertices[k])}


def lesion_margins(planner, structure: str, planes: list[dict], lesions: list[str]) -> list[dict]:
    """Signed margin of every lesion of ``structure`` to the cut, with the share of it resected."""
    lm = planner.labelmap
    out = []
    for name in lesions:
        t_res, t_n = resected_fraction_voxels(lm.mask(name), lm.volume.affine, planes)
        frac = t_res / t_n if t_n else 0.0
        mg = margin(np.asarray(planner.mesh(name).vertices), planes, frac)
        out.append({"structure": name, **mg, "structure_resected_percent": round(100 * frac, 3),
                    "volume_ml": round(t_n * lm.volume.voxel_volume_ml, 4),
                    "resected_ml": round(t_res * lm.volume.voxel_volume_ml, 4)})
    return out


def future_liver_remnant(voxel: dict, margins: list[dict]) -> dict:
    """Remnant against the functional volume (the structure's label: lesions are carved out of
    it) next to the remnant of the whole organ (structure + its lesions)."""
    les_total = sum(m["volume_ml"] for m in margins)
    les_res = sum(m["resected_ml"] for m in margins)
    whole = voxel["total_ml"] + les_total
    whole_rem = voxel["remnant_ml"] + les_total - les_res
    return {"functional_total_ml": voxel["total_ml"], "functional_remnant_ml": voxel["remnant_ml"],
            "flr_percent": voxel["remnant_percent"], "lesions": [m["structure"] for m in margins],
            "lesion_ml": round(les_total, 4), "whole_total_ml": round(whole, 4), "whole_remnant_ml": round(whole_rem, 4),
            "whole_remnant_percent": round(100 * whole_rem / whole, 3) if whole else None}


def _checks(planner, rec: dict, structure: str, liver_state: str | None, rules) -> None:
    """Validity and warnings of a cut: truncated structure, plane missing it, remnant threshold."""
    qc = planner.qc(structure)
    rec["remnant_valid"], rec["invalid_reason"] = True, None
    if qc.get("truncated"):
        rec["remnant_valid"] = False
        rec["invalid_reason"] = (f"{structure} is cut by the edge of the scan: the percentages are of the part "
                                 f"scanned, not of the whole {structure}")
        rec["warnings"].append(f"remnant percentage invalid: {rec['invalid_reason']}")
    flags = planner.qc_flags(structure)
    if flags:
        rec["warnings"].append(f"{structure} is flagged by QC ({'; '.join(flags)}): the cut's numbers are not reliable")
    miss = rules.miss_percent
    if rec["resected_percent"] < miss or rec["remnant_percent"] < miss:
        side = "resects nothing of" if rec["resected_percent"] < miss else "resects all of"
        rec["warnings"].append(f"the plane misses {structure}: it {side} it (resected {rec['resected_percent']:.1f}%, "
                               f"remnant {rec['remnant_percent']:.1f}%)")
    state = liver_state or rules.remnant.default_state
    limit = rules.remnant_threshold(structure, state)
    rec["remnant_threshold"] = None if limit is None else {"percent": limit, "liver_state": state,
                                                           "source": "configs/planning.yaml (remnant)"}
    if limit is not None and rec["remnant_valid"]:
        flr = (rec.get("flr") or {}).get("flr_percent", rec["remnant_percent"])
        if flr < limit:
            rec["warnings"].append(f"future remnant of {structure} {flr:.1f}% is below the {limit:g}% threshold "
                                   f"for a {state} liver")


def cut_record(planner, structure: str, planes, *, margin_to: str | None = None, cut_id: str = "C",
               save_meshes: bool = True, liver_state: str | None = None, rules=None) -> dict:
    """Compute a resection of ``structure`` and return its plan record (see module doc).

    Besides the volumes: the margin of every lesion of the structure (``lesion_margins``), the
    future remnant against the functional volume (``flr``), validity (``remnant_valid``: False
    when the scan truncates the structure) and the warnings of :func:`_checks`.
    """
    from .rules import load_rules

    rules = rules or load_rules()
    planes = normalise_planes(planes)
    scene = planner.scene
    lm = planner.labelmap
    if structure not in lm.labels:
        raise PlanningError(f"cut: structure '{structure}' is not in the label table; known: {lm.labels.names}")
    vox_ml = lm.volume.voxel_volume_ml
    res_vox, n_vox = resected_fraction_voxels(lm.mask(structure), lm.volume.affine, planes)
    if n_vox == 0:
        raise PlanningError(f"cut: structure '{structure}' has no voxels in the label map")
    total_v = n_vox * vox_ml
    voxel = {"total_ml": round(total_v, 4), "resected_ml": round(res_vox * vox_ml, 4),
             "remnant_ml": round(total_v - res_vox * vox_ml, 4),
             "resected_percent": round(100 * res_vox / n_vox, 3), "remnant_percent": round(100 * (1 - res_vox / n_vox), 3)}
    rec = {"kind": "cut", "structure": structure, "structures": [structure],
           "planes": [{"point": lps_list(p["point"]), "normal": lps_list(p["normal"])} for p in planes],
           "points": lps_list([p["point"] for p in planes]), "unit": "%",
           "resected_ml": voxel["resected_ml"], "remnant_ml": voxel["remnant_ml"],
           "resected_percent": voxel["resected_percent"], "remnant_percent": voxel["remnant_percent"],
           "value": voxel["remnant_percent"], "voxel": voxel, "mesh": None, "meshes": {}, "warnings": []}
    try:
        res_m, rem_m, res_mm3, rem_mm3 = split_mesh(planner.mesh(structure), planes, structure)
    except PlanningError as e:
        rec["warnings"].append(f"mesh cut not computed: {e}")
    else:
        rv, mv = res_mm3 / 1000.0, rem_mm3 / 1000.0
        tot = rv + mv
        rec["mesh"] = {"total_ml": round(tot, 4), "resected_ml": round(rv, 4), "remnant_ml": round(mv, 4),
                       "resected_percent": round(100 * rv / tot, 3) if tot else None,
                       "remnant_percent": round(100 * mv / tot, 3) if tot else None}
        # agreement: the larger of the ml differences relative to the structure (label map)
        diff = max(abs(rv - voxel["resected_ml"]), abs(mv - voxel["remnant_ml"])) / total_v * 100
        pp = abs(rec["mesh"]["remnant_percent"] - voxel["remnant_percent"]) if tot else 0.0
        rec["agreement"] = {"volume_difference_percent": round(diff, 3), "remnant_percent_points": round(pp, 3),
                            "limit_percent": AGREEMENT_LIMIT_PERCENT,
                            "agree": bool(diff <= AGREEMENT_LIMIT_PERCENT and pp <= AGREEMENT_LIMIT_PERCENT)}
        if not rec["agreement"]["agree"]:
            rec["warnings"].append(f"label-map and mesh volumes differ by {diff:.2f}% of {structure} "
                                   f"({pp:.2f} percentage points of remnant): check the mesh QA")
        if save_meshes and scene.root is not None:
            for part, m in (("resected", res_m), ("remnant", rem_m)):
                rel = f"meshes/cuts/{cut_id}_{structure}_{part}.ply"
                if len(m.faces):
                    _write_ply(m, Path(scene.root) / rel)
                    rec["meshes"][part] = rel
    if margin_to:
        if margin_to not in lm.labels:
            raise PlanningError(f"cut margin: structure '{margin_to}' is not in the label table; known: {lm.labels.names}")
        t_res, t_n = resected_fraction_voxels(lm.mask(margin_to), lm.volume.affine, planes)
        frac = t_res / t_n if t_n else 0.0
        mg = margin(np.asarray(planner.mesh(margin_to).vertices), planes, frac)
        rec["margin"] = {"structure": margin_to, **mg, "structure_resected_percent": round(100 * frac, 3)}
        rec["structures"] = [structure, margin_to]
        if mg["crossed"]:
            rec["warnings"].append(f"the cut crosses {margin_to}: {-mg['margin_mm']:.1f} mm of it lies on the "
                                   f"{'remnant' if mg['side'] == 'resected' else 'resected'} side")
    lesions = planner.lesions_of(structure)
    rec["lesion_margins"] = lesion_margins(planner, structure, planes, lesions) if lesions else []
    for g in rec["lesion_margins"]:
        if g["crossed"] and g["structure"] != margin_to:
            rec["warnings"].append(f"the cut crosses the lesion {g['structure']}: margin {g['margin_mm']:.1f} mm")
    if lesions:
        rec["flr"] = future_liver_remnant(voxel, rec["lesion_margins"])
        rec["structures"] = list(dict.fromkeys(rec["structures"] + lesions))
    _checks(planner, rec, structure, liver_state, rules)
    rec["provenance"] = planner.provenance("pipeline.planning.cut.cut_record",
                                           rec["structures"], labelmap=True)
    return rec
