"""Exact minimum distances between meshes, points and segments, pruned with k-d trees.

The pruning is a bound, not a heuristic, so results are exact (up to float rounding):

* A vertex-to-vertex nearest distance ``d0`` (k-d tree) bounds the true minimum ``d*`` from
  above. If triangles ``ta`` and ``tb`` hold the closest pair, each vertex of ``ta`` lies
  within ``L_A`` (its longest edge) of that pair's point, so every vertex of ``ta`` is within
  ``d0 + L_A + L_B`` of some vertex of B. Only triangles whose *all* vertices pass that test
  can hold the minimum; triangle pairs are then kept only if their centroids are within
  ``d0 + R_A + R_B`` (``R``: largest centroid-to-vertex radius) and solved exactly with
  :func:`kernels.triangle_pair_distance`.
* Segments (trajectories) use the same bound with vertex-to-segment distances.

Meshes are trimesh.Trimesh in LPS mm (closed, outward normals, as the mesh stage writes them).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import PlanningError
from . import kernels

_PAIR_CHUNK = 200_000


@dataclass
class MeshIndex:
    """Per-mesh arrays and k-d trees reused across queries (build once per structure).

    Attributes
    ----------
    vertices : (nv, 3) float, faces : (nf, 3) int, triangles : (nf, 3, 3) float
    max_edge : float, longest edge (mm); radius : (nf,) centroid-to-vertex radii (mm)
    """

    name: str
    vertices: np.ndarray
    faces: np.ndarray
    triangles: np.ndarray = field(repr=False)
    centroids: np.ndarray = field(repr=False)
    radius: np.ndarray = field(repr=False)
    max_edge: float = 0.0
    bounds: np.ndarray = field(default=None, repr=False)  # (2, 3)
    _vtree: object = field(default=None, repr=False)

    @classmethod
    def from_mesh(cls, mesh, name: str = "") -> "MeshIndex":
        v = np.asarray(mesh.vertices, dtype=np.float64)
        f = np.asarray(mesh.faces, dtype=np.int64)
        if len(f) == 0:
            raise PlanningError(f"structure '{name}': mesh must have triangles; found none")
        tri = v[f]
        cen = tri.mean(axis=1)
        rad = np.linalg.norm(tri - cen[:, None], axis=2).max(axis=1)
        edges = np.linalg.norm(tri - np.roll(tri, 1, axis=1), axis=2)
        return cls(name, v, f, tri, cen, rad, float(edges.max()), np.array([v.min(0), v.max(0)]))

    @property
    def vtree(self):
        if self._vtree is None:
            from scipy.spatial import cKDTree

            self._vtree = cKDTree(self.vertices)
        return self._vtree

    def contains(self, points: np.ndarray) -> np.ndarray:
        """(m,) bool: points inside the closed surface (winding number > 0.5)."""
        points = np.atleast_2d(np.asarray(points, dtype=np.float64))
        inside = np.zeros(len(points), dtype=bool)
        box = np.all((points >= self.bounds[0]) & (points <= self.bounds[1]), axis=1)
        if box.any():
            inside[box] = kernels.winding_number(points[box], self.triangles) > 0.5
        return inside


def as_index(mesh_or_index, name: str = "") -> MeshIndex:
    return mesh_or_index if isinstance(mesh_or_index, MeshIndex) else MeshIndex.from_mesh(mesh_or_index, name)


@dataclass
class ClosestPair:
    """Result of a minimum-distance query. ``distance`` 0 when the surfaces touch or cross."""

    distance: float
    point_a: np.ndarray  # (3,) LPS mm on the first operand
    point_b: np.ndarray  # (3,) LPS mm on the second operand
    overlap: bool = False  # the solids share volume (surfaces cross or one holds the other)
    n_pairs_checked: int = 0


def _solve_pairs(ta: np.ndarray, tb: np.ndarray, ia: np.ndarray, ib: np.ndarray, lower: np.ndarray | None = None):
    """Exact minimum over triangle pairs; with per-pair ``lower`` bounds, pairs are solved in
    increasing order of bound and the search stops once no remaining pair can do better."""
    if lower is not None:
        order = np.argsort(lower, kind="stable")
        ia, ib, lower = ia[order], ib[order], lower[order]
    best = (np.inf, None, None)
    chunk = _PAIR_CHUNK if lower is None else 4096
    for s in range(0, len(ia), chunk):
        if lower is not None and lower[s] > best[0]:
            break
        d, pa, pb = kernels.triangle_pair_distance(ta[ia[s:s + chunk]], tb[ib[s:s + chunk]])
        k = int(np.argmin(d))
        if d[k] < best[0]:
            best = (float(d[k]), pa[k], pb[k])
    return best


def _prune_pairs(A: MeshIndex, B: MeshIndex, ia, ib, centroid_dist, upper: float):
    """Drop triangle pairs whose lower bound exceeds ``upper``.

    Bounds: bounding spheres (centroid distance minus radii), then the separating axis
    through the centroids (the gap between the triangles' projections on it), which is tight
    for facing surfaces, so long parallel contacts do not explode into quadratic pair counts.
    """
    keep = centroid_dist - A.radius[ia] - B.radius[ib] <= upper
    ia, ib, cd = ia[keep], ib[keep], centroid_dist[keep]
    u = (B.centroids[ib] - A.centroids[ia]) / np.maximum(cd, 1e-12)[:, None]
    gap = (np.einsum("nkd,nd->nk", B.triangles[ib], u).min(axis=1)
           - np.einsum("nkd,nd->nk", A.triangles[ia], u).max(axis=1))
    keep = gap <= upper
    return ia[keep], ib[keep], np.maximum(gap[keep], 0.0)


def mesh_distance(a, b) -> ClosestPair:
    """Exact minimum distance between two closed meshes with the two closest points.

    Parameters
    ----------
    a, b : trimesh.Trimesh or :class:`MeshIndex` (LPS mm)

    Returns
    -------
    ClosestPair; ``overlap`` is True when the solids intersect or one contains the other
    (then ``distance`` is 0 and the points are where the surfaces cross, or the closest
    surface points when one solid lies wholly inside the other).
    """
    from scipy.spatial import cKDTree

    A, B = as_index(a, "a"), as_index(b, "b")
    # an upper bound from a vertex sample keeps the full nearest-vertex queries local
    # (unbounded k-d tree queries between far-apart meshes cost ~1 s per 100k vertices)
    sample = A.vertices[:: max(1, len(A.vertices) // 2000)]
    upper = float(B.vtree.query(sample)[0].min()) + A.max_edge + B.max_edge
    dA, _ = B.vtree.query(A.vertices, distance_upper_bound=upper)
    dB, _ = A.vtree.query(B.vertices, distance_upper_bound=upper)
    d0 = float(min(dA.min(), dB.min()))
    reach = d0 + A.max_edge + B.max_edge
    fa = np.nonzero(dA[A.faces].max(axis=1) <= reach)[0]
    fb = np.nonzero(dB[B.faces].max(axis=1) <= reach)[0]
    if len(fa) == 0 or len(fb) == 0:  # cannot happen by the bound; guard float edge cases
        fa, fb = np.arange(len(A.faces)), np.arange(len(B.faces))
    r = d0 + A.radius[fa].max() + B.radius[fb].max()
    pairs = cKDTree(A.centroids[fa]).sparse_distance_matrix(cKDTree(B.centroids[fb]), r, output_type="ndarray")
    ia, ib = fa[pairs["i"]], fb[pairs["j"]]
    ia, ib, lower = _prune_pairs(A, B, ia, ib, pairs["v"], d0)
    dist, pa, pb = _solve_pairs(A.triangles, B.triangles, ia, ib, lower)
    overlap = dist <= 1e-9
    if not overlap:  # no crossing: one solid may still hold the other entirely
        overlap = bool(B.contains(A.vertices[:1])[0] or A.contains(B.vertices[:1])[0])
    return ClosestPair(dist if not overlap else 0.0, np.asarray(pa), np.asarray(pb), overlap, len(ia))


def closest_point_on_mesh(mesh, point) -> tuple[np.ndarray, float, bool]:
    """Exact closest surface point to ``point`` (3,) LPS mm.

    Returns
    -------
    closest : (3,) float; distance : float (mm, unsigned); inside : bool
    """
    from trimesh.triangles import closest_point

    M = as_index(mesh)
    p = np.asarray(point, dtype=np.float64).reshape(3)
    d0, _ = M.vtree.query(p)
    cand = np.nonzero(np.linalg.norm(M.centroids - p, axis=1) <= d0 + M.radius)[0]
    c = closest_point(M.triangles[cand], np.broadcast_to(p, (len(cand), 3)))
    d = np.linalg.norm(c - p, axis=1)
    k = int(np.argmin(d))
    return c[k], float(d[k]), bool(M.contains(p[None])[0])


@dataclass
class SegmentQuery:
    """Segment-to-mesh result. ``crossings``: sorted parameters (0..1) where it crosses the
    surface; ``inside_length`` mm of the segment inside the solid."""

    distance: float
    point_on_segment: np.ndarray
    point_on_mesh: np.ndarray
    t: float
    crossings: np.ndarray
    inside_length: float
    contains_start: bool
    contains_end: bool


def segment_distance(mesh, start, end) -> SegmentQuery:
    """Exact minimum distance from the segment ``[start, end]`` (LPS mm) to a closed mesh.

    The minimum is at a segment end against a triangle or at the segment against a triangle
    edge, unless the segment crosses the surface (distance 0).
    """
    from trimesh.triangles import closest_point

    M = as_index(mesh)
    p = np.asarray(start, dtype=np.float64).reshape(3)
    q = np.asarray(end, dtype=np.float64).reshape(3)
    length = float(np.linalg.norm(q - p))
    cv, _ = kernels.point_segment(M.vertices, p, q)
    dv = np.linalg.norm(M.vertices - cv, axis=1)
    reach = float(dv.min()) + M.max_edge
    cand = np.nonzero(dv[M.faces].max(axis=1) <= reach)[0]
    tri = M.triangles[cand]
    # candidates: segment ends against each triangle, the segment against each edge
    seg_pts = [np.broadcast_to(p, (len(cand), 3)), np.broadcast_to(q, (len(cand), 3))]
    mesh_pts = [closest_point(tri, seg_pts[0]), closest_point(tri, seg_pts[1])]
    for e in range(3):
        cs, cm = kernels.segment_segment(p, q, tri[:, e], tri[:, (e + 1) % 3])
        seg_pts.append(cs)
        mesh_pts.append(cm)
    S = np.concatenate(seg_pts)
    Mp = np.concatenate(mesh_pts)
    d = np.linalg.norm(S - Mp, axis=1)
    k = int(np.argmin(d))
    best_d, best_s, best_m = float(d[k]), S[k], Mp[k]
    hit, th = kernels.segment_triangle_hits(p, q, tri)
    ts = np.unique(np.round(th[hit], 9)) if hit.any() else np.zeros(0)
    if len(ts):
        x = p + ts[0] * (q - p)
        best_d, best_s, best_m = 0.0, x, x
    inside_ends = M.contains(np.stack([p, q]))
    # length inside: classify the pieces between crossings by their mid-points
    knots = np.concatenate([[0.0], ts, [1.0]])
    mids = (knots[:-1] + knots[1:]) / 2
    pieces = np.diff(knots)
    inside_len = 0.0
    if len(ts):
        inside = M.contains(p + mids[:, None] * (q - p))
        inside_len = float(pieces[inside].sum() * length)
    elif inside_ends[0]:
        inside_len = length
    t = float(np.dot(best_s - p, q - p) / max(length ** 2, 1e-12))
    return SegmentQuery(best_d, best_s, best_m, t, ts, inside_len, bool(inside_ends[0]), bool(inside_ends[1]))


def brute_force_mesh_distance(a, b) -> float:
    """Reference for tests: every triangle pair solved exactly (O(n*m); small meshes only)."""
    A, B = as_index(a), as_index(b)
    ia, ib = np.meshgrid(np.arange(len(A.faces)), np.arange(len(B.faces)), indexing="ij")
    return _solve_pairs(A.triangles, B.triangles, ia.ravel(), ib.ravel())[0]
