"""Rebuild the shipped default model's registry entry and card from a finished training run.

    surgitwin train configs/train/abdomen_unet_3mm.yaml
    surgitwin synth out/Dataset501_SynthHeldout --real-dir ../shared/data/real --cases 6 --seed 777
    python -m pipeline.train.default_model out/train/abdomen_unet_3mm --real-dir ../shared/data/real

exports the weights (``models/abdomen_unet_3mm/``, ``configs/models/abdomen_unet_3mm.yaml``),
evaluates them through the pipeline's own segment stage on the held-out synthetic dataset and
on the real CT of ``ct_thorax_abdomen_dicom_j2k``, times a 512x512x300 CT, and writes
MODEL_CARD.md from those measurements.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import ROOT

NAME = "abdomen_unet_3mm"
DESCRIPTION = ("Liver, spleen, kidneys, aorta and IVC at 3 mm: a small MONAI UNet trained by surgitwin on "
               "SynthSeg-style synthetic CT drawn from real label maps (no real CT image in training)")


def build(train_dir, real_dir, heldout, weights: str = "best", out_dir=None, time_it: bool = True) -> dict:
    from .card import render_card
    from .evaluate import benchmark_inference, evaluate, evaluate_reference_image, write_json
    from .export import export_model

    out_dir = Path(out_dir or ROOT / "out" / "default_model")
    out_dir.mkdir(parents=True, exist_ok=True)
    export_model(train_dir, name=NAME, weights=weights, description=DESCRIPTION)
    synth = evaluate(NAME, heldout) if heldout and Path(heldout).exists() else None
    if synth:
        write_json(synth, out_dir / "eval_synth_heldout.json")
    real = None
    ref = Path(real_dir) / "ct_thorax_abdomen_dicom_j2k"
    if ref.exists():
        real = evaluate_reference_image(NAME, ref / "series", ref / "labels_reference.nii.gz",
                                        ref / "class_map_total.json")
        write_json(real, out_dir / "eval_real_ct.json")
    timing = None
    if (time_it or (out_dir / "timing.json").exists()) and ref.exists():
        # the run time does not depend on the weights: a measurement from an earlier export is reused
        if time_it:
            b = benchmark_inference(NAME, ref / "series", 300, threads=2)
            write_json(b, out_dir / "timing.json")
        b = json.loads((out_dir / "timing.json").read_text())
        timing = {"512x512x300 CT (real series tiled), 2 threads, shared CPU":
                  f"{b['wall_s']} s wall, {b['cpu_s']} s CPU (stages: {b['timings']})"}
    notes = [
        "Trained only on synthetic images; the real-CT numbers are from one 40 mm slab whose label "
        "shapes were seen in training, so they bound the intensity gap, not accuracy on new patients.",
        "Kidneys could not be scored on a real image here (the real slab contains none); kidney_left "
        "and kidney_right are kept apart by construction (no flips, sidedness checks of every source "
        "map, tests that fail on a mirrored pipeline), not by a real-image measurement.",
        "Training ran on 2 CPU cores shared with other jobs (no GPU): far fewer iterations than such a "
        "network normally gets; a longer run with the same config should improve every number.",
        "How the run went, for the record: training ran 13:54-15:51 UTC on one day, 101 min counted by "
        "the schedule (time lost to restarts is not counted). It was resumed with --resume four times: to "
        "use 1 thread (2 threads spin-waited on the shared CPU), after the synthesiser was changed at "
        "iteration 200 (body outline fitted to the organs instead of the arms, arms wrapped in soft "
        "tissue, scanner table, lower noise), after a synthesis crash at iteration 240 (fixed; one bad "
        "draw is now retried), and at iteration 375 (batch Dice, 5 % instead of 15 % fully random "
        "intensities, more contrast-coupled samples). The synthesiser change at 200 followed a visual "
        "comparison of a synthetic slab with the real CT slice, and the real CT was scored twice during "
        "development (iterations ~200 and ~1000) to check the pipeline end to end; checkpoint selection "
        "used only the synthetic validation cases.",
        "HD95 of the liver on the real slab is large (tens of mm) although Dice is high: a few voxels "
        "far from the organ stay attached to the largest component.",
        "Coarse 3 mm output: thin structures (IVC, aorta near bifurcation) lose detail; post-processing "
        "keeps the largest component per organ and fills holes.",
    ]
    card = render_card(train_dir, synth, real, timing, notes)
    export_model(train_dir, name=NAME, weights=weights, description=DESCRIPTION, card=card)
    (out_dir / "MODEL_CARD.md").write_text(card)
    return {"synth": synth and synth["mean"], "real": real and real["mean"], "timing": timing}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("train_dir")
    p.add_argument("--real-dir", default=str(ROOT.parent / "shared" / "data" / "real"))
    p.add_argument("--heldout", default=str(ROOT / "out" / "Dataset501_SynthHeldout"))
    p.add_argument("--weights", choices=["best", "last"], default="best")
    p.add_argument("--no-timing", action="store_true")
    a = p.parse_args(argv)
    res = build(a.train_dir, a.real_dir, a.heldout, a.weights, time_it=not a.no_timing)
    print(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
