"""Vectorised exact primitives for planning geometry (all inputs in LPS mm).

Every function works on *n* independent pairs at once (numpy broadcasting), so callers
prune candidates with a k-d tree first and then solve the survivors exactly. Point-triangle
closest points come from :func:`trimesh.triangles.closest_point` (Ericson's
"ClosestPtPointTriangle"); what trimesh lacks (segment-segment closest points, segment-
triangle crossing, generalised winding numbers) is here.
"""
from __future__ import annotations

import numpy as np

_EPS = 1e-12


def point_segment(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closest points on segments ``[a, b]`` to ``points``.

    Parameters
    ----------
    points : (n, 3) float
    a, b : (n, 3) or (3,) float, segment end points (broadcast against ``points``)

    Returns
    -------
    closest : (n, 3) float, the closest point on each segment
    t : (n,) float in [0, 1], its parameter along ``a -> b``
    """
    points = np.asarray(points, dtype=np.float64)
    d = np.asarray(b, dtype=np.float64) - a
    dd = np.einsum("...i,...i->...", d, d)
    t = np.einsum("...i,...i->...", points - a, d) / np.maximum(dd, _EPS)
    t = np.clip(t, 0.0, 1.0)
    closest = a + t[..., None] * d
    return closest, np.broadcast_to(t, points.shape[:-1]).copy()


def segment_segment(p1: np.ndarray, q1: np.ndarray, p2: np.ndarray, q2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closest points between segments ``[p1, q1]`` and ``[p2, q2]`` (Ericson, RTCD 5.1.9).

    Parameters
    ----------
    p1, q1, p2, q2 : (n, 3) float (any may be (3,) and broadcast)

    Returns
    -------
    c1 : (n, 3) float, closest point on the first segment
    c2 : (n, 3) float, closest point on the second segment
    """
    p1, q1, p2, q2 = (np.asarray(x, dtype=np.float64) for x in (p1, q1, p2, q2))
    n = np.broadcast_shapes(p1.shape, q1.shape, p2.shape, q2.shape)
    p1, q1, p2, q2 = (np.broadcast_to(x, n) for x in (p1, q1, p2, q2))
    d1 = q1 - p1
    d2 = q2 - p2
    r = p1 - p2
    a = np.einsum("...i,...i->...", d1, d1)
    e = np.einsum("...i,...i->...", d2, d2)
    f = np.einsum("...i,...i->...", d2, r)
    c = np.einsum("...i,...i->...", d1, r)
    b = np.einsum("...i,...i->...", d1, d2)
    denom = a * e - b * b
    # general case: closest points of the infinite lines, s clamped to the first segment
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(denom > _EPS * np.maximum(a * e, _EPS), (b * f - c * e) / denom, 0.0)
    s = np.clip(s, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(e > _EPS, (b * s + f) / e, 0.0)
    # t outside [0, 1]: clamp it and recompute s for that end of the second segment
    lo, hi = t < 0.0, t > 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(lo, np.clip(np.where(a > _EPS, -c / a, 0.0), 0.0, 1.0), s)
        s = np.where(hi, np.clip(np.where(a > _EPS, (b - c) / a, 0.0), 0.0, 1.0), s)
    t = np.clip(t, 0.0, 1.0)
    return p1 + s[..., None] * d1, p2 + t[..., None] * d2


def segment_triangle_hits(p: np.ndarray, q: np.ndarray, tri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where segments ``[p, q]`` cross triangles (Moller-Trumbore, both facings).

    Parameters
    ----------
    p, q : (n, 3) or (3,) float
    tri : (n, 3, 3) float

    Returns
    -------
    hit : (n,) bool
    t : (n,) float, parameter along ``p -> q`` of the crossing (NaN where no hit)
    """
    tri = np.asarray(tri, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    d = np.asarray(q, dtype=np.float64) - p
    e1 = tri[:, 1] - tri[:, 0]
    e2 = tri[:, 2] - tri[:, 0]
    h = np.cross(np.broadcast_to(d, e2.shape), e2)
    a = np.einsum("ij,ij->i", e1, h)
    ok = np.abs(a) > 1e-14 * np.maximum(np.einsum("ij,ij->i", e1, e1), _EPS)
    inv = np.where(ok, 1.0 / np.where(ok, a, 1.0), 0.0)
    s = p - tri[:, 0]
    u = inv * np.einsum("ij,ij->i", s, h)
    qv = np.cross(s, e1)
    v = inv * np.einsum("ij,ij->i", np.broadcast_to(d, qv.shape), qv)
    t = inv * np.einsum("ij,ij->i", e2, qv)
    hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t >= 0) & (t <= 1)
    return hit, np.where(hit, t, np.nan)


def triangle_pair_distance(ta: np.ndarray, tb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact distance between triangle pairs with their closest points.

    The minimum over two triangles is reached at a vertex of one against the other or at an
    edge pair, unless they intersect (distance 0, reported at the crossing of an edge).

    Parameters
    ----------
    ta, tb : (n, 3, 3) float

    Returns
    -------
    dist : (n,) float
    pa, pb : (n, 3) float, closest points on ``ta`` and ``tb``
    """
    from trimesh.triangles import closest_point

    ta = np.asarray(ta, dtype=np.float64)
    tb = np.asarray(tb, dtype=np.float64)
    n = len(ta)
    best = np.full(n, np.inf)
    pa = np.zeros((n, 3))
    pb = np.zeros((n, 3))

    def offer(ca, cb):  # keep a running minimum over the 15 candidate pairs
        d = np.linalg.norm(ca - cb, axis=1)
        better = d < best
        best[better] = d[better]
        pa[better] = ca[better]
        pb[better] = cb[better]

    for v in range(3):  # vertices of each against the other triangle
        offer(ta[:, v], closest_point(tb, ta[:, v]))
        offer(closest_point(ta, tb[:, v]), tb[:, v])
    for i in range(3):  # the nine edge pairs
        for j in range(3):
            offer(*segment_segment(ta[:, i], ta[:, (i + 1) % 3], tb[:, j], tb[:, (j + 1) % 3]))
    for src, dst in ((ta, tb), (tb, ta)):  # crossings: an edge through the other triangle
        for i in range(3):
            p, q = src[:, i], src[:, (i + 1) % 3]
            hit, t = segment_triangle_hits(p, q, dst)
            if hit.any():
                x = p[hit] + t[hit, None] * (q[hit] - p[hit])
                best[hit] = 0.0
                pa[hit] = x
                pb[hit] = x
    return best, pa, pb


def winding_number(points: np.ndarray, triangles: np.ndarray, chunk: int = 200_000) -> np.ndarray:
    """Generalised winding number of closed, outward-oriented triangle soups at ``points``.

    ~1 inside, ~0 outside, robust to small holes (Jacobson et al. 2013; solid angle by
    Van Oosterom & Strackee 1983).

    Parameters
    ----------
    points : (m, 3) float
    triangles : (n, 3, 3) float

    Returns
    -------
    w : (m,) float
    """
    points = np.atleast_2d(np.asarray(points, dtype=np.float64))
    triangles = np.asarray(triangles, dtype=np.float64)
    out = np.zeros(len(points))
    step = max(1, chunk // max(len(points), 1))
    for s in range(0, len(triangles), step):
        t = triangles[None, s:s + step] - points[:, None, None, :]  # (m, n, 3, 3)
        a, b, c = t[:, :, 0], t[:, :, 1], t[:, :, 2]
        la, lb, lc = (np.linalg.norm(x, axis=-1) for x in (a, b, c))
        num = np.einsum("mni,mni->mn", a, np.cross(b, c))
        den = (la * lb * lc + np.einsum("mni,mni->mn", a, b) * lc
               + np.einsum("mni,mni->mn", b, c) * la + np.einsum("mni,mni->mn", c, a) * lb)
        out += np.arctan2(num, den).sum(axis=1)
    return out / (2.0 * np.pi)
