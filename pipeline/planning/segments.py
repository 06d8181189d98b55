"""Couinaud liver segments I-VIII from a few landmarks: the classic plane model.

The surgeon places (LPS mm): ``ivc`` (the inferior vena cava where the hepatic veins join it),
one point on each hepatic vein away from the IVC (``rhv``, ``mhv``, ``lhv``), the portal
bifurcation (``portal``) and optionally a point on the umbilical fissure (``umbilical``,
default the ``lhv`` point). As in the textbook model (Couinaud 1957; Bismuth 1982) and the
plane-based method of 3D Slicer's Slicer-Liver:

* three vertical planes (containing the patient's S-I axis) through the IVC and each hepatic
  vein point: right hepatic vein (right posterior | right anterior section), middle hepatic
  vein = Cantlie's line (right | left liver), umbilical fissure (segment IV | left lateral
  section);
* the portal plane, the axial plane through the portal bifurcation: superior segments (VII,
  VIII, IVa, II) above, inferior (VI, V, IVb, III) below (the model uses it for II | III too);
* segment I (caudate): posterior to the portal bifurcation, in front of and beside the IVC, up
  to the hepatic veins' confluence (a box from the landmarks, ``CAUDATE`` mm).

Every voxel of the liver belongs to exactly one segment, so the segment volumes sum to the
liver's. Lesions are assigned by the same rule; a resection of named segments reports
resected/remnant/FLR and each lesion's margin like a plane cut.
"""
from __future__ import annotations

import numpy as np

from ..errors import PlanningError
from .records import check_point, lps_list

SEGMENTS = ("I", "II", "III", "IVa", "IVb", "V", "VI", "VII", "VIII")
LANDMARKS = ("ivc", "rhv", "mhv", "lhv", "portal")
CAUDATE = {"right_of_ivc_mm": 10.0, "left_of_ivc_mm": 35.0, "below_portal_mm": 15.0}
_ROMAN = {"1": "I", "2": "II", "3": "III", "4": "IV", "4a": "IVa", "4b": "IVb", "5": "V", "6": "VI", "7": "VII", "8": "VIII"}


def parse_segments(names) -> list[str]:
    """'VI', 'vii', '6', 'IV' (= IVa + IVb), 'VI-VII' -> canonical segment names."""
    order = ["I", "II", "III", "IVa", "IVb", "V", "VI", "VII", "VIII"]
    out: list[str] = []
    for raw in names:
        for part in str(raw).replace(",", " ").split():
            lo_hi = part.split("-")
            canon = []
            for p in lo_hi:
                key = p.strip()
                c = _ROMAN.get(key.lower(), next((s for s in order + ["IV"] if s.lower() == key.lower()), None))
                if c is None:
                    raise PlanningError(f"segment must be one of I-VIII (IVa, IVb, IV, or 1-8); found {p!r}")
                canon.append(c)
            if len(canon) == 2:
                a = order.index("IVa" if canon[0] == "IV" else canon[0])
                b = order.index("IVb" if canon[1] == "IV" else canon[1])
                canon = order[min(a, b):max(a, b) + 1]
            for c in canon:
                out += ["IVa", "IVb"] if c == "IV" else [c]
    return list(dict.fromkeys(out))


def _vertical_plane(ivc: np.ndarray, vein: np.ndarray, what: str) -> np.ndarray:
    """Unit normal (pointing to the patient's left, +x) of the vertical plane through the IVC
    and a hepatic-vein point."""
    d = (vein - ivc)[:2]
    if np.linalg.norm(d) < 5.0:
        raise PlanningError(f"segments: the {what} point must lie at least 5 mm from the IVC point in the axial plane")
    n = np.array([d[1], -d[0], 0.0])
    n /= np.linalg.norm(n)
    if n[0] < 0:
        n = -n
    return n


def classify(points: np.ndarray, lm: dict) -> np.ndarray:
    """(n,) index into :data:`SEGMENTS` of every LPS point (n, 3) under the plane model."""
    ivc, portal = lm["ivc"], lm["portal"]
    side = {k: (points - ivc) @ _vertical_plane(ivc, lm[k], k) for k in ("rhv", "mhv", "umbilical")}
    sup = points[:, 2] >= portal[2]
    seg = np.empty(len(points), dtype=np.int8)
    right_post = side["rhv"] < 0
    right_ant = ~right_post & (side["mhv"] < 0)
    medial = (side["mhv"] >= 0) & (side["umbilical"] < 0)
    lateral = (side["mhv"] >= 0) & (side["umbilical"] >= 0)
    for mask, hi, lo in ((right_post, "VII", "VI"), (right_ant, "VIII", "V"), (medial, "IVa", "IVb"), (lateral, "II", "III")):
        seg[mask & sup] = SEGMENTS.index(hi)
        seg[mask & ~sup] = SEGMENTS.index(lo)
    x, y, z = points.T
    caudate = ((x >= ivc[0] - CAUDATE["right_of_ivc_mm"]) & (x <= ivc[0] + CAUDATE["left_of_ivc_mm"])
               & (y >= portal[1]) & (z <= ivc[2]) & (z >= portal[2] - CAUDATE["below_portal_mm"]))
    seg[caudate] = SEGMENTS.index("I")
    return seg


def landmarks_from(planner, given: dict | None) -> dict:
    """The model's landmarks: given points, else plan landmarks with those names."""
    lm = {}
    named = {r.get("name"): r.get("point") for r in planner.scene.plan.get("landmarks", [])}
    for k in (*LANDMARKS, "umbilical"):
        p = (given or {}).get(k)
        if p is None:
            p = named.get(k)
        if p is None and k == "umbilical":
            continue
        if p is None:
            raise PlanningError(f"segments: landmark '{k}' is required (give it, or place a landmark named '{k}'); "
                                f"needed: {list(LANDMARKS)}")
        lm[k] = check_point(p, f"landmark {k}")
    lm.setdefault("umbilical", lm["lhv"])
    if lm["portal"][2] >= lm["ivc"][2]:
        raise PlanningError("segments: the portal bifurcation must lie inferior to the IVC landmark (the hepatic "
                            f"veins' confluence); found z {lm['portal'][2]:.1f} >= {lm['ivc'][2]:.1f} mm")
    return lm


def segment_map(planner, structure: str, lm: dict) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Segment index per voxel of ``structure`` and of its lesions (-1 elsewhere) in the
    structure's box; returns (seg, organ_mask, box)."""
    lab = planner.labelmap
    ids = [lab.labels.by_name(n).id for n in [structure, *planner.lesions_of(structure)]]
    mask = np.isin(lab.array, ids)
    nz = np.nonzero(mask)
    if not len(nz[0]):
        raise PlanningError(f"segments: structure '{structure}' has no voxels")
    box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in nz)
    sub = mask[box]
    kji = np.argwhere(sub) + [b.start for b in box]
    seg = np.full(sub.shape, -1, np.int8)
    seg[sub] = classify(lab.volume.index_to_lps(kji), lm)
    return seg, lab.array[box] == lab.labels.by_name(structure).id, box


SEGMENT_RGB = {"I": (255, 255, 102), "II": (102, 204, 255), "III": (51, 102, 255), "IVa": (204, 153, 255),
               "IVb": (153, 51, 204), "V": (255, 153, 51), "VI": (255, 80, 80), "VII": (102, 204, 102),
               "VIII": (255, 204, 204)}


def segment_labelmap(planner, record: dict):
    """LabelMap of a segments record on the scene's grid (labels ``segment_i`` ... ``segment_viii``)."""
    from ..types import Label, LabelMap, LabelTable

    lm = {k: np.asarray(v, float) for k, v in record["landmarks"].items()}
    seg, organ, box = segment_map(planner, record["structure"], lm)
    arr = np.zeros(planner.labelmap.volume.shape, np.uint8)
    sub = np.where(organ, seg + 1, 0).astype(np.uint8)
    arr[box] = sub
    table = LabelTable([Label(i + 1, f"segment_{name.lower()}", SEGMENT_RGB[name]) for i, name in enumerate(SEGMENTS)])
    return LabelMap(planner.labelmap.volume.with_array(arr), table)


def write_segment_meshes(planner, record: dict, record_id: str) -> dict[str, str]:
    """One closed mesh per segment (the mesh stage's own function) under meshes/segments/;
    returns {segment: relative path} for the viewer and the report's 3D pictures."""
    from pathlib import Path

    from ..config import load_pipeline_config
    from ..fileio import atomic_write
    from ..mesh import MeshConfig, labelmap_to_meshes

    if planner.scene.root is None:
        return {}
    cfg = MeshConfig.from_dict(load_pipeline_config().get("mesh"))
    out = {}
    for am in labelmap_to_meshes(segment_labelmap(planner, record), cfg):
        seg = SEGMENTS[am.label.id - 1]
        rel = f"meshes/segments/{record_id}_{seg}.ply"
        path = Path(planner.scene.root) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda p, mesh=am.mesh: mesh.export(str(p), file_type="ply", encoding="binary"))
        out[seg] = rel
    return out


def segments_record(planner, structure: str = "liver", landmarks: dict | None = None) -> dict:
    """Couinaud segments of ``structure``: volume, share and centroid of each; lesions' segments."""
    if structure not in planner.labelmap.labels:
        raise PlanningError(f"segments: structure '{structure}' is not in the label table")
    lm = landmarks_from(planner, landmarks)
    seg, organ, box = segment_map(planner, structure, lm)
    vol = planner.labelmap.volume
    total = int(organ.sum())
    rows = {}
    for i, name in enumerate(SEGMENTS):
        m = (seg == i) & organ
        n = int(m.sum())
        c = vol.index_to_lps((np.argwhere(m).mean(0) + [b.start for b in box])[None])[0] if n else None
        rows[name] = {"volume_ml": round(n * vol.voxel_volume_ml, 4), "percent": round(100 * n / total, 3),
                      "centroid_lps": None if c is None else lps_list(c)}
    lesions = {}
    for les in planner.lesions_of(structure):
        lm_ = planner.labelmap.array[box] == planner.labelmap.labels.by_name(les).id
        counts = np.bincount(seg[lm_].astype(np.int64), minlength=len(SEGMENTS)) if lm_.any() else np.zeros(len(SEGMENTS))
        lesions[les] = [SEGMENTS[i] for i in np.nonzero(counts)[0]]
    return {"kind": "segments", "structure": structure, "structures": [structure], "model": "Couinaud plane model",
            "landmarks": {k: lps_list(v) for k, v in lm.items()}, "segments": rows,
            "total_ml": round(total * vol.voxel_volume_ml, 4), "lesion_segments": lesions,
            "points": lps_list([lm[k] for k in (*LANDMARKS, "umbilical")]), "value": None, "unit": "ml",
            "warnings": [], "provenance": planner.provenance("pipeline.planning.segments.segments_record", [structure],
                                                               labelmap=True)}


def segment_resection_record(planner, segments, structure: str = "liver", landmarks: dict | None = None,
                             liver_state: str | None = None) -> dict:
    """Resection of whole segments: resected / remnant / FLR and lesion margins, like a cut."""
    from scipy import ndimage

    from .cut import _checks, future_liver_remnant
    from .rules import load_rules

    names = parse_segments(segments)
    lm = landmarks_from(planner, landmarks)
    seg, organ, box = segment_map(planner, structure, lm)
    vol = planner.labelmap.volume
    chosen = np.isin(seg, [SEGMENTS.index(s) for s in names])
    ml = vol.voxel_volume_ml
    total, res = int(organ.sum()), int((chosen & organ).sum())
    voxel = {"total_ml": round(total * ml, 4), "resected_ml": round(res * ml, 4), "remnant_ml": round((total - res) * ml, 4),
             "resected_percent": round(100 * res / total, 3), "remnant_percent": round(100 * (total - res) / total, 3)}
    inside = seg >= 0
    to_remnant = ndimage.distance_transform_edt(~(inside & ~chosen), sampling=vol.spacing)
    to_resected = ndimage.distance_transform_edt(~(inside & chosen), sampling=vol.spacing)
    margins = []
    for les in planner.lesions_of(structure):
        m = planner.labelmap.array[box] == planner.labelmap.labels.by_name(les).id
        if not m.any():
            continue
        frac = float((m & chosen).sum() / m.sum())
        side = "resected" if frac >= 0.5 else "remnant"
        wrong = m & (~chosen if side == "resected" else chosen)
        if wrong.any():
            d = -float((to_resected if side == "resected" else to_remnant)[wrong].max())
        else:
            d = float((to_remnant if side == "resected" else to_resected)[m].min())
        margins.append({"structure": les, "margin_mm": round(d, 2), "side": side, "crossed": bool(wrong.any()),
                        "structure_resected_percent": round(100 * frac, 3), "volume_ml": round(float(m.sum()) * ml, 4),
                        "resected_ml": round(float((m & chosen).sum()) * ml, 4)})
    rec = {"kind": "segments_resection", "structure": structure, "structures": [structure] + [g["structure"] for g in margins],
           "segments": names, "landmarks": {k: lps_list(v) for k, v in lm.items()}, "planes": [], "points": [],
           "unit": "%", "resected_ml": voxel["resected_ml"], "remnant_ml": voxel["remnant_ml"],
           "resected_percent": voxel["resected_percent"], "remnant_percent": voxel["remnant_percent"],
           "value": voxel["remnant_percent"], "voxel": voxel, "mesh": None, "meshes": {}, "warnings": [],
           "lesion_margins": margins}
    for g in margins:
        if g["crossed"]:
            rec["warnings"].append(f"the resection of segments {'-'.join(names)} crosses the lesion {g['structure']}: "
                                   f"margin {g['margin_mm']:.1f} mm")
    if margins:
        rec["flr"] = future_liver_remnant(voxel, margins)
    _checks(planner, rec, structure, liver_state, load_rules())
    rec["provenance"] = planner.provenance("pipeline.planning.segments.segment_resection_record", rec["structures"],
                                           labelmap=True)
    return rec
