"""Viewer speed, each figure against a bare-Open3D baseline measured in the same run.

1. Headless snapshot of a 40-structure scene (two views, labels, legend) through the public,
   crash-safe path (:func:`viewer.render.snapshot_subprocess`: a child process) vs a bare
   child process that imports Open3D, renders one sphere offscreen and writes a PNG. The ratio
   is what our scene loading, 40 meshes, materials and annotation cost on top of the renderer.
2. The GUI on the same scene under Xvfb: time to a constructed window (scene loaded, 40 meshes
   in the renderer, panel built) and to the first rendered frame, vs a bare Open3D window with
   one sphere to its first frame (both measured after the Python imports).
3. Picking: rays per second against the 40 structures (Open3D RaycastingScene, as the
   viewer picks) vs trimesh's pure-numpy ray test on the same meshes.
4. Live cut preview: latency of one plane move on the demo liver (``cut_record`` without
   writing meshes: what a slider drag triggers).

5. ``--scene DIR``: a real-size scene (``bench_e2e.py --out X`` leaves X/scene: a 512x512x300 CT):
   faces, window ready, first frame, a whole ``surgitwin view --screenshot`` process, and the
   frame time of a camera turn at full quality vs the interactive quality used while moving.

Run: ``python benchmarks/bench_viewer.py [--json] [--scene DIR]`` (the GUI part needs Xvfb).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BARE_SNAPSHOT = r"""
import os, sys
os.environ.setdefault("EGL_PLATFORM", "surfaceless")
import open3d as o3d
from open3d.visualization import rendering
r = rendering.OffscreenRenderer(640, 720)
m = o3d.geometry.TriangleMesh.create_sphere(20); m.compute_vertex_normals()
mat = rendering.MaterialRecord(); mat.shader = "defaultLit"
r.scene.add_geometry("s", m, mat)
r.setup_camera(30.0, [0, 0, 0], [0, -200, 0], [0, 0, 1])
o3d.io.write_image(sys.argv[1], r.render_to_image())
"""

BARE_GUI = r"""
import threading, time, sys
import open3d as o3d
import open3d.visualization.gui as gui
import open3d.visualization.rendering as rendering
t0 = time.perf_counter()  # after imports, as the viewer's own timings
app = gui.Application.instance; app.initialize()
w = app.create_window("bare", 1200, 800)
sw = gui.SceneWidget(); sw.scene = rendering.Open3DScene(w.renderer)
m = o3d.geometry.TriangleMesh.create_sphere(20); m.compute_vertex_normals()
mat = rendering.MaterialRecord(); mat.shader = "defaultLit"
sw.scene.add_geometry("s", m, mat); sw.setup_camera(30, sw.scene.bounding_box, [0, 0, 0])
w.add_child(sw)
ready = time.perf_counter() - t0
def go():
    done = threading.Event()
    app.post_to_main_thread(w, lambda: sw.scene.scene.render_to_image(lambda i: done.set()))
    done.wait(120)
    print(f"BARE {ready:.3f} {time.perf_counter() - t0:.3f}", flush=True)
    app.post_to_main_thread(w, app.quit)
threading.Thread(target=go, daemon=True).start()
app.run()
"""


def _child_time(cmd, env=None, timeout=300) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=timeout, cwd=ROOT)
    return time.perf_counter() - t


def bench_snapshot(scene: Path, tmp: Path, repeat: int) -> dict:
    from viewer.render import snapshot_subprocess

    ours, bare = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        snapshot_subprocess(scene, tmp / "ours.png", views=("anterior", "left"), size=(1280, 720))
        ours.append(time.perf_counter() - t)
        bare.append(_child_time([sys.executable, "-c", BARE_SNAPSHOT, str(tmp / "bare.png")],
                                env=dict(os.environ, EGL_PLATFORM="surfaceless")))
    return {"snapshot_40_structures_s": round(min(ours), 3), "bare_open3d_one_sphere_s": round(min(bare), 3),
            "ratio": round(min(ours) / min(bare), 2)}


def _xvfb():
    exe = shutil.which("Xvfb")
    if not exe:
        return None, None
    r, w = os.pipe()
    p = subprocess.Popen([exe, "-displayfd", str(w), "-screen", "0", "1280x1024x24", "+extension", "GLX",
                          "-nolisten", "tcp"], pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    num = b""
    while not num.endswith(b"\n"):  # read the whole line: closing early kills Xvfb (SIGPIPE)
        chunk = os.read(r, 16)
        if not chunk:
            break
        num += chunk
    os.close(r)
    return p, f":{int(num)}"


def bench_gui(scene: Path, tmp: Path) -> dict:
    proc, display = _xvfb()
    if proc is None:
        return {"skipped": "Xvfb not installed (apt-get install xvfb)"}
    try:
        env = dict(os.environ, DISPLAY=display)
        (tmp / "s.json").write_text(json.dumps([{"do": "panel_state"}]))
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "pipeline.cli", "view", str(scene), "--size", "1200x800",
                            "--script", str(tmp / "s.json"), "--result", str(tmp / "r.json")],
                           capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
        wall = time.perf_counter() - t
        if p.returncode != 0:
            return {"error": f"viewer exited {p.returncode}: {p.stderr[-1500:]}"}
        tim = json.loads((tmp / "r.json").read_text())["timings"]
        out = subprocess.run([sys.executable, "-c", BARE_GUI], check=True, capture_output=True, text=True, env=env,
                             timeout=300, cwd=ROOT).stdout
        bare_ready, bare_frame = (float(v) for v in next(ln for ln in out.splitlines() if ln.startswith("BARE")).split()[1:])
        return {"window_ready_s": round(tim["window_ready_s"], 3), "first_frame_after_start_s": round(tim["first_frame_s"], 3),
                "process_wall_s": round(wall, 3),
                "bare_open3d_window_ready_s": round(bare_ready, 3),
                "bare_open3d_first_frame_s": round(bare_frame, 3),
                "first_frame_ratio": round(tim["first_frame_s"] / bare_frame, 2)}
    finally:
        proc.terminate()
        proc.wait(10)


def bench_picking(scene: Path, n_rays: int) -> dict:
    import open3d as o3d

    from pipeline.scene import load_scene
    from viewer.render import to_o3d_mesh

    sc = load_scene(scene)
    rs = o3d.t.geometry.RaycastingScene()
    for m in sc.meshes:
        rs.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(to_o3d_mesh(m.mesh)))
    rng = np.random.default_rng(0)
    origins = np.column_stack([rng.uniform(-150, 150, n_rays), np.full(n_rays, -400.0), rng.uniform(-80, 80, n_rays)])
    dirs = np.tile([0.0, 1.0, 0.0], (n_rays, 1))
    t = time.perf_counter()
    hits = rs.cast_rays(o3d.core.Tensor(np.hstack([origins, dirs]).astype(np.float32)))
    ours = time.perf_counter() - t
    n_hit = int(np.isfinite(hits["t_hit"].numpy()).sum())
    tri = np.concatenate([m.mesh.triangles for m in sc.meshes])  # (n, 3, 3)
    k = 200
    t = time.perf_counter()
    first = [_moller_trumbore(o, d, tri) for o, d in zip(origins[:k], dirs[:k])]
    base = (time.perf_counter() - t) * n_rays / k
    t_ref = hits["t_hit"].numpy()[:k]
    agree = bool(np.allclose(np.nan_to_num(first, posinf=-1), np.nan_to_num(t_ref, posinf=-1), atol=1e-3))
    return {"rays": n_rays, "hits": n_hit, "raycasting_scene_rays_per_s": round(n_rays / ours),
            "numpy_brute_force_rays_per_s": round(n_rays / base), "ratio": round(base / ours, 1),
            "first_hits_agree": agree}


def _moller_trumbore(o, d, tri):
    """Nearest hit distance of one ray against all triangles (vectorised brute force), inf if none."""
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    p = np.cross(d, e2)
    det = np.einsum("ij,ij->i", e1, p)
    ok = np.abs(det) > 1e-12
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    s = o - tri[:, 0]
    u = np.einsum("ij,ij->i", s, p) * inv
    q = np.cross(s, e1)
    v = (q @ d) * inv
    t = np.einsum("ij,ij->i", e2, q) * inv
    hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
    return float(t[hit].min()) if hit.any() else np.inf


def bench_cut(tmp: Path, repeat: int) -> dict:
    from pipeline.planning import Planner
    from pipeline.planning.cut import cut_record
    from viewer.synthetic import make_demo_scene

    scene = make_demo_scene(tmp / "demo")
    planner = Planner(scene)
    planner.labelmap  # loaded once, as the viewer keeps it
    times = []
    for k in range(repeat):
        plane = {"point": [-60.0 + 5 * k, -5.0, 25.0], "normal": [1.0, 0.0, 0.0]}
        t = time.perf_counter()
        rec = cut_record(planner, "liver", plane, margin_to="liver_tumour", save_meshes=False)
        times.append(time.perf_counter() - t)
    return {"cut_preview_ms_median": round(1000 * float(np.median(times)), 1), "remnant_percent_last": rec["remnant_percent"]}


MOTION_FRAMES = r"""
import json, os, sys, time
os.environ.setdefault("EGL_PLATFORM", "surfaceless")
sys.path.insert(0, sys.argv[2])
import numpy as np
from open3d.visualization import rendering
from pipeline.render.offscreen import configure_view
from pipeline.scene import load_scene
from viewer.motion import decimated
from viewer.render import BODY_OPACITY, material_for, structure_styles, to_o3d_mesh, set_priority
scene = load_scene(sys.argv[1])
styles = structure_styles(scene, body_opacity=BODY_OPACITY)
out = {}
for label, light in (("still", False), ("moving", True)):
    r = rendering.OffscreenRenderer(1140, 900)
    configure_view(r.scene.view)
    r.scene.view.set_post_processing(not light)
    faces = 0
    for m in scene.meshes:
        if m.mesh is None or not len(m.mesh.faces):
            continue
        mesh = decimated(m.mesh) if light and len(m.mesh.faces) >= 4000 else m.mesh
        faces += len(mesh.faces)
        r.scene.add_geometry(m.name, to_o3d_mesh(mesh), material_for(styles[m.name]))
        set_priority(r.scene, m.name, m.name)
    v = np.concatenate([np.asarray(m.mesh.vertices) for m in scene.meshes if m.mesh is not None])
    c, d = v.mean(0), 1.5 * float(np.linalg.norm(np.ptp(v, axis=0)))
    r.setup_camera(30.0, c, c + [0, -d, 0], [0, 0, 1])
    r.render_to_image()
    n, t = 6, time.perf_counter()
    for i in range(n):  # a turn around the patient, as a drag does
        a = 2 * np.pi * (i + 1) / n
        r.setup_camera(30.0, c, c + d * np.array([np.sin(a), -np.cos(a), 0.0]), [0, 0, 1])
        r.render_to_image()
    out[label] = {"faces": faces, "ms_per_frame": round(1000 * (time.perf_counter() - t) / n, 1)}
    del r
print(json.dumps(out))
"""


def bench_motion(scene: Path) -> dict:
    """Frame time of a camera turn on the big scene at 1140x900, offscreen with the viewer's
    materials: full quality (still) vs the viewer's interactive quality while moving
    (viewer.motion: decimated copies, no post-processing). One child process."""
    p = subprocess.run([sys.executable, "-c", MOTION_FRAMES, str(scene), str(ROOT)], capture_output=True, text=True,
                       timeout=900)
    if p.returncode:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["speedup"] = round(res["still"]["ms_per_frame"] / max(res["moving"]["ms_per_frame"], 1e-3), 2)
    return res


def bench_big(scene: Path, tmp: Path) -> dict:
    """The real-size scene (``bench_e2e.py --out DIR`` writes one: DIR/scene): first frame, and a
    whole ``surgitwin view --screenshot`` process, under Xvfb; the bare Open3D window alongside."""
    import json as _json

    n_faces = sum(s.get("n_faces", 0) for s in _json.loads((scene / "scene.json").read_text())["structures"])
    gui = bench_gui(scene, tmp)
    proc, display = _xvfb()
    if proc is None:
        return {"skipped": "Xvfb not installed (apt-get install xvfb)"}
    try:
        env = dict(os.environ, DISPLAY=display)
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "pipeline.cli", "view", str(scene), "--size", "1200x800",
                            "--screenshot", str(tmp / "big.png")],  # the window fits the 1280x1024 screen
                           capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
        shot = time.perf_counter() - t
    finally:
        proc.terminate()
        proc.wait(10)
    out = {"faces": n_faces, **gui, "screenshot_process_s": round(shot, 2), "screenshot_exit": p.returncode,
           "rotation": bench_motion(scene)}
    if p.returncode:
        out["screenshot_error"] = p.stderr.strip().splitlines()[-1:] or ["(no message)"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--scene", default=None, help="also measure a real-size scene (from bench_e2e.py --out DIR: DIR/scene)")
    a = ap.parse_args(argv)
    from viewer.synthetic import make_scene, many_blobs

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        scene = tmp / "forty"
        make_scene(scene, many_blobs(40), shape=(60, 40, 110), spacing=3.0, case_id="forty")
        res = {"snapshot": bench_snapshot(scene, tmp, a.repeat), "gui": bench_gui(scene, tmp),
               "picking": bench_picking(scene, 200_000), "cut_preview": bench_cut(tmp, 5)}
        if a.scene:
            res["real_size_scene"] = bench_big(Path(a.scene), tmp)
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        for k, v in res.items():
            print(f"{k:<12} " + ", ".join(f"{kk}={vv}" for kk, vv in v.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
