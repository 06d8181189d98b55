"""End to end on a clinical-size CT: a 512x512x300 series from real anatomy to a scene.

The series is built by ``benchmarks/clinical_ct.py`` (the real Siemens CT in ../shared/data/real
resampled to 0.7 x 0.7 x 1.1 mm and mirror-tiled along z; cached). Measured in the same run:

- ``surgitwin run SERIES --out SCENE`` in a fresh process (the default model, with snapshot):
  wall seconds, seconds per stage, peak RSS per stage (exact: VmHWM reset per stage), faces per
  structure, closedness and volume deviation;
- baselines: SimpleITK ImageSeriesReader (names given, sitkInt16), dcm2niix (whole process), and
  one plain VTK flying-edges pass over the scene's whole label map (2 threads);
- ``--labels N``: meshing of a synthetic N-label map cut from the same anatomy (each structure
  split into slabs), against the flying-edges pass.

Prints a Markdown table (for the README) and ratios against the baselines. Timings are noisy on
a shared 2-core machine: compare ratios measured in the same run; ``uptime``'s load is printed.
Run: ``python benchmarks/bench_e2e.py [--slices 300] [--labels 104] [--no-run]``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _load() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def sitk_read(folder: Path) -> float:
    import SimpleITK as sitk

    files = sorted(str(p) for p in folder.glob("*.dcm"))
    r = sitk.ImageSeriesReader()
    r.SetFileNames(files)
    r.SetOutputPixelType(sitk.sitkInt16)
    t = time.perf_counter()
    sitk.GetArrayFromImage(r.Execute())
    return time.perf_counter() - t


def dcm2niix(folder: Path) -> float | None:
    exe = shutil.which("dcm2niix")
    if not exe:
        return None
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        subprocess.run([exe, "-z", "n", "-o", out, str(folder)], check=True, capture_output=True)
        return time.perf_counter() - t


def flying_edges(labels: np.ndarray, threads: int = 2) -> float:
    """One VTK discrete flying-edges pass over every label of the whole map."""
    from vtkmodules.vtkCommonCore import vtkSMPTools
    from vtkmodules.vtkFiltersGeneral import vtkDiscreteFlyingEdges3D

    from pipeline.mesh.surfaces import _vtk_image

    vtkSMPTools.SetBackend("STDThread")
    vtkSMPTools.Initialize(threads)
    img = _vtk_image(labels)
    fe = vtkDiscreteFlyingEdges3D()
    fe.SetInputData(img)
    ids = [int(v) for v in np.unique(labels) if v]
    fe.SetNumberOfContours(len(ids))
    for n, v in enumerate(ids):
        fe.SetValue(n, v)
    fe.ComputeNormalsOff()
    fe.ComputeGradientsOff()
    t = time.perf_counter()
    fe.Update()
    return time.perf_counter() - t


def run_pipeline(series: Path, scene: Path, snapshot: bool = True) -> tuple[dict, float]:
    cmd = [str(Path(sys.executable).with_name("surgitwin")), "run", str(series), "--out", str(scene), "--json"]
    if not snapshot:
        cmd.append("--no-snapshot")
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"surgitwin run failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout), wall


def many_labels(scene: Path, n_target: int):
    """A label map with about ``n_target`` labels: the scene's structures cut into slabs."""
    from pipeline.scene import load_scene

    sc = load_scene(scene)
    lm = sc.load_labelmap()
    arr = lm.array
    present = [l for l in lm.labels if np.any(arr == l.id)]
    per = max(1, -(-n_target // len(present)))
    out = np.zeros(arr.shape, np.uint16)
    edges = np.linspace(0, arr.shape[0], per + 1).astype(int)
    from pipeline.types import Label, LabelMap, LabelTable

    labels, nid = [], 0
    for l in present:
        for a, b in zip(edges[:-1], edges[1:]):
            m = arr[a:b] == l.id
            if m.sum() < 50:
                continue
            nid += 1
            out[a:b][m] = nid
            labels.append(Label(nid, f"{l.name}_{a}"))
    return LabelMap(lm.volume.with_array(out), LabelTable(labels))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--labels", type=int, default=104, help="also mesh a synthetic map with about this many labels (0: skip)")
    ap.add_argument("--no-snapshot", action="store_true")
    ap.add_argument("--out", default=None, help="scene folder (default: a temp folder)")
    a = ap.parse_args(argv)

    from clinical_ct import build_series

    series = build_series(slices=a.slices)
    work = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="bench_e2e_"))
    scene = work / "scene"
    load0 = _load()
    t_sitk = sitk_read(series)
    t_dcm = dcm2niix(series)
    res, wall = run_pipeline(series, scene, snapshot=not a.no_snapshot)
    from pipeline.scene import load_scene

    sc = load_scene(scene)
    labels = sc.load_labelmap().array
    t_fe = flying_edges(labels)
    tm, rss = res["timings"], res.get("peak_rss_mb") or {}
    print(f"# bench_e2e: {a.slices}x512x512 CT from real anatomy ({series}); load {load0} -> {_load()}")
    print("\n| stage | seconds | peak RSS MiB |\n|---|---|---|")
    for k, v in tm.items():
        print(f"| {k} | {v:.2f} | {rss.get(k, rss.get(k + '_process', '')) or ''} |")
    print(f"| **wall (process)** | **{wall:.1f}** | **{max(rss.values(), default=0):.0f}** |")
    print("\n| structure | faces | budget | closed | volume vs voxels % | grid |\n|---|---|---|---|---|---|")
    total = 0
    for m in sc.meshes:
        q = m.qa
        total += q["n_faces"]
        print(f"| {m.name} | {q['n_faces']} | {q.get('face_budget', '')} | {q['watertight']} | "
              f"{q['deviation_percent']} | {q.get('block_factor', '')} |")
    print(f"| **all** | **{total}** | | | | |")
    print("\n| baseline (same run) | seconds | ratio |\n|---|---|---|")
    print(f"| SimpleITK series read (int16) | {t_sitk:.2f} | ingest / it = {tm['ingest'] / t_sitk:.2f} |")
    if t_dcm is not None:
        print(f"| dcm2niix whole process | {t_dcm:.2f} | ingest / it = {tm['ingest'] / t_dcm:.2f} |")
    print(f"| VTK flying edges, whole label map | {t_fe:.2f} | mesh / it = {tm['mesh'] / t_fe:.1f} |")
    if a.labels:
        from pipeline.mesh import MeshConfig, labelmap_to_meshes

        lm = many_labels(scene, a.labels)
        t_fe_many = flying_edges(lm.array)
        t = time.perf_counter()
        meshes = labelmap_to_meshes(lm, MeshConfig())
        t_many = time.perf_counter() - t
        closed = sum(m.qa["watertight"] for m in meshes)
        worst = max(abs(m.qa["deviation_percent"] or 0) for m in meshes)
        print(f"| {len(lm.labels)}-label map: mesh all | {t_many:.2f} | / flying edges ({t_fe_many:.2f} s) = "
              f"{t_many / t_fe_many:.1f}; {closed}/{len(meshes)} closed, worst volume {worst:.2f} % |")
    if not a.out:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
