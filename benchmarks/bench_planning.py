"""Planning geometry speed, each against a brute-force baseline measured in the same run.

1. Minimum distance between two ~100k-triangle organ-like meshes (exact, with closest points):
   :func:`pipeline.planning.distance.mesh_distance` cold (k-d trees built inside) and warm
   (indexes built once, as the viewer keeps them) vs the exhaustive vertex-to-vertex minimum
   (every vertex pair, chunked ``cdist``: cheaper than an exact brute force, which would solve
   ~10^10 triangle pairs, yet still O(n*m); by default 10% of the pairs are run and the time is
   scaled by 10, exact because the cost is linear in that share). manifold3d's exact ``min_gap`` (C++, distance only)
   is timed as an independent check of the value.
2. Clearance of one trajectory against 20 structures (5-20k triangles each): ``clearances``
   with prebuilt indexes vs an unpruned exact version (segment ends against every triangle,
   the segment against every edge, crossings against every triangle).

Timings are the best of ``--repeat`` runs (the machine is shared). Run:
``python benchmarks/bench_planning.py [--json]``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def blob(n_faces: int, radius: float, centre, seed: int):
    """Organ-like closed surface: a UV sphere with smooth random bumps (~n_faces triangles)."""
    import trimesh

    count = int(round(np.sqrt(n_faces / 4))) + 1  # a UV sphere has ~4 count^2 faces
    m = trimesh.creation.uv_sphere(radius=1.0, count=[count, count])
    rng = np.random.default_rng(seed)
    n = m.vertices / np.linalg.norm(m.vertices, axis=1)[:, None]
    bump = sum(rng.uniform(0.02, 0.08) * np.sin(n @ rng.normal(size=3) * rng.uniform(1, 4) + rng.uniform(0, 6))
               for _ in range(6))
    m.vertices = n * radius * (1 + bump)[:, None] + np.asarray(centre, float)
    return m


def best(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def vertex_brute_force(a, b, fraction: float = 1.0, chunk: int = 2048) -> float:
    """Minimum over every pair (vertex of a, vertex of b); ``fraction`` < 1 uses an evenly
    spaced subset of a's vertices (the cost is linear in that count, so it scales exactly)."""
    from scipy.spatial.distance import cdist

    va, vb = np.asarray(a.vertices), np.asarray(b.vertices)
    va = va[:: max(1, int(round(1 / fraction)))]
    return float(min(cdist(va[s:s + chunk], vb).min() for s in range(0, len(va), chunk)))


def segment_brute_force(mesh, p, q) -> float:
    """Exact segment-to-mesh distance without pruning."""
    from trimesh.triangles import closest_point

    from pipeline.planning import kernels

    tri = np.asarray(mesh.triangles)
    n = len(tri)
    hit, _ = kernels.segment_triangle_hits(p, q, tri)
    if hit.any():
        return 0.0
    best_d = min(float(np.linalg.norm(closest_point(tri, np.broadcast_to(x, (n, 3))) - x, axis=1).min()) for x in (p, q))
    e = np.asarray(mesh.edges_unique)
    v = np.asarray(mesh.vertices)
    c1, c2 = kernels.segment_segment(p, q, v[e[:, 0]], v[e[:, 1]])
    return min(best_d, float(np.linalg.norm(c1 - c2, axis=1).min()))


def bench_mesh_pair(repeat: int, brute_fraction: float) -> dict:
    import manifold3d

    from pipeline.planning.distance import MeshIndex, mesh_distance

    a = blob(100_000, 60.0, (0, 0, 0), 1)
    b = blob(100_000, 45.0, (112, 10, 5), 2)
    t_cold, r = best(lambda: mesh_distance(a, b), repeat)
    ia, ib = MeshIndex.from_mesh(a), MeshIndex.from_mesh(b)
    mesh_distance(ia, ib)  # build the lazy k-d trees once
    t_warm, r = best(lambda: mesh_distance(ia, ib), repeat)
    t_brute, d_vv = best(lambda: vertex_brute_force(a, b, brute_fraction), 1)
    t_brute /= brute_fraction  # full-size cost: linear in the number of vertices of a
    ma, mb = (manifold3d.Manifold(manifold3d.Mesh64(vert_properties=np.ascontiguousarray(m.vertices),
                                                    tri_verts=np.ascontiguousarray(m.faces, dtype=np.uint64)))
              for m in (a, b))
    # search radius: the vertex-vertex minimum bounds the gap (a larger one makes min_gap O(n*m))
    t_gap, gap = best(lambda: ma.min_gap(mb, d_vv + 0.01), 1)
    return {"faces": [len(a.faces), len(b.faces)], "distance_mm": r.distance, "vertex_vertex_mm": d_vv,
            "manifold3d_min_gap_mm": gap, "ours_cold_s": t_cold, "ours_warm_s": t_warm, "brute_force_s": t_brute,
            "manifold3d_s": t_gap, "speedup_cold": t_brute / t_cold, "speedup_warm": t_brute / t_warm,
            "brute_force_fraction_measured": brute_fraction}


def bench_trajectory(repeat: int) -> dict:
    from pipeline.planning.distance import MeshIndex
    from pipeline.planning.trajectory import clearances

    rng = np.random.default_rng(3)
    meshes = []
    for k in range(20):
        ang = 2 * np.pi * k / 20
        centre = (90 * np.cos(ang), 90 * np.sin(ang), rng.uniform(-40, 40))
        meshes.append(blob(int(rng.uniform(5_000, 20_000)), rng.uniform(8, 25), centre, 10 + k))
    entry, target = np.array([-150.0, -20.0, 10.0]), np.array([40.0, 30.0, -5.0])
    t_index, idx = best(lambda: [MeshIndex.from_mesh(m, f"s{k}") for k, m in enumerate(meshes)], 1)
    t_ours, rows = best(lambda: clearances(idx, entry, target, 1.0), repeat)
    t_brute, ref = best(lambda: [segment_brute_force(m, entry, target) for m in meshes], 1)
    ours = {r["structure"]: r["axis_distance_mm"] for r in rows}
    err = max(abs(ours[f"s{k}"] - ref[k]) for k in range(20) if ref[k] > 0)
    return {"structures": 20, "faces_total": int(sum(len(m.faces) for m in meshes)), "index_build_s": t_index,
            "ours_s": t_ours, "brute_force_s": t_brute, "speedup": t_brute / t_ours, "max_abs_difference_mm": err}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--brute-fraction", type=float, default=0.1,
                    help="share of the vertex pairs the brute force actually runs (its time is scaled up)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    res = {"cores": cores, "mesh_pair": bench_mesh_pair(a.repeat, a.brute_fraction), "trajectory": bench_trajectory(a.repeat)}
    if a.json:
        print(json.dumps(res, indent=2))
        return 0
    mp, tr = res["mesh_pair"], res["trajectory"]
    print(f"cores available: {cores}")
    print(f"min distance, {mp['faces'][0]:,} x {mp['faces'][1]:,} triangles: {mp['distance_mm']:.4f} mm "
          f"(manifold3d min_gap {mp['manifold3d_min_gap_mm']:.4f} mm, vertex-vertex {mp['vertex_vertex_mm']:.4f} mm)")
    print(f"  ours cold {mp['ours_cold_s'] * 1000:.0f} ms, warm {mp['ours_warm_s'] * 1000:.0f} ms; "
          f"brute force (all vertex pairs; {100 * mp['brute_force_fraction_measured']:.0f}% run, time scaled) "
          f"{mp['brute_force_s']:.1f} s -> x{mp['speedup_cold']:.0f} cold, "
          f"x{mp['speedup_warm']:.0f} warm; manifold3d min_gap {mp['manifold3d_s'] * 1000:.0f} ms")
    print(f"trajectory clearance vs {tr['structures']} structures ({tr['faces_total']:,} triangles): "
          f"ours {tr['ours_s'] * 1000:.0f} ms (+ {tr['index_build_s'] * 1000:.0f} ms index build once), "
          f"unpruned exact {tr['brute_force_s'] * 1000:.0f} ms -> x{tr['speedup']:.1f}; "
          f"max difference {tr['max_abs_difference_mm']:.2e} mm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
