"""Lesions (tumour, nodule, cyst) from one seed point: classic semi-automatic segmentation.

Method (region growing with a data-driven threshold, as in 3D Slicer's seeded tools):

1. a box of ``max_radius_mm`` around the seed (LPS mm) is cut out of the CT and smoothed
   (SimpleITK recursive Gaussian, ``smoothing_mm``);
2. the lesion's intensity is the median in a small ball around the seed, the organ's the
   median of the host structure in the box (``--within``, else the structure under the seed);
3. the threshold lies halfway between them; SimpleITK ConnectedThreshold grows the region from
   the seed over voxels on the lesion's side of it, inside the (hole-filled) host structure;
4. an opening (a ball of ``opening_mm``) cuts thin bridges into the organ, the seed's component is kept, holes are filled.

A region that reaches the edge of the search box is refused (a leak, or a lesion larger than
the box): the error says so. The lesion becomes a structure: a new label, carved out of the
host's label (the host's volume drops by the lesion's), a closed mesh (the mesh stage's own
function), a colour and QC, and a ``lesions`` plan record with its volume, RECIST long and
short axes (longest diameter in an axial plane and the longest diameter perpendicular to it,
on the mesh's axial sections) and its centroid, all in LPS mm.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import PlanningError
from .records import check_point, lps_list

LESION_RGB = (230, 215, 60)
LESION_CODE = "52988006"  # SNOMED CT "Lesion"
DEFAULTS = {"max_radius_mm": 60.0, "smoothing_mm": 1.5, "seed_radius_mm": 3.0, "min_contrast_hu": 15.0,
            "opening_mm": 2.0}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def _box(seed_idx: np.ndarray, shape, spacing, radius_mm: float) -> tuple[slice, ...]:
    half = np.ceil(radius_mm / np.asarray(spacing)).astype(int)
    lo = np.maximum(seed_idx - half, 0)
    hi = np.minimum(seed_idx + half + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _smooth(arr: np.ndarray, spacing, sigma_mm: float) -> np.ndarray:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr.astype(np.float32))
    img.SetSpacing([float(s) for s in spacing[::-1]])  # sitk axes are (i, j, k)
    if sigma_mm > 0:
        img = sitk.SmoothingRecursiveGaussian(img, float(sigma_mm))
    return sitk.GetArrayFromImage(img)


def _grow(smooth: np.ndarray, allowed: np.ndarray, seed: tuple, lower: float, upper: float) -> np.ndarray:
    import SimpleITK as sitk

    work = np.where(allowed, smooth, np.float32(-1e6)).astype(np.float32)
    grown = sitk.ConnectedThreshold(sitk.GetImageFromArray(work), seedList=[tuple(int(x) for x in seed[::-1])],
                                    lower=float(lower), upper=float(upper), replaceValue=1)
    return sitk.GetArrayFromImage(grown).astype(bool)


def _ball(radius_mm: float, spacing) -> np.ndarray:
    """Ellipsoidal structuring element of ``radius_mm`` on an anisotropic grid (>= 1 voxel)."""
    r = np.maximum(np.rint(radius_mm / np.asarray(spacing, float)), 1).astype(int)
    g = np.meshgrid(*(np.arange(-x, x + 1) / x for x in r), indexing="ij")
    return sum(a * a for a in g) <= 1.0


def _clean(mask: np.ndarray, seed: tuple, opening_mm: float, spacing) -> np.ndarray:
    from scipy import ndimage

    opened = ndimage.binary_opening(mask, structure=_ball(opening_mm, spacing)) if opening_mm > 0 else mask
    if not opened.any():  # a lesion smaller than the opening: keep it unopened
        opened = mask
    lab, n = ndimage.label(opened)
    if n == 0:
        return opened
    k = lab[seed]
    if k == 0:  # the seed sat on a bridge the opening removed: the largest piece
        k = int(np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    return ndimage.binary_fill_holes(lab == k)


def recist_axes(mesh) -> dict:
    """RECIST long axis (longest diameter in an axial plane, z = const in LPS) and short axis
    (the longest diameter perpendicular to it in the same plane), from axial mesh sections
    every 0.5 mm."""
    from scipy.spatial import ConvexHull, QhullError

    v = np.asarray(mesh.vertices)
    z0, z1 = v[:, 2].min(), v[:, 2].max()
    best = {"long_axis_mm": 0.0, "short_axis_mm": 0.0, "z_mm": None, "long_axis_points": None}
    for z in np.arange(z0 + 0.25, z1, 0.5):
        sec = mesh.section(plane_origin=[0, 0, z], plane_normal=[0, 0, 1])
        if sec is None or len(sec.vertices) < 3:
            continue
        xy = np.asarray(sec.vertices)[:, :2]
        try:
            hull = xy[ConvexHull(xy).vertices]
        except QhullError:
            continue
        d = np.linalg.norm(hull[:, None] - hull[None], axis=2)
        a, b = np.unravel_index(np.argmax(d), d.shape)
        if d[a, b] > best["long_axis_mm"]:
            u = (hull[b] - hull[a]) / d[a, b]
            perp = hull @ np.array([-u[1], u[0]])
            best = {"long_axis_mm": float(d[a, b]), "short_axis_mm": float(perp.max() - perp.min()), "z_mm": float(z),
                    "long_axis_points": [[*hull[a], z], [*hull[b], z]]}
    best["long_axis_mm"] = round(best["long_axis_mm"], 2)
    best["short_axis_mm"] = round(best["short_axis_mm"], 2)
    if best["long_axis_points"] is not None:
        best["long_axis_points"] = lps_list(best["long_axis_points"])
    return best


def _host(planner, lm, seed_idx: tuple, within: str | None) -> str | None:
    from .rules import load_rules

    if within is not None:
        if within not in lm.labels:
            raise PlanningError(f"lesion: --within structure '{within}' is not in the label table; known: {lm.labels.names}")
        return within
    sid = int(lm.array[seed_idx])
    if sid == 0:
        return None
    name = lm.labels.by_id(sid).name
    if load_rules().structure_class(name)["class"] == "envelope":
        return None
    from ..export.dicom_seg import TUMOUR_WORDS

    if any(w in name for w in TUMOUR_WORDS) or any(r.get("name") == name for r in planner.scene.plan.get("lesions", [])):
        raise PlanningError(f"lesion: the seed lies in '{name}', which is already a lesion; seed another lesion, or "
                            f"give --within ORGAN to grow inside an organ")
    return name


def _new_label(scene, name: str | None):
    from ..types import Label

    used = {l.id for l in scene.labels}
    names = set(scene.labels.names)
    if name is None:
        n = 1
        while f"lesion_{n}" in names:
            n += 1
        name = f"lesion_{n}"
    if not _NAME.match(name):
        raise PlanningError(f"lesion name must be lower_snake_case (letters, digits, _); found {name!r}")
    if name in names:
        raise PlanningError(f"lesion: a structure named '{name}' already exists; choose another --name")
    lid = max(used, default=0) + 1
    return Label(lid, name, LESION_RGB, code=LESION_CODE)


def segment_lesion(planner, seed, *, name: str | None = None, within: str | None = None,
                   options: dict | None = None) -> dict:
    """Segment a lesion from ``seed`` (LPS mm), add it to the scene on disk, return its record.

    The scene's label map, the host's and the lesion's meshes and scene.json are rewritten; the
    record (kind ``lesion``) still has to be added to the plan (:meth:`Planner.add_lesion`).
    """
    from scipy import ndimage

    opts = {**DEFAULTS, **(options or {})}
    scene = planner.scene
    seed = check_point(seed, "lesion seed")
    lm = planner.labelmap
    image = scene.load_image()
    vol = lm.volume
    idx = np.rint(vol.lps_to_index(seed[None])[0]).astype(int)
    if np.any(idx < 0) or np.any(idx >= np.array(vol.shape)):
        lo, hi = vol.index_to_lps(np.zeros(3)), vol.index_to_lps(np.array(vol.shape) - 1)
        raise PlanningError(f"lesion seed {seed.tolist()} (LPS mm) must lie inside the image; its grid spans "
                            f"{np.round(lo, 1).tolist()} to {np.round(hi, 1).tolist()}", path=str(scene.root))
    seed_idx = tuple(int(x) for x in idx)
    host = _host(planner, lm, seed_idx, within)
    box = _box(idx, vol.shape, vol.spacing, opts["max_radius_mm"])
    lab = lm.array[box]
    local_seed = tuple(int(i - b.start) for i, b in zip(idx, box))
    if host is not None:
        allowed = ndimage.binary_fill_holes(lab == lm.labels.by_name(host).id)
    else:
        envelope = [l.id for l in lm.labels if l.name in ("body", "skin")]
        allowed = (lab == 0) | np.isin(lab, envelope)
    if not allowed[local_seed]:
        raise PlanningError(f"lesion seed {seed.tolist()} must lie inside {host or 'unlabelled tissue'}; it lies in "
                            f"{lm.labels.by_id(int(lab[local_seed])).name if lab[local_seed] else 'background'}")
    smooth = _smooth(np.asarray(image.array[box], np.float32), vol.spacing, opts["smoothing_mm"])
    kk, jj, ii = np.meshgrid(*(np.arange(b.stop - b.start) for b in box), indexing="ij")
    off = np.stack([kk - local_seed[0], jj - local_seed[1], ii - local_seed[2]], -1) * np.asarray(vol.spacing)
    ball = (np.linalg.norm(off, axis=-1) <= max(opts["seed_radius_mm"], float(max(vol.spacing)))) & allowed
    m_lesion = float(np.median(smooth[ball]))
    far = allowed & ~ndimage.binary_dilation(ball, iterations=2)
    if host is None or not far.any():
        raise PlanningError("lesion: give --within STRUCTURE (the organ holding the lesion): the lesion is grown "
                            "against its host organ's intensity")
    m_host = float(np.median(smooth[far]))
    contrast = m_lesion - m_host
    if abs(contrast) < opts["min_contrast_hu"]:
        raise PlanningError(f"lesion: no contrast at the seed: {m_lesion:.0f} HU there, {m_host:.0f} HU in {host} "
                            f"(at least {opts['min_contrast_hu']:g} HU needed); place the seed inside the lesion")
    mid = (m_lesion + m_host) / 2
    spread = max(4 * float(np.std(smooth[ball])), 2 * abs(contrast))
    lower, upper = (m_lesion - spread, mid) if contrast < 0 else (mid, m_lesion + spread)
    region = _clean(_grow(smooth, allowed, local_seed, lower, upper), local_seed, float(opts["opening_mm"]), vol.spacing)
    n = int(region.sum())
    if n < 5:
        raise PlanningError(f"lesion: the region grown from the seed has {n} voxels; place the seed inside the lesion")
    edge = [region.take(0, axis=a).any() or region.take(-1, axis=a).any() for a in range(3)]
    touches_image_edge = [box[a].start == 0 or box[a].stop == vol.shape[a] for a in range(3)]
    if any(e and not t for e, t in zip(edge, touches_image_edge)):
        raise PlanningError(f"lesion: the region reached the {opts['max_radius_mm']:g} mm search limit around the seed "
                            f"(it leaks into {host}, or the lesion is larger): check the seed, or raise max_radius_mm")
    label = _new_label(scene, name)
    return _apply(planner, label, host, region, box, seed, image, {
        "name": "connected threshold region growing (SimpleITK ConnectedThreshold)",
        "lower_hu": round(lower, 1), "upper_hu": round(upper, 1), "lesion_median_hu": round(m_lesion, 1),
        "host_median_hu": round(m_host, 1), **{k: opts[k] for k in DEFAULTS}}, opts)


def _apply(planner, label, host, region, box, seed, image, method: dict, opts: dict) -> dict:
    """Carve the lesion into the label map, mesh it and its host, update the scene on disk."""
    from ..config import load_pipeline_config
    from ..fileio import atomic_write
    from ..geometry import write_image_file
    from ..mesh import MeshConfig, labelmap_to_meshes
    from ..scene.scene import save_scene
    from ..types import LabelMap, LabelTable

    scene = planner.scene
    lm = planner.labelmap
    arr = np.array(lm.array, copy=True)
    if not np.issubdtype(arr.dtype, np.integer) or label.id > np.iinfo(arr.dtype).max:
        arr = arr.astype(np.int32)
    sub = arr[box]
    sub[region] = label.id
    arr[box] = sub
    table = LabelTable([*scene.labels, label])
    new_lm = LabelMap(lm.volume.with_array(arr), table)
    root = Path(scene.root)
    write_image_file(new_lm.volume, root / scene.labelmap, new_lm.file_array())
    cfg = MeshConfig.from_dict(load_pipeline_config().get("mesh"))
    names = {label.name} | ({host} if host else set())
    meshes = {m.name: m for m in labelmap_to_meshes(new_lm, cfg, names=names)}
    if label.name not in meshes:
        raise PlanningError(f"lesion: '{label.name}' is too small to mesh ({int(region.sum())} voxels)")
    for nm, am in meshes.items():
        rel = f"meshes/{nm}.ply"
        am.qa["mesh_path"] = rel
        atomic_write(root / rel, lambda p, mesh=am.mesh: mesh.export(str(p), file_type="ply", encoding="binary"))
    vox_ml = lm.volume.voxel_volume_ml
    qc_all = scene.extra.setdefault("qc", {})
    hu = np.asarray(image.array[box], np.float64)[region]
    lesion_qc = {"id": label.id, "voxels": int(region.sum()), "volume_ml": round(float(region.sum()) * vox_ml, 3),
                 "mean_hu": round(float(hu.mean()), 2), "sd_hu": round(float(hu.std()), 2), "truncated": False,
                 "expected_ml": None, "in_range": None, "warning": None, "plausible": True, "flags": [],
                 "lesion_of": host}
    qc_all[label.name] = lesion_qc
    meshes[label.name].qa["qc"] = lesion_qc
    if host:
        n_host = int(np.count_nonzero(arr == table.by_name(host).id))
        hq = qc_all.setdefault(host, {})
        hq.update(voxels=n_host, volume_ml=round(n_host * vox_ml, 3))
        meshes[host].qa["qc"] = hq
    present = set(scene.structure_names)
    new_list = [meshes.get(m.name, m) for m in scene.meshes] + [m for n, m in meshes.items() if n not in present]
    scene.meshes, scene.labels = new_list, table
    planner._labelmap = new_lm
    for nm in names:
        planner._index.pop(nm, None)
    save_scene(scene, write_meshes=False)
    rec_mesh = meshes[label.name].mesh
    axes = recist_axes(rec_mesh)
    kji = np.argwhere(region) + [b.start for b in box]
    centroid = lm.volume.index_to_lps(kji.mean(0)[None])[0]
    warnings = []
    if any(box[a].start == 0 and region.take(0, axis=a).any() or box[a].stop == lm.volume.shape[a]
           and region.take(-1, axis=a).any() for a in range(3)):
        warnings.append(f"{label.name} is cut by the edge of the scan: its volume and axes are of the part scanned")
    vol_ml = float(region.sum()) * vox_ml
    return {"kind": "lesion", "name": label.name, "label": label.id, "within": host, "seed_lps": lps_list(seed),
            "volume_ml": round(vol_ml, 4), "mesh_volume_ml": meshes[label.name].qa.get("volume_ml"),
            "long_axis_mm": axes["long_axis_mm"], "short_axis_mm": axes["short_axis_mm"],
            "recist_z_mm": axes["z_mm"], "long_axis_points": axes["long_axis_points"],
            "centroid_lps": lps_list(centroid), "mean_hu": lesion_qc["mean_hu"], "method": method,
            "options": {k: opts[k] for k in DEFAULTS}, "points": lps_list([seed]), "value": round(vol_ml, 4),
            "unit": "ml", "structures": [label.name] + ([host] if host else []), "warnings": warnings,
            "provenance": planner.provenance("pipeline.planning.lesion.segment_lesion", [label.name], labelmap=True)}
