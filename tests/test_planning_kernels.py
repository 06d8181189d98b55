"""Exactness of the distance kernels against brute force and an independent library."""
import numpy as np
import pytest
import trimesh

from pipeline.planning import kernels
from pipeline.planning.distance import (MeshIndex, brute_force_mesh_distance, closest_point_on_mesh, mesh_distance,
                                        segment_distance)


def _random_pair(rng):
    a = trimesh.creation.icosphere(2, radius=rng.uniform(3, 8))
    a.apply_transform(trimesh.transformations.random_rotation_matrix(rng.random(3)))
    b = trimesh.creation.box(extents=rng.uniform(3, 10, 3))
    b.apply_transform(trimesh.transformations.random_rotation_matrix(rng.random(3)))
    b.apply_translation(rng.normal(size=3) * 8)
    return a, b


def test_mesh_distance_equals_brute_force_and_manifold3d():
    import manifold3d

    rng = np.random.default_rng(0)
    n_apart = 0
    for trial in range(24):
        a, b = _random_pair(rng)
        if trial % 2:
            a, b = b, a
        r = mesh_distance(a, b)
        bf = brute_force_mesh_distance(a, b)
        if r.overlap:
            assert r.distance == 0.0
            continue
        n_apart += 1
        assert r.distance == pytest.approx(bf, abs=1e-9)
        assert np.linalg.norm(r.point_a - r.point_b) == pytest.approx(r.distance, abs=1e-9)
        # an independent implementation: manifold3d's exact minimum gap
        ma, mb = (manifold3d.Manifold(manifold3d.Mesh64(vert_properties=np.ascontiguousarray(m.vertices),
                                                        tri_verts=np.ascontiguousarray(m.faces, dtype=np.uint64)))
                  for m in (a, b))
        assert ma.min_gap(mb, 100.0) == pytest.approx(r.distance, abs=1e-6)
    assert n_apart >= 8


def test_containment_is_overlap():
    outer = trimesh.creation.icosphere(3, radius=20)
    inner = trimesh.creation.icosphere(2, radius=5)
    r = mesh_distance(outer, inner)
    assert r.overlap and r.distance == 0.0
    far = inner.copy()
    far.apply_translation([40, 0, 0])
    r = mesh_distance(outer, far)
    assert not r.overlap and r.distance == pytest.approx(15, abs=0.2)  # icosphere facets: slightly less than 15


def test_segment_distance_against_dense_sampling():
    rng = np.random.default_rng(1)
    box = trimesh.creation.box(extents=(10, 20, 6))
    box.apply_transform(trimesh.transformations.random_rotation_matrix(rng.random(3)))
    for _ in range(20):
        p, q = rng.normal(size=3) * 15, rng.normal(size=3) * 15
        r = segment_distance(box, p, q)
        ts = np.linspace(0, 1, 4001)
        pts = np.repeat(p + ts[:, None] * (q - p), len(box.faces), axis=0)
        tri = np.tile(box.triangles, (len(ts), 1, 1))
        d = np.linalg.norm(trimesh.triangles.closest_point(tri, pts) - pts, axis=1).reshape(len(ts), -1).min(1)
        if len(r.crossings) == 0 and not (r.contains_start or r.contains_end):
            step = np.linalg.norm(q - p) / 4000
            assert d.min() - step <= r.distance <= d.min() + 1e-9
        else:
            assert r.distance == 0.0 or r.contains_start
    # a segment through a cube: two crossings, the inside length is the chord
    cube = trimesh.creation.box(extents=(10, 10, 10))
    r = segment_distance(cube, (-20, 1, 2), (20, 1, 2))
    assert len(r.crossings) == 2 and r.inside_length == pytest.approx(10.0)
    r = segment_distance(cube, (0, 0, 0), (20, 0, 0))  # starts inside
    assert r.contains_start and r.inside_length == pytest.approx(5.0)


def test_segment_segment_and_winding_number():
    rng = np.random.default_rng(2)
    p1, q1, p2, q2 = (rng.normal(size=(500, 3)) for _ in range(4))
    c1, c2 = kernels.segment_segment(p1, q1, p2, q2)
    d = np.linalg.norm(c1 - c2, axis=1)
    t = np.linspace(0, 1, 301)
    for k in range(0, 500, 50):
        a = p1[k] + t[:, None] * (q1[k] - p1[k])
        b = p2[k] + t[:, None] * (q2[k] - p2[k])
        brute = np.min(np.linalg.norm(a[:, None] - b[None], axis=2))
        assert d[k] <= brute + 1e-12 and d[k] >= brute - 0.02
    sphere = trimesh.creation.icosphere(3, radius=10)
    w = kernels.winding_number(np.array([[0, 0, 0], [9.5, 0, 0], [10.5, 0, 0], [30, 1, 2]]), sphere.triangles)
    np.testing.assert_allclose(w, [1, 1, 0, 0], atol=1e-6)
    idx = MeshIndex.from_mesh(sphere)
    c, dist, inside = closest_point_on_mesh(idx, (0, 0, 25))
    assert dist == pytest.approx(15, abs=0.05) and not inside and c[2] == pytest.approx(10, abs=0.05)
