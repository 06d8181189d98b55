"""Batch throughput with 1 and 2 process-pool workers on the same studies, ratio in one run.

Workloads, each run with ``--workers 1`` then ``--workers 2`` into fresh batch folders:

- ``pipeline``: the real single-case pipeline (ingest -> HU-rule segmentation -> meshes ->
  scene, no snapshot) on synthetic phantom CT studies (default 8 studies of 64x128x128);
- ``cpu``: a pure-Python CPU-bound stand-in (:func:`pipeline.batch.testing.digest_case`
  with a fixed loop), which shows what the executor itself can scale to;
- ``model`` (with ``--model NAME``): the same pipeline with a network model, e.g. the shipped
  ``abdomen_unet_3mm`` (torch threads capped at cores // workers per study);
- ``sleep``: 1 s of waiting per study and no CPU: the dispatch overhead alone (should be ~2.0
  even on a busy machine, since it needs no free core).

Reported per run: wall time including worker start-up, studies/min, and the steady-state
rate (studies finished after the first one, over the time since the first one finished),
which excludes process spawn + imports, and the CPU time of the worker processes over the
wall time ("cores used": how much of the machine the run actually got; on a shared machine
this, not the executor, bounds the ratio). The ratio is 1-worker time / 2-worker time (target
>= 1.8 on 2 idle cores for a CPU-bound mix). Run: ``python benchmarks/bench_batch.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_studies(root: Path, n: int, shape) -> list[str]:
    from pipeline.dicom_writer import DicomMeta, write_dicom_series
    from pipeline.phantom import make_phantom

    spacing = (2.5 * 100 / shape[0], 1.8 * 192 / shape[1], 1.8 * 192 / shape[2])  # the phantom's full FOV
    out = []
    for i in range(n):
        ct, _ = make_phantom(seed=i, shape=shape, spacing=spacing)
        write_dicom_series(ct, root / f"study{i:02d}", DicomMeta(patient_id=f"BENCH{i}", uid_seed=f"bench-{i}"))
        out.append(str(root / f"study{i:02d}"))
    return out


def run(inputs, out: Path, workers: int, **opts) -> dict:
    from pipeline.batch.manifest import Manifest
    from pipeline.batch.runner import BatchOptions, run_batch

    import resource

    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    s = run_batch(inputs, out, BatchOptions(workers=workers, **opts))
    wall = time.time() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # run_batch joined the pool: its CPU time counts here
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    rows = Manifest(out, readonly=True).rows()
    ends = sorted(r["finished_at"] for r in rows)
    steady = (len(ends) - 1) / (ends[-1] - ends[0]) * 60 if len(ends) > 1 and ends[-1] > ends[0] else float("nan")
    per_study = sorted(r["timings"].get("total", 0.0) for r in rows)
    return {"workers": workers, "wall_s": round(wall, 2), "studies": len(rows), "done": s.totals["done"],
            "per_min": round(len(rows) / wall * 60, 1), "steady_per_min": round(steady, 1),
            "median_study_s": round(per_study[len(per_study) // 2], 2),
            "worker_cpu_s": round(cpu, 1), "cores_used": round(cpu / wall, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=8)
    ap.add_argument("--shape", type=int, nargs=3, default=(64, 128, 128))
    ap.add_argument("--cpu-iterations", type=int, default=6_000_000)
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--model", help="also run the pipeline with this segmentation model (e.g. abdomen_unet_3mm)")
    args = ap.parse_args()
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        tmp = Path(tmp)
        t = time.time()
        inputs = make_studies(tmp / "in", args.studies, tuple(args.shape))
        print(f"generated {args.studies} phantom studies {tuple(args.shape)} in {time.time() - t:.1f} s")
        workloads = [("sleep", {"case_fn": "pipeline.batch.testing:digest_case", "case_kwargs": {"delay": 1.0}}),
                     ("cpu", {"case_fn": "pipeline.batch.testing:digest_case",
                              "case_kwargs": {"cpu_iterations": args.cpu_iterations}})]
        if not args.skip_pipeline:
            workloads.append(("pipeline", {"model": "hu_rules", "snapshot": False}))
            if args.model:
                workloads.append(("model", {"model": args.model, "snapshot": False}))
        for name, opts in workloads:
            r1 = run(inputs, tmp / f"{name}-w1", 1, **opts)
            r2 = run(inputs, tmp / f"{name}-w2", 2, **opts)
            ratio = r1["wall_s"] / r2["wall_s"]
            steady = r2["steady_per_min"] / r1["steady_per_min"] if r1["steady_per_min"] else float("nan")
            results[name] = {"w1": r1, "w2": r2, "ratio_wall": round(ratio, 2), "ratio_steady": round(steady, 2)}
            print(f"{name:8s} 1 worker: {r1['wall_s']:6.1f} s ({r1['per_min']:5.1f}/min)   "
                  f"2 workers: {r2['wall_s']:6.1f} s ({r2['per_min']:5.1f}/min)   "
                  f"ratio {ratio:.2f} (steady state {steady:.2f}); median study {r1['median_study_s']} s / "
                  f"{r2['median_study_s']} s; cores used {r1['cores_used']} / {r2['cores_used']}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
