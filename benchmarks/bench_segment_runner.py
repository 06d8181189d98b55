"""Our sliding-window runner vs bare ``monai.inferers.sliding_window_inference``, same process.

Same network (UNet channels 16-32-64-128, 8 classes, random weights), same input tensor
1x1x256x256x160, roi 96^3, overlap 0.25, Gaussian blending, same thread count. Timings are
interleaved (bare, ours, bare, ours, ...) and the medians compared, so load from other
processes hits both alike; process CPU time is reported too (less sensitive to contention).

* ``inference ratio``: our inference step (MONAI's SWI + softmax, argmax and entropy on the
  network grid, in slabs) / (bare SWI + softmax + argmax): the cost of getting labels either way.
* ``streamed ratio``: the ring-buffer path (used when C x voxels exceeds the buffer budget) /
  the same baseline.
* ``end to end``: ``segment()`` of a Volume on the network's grid (conversion, orientation,
  intensity, inference, back-resampling, post-processing, QC) / baseline, for information.

Target: inference ratio <= 1.05. Usage: ``python benchmarks/bench_segment_runner.py [--repeat N]
[--threads T] [--json]``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shape", type=int, nargs=3, default=[256, 256, 160])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from monai.inferers import sliding_window_inference

    from pipeline.segment import segment
    from pipeline.segment.checkpoint import build_network
    from pipeline.segment.registry import InferenceDef, ModelSpec
    from pipeline.segment.runner import _Finaliser, _whole, streamed_sliding_window
    from pipeline.types import Volume

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    unet = {"spatial_dims": 3, "in_channels": 1, "out_channels": 8, "channels": [16, 32, 64, 128],
            "strides": [2, 2, 2], "num_res_units": 2}
    net = build_network("UNet", unet).eval()
    shape = tuple(args.shape)
    x = torch.rand(1, 1, *shape)
    inf = InferenceDef(roi_size=[96, 96, 96], overlap=0.25, mode="gaussian", sw_batch_size=1)
    dev = torch.device("cpu")

    def bare():
        with torch.inference_mode():
            logits = sliding_window_inference(x, inf.roi_size, 1, net, overlap=inf.overlap, mode="gaussian")
            return torch.softmax(logits, 1).argmax(1)

    def ours():
        with torch.inference_mode():
            fin = _Finaliser(shape, 8, keep_probs=False)
            _whole(x, net, inf, dev, fin)
            return fin.ch

    def streamed():
        with torch.inference_mode():
            fin = _Finaliser(shape, 8, keep_probs=False)
            streamed_sliding_window(x, net, inf, dev, fin.planes)
            return fin.ch

    # a Volume whose grid is the network's grid (RAS, 1 mm): segment() end to end
    affine = np.diag([1.0, -1.0, -1.0, 1.0])[:, [2, 1, 0, 3]]  # (k,j,i) -> LPS with x,y,z = R,A,S
    vol = Volume(np.ascontiguousarray(x[0, 0].numpy().transpose(2, 1, 0)), affine, None, {"modality": "CT"})
    spec = ModelSpec(name="bench_unet", backend="checkpoint", network={"name": "UNet", "args": unet},
                     labels=[{"id": i, "name": f"class_{i}"} for i in range(1, 8)],
                     preprocessing={"orientation": "RAS", "spacing": None, "intensity": {"kind": "none"}},
                     inference=inf.model_dump() | {"resample": "labels"}, postprocess={"enabled": False})

    def end_to_end():
        return segment(vol, spec, {"threads": args.threads, "uncertainty": True}, network=net)

    ref = bare()
    agree = float((torch.as_tensor(ours()) == ref[0]).float().mean())
    agree_streamed = float((torch.as_tensor(streamed()) == ref[0]).float().mean())
    times: dict[str, list[float]] = {"bare": [], "ours": [], "streamed": [], "end_to_end": []}
    cpu: dict[str, list[float]] = {k: [] for k in times}
    for _ in range(args.repeat):
        for name, fn in (("bare", bare), ("ours", ours), ("streamed", streamed), ("end_to_end", end_to_end)):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    result = {
        "input": [1, 1, *shape], "roi": inf.roi_size, "overlap": inf.overlap, "threads": args.threads,
        "repeat": args.repeat, "median_s": {k: round(v, 3) for k, v in med.items()},
        "all_s": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "median_cpu_s": {k: round(v, 3) for k, v in med_cpu.items()},
        "cpu_ratio": round(med_cpu["ours"] / med_cpu["bare"], 3),
        "inference_ratio": round(med["ours"] / med["bare"], 3),
        "streamed_ratio": round(med["streamed"] / med["bare"], 3),
        "end_to_end_ratio": round(med["end_to_end"] / med["bare"], 3),
        "labels_agree_whole": agree, "labels_agree_streamed": agree_streamed,
        "target": "inference_ratio <= 1.05",
    }
    result["pass"] = result["inference_ratio"] <= 1.05
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for k, v in result.items():
            print(f"{k:>22}: {v}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["pass"] else 1)
