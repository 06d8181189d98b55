"""Follow-up of the sample pair: seconds per stage against the 60 s target (2 cores).

The baseline is the shipped sample scan, the follow-up the synthetic one of
``surgitwin demo-follow-up`` (moved and turned, tumour grown). ``--model ground_truth`` (the
default) times registration, meshing, change report and plan carry-over alone; ``--model
hu_rules`` (or any registry model) adds segmenting the follow-up with that model. Only the
follow-up is timed (the baseline scene exists beforehand). Run:
``python benchmarks/bench_followup.py [--model hu_rules] [--rigid-only]``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_S = 60.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ground_truth")
    ap.add_argument("--rigid-only", action="store_true")
    args = ap.parse_args(argv)

    from pipeline.commands.core import SAMPLE
    from pipeline.dicom_writer import DicomMeta, write_dicom_series
    from pipeline.followup import demo
    from pipeline.followup.register import RegistrationConfig
    from pipeline.followup.run import follow_up
    from pipeline.followup.synthetic import follow_up_phantom

    with tempfile.TemporaryDirectory(prefix="bench-followup-") as d:
        out = Path(d) / "scene"
        if args.model == "ground_truth":
            demo._truth_scene(SAMPLE, out)
        else:
            from pipeline.run import run_case

            run_case(SAMPLE / "dicom", out, model=args.model, snapshot=False)
        ct, labels, _ = follow_up_phantom(1, **demo.DEMO_MOTION)
        write_dicom_series(ct, Path(d) / "fu", DicomMeta(study_date="20250601", uid_seed="bench"))
        t0 = time.perf_counter()
        res = follow_up(out, Path(d) / "fu", registration=RegistrationConfig(deformable=not args.rigid_only),
                        segmenter=demo._truth_segmenter(labels) if args.model == "ground_truth" else None,
                        model=None if args.model == "ground_truth" else args.model)
        wall = time.perf_counter() - t0
    print(f"follow-up of the sample pair ({args.model}, {'rigid' if args.rigid_only else 'rigid + B-spline'}): "
          f"{wall:.1f} s (target < {TARGET_S:.0f} s on 2 cores)")
    print("stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in res.timings.items()))
    print("registration: " + ", ".join(f"{k} {v:.1f} s" for k, v in res.registration["timings_s"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
