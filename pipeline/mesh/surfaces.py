"""Surfaces per structure: mesh in index space, transform once with the affine.

One pass over the label map finds every structure's bounding box (``scipy.ndimage.find_objects``);
each structure is then meshed from its crop only:

1. **plan** the extraction grid: the face count a full-resolution iso-surface would have is
   estimated from the crop's boundary (a strided count), and when it is well above the
   structure's face budget the mask is **block-averaged** (partial-volume occupancy, float32)
   by whole-voxel factors per axis, so the iso-surface has about twice the budget's faces;
2. VTK flying edges at 0.5 (index space), windowed-sinc smoothing (non-shrinking) whose cost
   is bounded because the input is;
3. quadric decimation (fast_simplification) down to the budget; a decimation that pinches the
   surface (an edge not shared by exactly two faces) is never kept: the structure is
   re-extracted on a coarser grid instead, which is closed by construction, so a surface
   **always** meets its budget and is always closed (never the old fallback to millions of faces);
4. the volume is checked against the voxel count; outside ``max_volume_error_percent`` the
   structure is re-extracted on a finer grid (down to full resolution);
5. one affine transform into LPS mm.

Face budgets are per structure class (organ, vessel, body, bone; classes are chosen by name
patterns from the configuration), scaled down together when their sum would exceed the scene's
``total_faces``.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field, fields
from typing import Mapping

import numpy as np

from ..errors import ConfigError
from ..types import AnatomyMesh, LabelMap

DEFAULT_BUDGETS = {"organ": 25_000, "vessel": 20_000, "body": 30_000, "bone": 100_000}
DEFAULT_CLASSES = {  # first match wins; anything else is an "organ"
    "body": r"^(body|skin|body_.*)$",
    "bone": r"(bone|vertebra|rib_|^ribs?$|sacrum|femur|hip|pelvis|skull|humerus|scapula|clavicula|sternum|costal)",
    "vessel": r"(aorta|vena_cava|artery|arteries|vein|veins|portal|iliac|vessel|trunk|atrial_appendage)",
}


@dataclass(frozen=True)
class MeshConfig:
    smoothing_iterations: int = 20
    smoothing_passband: float = 0.1  # vtkWindowedSincPolyDataFilter: lower = smoother
    face_budget: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_BUDGETS))
    classes: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_CLASSES))
    total_faces: int = 350_000  # the whole scene; class budgets shrink together above it (software
    # OpenGL draws a first frame of 150 k faces in ~6 s, 530 k in ~21 s on 2 loaded cores)
    target_faces: int | None = None  # one budget for every structure (overrides face_budget)
    max_volume_error_percent: float = 1.0
    min_voxels: int = 10  # structures smaller than this get no mesh
    threads: int = 2

    @classmethod
    def from_dict(cls, d: Mapping | None, where: str = "mesh") -> "MeshConfig":
        """Validated construction: unknown keys and bad values name ``where.key``."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)}; "
                              f"known: {sorted(known)}", rule="known keys")
        budgets = {**DEFAULT_BUDGETS, **dict(d.get("face_budget") or {})}
        for k, v in budgets.items():
            if not isinstance(v, int) or v < 100:
                raise ConfigError(f"{where}.face_budget.{k} must be an integer >= 100; found {v!r}", rule="face budget")
        d["face_budget"] = budgets
        d["classes"] = {**DEFAULT_CLASSES, **dict(d.get("classes") or {})}
        for k, pat in d["classes"].items():
            try:
                re.compile(pat)
            except (re.error, TypeError) as e:
                raise ConfigError(f"{where}.classes.{k} must be a regular expression; found {pat!r} ({e})",
                                  rule="class pattern") from None
        for k in ("smoothing_iterations", "total_faces", "min_voxels", "threads"):
            if k in d and (not isinstance(d[k], int) or d[k] < 0):
                raise ConfigError(f"{where}.{k} must be a non-negative integer; found {d[k]!r}", rule="integer")
        if d.get("target_faces") is not None and (not isinstance(d["target_faces"], int) or d["target_faces"] < 100):
            raise ConfigError(f"{where}.target_faces must be null or an integer >= 100; found {d['target_faces']!r}",
                              rule="face budget")
        return cls(**d)

    def structure_class(self, name: str) -> str:
        for cls_name, pat in self.classes.items():
            if re.search(pat, name):
                return cls_name
        return "organ"

    def budget(self, name: str) -> int:
        if self.target_faces is not None:
            return int(self.target_faces)
        return int(self.face_budget.get(self.structure_class(name), self.face_budget.get("organ", 40_000)))


# -- VTK -------------------------------------------------------------------------------------

def _vtk_image(arr: np.ndarray):
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonDataModel import vtkImageData

    img = vtkImageData()
    nk, nj, ni = arr.shape
    img.SetDimensions(ni, nj, nk)  # VTK x fastest == our column axis i
    flat = np.ascontiguousarray(arr).ravel()
    img.GetPointData().SetScalars(numpy_support.numpy_to_vtk(flat, deep=True))
    return img


def _set_threads(n: int) -> None:
    from vtkmodules.vtkCommonCore import vtkSMPTools

    from ..config import cap_threads

    vtkSMPTools.SetBackend("STDThread")
    vtkSMPTools.Initialize(cap_threads(n) or 1)


def _iso_surface(field_: np.ndarray, cfg: MeshConfig, iso: float = 0.5, smooth: bool = True):
    """Closed iso-surface of an occupancy field; returns (vertices (k, j, i), faces)."""
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkFiltersCore import vtkFlyingEdges3D, vtkTriangleFilter, vtkWindowedSincPolyDataFilter

    fe = vtkFlyingEdges3D()
    fe.SetInputData(_vtk_image(field_))
    fe.SetValue(0, float(iso))
    fe.ComputeNormalsOff()
    fe.ComputeGradientsOff()
    fe.ComputeScalarsOff()
    out = fe
    if smooth and cfg.smoothing_iterations > 0:
        sm = vtkWindowedSincPolyDataFilter()
        sm.SetInputConnection(fe.GetOutputPort())
        sm.SetNumberOfIterations(cfg.smoothing_iterations)
        sm.SetPassBand(cfg.smoothing_passband)
        sm.BoundarySmoothingOff()
        sm.FeatureEdgeSmoothingOff()
        sm.NonManifoldSmoothingOn()
        sm.NormalizeCoordinatesOn()
        out = sm
    tri = vtkTriangleFilter()
    tri.SetInputConnection(out.GetOutputPort())
    tri.Update()
    poly = tri.GetOutput()
    if poly.GetNumberOfPoints() == 0:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    pts = numpy_support.vtk_to_numpy(poly.GetPoints().GetData()).astype(np.float64)
    faces = numpy_support.vtk_to_numpy(poly.GetPolys().GetConnectivityArray()).reshape(-1, 3).astype(np.int64)
    return pts[:, ::-1].copy(), faces  # VTK (x, y, z) == (i, j, k) -> (k, j, i)


# -- topology and volume in index space ------------------------------------------------------

def is_closed_manifold(faces: np.ndarray) -> bool:
    """Every edge shared by exactly two faces, each way round once (closed, consistently oriented)."""
    if len(faces) == 0:
        return False
    f = np.asarray(faces, dtype=np.int64)
    n = int(f.max()) + 1
    directed = np.concatenate([f[:, 0] * n + f[:, 1], f[:, 1] * n + f[:, 2], f[:, 2] * n + f[:, 0]])
    directed.sort()
    if np.any(directed[1:] == directed[:-1]):  # the same directed edge twice: pinched or flipped
        return False
    a, b = directed // n, directed % n
    reverse = np.sort(b * n + a)
    return bool(np.array_equal(reverse, directed))  # every directed edge has its twin


def signed_volume(verts: np.ndarray, faces: np.ndarray) -> float:
    """Signed volume (in the units of ``verts`` cubed) of a closed triangle mesh."""
    v = verts[faces]
    return float(np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6.0)


# -- planning the grid -----------------------------------------------------------------------

def _boundary_faces_estimate(crop: np.ndarray) -> float:
    """Voxel faces between inside and outside, counted on every 2nd slice/row/column (x 4)."""
    sub = crop[::2, ::2, ::2]
    n = sum(int(np.count_nonzero(np.diff(sub, axis=ax))) for ax in range(3))
    return 4.0 * n * 2.0  # stride 2 in the two in-plane directions of each face; ~2 faces per change


def _factors(spacing: np.ndarray, coarsen_mm: float) -> tuple[int, int, int]:
    """Whole-voxel block factors per axis so the block edge is about ``coarsen_mm``."""
    return tuple(max(1, int(round(coarsen_mm / s))) for s in spacing)  # type: ignore[return-value]


def _block_occupancy(crop: np.ndarray, fac: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Partial-volume occupancy of ``crop`` on blocks of ``fac`` voxels, with one empty block
    around; returns (float32 field, fine index of coarse voxel (0, 0, 0)'s centre relative to the
    crop's first voxel)."""
    fac_a = np.array(fac)
    shape = np.array(crop.shape)
    nblocks = -(-shape // fac_a) + 2  # ceil, plus an empty block each side
    padded = np.zeros(tuple(nblocks * fac_a), dtype=np.uint8)
    padded[fac[0]:fac[0] + shape[0], fac[1]:fac[1] + shape[1], fac[2]:fac[2] + shape[2]] = crop
    if fac == (1, 1, 1):
        return padded, np.full(3, -1.0)
    r = padded.reshape(nblocks[0], fac[0], nblocks[1], fac[1], nblocks[2], fac[2])
    occ = r.sum(axis=(1, 3, 5), dtype=np.uint16).astype(np.float32) / float(np.prod(fac_a))
    return occ, -fac_a + (fac_a - 1) / 2.0


def _unique_counts(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique values and their counts (sort-based; faster than hashing for these sizes)."""
    a = np.sort(a, kind="stable") if a.dtype.kind == "f" else np.sort(a)
    if len(a) == 0:
        return a, np.zeros(0, np.int64)
    starts = np.flatnonzero(np.concatenate([[True], a[1:] != a[:-1]]))
    return a[starts], np.diff(np.append(starts, len(a)))


def _contains(sorted_keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """``np.isin(queries, sorted_keys)`` for an already sorted ``sorted_keys``."""
    if len(sorted_keys) == 0:
        return np.zeros(len(queries), bool)
    pos = np.minimum(np.searchsorted(sorted_keys, queries), len(sorted_keys) - 1)
    return sorted_keys[pos] == queries


def _drop_fins(faces: np.ndarray) -> np.ndarray:
    """Remove every face whose vertex set occurs more than once (the decimator's zero-volume
    fins) and every degenerate face."""
    k = np.sort(faces, axis=1)
    n = int(faces.max()) + 1 if len(faces) else 1
    key = (k[:, 0] * n + k[:, 1]) * n + k[:, 2]
    u, c = _unique_counts(key)
    keep = ~_contains(u[c > 1], key)
    ok = (k[:, 0] != k[:, 1]) & (k[:, 1] != k[:, 2])
    return faces[keep & ok]


def _directed_edges(faces: np.ndarray):
    n = int(faces.max()) + 1
    d = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    return n, d, d[:, 0] * n + d[:, 1]


def _boundary_edges(faces: np.ndarray) -> np.ndarray:
    """Directed edges whose reverse no face uses (the rim of a hole)."""
    n, d, key = _directed_edges(faces)
    return d[~_contains(np.sort(key), d[:, 1] * n + d[:, 0])]


def _bad_vertices(faces: np.ndarray) -> np.ndarray:
    """Vertices where the surface is not a closed or open 2-manifold: on edges shared by more
    than two faces or used twice in one direction, or where two holes meet."""
    n, d, key = _directed_edges(faces)
    und = np.minimum(d[:, 0], d[:, 1]) * n + np.maximum(d[:, 0], d[:, 1])
    u, counts = _unique_counts(und)
    dk, dcounts = _unique_counts(key)
    bad = [u[counts > 2] // n, u[counts > 2] % n, dk[dcounts > 1] // n, dk[dcounts > 1] % n]
    boundary = d[~_contains(dk, d[:, 1] * n + d[:, 0])]
    if len(boundary):
        starts, c = _unique_counts(boundary[:, 0])
        bad.append(starts[c > 1])
    return np.unique(np.concatenate(bad))


def _boundary_loops(faces: np.ndarray) -> list[list[int]] | None:
    """Closed loops of boundary edges, each in the direction the faces use; None if ambiguous."""
    nxt: dict[int, int] = {}
    for a, b in _boundary_edges(faces).tolist():
        if a in nxt:
            return None  # a vertex where two holes meet
        nxt[a] = b
    loops, seen = [], set()
    for start in list(nxt):
        if start in seen:
            continue
        loop, v = [], start
        while v not in seen:
            seen.add(v)
            loop.append(v)
            if v not in nxt:
                return None
            v = nxt[v]
        if v != start:
            return None
        loops.append(loop)
    return loops


def _merge_coincident(verts: np.ndarray, faces: np.ndarray):
    """One vertex per float32 position (what a PLY round trip and trimesh's merge would do)."""
    b = verts.astype(np.float32).view(np.uint32)
    order = np.lexsort((b[:, 2], b[:, 1], b[:, 0]))
    sb = b[order]
    new = np.concatenate([[True], np.any(sb[1:] != sb[:-1], axis=1)])
    inv = np.empty(len(verts), np.int64)
    inv[order] = np.cumsum(new) - 1
    return verts[order[new]], inv[faces]


def _compact(verts: np.ndarray, faces: np.ndarray):
    used = np.flatnonzero(np.bincount(faces.ravel(), minlength=len(verts)))
    remap = np.full(len(verts), -1, np.int64)
    remap[used] = np.arange(len(used))
    return verts[used], remap[faces]


def _repair(verts: np.ndarray, faces: np.ndarray, rounds: int = 4):
    """Close what the decimator pinched: drop fins, cut out the faces around non-manifold edges
    and vertices, and fill each hole with a fan around its centroid. Returns (verts, faces)
    closed and consistently oriented (also after merging coincident vertices), or None."""
    verts, faces = _merge_coincident(verts, faces)
    faces = _drop_fins(faces)
    for _ in range(rounds):
        if len(faces) == 0:
            return None
        if is_closed_manifold(faces):
            return _compact(verts, faces)
        bad = _bad_vertices(faces)
        if len(bad):
            faces = faces[~_contains(bad, faces.ravel()).reshape(-1, 3).any(axis=1)]
            if len(faces) == 0:
                return None
        loops = _boundary_loops(faces)
        if loops is None:
            continue  # the next round cuts out where holes meet
        new_v, new_f = [verts], [faces]
        nv = len(verts)
        for loop in loops:
            ring = np.array(loop)
            new_v.append(verts[ring].mean(axis=0, keepdims=True))
            new_f.append(np.stack([np.roll(ring, -1), ring, np.full(len(ring), nv)], axis=1))  # faces use a->b: fill b->a
            nv += 1
        verts, faces = np.concatenate(new_v), _drop_fins(np.concatenate(new_f))
    return _compact(verts, faces) if len(faces) and is_closed_manifold(faces) else None


_DECIMATOR = threading.Lock()  # fast_simplification keeps its mesh in C++ globals: one call at a time


def _decimate(verts, faces, target: int):
    """Quadric decimation to ``target`` faces, closed (repaired where pinched); None if it can't be."""
    import fast_simplification

    for agg in (7, 3):
        with _DECIMATOR:
            v2, f2 = fast_simplification.simplify(verts.astype(np.float32), faces.astype(np.int32),
                                                  target_reduction=1.0 - 0.98 * target / len(faces), agg=agg)
        fixed = _repair(v2.astype(np.float64), f2.astype(np.int64))
        if fixed is not None and len(fixed[1]) <= target:
            return fixed
    return None


def _matched_iso(occ: np.ndarray, scale: np.ndarray, target_vol: float, cfg: MeshConfig) -> float:
    """The iso-level of a block-occupancy field whose (unsmoothed) surface encloses the voxel
    volume: 0.5 when that is close enough, else regula falsi on [0.15, 0.85] (volume falls as
    the level rises). Keeps thin parts (cortical bone, vessel walls) that a coarse grid at 0.5 loses."""
    def err(iso):
        v, f = _iso_surface(occ, cfg, iso, smooth=False)
        return (abs(signed_volume(v * scale, f)) - target_vol) / target_vol if len(f) else -1.0

    tol = cfg.max_volume_error_percent / 400.0
    e_mid = err(0.5)
    if abs(e_mid) <= tol:
        return 0.5
    lo, hi = (0.15, 0.5) if e_mid < 0 else (0.5, 0.85)
    e_lo, e_hi = (err(lo), e_mid) if e_mid < 0 else (e_mid, err(hi))
    if e_lo < 0 or e_hi > 0:  # the target is outside what the field can give: the nearer end
        return lo if e_lo < 0 else hi
    iso = 0.5
    for _ in range(6):
        iso = lo + (hi - lo) * e_lo / (e_lo - e_hi)
        e = err(iso)
        if abs(e) <= tol:
            break
        lo, e_lo, hi, e_hi = (iso, e, hi, e_hi) if e > 0 else (lo, e_lo, iso, e)
    return float(iso)


def _surface_at(crop: np.ndarray, fac, spacing: np.ndarray, voxel_vol: float, cfg: MeshConfig, budget: int):
    """(verts in crop index space, faces, iso) at block factor ``fac`` within ``budget``, or None.
    ``voxel_vol`` is the volume the iso-level search aims at."""
    occ, origin = _block_occupancy(crop, fac)
    scale = np.array(fac, dtype=np.float64) * spacing
    iso = _matched_iso(occ, scale, voxel_vol, cfg)
    verts, faces = _iso_surface(occ, cfg, iso)
    if len(faces) == 0:
        return None
    if len(faces) > budget:
        dec = _decimate(verts, faces, budget)
        if dec is None:
            return None
        verts, faces = dec
    elif not is_closed_manifold(faces):
        fixed = _repair(verts, faces)
        if fixed is None:
            return None
        verts, faces = fixed
    return verts * np.array(fac, dtype=np.float64) + origin, faces, iso


def crop_surface(crop: np.ndarray, spacing, cfg: MeshConfig, budget: int, voxels: int | None = None):
    """Closed surface of a 0/1 crop within ``budget`` faces, volume within the configured error
    of the voxel count where the grid allows; vertices in crop index space ``(k, j, i)``.

    Returns (verts, faces, info) or None when the crop holds no surface.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    voxels = int(np.count_nonzero(crop)) if voxels is None else voxels
    voxel_vol = voxels * float(np.prod(spacing))
    est = _boundary_faces_estimate(crop)
    # faces scale with 1 / edge^2: aim at about twice the budget before decimating
    coarsen = float(spacing.min()) * max(1.0, np.sqrt(est / (2.0 * budget)))
    tried: list = []
    best = None
    aim = voxel_vol  # what the iso-level search aims at; corrected once per grid for smoothing/decimation
    for _ in range(8):
        fac = _factors(spacing, coarsen)
        got = _surface_at(crop, fac, spacing, aim, cfg, budget)
        tried.append(fac)
        if got is None:  # the decimator pinched it beyond repair: a coarser grid
            coarsen = max(coarsen, float(np.max(np.array(fac) * spacing))) * 1.3
            aim = voxel_vol
            continue
        verts, faces, iso = got
        dev = 100.0 * (abs(signed_volume(verts * spacing, faces)) - voxel_vol) / max(voxel_vol, 1e-12)
        info = {"block_factor": list(fac), "iso_level": round(iso, 4), "volume_error_percent": round(dev, 3)}
        if best is None or abs(dev) < abs(best[2]["volume_error_percent"]):
            best = (verts, faces, info)
        if abs(dev) <= cfg.max_volume_error_percent:
            break
        if tried.count(fac) < 4:
            aim = aim / (1.0 + dev / 100.0)  # same grid, iso-level corrected by what smoothing/decimation changed
            continue
        if fac == (1, 1, 1):
            break
        finer = float(np.min(np.array(fac) * spacing)) / 1.5
        if est * (float(spacing.min()) / finer) ** 2 > 8 * budget:
            break  # a finer grid would cost far more than the budget: keep the best so far
        coarsen, aim = finer, voxel_vol
    if best is None:  # every grid pinched beyond repair (never seen): the coarsest grid, undecimated
        fac = tuple(max(1, s // 2) for s in crop.shape)
        got = _surface_at(crop, fac, spacing, voxel_vol, cfg, 10 ** 9)
        if got is None:
            return None
        best = (got[0], got[1], {"block_factor": list(fac), "iso_level": round(got[2], 4), "volume_error_percent": None})
    return best


def _lps_mesh(verts_index: np.ndarray, faces: np.ndarray, affine: np.ndarray):
    import trimesh

    # float32-representable vertices (0.01 um): PLY stores float32, so save -> load is exact
    lps = (verts_index @ affine[:3, :3].T + affine[:3, 3]).astype(np.float32).astype(np.float64)
    mesh = trimesh.Trimesh(lps, faces, process=False, validate=False)
    if np.linalg.det(affine[:3, :3]) * signed_volume(verts_index, faces) < 0:
        mesh.invert()  # the index->LPS map (and VTK's axis order) may mirror: keep normals outward
    return mesh


def mask_to_mesh(mask: np.ndarray, affine: np.ndarray, cfg: MeshConfig = MeshConfig(), budget: int | None = None):
    """Closed trimesh of a boolean mask ``[k, j, i]`` in the affine's space (LPS mm).

    Returns None if the mask has fewer than ``cfg.min_voxels`` voxels.
    """
    from scipy import ndimage

    m = np.asarray(mask).astype(np.uint8, copy=False)
    _set_threads(cfg.threads)
    sl = ndimage.find_objects(m)
    if not sl or sl[0] is None:
        return None
    return _mesh_crop(m[sl[0]], sl[0], affine, cfg, budget or cfg.target_faces or DEFAULT_BUDGETS["organ"])


def _mesh_crop(crop: np.ndarray, sl, affine: np.ndarray, cfg: MeshConfig, budget: int, with_info: bool = False):
    voxels = int(np.count_nonzero(crop))
    if voxels < cfg.min_voxels:
        return None
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    got = crop_surface(crop, spacing, cfg, budget, voxels)
    if got is None:
        return None
    verts, faces, info = got
    lo = np.array([s.start for s in sl], dtype=np.float64)
    mesh = _lps_mesh(verts + lo, faces, affine)
    return (mesh, voxels, info) if with_info else mesh


def mesh_qa(mesh, voxel_volume_ml: float) -> dict:
    """Volume, deviation from the voxel volume, closedness, faces and area of one surface
    (closedness measured on the faces, not assumed: every edge used once each way round)."""
    v = np.asarray(mesh.vertices)
    f = np.asarray(mesh.faces)
    watertight = is_closed_manifold(f)
    vol = abs(signed_volume(v, f)) / 1000.0 if watertight else None
    dev = None if vol is None or voxel_volume_ml == 0 else 100.0 * (vol - voxel_volume_ml) / voxel_volume_ml
    tri = v[f]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum()
    return {
        "volume_ml": None if vol is None else round(vol, 4),
        "voxel_volume_ml": round(float(voxel_volume_ml), 4),
        "watertight": watertight,
        "deviation_percent": None if dev is None else round(float(dev), 3),
        "n_faces": int(len(f)),
        "area_mm2": round(float(area), 2),
    }


def mesh_stage_record(meshes: list[AnatomyMesh], cfg: MeshConfig, duration_s: float, peak_rss_mb: float | None = None):
    """The mesh stage's provenance record (faces, volumes and closedness per structure)."""
    from ..config import config_hash, software_versions
    from ..types import StageRecord

    return StageRecord(
        "mesh", software_versions("vtk", "trimesh", "fast-simplification"), config_hash(cfg.__dict__),
        inputs={"labelmap": "labels.nii.gz"},
        outputs={m.name: {"faces": m.qa["n_faces"], "volume_ml": m.qa["volume_ml"],
                          "voxel_volume_ml": m.qa["voxel_volume_ml"], "watertight": m.qa["watertight"]} for m in meshes},
        duration_s=round(duration_s, 3), peak_rss_mb=peak_rss_mb)


def scene_budgets(names: list[str], cfg: MeshConfig) -> dict[str, int]:
    """Each structure's face budget, all scaled down together to fit ``cfg.total_faces``."""
    raw = {n: cfg.budget(n) for n in names}
    total = sum(raw.values())
    scale = min(1.0, cfg.total_faces / total) if total else 1.0
    return {n: max(500, int(b * scale)) for n, b in raw.items()}


def labelmap_to_meshes(labelmap: LabelMap, cfg: MeshConfig = MeshConfig(), names=None) -> list[AnatomyMesh]:
    """One AnatomyMesh per structure present in the label map (LPS mm, outward normals).

    Structures are meshed concurrently on ``cfg.threads`` threads (largest first; VTK and numpy
    release the GIL; the decimator, whose state is global, runs one call at a time), each from
    its own crop, so the cost follows the structures' sizes, not the label map's.
    """
    from concurrent.futures import ThreadPoolExecutor

    from scipy import ndimage

    from ..config import cap_threads

    arr = labelmap.array
    affine = labelmap.volume.affine
    voxel_ml = labelmap.volume.voxel_volume_ml
    if arr.dtype.kind not in "ui":
        arr = arr.astype(np.int64)
    boxes = ndimage.find_objects(arr) if arr.size and arr.max() > 0 else []
    wanted = [l for l in labelmap.labels if (names is None or l.name in names)
              and l.id <= len(boxes) and boxes[l.id - 1] is not None]
    budgets = scene_budgets([l.name for l in wanted], cfg)

    def one(label):
        sl = boxes[label.id - 1]
        got = _mesh_crop(arr[sl] == label.id, sl, affine, cfg, budgets[label.name], with_info=True)
        if got is None:
            return None
        mesh, voxels, info = got
        qa = mesh_qa(mesh, voxels * voxel_ml)
        qa.update({"face_budget": budgets[label.name], "structure_class": cfg.structure_class(label.name), **info})
        return AnatomyMesh(label, mesh, qa)

    workers = max(1, cap_threads(cfg.threads) or 1)
    _set_threads(1 if workers > 1 and len(wanted) > 1 else workers)
    size = {l.id: int(np.prod([s.stop - s.start for s in boxes[l.id - 1]])) for l in wanted}
    order = sorted(wanted, key=lambda l: -size[l.id])
    with ThreadPoolExecutor(workers) as pool:
        done = {m.label.id: m for m in pool.map(one, order) if m is not None}
    return [done[l.id] for l in wanted if l.id in done]
