"""Rebuild the shipped default model's registry entry and card from a finished training run.

    surgitwin train configs/train/abdomen_unet_3mm_stage1.yaml     # stage 1
    surgitwin train configs/train/abdomen_unet_3mm_stage2.yaml     # stage 2, from stage 1's weights
    python -m pipeline.train.default_model out/train/abdomen_unet_3mm_stage2 \
        --earlier out/train/abdomen_unet_3mm_stage1 --real-dir ../shared/data/real

exports the weights (``models/abdomen_unet_3mm/``, ``configs/models/abdomen_unet_3mm.yaml``),
evaluates them through the pipeline's own segment stage on the held-out synthetic dataset and
on the real CT of ``ct_thorax_abdomen_dicom_j2k``, times a 512x512x300 CT, and writes
MODEL_CARD.md from those measurements. The card's tables alone are regenerated, from the
registered weights and this version of the code, by ``surgitwin models card-tables
abdomen_unet_3mm --real-dir ../shared/data/real --write``.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..config import ROOT

NAME = "abdomen_unet_3mm"
# Inference options of the shipped entry: 7 channels at 3 mm are cheap to interpolate (smooth
# surfaces); the synthesiser's thinnest slab was 24 mm head-foot, so thinner scans get a warning.
INFERENCE = {"resample": "probabilities", "min_extent_mm": [0.0, 0.0, 24.0]}
DESCRIPTION = ("Liver, spleen, kidneys, aorta and IVC at 3 mm: a small MONAI UNet trained by surgitwin on "
               "SynthSeg-style synthetic CT drawn from real label maps (no real CT image in training)")

#: "Limitations and notes" of the card: how the shipped weights came about, in words.
NOTES = [
    "Trained only on synthetic images; the real-CT numbers are from one 40 mm slab whose label "
    "shapes were seen in training, so they bound the intensity gap, not accuracy on new patients.",
    "Kidneys could not be scored on a real image here (the real slab contains none); kidney_left "
    "and kidney_right are kept apart by construction (no flips, sidedness checks of every source "
    "map, tests that fail on a mirrored pipeline), not by a real-image measurement.",
    "Stage 1, for the record: 13:54-15:51 UTC on 2 CPU cores shared with other jobs (load 4-10), 101 "
    "min counted by the schedule; resumed four times (1 thread instead of 2, a synthesiser change at "
    "iteration 200 after a visual comparison of a synthetic slab with the real CT slice, a synthesis "
    "crash fixed at 240, batch Dice and fewer fully random intensities at 375). The real CT was scored "
    "twice during stage 1 (iterations ~200 and ~1000) to check the pipeline end to end.",
    "Stage 2, for the record: started from the stage-1 weights on a mostly idle machine (0.95 s per "
    "iteration on average, tests and other work sharing it at times, instead of ~2 s). Before it, the stage-1 model's errors on the real CT were looked at "
    "slice by slice: liver and aorta leaked into a food-filled stomach (24,000 and 5,400 voxels) and "
    "the IVC was twice its reference area where it is isodense to the liver. The synthesiser changes "
    "of stage 2 (mottled stomach/bowel with anterior gas, liver vessels, isodense IVC, thinner slabs) "
    "answer those findings, so the real-CT numbers below are no longer a blind test: they guided what "
    "to synthesise (never the weights or the checkpoint choice). Stage 2 was resumed twice in its "
    "first 6 minutes to take these changes (validation cases are drawn again on each start, so scores "
    "before iteration 400 are on other cases). Its best-checkpoint tracking was also reset by hand at "
    "iteration 575 (`surgitwin train --resume --reset-best` does this now); that changed nothing, as the "
    "next validation (0.814) beat the best so far (0.809) anyway. During stage 2 the real CT was also "
    "scored twice to follow progress (the best checkpoint at iteration 800: liver 0.875, aorta 0.895, "
    "IVC 0.523; the last one at ~2000: liver 0.951, IVC 0.708); the rule for the shipped checkpoint "
    "(best on the synthetic validation cases) was set before and not changed.",
    "Scans thinner than 24 mm head-foot (the synthesiser's thinnest slab) run with a warning in QC, "
    "the manifest and the report: on a 3-slice (4 mm) real CT the liver is mostly missed.",
    "Coarse 3 mm output: thin structures (IVC, aorta near bifurcation) lose detail; post-processing "
    "keeps the largest component per organ and fills holes.",
    "The network answers every CT with its organs (a 440 ml 'liver' in a chest, 684 ml in a head). The "
    "segment stage's body-region check (`pipeline/segment/region.py`) classes every slice as head, neck, "
    "thorax, abdomen or pelvis from the image (skull, lungs, pelvic bone) and removes an organ from "
    "slices more than 50 mm outside its regions, saying so in QC; see the negatives table. It is a "
    "heuristic tuned on the few real CTs here and synthetic chest and pelvis scans: no real pelvis or "
    "chest-only CT was available to test it.",
]


def evaluate_previous_stage(stage_dir: Path, heldout, ref: Path, out_dir: Path) -> dict:
    """The earlier stage's best weights through the same segment stage (a temporary registry
    entry), on the same held-out synthetic cases and real CT: the card's before/after table."""
    import tempfile

    from .evaluate import evaluate, evaluate_reference_image, write_json
    from .export import export_model

    with tempfile.TemporaryDirectory(prefix="surgitwin-prev-") as td:
        r = export_model(stage_dir, name="previous_stage", weights="best", models_dir=Path(td) / "models",
                         configs_dir=Path(td) / "configs", inference=INFERENCE)
        out = {"name": stage_dir.name, "synth": None, "real": None}
        if heldout and Path(heldout).exists():
            out["synth"] = evaluate(r["registry"], heldout)
        if ref.exists():
            out["real"] = evaluate_reference_image(r["registry"], ref / "series", ref / "labels_reference.nii.gz",
                                                   ref / "class_map_total.json")
    write_json(out, out_dir / "eval_previous_stage.json")
    return out


def build(train_dir, real_dir, heldout, weights: str = "best", out_dir=None, time_it: bool = True,
          earlier: list | None = None, notes: list[str] | None = None) -> dict:
    from .card import render_card
    from .evaluate import benchmark_inference, evaluate, evaluate_reference_image, write_json
    from .export import export_model

    out_dir = Path(out_dir or ROOT / "out" / "default_model")
    out_dir.mkdir(parents=True, exist_ok=True)
    if heldout is None and Path(real_dir).exists():  # the card's held-out set, as `models card-tables` makes it
        from .card import heldout_dataset
        heldout = heldout_dataset(real_dir, ROOT / "out" / "card")
    export_model(train_dir, name=NAME, weights=weights, description=DESCRIPTION, inference=INFERENCE, force=True)
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
            load = os.getloadavg()[0]
            b = benchmark_inference(NAME, ref / "series", 300, threads=2)
            b["load_average_before"] = round(load, 2)
            write_json(b, out_dir / "timing.json")
        b = json.loads((out_dir / "timing.json").read_text())
        load = b.get("load_average_before")
        timing = {"512x512x300 CT (real series tiled), 2 threads on 2 cores"
                  + (f", 1-min load average {load} before the run" if load is not None else ", shared CPU"):
                  f"{b['wall_s']} s wall, {b['cpu_s']} s CPU (stages: {b['timings']})"}
    previous = evaluate_previous_stage(Path(earlier[-1]), heldout, ref, out_dir) if earlier else None
    notes = NOTES if notes is None else notes
    card = render_card(train_dir, synth, real, timing, notes, earlier_stages=earlier, name=NAME, previous=previous)
    export_model(train_dir, name=NAME, weights=weights, description=DESCRIPTION, card=card, inference=INFERENCE,
                 force=True)
    (out_dir / "MODEL_CARD.md").write_text(card)
    return {"synth": synth and synth["mean"], "real": real and real["mean"], "timing": timing}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("train_dir")
    p.add_argument("--real-dir", default=str(ROOT.parent / "shared" / "data" / "real"))
    p.add_argument("--heldout", help="held-out synthetic dataset (default: the card's, made as "
                   "`surgitwin models card-tables` makes it)")
    p.add_argument("--weights", choices=["best", "last"], default="best")
    p.add_argument("--earlier", action="append", default=[], help="training folder of an earlier stage (repeatable)")
    p.add_argument("--no-timing", action="store_true")
    a = p.parse_args(argv)
    res = build(a.train_dir, a.real_dir, a.heldout, a.weights, time_it=not a.no_timing, earlier=a.earlier)
    print(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
