"""What changed between two time points, per structure, in the earlier time point's patient space.

Every number is computed after the *rigid* registration only (``later_to_earlier``, a 4x4
LPS matrix): the deformable part follows organs that slid, and would also absorb the growth
the report must show. So, per structure:

- ``volume_ml`` / ``volume_change_ml`` / ``volume_change_percent``: voxel counts on each time
  point's own grid (no resampling; a rigid motion keeps volume);
- ``centroid_shift_mm``: later centroid mapped into the earlier space minus the earlier
  centroid (LPS vector, its length, and its dominant patient direction in words);
- ``surface``: signed distance of every vertex of the later surface (mapped into the earlier
  space) from the earlier surface, positive outside it (growth), negative inside (shrinkage):
  mean, and the 95th percentile of the absolute distance carrying its sign; where the largest
  growth is (LPS point, patient side);
- ``components``: connected components (26-connectivity) new in the later time point (none of
  the earlier ones within ``match_mm``) and vanished ones;
- ``cut_by_field_of_view``: the structure reaches the edge of either grid, so its volume and
  centroid depend on where each scan starts and stops (a flag, not an error);
- lesions (structures named tumour/lesion/mass/nodule/metastasis or coded as a mass):
  RECIST 1.1 longest axial diameter of each component, their sum, and the response category.

RECIST 1.1 categories (Eisenhauer et al. 2009), applied to the sum of longest axial diameters
of all lesion components, later against earlier (the earlier time point stands in for the
nadir): CR = every lesion disappeared; PD = sum increased by >= 20 % and by >= 5 mm
absolute, or a new lesion; PR = sum decreased by >= 30 %; SD = otherwise.
"""
from __future__ import annotations

import numpy as np

from ..types import Label, LabelMap, Volume

LESION_WORDS = ("tumor", "tumour", "lesion", "mass", "nodule", "metasta", "cancer", "carcinoma")
LESION_CODES = {"4147007", "108369006"}  # SNOMED CT: mass, neoplasm
RECIST = {"complete_response": "every lesion disappeared",
          "partial_response": "sum of longest axial diameters decreased by >= 30 %",
          "progressive_disease": "sum increased by >= 20 % and by >= 5 mm absolute, or a new lesion",
          "stable_disease": "neither partial response nor progressive disease",
          "reference": "the earlier time point (stands in for the nadir)"}
PR_FRACTION, PD_FRACTION, PD_ABSOLUTE_MM = -0.30, 0.20, 5.0
COLOUR_RANGE_MM = 5.0  # vertex colours saturate at +-5 mm


def is_lesion(label: Label) -> bool:
    return any(w in label.name for w in LESION_WORDS) or (label.code or "") in LESION_CODES


def side_words(v) -> str:
    """Dominant LPS direction of a vector in patient words (LPS: +x left, +y posterior, +z superior)."""
    v = np.asarray(v, float)
    if not np.any(v):
        return "none"
    ax = int(np.argmax(np.abs(v)))
    return [("patient left", "patient right"), ("posterior", "anterior"), ("superior", "inferior")][ax][0 if v[ax] > 0 else 1]


def transform_points(m: np.ndarray, pts) -> np.ndarray:
    pts = np.atleast_2d(np.asarray(pts, float))
    return pts @ np.asarray(m)[:3, :3].T + np.asarray(m)[:3, 3]


def signed_distance(mask: np.ndarray, vol: Volume) -> Volume:
    """float32 signed distance (mm) to the mask's boundary: + outside, - inside (half-voxel corrected)."""
    from scipy import ndimage

    sp = vol.spacing
    half = float(np.mean(sp)) / 2.0
    if not mask.any():
        return vol.with_array(np.full(mask.shape, np.inf, np.float32))
    out = ndimage.distance_transform_edt(~mask, sampling=sp)
    inside = ndimage.distance_transform_edt(mask, sampling=sp)
    d = np.where(mask, -(inside - half), out - half).astype(np.float32)
    return vol.with_array(d)


def sample(field: Volume, pts: np.ndarray) -> np.ndarray:
    """Trilinear values of ``field`` at LPS points (NaN outside the grid)."""
    from scipy.ndimage import map_coordinates

    idx = field.lps_to_index(pts)
    inside = np.all((idx >= 0) & (idx <= np.array(field.shape) - 1), axis=1)
    vals = map_coordinates(field.array, idx.T, order=1, mode="nearest", prefilter=False)
    return np.where(inside, vals, np.nan)


def centroid(mask: np.ndarray, vol: Volume) -> np.ndarray | None:
    idx = np.argwhere(mask)
    return None if len(idx) == 0 else vol.index_to_lps(idx.mean(axis=0)[None])[0]


def _moved(vol: Volume, m: np.ndarray, array) -> Volume:
    """The same voxels placed ``m`` away (the later grid expressed in the earlier space)."""
    return Volume(array, np.asarray(m) @ vol.affine, vol.frame_of_reference_uid, {})


def components(mask: np.ndarray, vol: Volume, min_ml: float) -> list[dict]:
    from scipy import ndimage

    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return []
    counts = np.bincount(lab.ravel())[1:]
    cents = ndimage.center_of_mass(mask, lab, range(1, n + 1))
    out = []
    for i, (c, k) in enumerate(zip(cents, counts), start=1):
        ml = float(k) * vol.voxel_volume_ml
        if ml >= min_ml:
            out.append({"index": i, "volume_ml": round(ml, 3), "centroid": vol.index_to_lps(np.asarray(c)[None])[0], "_lab": lab})
    return out


def component_changes(a_mask, a_vol: Volume, b_mask, b_vol: Volume, b_to_a, match_mm: float, min_ml: float) -> dict:
    """New and vanished components: a component is matched when the other time point has a voxel
    within ``match_mm`` of it (after the rigid mapping)."""
    from ..geometry import resample_to_grid
    from scipy import ndimage

    b_in_a = resample_to_grid(_moved(b_vol, b_to_a, b_mask.astype(np.uint8)), a_vol.shape, a_vol.affine, order=0).array > 0
    d_to_b = ndimage.distance_transform_edt(~b_in_a, sampling=a_vol.spacing) if b_in_a.any() else None
    d_to_a = ndimage.distance_transform_edt(~a_mask, sampling=a_vol.spacing) if a_mask.any() else None
    new, vanished = [], []
    for c in components(b_in_a, a_vol, min_ml):
        m = c["_lab"] == c["index"]
        if d_to_a is None or float(d_to_a[m].min()) > match_mm:
            new.append({"volume_ml": c["volume_ml"], "centroid_lps": np.round(c["centroid"], 2).tolist()})
    for c in components(a_mask, a_vol, min_ml):
        m = c["_lab"] == c["index"]
        if d_to_b is None or float(d_to_b[m].min()) > match_mm:
            vanished.append({"volume_ml": c["volume_ml"], "centroid_lps": np.round(c["centroid"], 2).tolist()})
    return {"new": new, "vanished": vanished}


def longest_axial_diameters(mesh, step_mm: float = 1.0) -> list[dict]:
    """RECIST longest diameter in an axial (constant LPS z) plane, per connected component of a mesh."""
    import trimesh

    if mesh is None or len(mesh.faces) == 0:
        return []
    out = []
    for part in mesh.split(only_watertight=False):
        lo, hi = part.bounds[:, 2]
        heights = np.arange(lo + step_mm / 2, hi, step_mm)
        if len(heights) == 0:
            heights = np.array([(lo + hi) / 2])
        lines, _, _ = trimesh.intersections.mesh_multiplane(part, np.array([0, 0, lo]), np.array([0.0, 0, 1]),
                                                            heights - lo)
        best, best_z = 0.0, None
        for segs, z in zip(lines, heights):
            if len(segs) == 0:
                continue
            p = np.asarray(segs).reshape(-1, 2)
            d = _max_pairwise(p)
            if d > best:
                best, best_z = d, float(z)
        out.append({"diameter_mm": round(best, 2), "z_mm": None if best_z is None else round(best_z, 2),
                    "centroid_lps": np.round(part.vertices.mean(axis=0), 2).tolist()})
    out.sort(key=lambda r: -r["diameter_mm"])
    return out


def _max_pairwise(p: np.ndarray) -> float:
    if len(p) > 400:
        from scipy.spatial import ConvexHull

        try:
            p = p[ConvexHull(p).vertices]
        except Exception:  # noqa: BLE001 - Qhull fails on a degenerate (collinear) section: keep every point
            pass
    diff = p[:, None, :] - p[None, :, :]
    return float(np.sqrt((diff ** 2).sum(-1)).max())


def recist_category(sum_before: float, sum_after: float, n_after: int, new_lesions: int) -> dict:
    change = sum_after - sum_before
    frac = change / sum_before if sum_before > 0 else (np.inf if sum_after > 0 else 0.0)
    if sum_before > 0 and n_after == 0 and new_lesions == 0:
        cat = "complete_response"
    elif new_lesions > 0 or (frac >= PD_FRACTION and change >= PD_ABSOLUTE_MM):
        cat = "progressive_disease"
    elif frac <= PR_FRACTION:
        cat = "partial_response"
    else:
        cat = "stable_disease"
    return {"category": cat, "sum_before_mm": round(sum_before, 2), "sum_after_mm": round(sum_after, 2),
            "change_mm": round(change, 2), "change_percent": None if not np.isfinite(frac) else round(100 * frac, 2),
            "new_lesions": int(new_lesions), "thresholds": RECIST}


def _crop(vol: Volume, mask: np.ndarray, extra_pts: np.ndarray | None, pad_mm: float) -> tuple[Volume, np.ndarray]:
    """The part of ``vol``'s grid around ``mask`` and ``extra_pts`` (LPS), padded: EDTs stay small."""
    idx = np.argwhere(mask)
    if extra_pts is not None and len(extra_pts):
        idx = np.concatenate([idx, vol.lps_to_index(extra_pts)])
    if len(idx) == 0:
        return vol, mask
    pad = np.ceil(pad_mm / vol.spacing).astype(int)
    lo = np.maximum(np.floor(idx.min(0)).astype(int) - pad, 0)
    hi = np.minimum(np.ceil(idx.max(0)).astype(int) + pad + 1, vol.shape)
    sl = tuple(slice(l, h) for l, h in zip(lo, hi))
    aff = vol.affine.copy()
    aff[:3, 3] = vol.index_to_lps(lo[None].astype(float))[0]
    return Volume(vol.array[sl], aff, vol.frame_of_reference_uid, {}), mask[sl]


def _at_edge(mask: np.ndarray) -> bool:
    """Does the structure reach the first or last slice/row/column (cut by the field of view)?"""
    return bool(mask.any() and any(mask.take(i, axis=ax).any() for ax in range(3) for i in (0, -1)))


def structure_change(label: Label, a: LabelMap, b: LabelMap, a_mesh, b_mesh, b_to_a: np.ndarray, *,
                     match_mm: float = 5.0, min_component_ml: float = 0.05) -> tuple[dict, np.ndarray | None]:
    """Change of one structure; also returns the signed distance per later-mesh vertex (or None)."""
    am, bm = a.array == label.id, b.array == label.id
    b_pts = None
    if bm.any():  # the later structure's voxel box corners, in the earlier space
        ib = np.argwhere(bm)
        corners = np.array([[x, y, z] for x in (ib[:, 0].min(), ib[:, 0].max()) for y in (ib[:, 1].min(), ib[:, 1].max())
                            for z in (ib[:, 2].min(), ib[:, 2].max())], float)
        b_pts = transform_points(b_to_a, b.volume.index_to_lps(corners))
    a_grid, am_c = _crop(a.volume, am, b_pts, 3 * match_mm + 10.0)
    va, vb = float(am.sum()) * a.volume.voxel_volume_ml, float(bm.sum()) * b.volume.voxel_volume_ml
    row: dict = {"name": label.name, "label": label.id, "lesion": is_lesion(label),
                 "volume_ml": [round(va, 3), round(vb, 3)], "volume_change_ml": round(vb - va, 3),
                 "volume_change_percent": round(100 * (vb - va) / va, 2) if va > 0 else None,
                 "present": [bool(va > 0), bool(vb > 0)],
                 "cut_by_field_of_view": bool(_at_edge(am) or _at_edge(bm))}
    ca, cb = centroid(am, a.volume), centroid(bm, b.volume)
    if ca is not None and cb is not None:
        shift = transform_points(b_to_a, cb)[0] - ca
        row["centroid_lps"] = [np.round(ca, 2).tolist(), np.round(transform_points(b_to_a, cb)[0], 2).tolist()]
        row["centroid_shift_lps_mm"] = np.round(shift, 2).tolist()
        row["centroid_shift_mm"] = round(float(np.linalg.norm(shift)), 2)
        row["centroid_shift_direction"] = side_words(shift) if np.linalg.norm(shift) >= 0.5 else "none"
    d = None
    if va > 0 and b_mesh is not None and len(b_mesh.vertices):
        verts = transform_points(b_to_a, np.asarray(b_mesh.vertices))
        d = sample(signed_distance(am_c, a_grid), verts)
        ok = np.isfinite(d)
        if ok.any():
            dd = d[ok]
            p95_abs = float(np.percentile(np.abs(dd), 95))
            at = int(np.argmin(np.abs(np.abs(dd) - p95_abs)))
            worst = int(np.argmax(dd))
            row["surface"] = {"mean_mm": round(float(dd.mean()), 2), "p95_mm": round(float(np.sign(dd[at]) * p95_abs), 2),
                              "max_growth_mm": round(float(dd[worst]), 2),
                              "max_growth_lps": np.round(verts[ok][worst], 2).tolist(),
                              "max_shrinkage_mm": round(float(dd.min()), 2),
                              "growth_side": side_words(verts[ok][worst] - ca) if dd[worst] > 0 else "none",
                              "n_vertices": int(ok.sum())}
    row["components"] = component_changes(am_c, a_grid, bm, b.volume, b_to_a, match_mm, min_component_ml)
    if row["lesion"]:
        da, db = longest_axial_diameters(a_mesh), longest_axial_diameters(b_mesh)
        row["recist"] = {"diameters_mm": [[r["diameter_mm"] for r in da], [r["diameter_mm"] for r in db]],
                         "sum_mm": [round(sum(r["diameter_mm"] for r in da), 2), round(sum(r["diameter_mm"] for r in db), 2)]}
    return row, d


def vertex_colours(d: np.ndarray, limit: float = COLOUR_RANGE_MM) -> np.ndarray:
    """(n, 4) uint8: blue (shrinkage) - white (no change) - red (growth), saturating at +-limit mm."""
    t = np.clip(np.nan_to_num(d, nan=0.0) / limit, -1, 1)
    rgb = np.ones((len(t), 3))
    pos, neg = t > 0, t < 0
    rgb[pos, 1] -= t[pos]
    rgb[pos, 2] -= t[pos]
    rgb[neg, 0] += t[neg]
    rgb[neg, 1] += t[neg]
    return np.concatenate([np.rint(rgb * 255), np.full((len(t), 1), 255)], axis=1).astype(np.uint8)


def change_report(a: LabelMap, b: LabelMap, a_meshes: dict, b_meshes: dict, b_to_a: np.ndarray, *,
                  names=None, match_mm: float = 5.0) -> tuple[dict, dict]:
    """Per-structure changes from ``a`` (earlier) to ``b`` (later) and the RECIST response.

    ``a_meshes``/``b_meshes``: name -> trimesh in each time point's own space. Returns
    ``(report, signed distances per later vertex by structure name)``.
    """
    rows, dists = [], {}
    for label in a.labels:
        if names is not None and label.name not in names:
            continue
        if label.name not in b.labels or b.labels.by_name(label.name).id != label.id:
            continue
        row, d = structure_change(label, a, b, a_meshes.get(label.name), b_meshes.get(label.name), b_to_a,
                                  match_mm=match_mm)
        if row["volume_ml"] == [0.0, 0.0]:
            continue
        rows.append(row)
        if d is not None:
            dists[label.name] = d
    lesions = [r for r in rows if r["lesion"]]
    report = {"frame": "earlier time point, after rigid registration", "structures": rows,
              "sign_convention": "surface distance > 0: the later surface lies outside the earlier one (growth)"}
    if lesions:
        before = sum(r["recist"]["sum_mm"][0] for r in lesions)
        after = sum(r["recist"]["sum_mm"][1] for r in lesions)
        n_after = sum(len(r["recist"]["diameters_mm"][1]) for r in lesions)
        new = sum(len(r["components"]["new"]) for r in lesions if r["present"][0])
        new += sum(len(r["recist"]["diameters_mm"][1]) for r in lesions if not r["present"][0])
        report["recist"] = {**recist_category(before, after, n_after, new), "lesions": [r["name"] for r in lesions]}
    return report, dists
