"""The wholeBody SegResNet (MONAI bundle config, random weights) on a 512x512x300 CT at 3 mm.

Measures wall time per step and peak RSS on 2 CPU threads. Memory is sampled every 10 ms by
a thread (psutil). "On top of the model" = the peak of ``segment()`` minus the peak of one
bare 96^3 forward pass of the same network (weights + activations of one window), compared
with the input volume's bytes (int16). Target: <= 4x the input's bytes.

glibc raises its mmap threshold after large frees, after which freed blocks stay in the heap
and RSS never falls; the script re-executes itself with ``MALLOC_MMAP_THRESHOLD_=1048576`` so
large arrays are returned to the system when freed and the peak measures what is live.

Post-processing is off by default: random weights give speckled label maps whose hundreds of
thousands of islands say nothing about real cost (``--postprocess`` to include it anyway).

Usage: ``python benchmarks/bench_segment_wholebody.py [--shape 300 512 512] [--pixdim 3]
[--threads 2] [--json]``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

BUNDLE = ROOT.parent / "shared" / "data" / "monai_bundles" / "wholeBody_ct_segmentation"
WHOLEBODY_ARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 105, "init_filters": 32,
                  "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "dropout_prob": 0.2}


class PeakRSS:
    """Peak resident set size (bytes) while the context is open, sampled every ``dt`` s."""

    def __init__(self, dt: float = 0.01):
        import psutil

        self.proc, self.dt, self.peak, self.start = psutil.Process(), dt, 0, 0
        self._stop = threading.Event()

    def __enter__(self):
        self.start = self.peak = self.proc.memory_info().rss
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.dt)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def delta(self) -> int:
        return self.peak - self.start


def synthetic_ct(shape, spacing):
    """int16 CT: body, lungs, spine, table; built slab by slab (no float64 full-size temporaries)."""
    from pipeline.types import Volume

    nk, nj, ni = shape
    sk, sj, si = spacing
    y = (np.arange(nj) - nj / 2) * sj
    x = (np.arange(ni) - ni / 2) * si
    yy, xx = np.meshgrid(y, x, indexing="ij")
    body = (xx / 170) ** 2 + (yy / 120) ** 2 <= 1
    lung = (((np.abs(xx) - 75) / 55) ** 2 + (yy / 80) ** 2 <= 1)
    spine = (xx / 18) ** 2 + ((yy - 80) / 18) ** 2 <= 1
    table = (yy > 130) & (yy < 140)
    arr = np.full(shape, -1000, np.int16)
    rng = np.random.default_rng(0)
    for k in range(nk):
        z = (k - nk / 2) * sk
        s = np.full((nj, ni), -1000, np.int16)
        s[table] = 300
        s[body] = 40
        if z > 0:
            s[lung & body] = -850
        s[spine] = 700
        arr[k] = s + rng.integers(-15, 16, (nj, ni), dtype=np.int16)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[0, 0, si], [0, sj, 0], [sk, 0, 0]], float)  # k->S, j->P, i->L
    affine[:3, 3] = [-ni / 2 * si, -nj / 2 * sj, -nk / 2 * sk]
    return Volume(arr, affine, None, {"modality": "CT"})


def _reexec_with_fixed_mmap_threshold() -> None:
    import os

    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None and sys.platform.startswith("linux"):
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[300, 512, 512], help="slices rows columns")
    ap.add_argument("--spacing", type=float, nargs=3, default=[1.5, 0.78, 0.78], help="CT mm (slice row column)")
    ap.add_argument("--pixdim", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--postprocess", action="store_true")
    ap.add_argument("--buffer-dtype", choices=["auto", "float32", "float16"], default="auto",
                    help="ring buffer of the streamed sliding window (auto: float16 for 105 classes)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from pipeline.segment import resolve_model, segment
    from pipeline.segment.checkpoint import build_network

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_wholebody_"))
    try:
        if BUNDLE.exists():
            shutil.copytree(BUNDLE, tmp / "bundle")
            (tmp / "bundle" / "models").mkdir(exist_ok=True)
            source = "MONAI bundle config wholeBody_ct_segmentation (random weights)"
        else:
            source = "SegResNet with the wholeBody bundle's arguments (bundle configs not found)"
        torch.manual_seed(0)
        net = build_network("SegResNet", WHOLEBODY_ARGS)
        if BUNDLE.exists():
            torch.save(net.state_dict(), tmp / "bundle" / "models" / "model.pt")
            spec = resolve_model(str(tmp / "bundle"), overrides={"pixdim": [args.pixdim] * 3})
        else:
            from pipeline.segment.registry import ModelSpec
            from safetensors.torch import save_file

            save_file(net.state_dict(), str(tmp / "w.safetensors"))
            spec = ModelSpec(name="wholebody", backend="checkpoint", weights=str(tmp / "w.safetensors"),
                             network={"name": "SegResNet", "args": WHOLEBODY_ARGS},
                             labels=[{"id": i, "name": f"class_{i}"} for i in range(1, 105)],
                             preprocessing={"orientation": "RAS", "spacing": [args.pixdim] * 3,
                                            "intensity": [{"kind": "zscore_nonzero"}, {"kind": "scale", "minv": -1, "maxv": 1}]},
                             inference={"roi_size": [96, 96, 96], "overlap": 0.25, "padding_mode": "replicate",
                                        "resample": "labels"})
        del net
        spec = spec.model_copy(update={"inference": spec.inference.model_copy(update={"buffer_dtype": args.buffer_dtype})})
        t0 = time.perf_counter()
        vol = synthetic_ct(tuple(args.shape), tuple(args.spacing))
        t_ct = time.perf_counter() - t0
        cfg = {"threads": args.threads, "postprocess": None if args.postprocess else {"enabled": False}}

        from pipeline.segment.checkpoint import load_network
        model, _, n_params = load_network(spec.network.name, spec.network.args, spec.weights)
        with PeakRSS() as model_mem, torch.inference_mode():
            t0 = time.perf_counter()
            model(torch.zeros(1, 1, 96, 96, 96))
            t_window = time.perf_counter() - t0
        with PeakRSS() as seg_mem:
            t0 = time.perf_counter()
            res = segment(vol, spec, cfg)
            wall = time.perf_counter() - t0
        input_bytes = vol.array.nbytes
        extra = seg_mem.delta - model_mem.delta
        result = {
            "network": source, "parameters": n_params, "ct_shape_kji": list(vol.shape),
            "ct_spacing_mm": args.spacing, "pixdim_mm": args.pixdim, "threads": args.threads,
            "network_grid_xyz": res.record.inputs["network_grid"]["shape_xyz"],
            "inference_path": res.record.inputs["inference_path"], "resample": res.record.inputs["resample"],
            "buffer_dtype": args.buffer_dtype,
            "wall_s": round(wall, 1), "steps_s": {k: round(v, 2) for k, v in res.timings.items()},
            "one_window_forward_s": round(t_window, 2), "ct_build_s": round(t_ct, 1),
            "input_mb": round(input_bytes / 2**20, 1),
            "model_window_peak_mb": round(model_mem.delta / 2**20, 1),
            "segment_peak_over_start_mb": round(seg_mem.delta / 2**20, 1),
            "peak_over_model_mb": round(extra / 2**20, 1),
            "peak_over_model_x_input": round(extra / input_bytes, 2),
            "target": "peak_over_model_x_input <= 4",
            "geometry_equal": bool(res.labelmap.volume.geometry_equal(vol)),
        }
        result["pass"] = result["peak_over_model_x_input"] <= 4.0 and result["geometry_equal"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for k, v in result.items():
            print(f"{k:>28}: {v}")
    return result


if __name__ == "__main__":
    _reexec_with_fixed_mmap_threshold()
    sys.exit(0 if main()["pass"] else 1)
