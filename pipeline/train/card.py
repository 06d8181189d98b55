"""MODEL_CARD.md from measured numbers (training log, evaluation JSONs), never typed by hand."""
from __future__ import annotations

import csv
import json
from pathlib import Path

#: The bar set in the project's issue: small UNet, 40 min on 2 CPU cores, images synthesised from
#: the two real label maps, scored on a *different* real abdominal CT vs TotalSegmentator's map.
BAR = {"liver": 0.90, "spleen": 0.90, "kidney_right": 0.61, "kidney_left": 0.74, "aorta": 0.78,
       "inferior_vena_cava": 0.41}


#: the one command that regenerates every table of a card (between the markers below)
TABLES_COMMAND = ("surgitwin models card-tables {name} --real-dir ../shared/data/real --write")
BEGIN, END = "<!-- card-tables:begin -->", "<!-- card-tables:end -->"
#: held-out synthetic set of the card: these label maps, this many cases, this seed (never a training seed)
HELDOUT = {"cases": 6, "seed": 777, "spacing": 3.0}


def _fmt(v, nd=3):
    return "-" if v is None else f"{v:.{nd}f}"


def metrics_table(result: dict, bar: dict | None = None) -> str:
    rows = ["| structure | Dice | HD95 (mm) | surface Dice | " + ("bar (Dice) | " if bar else "") + "n |",
            "|---|---|---|---|" + ("---|" if bar else "") + "---|"]
    for name, m in result["mean"].items():
        b = (f"{bar[name]:.2f} | " if name in bar else "- | ") if bar else ""
        rows.append(f"| {name} | {_fmt(m['dice'])} | {_fmt(m['hd95_mm'], 1)} | {_fmt(m['surface_dice'])} | {b}{m['n']} |")
    return "\n".join(rows)


def training_summary(train_dir) -> dict:
    train_dir = Path(train_dir)
    rows = list(csv.DictReader(open(train_dir / "log.csv")))
    last = rows[-1] if rows else {}
    val_rows = [r for r in rows if r.get("val_mean_dice")]
    best = max(val_rows, key=lambda r: float(r["val_mean_dice"])) if val_rows else None
    return {"iterations": int(last.get("iteration", 0)), "elapsed_min": float(last.get("elapsed_s", 0)) / 60.0,
            "final_loss": float(last.get("loss", "nan") or "nan"), "best": best, "validations": len(val_rows)}


def render_card(train_dir, synth_eval: dict | None, real_eval: dict | None, timing: dict | None = None,
                notes: list[str] | None = None, earlier_stages: list | None = None, name: str | None = None,
                previous: dict | None = None) -> str:
    """Markdown model card. ``synth_eval``/``real_eval`` are :func:`pipeline.train.evaluate` results.

    ``earlier_stages``: training folders whose weights this run started from (oldest first); each
    gets its own line in "Training run" and its config at the end.
    """
    train_dir = Path(train_dir)
    stages = [Path(d) for d in (earlier_stages or [])] + [train_dir]
    meta = json.loads((train_dir / "model.json").read_text())
    args = meta["network"]["args"]
    out = [f"# {name or meta['name']}: {meta['network']['name']} abdominal CT organ segmentation at "
           f"{meta['preprocessing']['spacing'][0]:g} mm", ""]
    out += ["Produced by this project's own training path (`surgitwin synth` / `surgitwin train` / "
            "`surgitwin evaluate` / `surgitwin models export`). Every number below was measured by those "
            "commands; nothing is copied from elsewhere.", ""]
    out += ["## Labels", "", "channel 0 background, " + ", ".join(f"{i} {n}" for i, n in enumerate(meta["labels"], 1)), ""]
    out += ["## Network", "",
            f"- MONAI `{meta['network']['name']}`: channels {args.get('channels')}, strides {args.get('strides')}, "
            f"{args.get('num_res_units')} residual units, norm {args.get('norm', 'instance')}; input 1 channel (CT, HU "
            f"windowed {meta['preprocessing']['intensity'].get('a_min')}..{meta['preprocessing']['intensity'].get('a_max')} "
            f"-> 0..1), RAS orientation, {meta['preprocessing']['spacing']} mm.",
            "- Weights: `model.safetensors` (state dict, float32).", ""]
    out += ["## Training data and how it was made", "",
            "No real CT image was used for training. Images are synthesised on the fly, SynthSeg-style "
            "(`pipeline/train/synth.py`), from *generation maps*:",
            "- `abdomen_label_map/torso_labels.nii.gz` (11 abdominal organs, niivue demo data, BSD-2);",
            "- the reference labels of `ct_thorax_abdomen_dicom_j2k` (TotalSegmentator output, 32 structures "
            "present, mapped by name to one table; Apache-2.0 / CC BY 4.0) -- only the label file, never its CT;",
            "- randomised analytic phantoms (`pipeline/phantom.py`).",
            "Left/right names were checked by physical position before use (`check_sidedness`). For each sample: "
            "a random body outline with subcutaneous fat, abdominal wall, spine, back muscles and ribs where the "
            "map has no bone, visceral fat/soft tissue/gas where it has no label; random rotation (10/10/15 deg), "
            "anisotropic scale 0.8-1.25 and a smooth elastic field -- never a flip, so kidney_left and kidney_right "
            "keep their sides; per-label mean HU from a wide CT prior spanning unenhanced to arterial phase (5 % of "
            "samples fully random), texture, partial-volume blur, thick-slice blur, noise, bias field, and truncated "
            "fields of view (slabs from 24 mm, reconstruction circles). From stage 2 on also: mottled stomach and "
            "bowel contents (food at liver-like HU) with gas on the anterior, non-dependent side and sometimes "
            "oral contrast; portal/hepatic vessel tubes inside the liver; an IVC isodense to the liver in 30 % "
            "of contrast-coupled samples.", ""]
    out += ["## Training run", ""]
    for n, d in enumerate(stages, 1):
        st = training_summary(d)
        ctext = (d / "config.yaml").read_text() if (d / "config.yaml").exists() else ""
        lr = _cfg_value(ctext, "lr", "optim")
        prefix = f"- Stage {n} (`{d.name}`{', from the previous stage' if n > 1 else ''}): " if len(stages) > 1 else "- "
        out.append(f"{prefix}{st['iterations']} iterations in {st['elapsed_min']:.0f} min of wall-clock on a 2-core "
                   f"CPU machine (no GPU), batch {_cfg_value(ctext, 'batch_size')} patches of "
                   f"{_cfg_value(ctext, 'patch')} voxels, DiceCE loss, AdamW (lr {lr}), poly schedule over the time "
                   f"budget; final training loss {st['final_loss']:.3f}; best mean validation Dice (fixed synthetic "
                   f"cases) at iteration {st['best']['iteration'] if st['best'] else '-'} "
                   f"({st['best']['val_mean_dice'] if st['best'] else '-'}).")
    out += ["- The shipped weights are the last stage's best checkpoint by mean validation Dice on its fixed "
            "synthetic validation cases (never the real CT).",
            "- Configs: " + ", ".join(f"`configs/train/{d.name}.yaml`" for d in stages) + " (copied below).", ""]
    out += [tables_markdown(synth_eval, real_eval, previous, command=TABLES_COMMAND.format(name=name or meta["name"])), ""]
    if timing:
        out += ["## Run time", ""] + [f"- {k}: {v}" for k, v in timing.items()] + [""]
    if notes:
        out += ["## Limitations and notes", ""] + [f"- {n}" for n in notes] + [""]
    for n, d in enumerate(stages, 1):
        ctext = (d / "config.yaml").read_text() if (d / "config.yaml").exists() else ""
        title = f"## Training config, stage {n}" if len(stages) > 1 else "## Training config"
        out += [title, "", "```yaml", ctext.strip(), "```", ""]
    return "\n".join(out)


def _cfg_value(cfg_text: str, key: str, section: str = "data") -> str:
    import yaml

    try:
        return str(yaml.safe_load(cfg_text)[section][key])
    except (yaml.YAMLError, KeyError, IndexError, TypeError):  # config missing or malformed: the card still renders
        return "?"


def tables_markdown(synth_eval: dict | None, real_eval: dict | None, previous: dict | None = None,
                    command: str | None = None) -> str:
    """The card's measured tables (held-out synthetic, real CT + bar, before/after), between
    markers so :func:`replace_tables` can swap them for a fresh measurement."""
    out = [BEGIN]
    if command:
        out += [f"Tables regenerated by `{command}` (held-out set: {HELDOUT['cases']} cases synthesised with seed "
                f"{HELDOUT['seed']} by this version of `pipeline/train/synth.py`).", ""]
    if synth_eval:
        out += ["## Dice on held-out synthetic cases", "",
                f"`{Path(synth_eval['dataset']).name}`: {len(synth_eval['cases'])} whole images synthesised with a "
                "seed never used in training (same label maps, new deformation and intensities). Surface Dice "
                f"tolerance {synth_eval['surface_tolerance_mm']} mm.", "", metrics_table(synth_eval), ""]
    if real_eval:
        out += ["## Dice on the real CT image of ct_thorax_abdomen_dicom_j2k", "",
                "20 slices (40 mm) of a real contrast CT at the T11-T12 level, read from DICOM (JPEG 2000), "
                "compared in physical space with TotalSegmentator's labels. This image was never used in "
                "training, but its label *shapes* were (as one of the generation maps), so these numbers "
                "measure the synthetic-to-real intensity gap, not generalisation to new anatomy. Kidneys are "
                "not in this slab. The bar column is the issue's reference model on a *different* real CT; "
                "it is shown for orientation only -- no second real abdominal CT with reference labels is "
                "available here, so the like-for-like comparison could not be run.", "",
                metrics_table(real_eval, BAR), ""]
        verdict = []
        for name, bar in BAR.items():
            d = real_eval["mean"].get(name, {}).get("dice")
            verdict.append(f"{name}: not measurable here (bar {bar:.2f})" if d is None else
                           f"{name}: {'above' if d > bar else 'below'} the bar ({d:.3f} vs {bar:.2f})")
        out += ["**Against the bar** (different image, so indicative only): " + "; ".join(verdict) + ".", ""]
    if previous and (previous.get("synth") or previous.get("real")):
        out += [f"## Change from the previous stage (`{previous['name']}`, its best checkpoint)", "",
                "Both through the same segment stage, on the same images.", "",
                "| structure | held-out synthetic Dice, before | after | real CT Dice, before | after |",
                "|---|---|---|---|---|"]
        names = list((synth_eval or previous.get("synth") or real_eval or previous.get("real"))["mean"])
        for n in names:
            cells = []
            for before, after in ((previous.get("synth"), synth_eval), (previous.get("real"), real_eval)):
                for r in (before, after):
                    cells.append(_fmt(((r or {}).get("mean") or {}).get(n, {}).get("dice")))
            out.append(f"| {n} | " + " | ".join(cells) + " |")
        out.append("")
    out.append(END)
    return "\n".join(out)


def replace_tables(card: str, tables: str) -> str:
    """``card`` with its tables (between the markers, or -- in a card written before them -- from
    the held-out synthetic section to the next section that is not a table) replaced."""
    if BEGIN in card and END in card:
        a, b = card.index(BEGIN), card.index(END) + len(END)
        return card[:a] + tables + card[b:]
    starts = [card.find(h) for h in ("## Dice on held-out synthetic cases", "## Dice on the real CT")
              if card.find(h) >= 0]
    if not starts:
        raise ValueError("the card has no tables section to replace")
    a = min(starts)
    stops = [card.find(h, a) for h in ("## Run time", "## Limitations and notes", "## Training config")
             if card.find(h, a) >= 0]
    b = min(stops) if stops else len(card)
    return card[:a] + tables + "\n\n" + card[b:]


def heldout_dataset(real_dir, out_dir, cases: int = HELDOUT["cases"], seed: int = HELDOUT["seed"]) -> Path:
    """The card's held-out synthetic set, made by this version of the synthesiser (cached by a
    fingerprint of the synthesiser's source, so a code change makes a new set)."""
    import hashlib

    from . import labels as labels_mod, synth as synth_mod
    from .synth import load_real_generation_maps, write_synth_dataset

    code = hashlib.sha256((Path(synth_mod.__file__).read_bytes() + Path(labels_mod.__file__).read_bytes())).hexdigest()[:10]
    out = Path(out_dir) / f"Dataset501_SynthHeldout_s{seed}_n{cases}_{code}"
    if not (out / "dataset.json").exists():
        maps = load_real_generation_maps(real_dir, HELDOUT["spacing"])
        tmp = out.with_name(out.name + ".partial")
        if tmp.exists():
            import shutil
            shutil.rmtree(tmp)
        write_synth_dataset(tmp, maps, cases, seed=seed, dataset_name="Dataset501_SynthHeldout")
        tmp.rename(out)
    return out


def card_tables(model, real_dir, work_dir, cases: int = HELDOUT["cases"], seed: int = HELDOUT["seed"],
                previous=None) -> tuple[str, dict]:
    """Measure and render every table of a model's card: (markdown, {"synth", "real", "previous"}).

    ``model``/``previous``: anything ``segment --model`` accepts. The real CT table needs
    ``real_dir/ct_thorax_abdomen_dicom_j2k``; the held-out set needs the real label maps.
    """
    from .evaluate import evaluate, evaluate_reference_image

    real_dir = Path(real_dir)
    heldout = heldout_dataset(real_dir, work_dir, cases, seed)
    ref = real_dir / "ct_thorax_abdomen_dicom_j2k"

    def measure(m):
        synth = evaluate(m, heldout)
        real = (evaluate_reference_image(m, ref / "series", ref / "labels_reference.nii.gz",
                                         ref / "class_map_total.json") if ref.exists() else None)
        return synth, real

    synth, real = measure(model)
    prev = None
    if previous:
        ps, pr = measure(previous)
        prev = {"name": Path(str(previous)).name, "synth": ps, "real": pr}
    name = Path(str(model)).name
    command = TABLES_COMMAND.format(name=name) + (f" --previous {previous}" if previous else "")
    return tables_markdown(synth, real, prev, command=command), {"synth": synth, "real": real, "previous": prev}
