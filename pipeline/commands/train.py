"""Training commands: synth, dataset validate|from-dicom, train, evaluate, models export.

Thin wrappers over :mod:`pipeline.train`; nothing heavy is imported at module level.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("synth", help="write a synthetic nnU-Net dataset: SynthSeg-style images from real label maps and phantoms")
    p.add_argument("out", help="dataset folder to write, e.g. DatasetNNN_Synth")
    p.add_argument("--real-dir", help="folder with abdomen_label_map/ and ct_thorax_abdomen_dicom_j2k/ (../shared/data/real)")
    p.add_argument("--labels", action="append", default=[], metavar="LABELS.nii.gz[:NAMES.json]",
                   help="extra real label map (+ id->name JSON, TotalSegmentator or {id: name}); repeatable")
    p.add_argument("--ignore-unknown", action="store_true",
                   help="label names the synthesiser does not know become background (default: an error)")
    p.add_argument("--phantoms", type=int, default=0, help="randomised phantoms to add as label sources")
    p.add_argument("--cases", type=int, default=10, help="synthetic images to write")
    p.add_argument("--spacing", type=float, default=3.0, help="isotropic mm")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("dataset", help="nnU-Net-layout datasets: validate, build from DICOM, add a corrected scene")
    dsub = p.add_subparsers(dest="dataset_command", metavar="ACTION")
    q = dsub.add_parser("validate", help="check a DatasetNNN_Name folder (geometry, declared labels, empty cases)")
    q.add_argument("dir")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_dataset_validate)
    q = dsub.add_parser("from-dicom", help="build a dataset from DICOM series + DICOM SEG or label files")
    q.add_argument("out")
    q.add_argument("--case", nargs=2, action="append", required=True, metavar=("SERIES_DIR", "SEG_OR_LABELS"),
                   help="one case: a DICOM series folder and its DICOM SEG / NIfTI / NRRD labels; repeatable")
    q.add_argument("--labels", help="comma-separated label names to keep, in id order (default: all, first seen first)")
    q.add_argument("--name", help="dataset name for dataset.json")
    q.set_defaults(func=cmd_dataset_from_dicom)
    q = dsub.add_parser("add-scene", help="add a (corrected) scene's image and label map as an nnU-Net case, with its lineage")
    q.add_argument("scene", help="scene folder or its scene.json")
    q.add_argument("dataset", help="DatasetNNN_Name folder (created with the scene's labels if absent)")
    q.add_argument("--case-id", help="case name (default: the scene's case_id)")
    q.add_argument("--background", action="append", default=[], metavar="STRUCTURE",
                   help="write this structure as background on purpose (repeatable), e.g. a lesion for an organ dataset")
    q.add_argument("--replace", action="store_true", help="write the case again if it is already there")
    q.add_argument("--name", help="dataset name for a new dataset.json")
    q.set_defaults(func=cmd_dataset_add_scene)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    p = sub.add_parser("train", help="train or fine-tune a MONAI network from a YAML config (configs/train/)")
    p.add_argument("config")
    p.add_argument("--resume", action="store_true", help="continue from output_dir/state.pt + last.safetensors")
    p.add_argument("--reset-best", action="store_true",
                   help="with --resume: forget the best validation score (the validation cases changed)")
    p.add_argument("--max-iterations", type=int, help="override optim.max_iterations")
    p.add_argument("--output-dir", help="override output_dir")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="per-class Dice, HD95 and surface Dice of a model on a labelled dataset")
    p.add_argument("dataset", help="nnU-Net dataset folder, or an image/DICOM folder with --reference")
    p.add_argument("--model", required=True,
                   help="registry name, model YAML, MONAI bundle folder or training output folder (as segment --model)")
    p.add_argument("--compare", help="a second model, shown side by side; differing settings (resample, "
                   "min_extent_mm, spacing, post-processing, ...) are listed above the table")
    p.add_argument("--same-settings", action="store_true",
                   help="with --compare: refuse (exit 1) when the two models run with different settings")
    p.add_argument("--reference", help="reference label file when DATASET is a single image or DICOM folder")
    p.add_argument("--reference-names", help="JSON id->name table for --reference (default labels.json beside it)")
    p.add_argument("--tolerance", type=float, default=2.0, help="surface Dice tolerance, mm")
    p.add_argument("--json", dest="json_out", help="write the full results as JSON here")
    p.set_defaults(func=cmd_evaluate)

    _register_models_export(sub)


def _register_models_export(sub) -> None:
    """Add `export` under an existing `models` command (pipeline.segment's) or create one."""
    models = sub.choices.get("models")
    msub = None
    if models is not None:
        msub = next((a for a in models._actions if isinstance(a, argparse._SubParsersAction)), None)
        if msub is None:  # a flat `models` command: offer `models-export` instead of clobbering it
            msub, name = sub, "models-export"
        else:
            name = "export"
    else:
        models = sub.add_parser("models", help="model registry")
        msub = models.add_subparsers(dest="models_command", metavar="ACTION")
        models.set_defaults(func=lambda a: (models.print_help(), 2)[1])
        name = "export"
    q = msub.add_parser(name, help="write a trained model into the registry (configs/models/<name>.yaml + models/<name>/)")
    q.add_argument("train_dir", help="training output folder (model.json + best/last.safetensors)")
    q.add_argument("--name", help="registry name (default: the training config's name)")
    q.add_argument("--weights", choices=["best", "last"], default="best")
    q.add_argument("--bundle", metavar="DIR", help="also write a MONAI bundle folder here")
    q.add_argument("--description", default="")
    q.add_argument("--card", help="MODEL_CARD.md to copy next to the weights (and into the bundle as docs/README.md)")
    q.add_argument("--inference-set", action="append", default=[], metavar="KEY=VALUE",
                   help="change an inference setting recorded by training, e.g. resample=labels; repeatable")
    q.add_argument("--force", action="store_true",
                   help="replace a registered model of the same name (weights, YAML, card, bundle)")
    q.set_defaults(func=cmd_models_export)
    q = msub.add_parser("card-tables" if name == "export" else "models-card-tables",
                        help="measure and print every table of a model card (held-out synthetic set made by this "
                             "code, real CT); --write puts them into the model's MODEL_CARD.md")
    q.add_argument("model", help="registry name, model YAML, MONAI bundle or training folder (as segment --model)")
    q.add_argument("--real-dir", default="../shared/data/real",
                   help="folder with abdomen_label_map/ and ct_thorax_abdomen_dicom_j2k/ (../shared/data/real)")
    q.add_argument("--previous", help="an earlier model: adds the before/after table")
    q.add_argument("--cases", type=int, default=6, help="held-out synthetic cases (the card's: 6)")
    q.add_argument("--seed", type=int, default=777, help="held-out synthesis seed (the card's: 777)")
    q.add_argument("--work-dir", default="out/card", help="where the held-out set is made (cached per code version)")
    q.add_argument("--json", dest="json_out", help="also write the measurements as JSON here")
    q.add_argument("--write", action="store_true", help="replace the tables in the model's card (its `card:` file)")
    q.set_defaults(func=cmd_models_card_tables)


def cmd_synth(args) -> int:
    from pipeline.errors import SurgitwinError
    from pipeline.train.synth import (load_label_map_file, load_real_generation_maps, phantom_generation_maps,
                                      write_synth_dataset)

    maps = []
    if args.real_dir:
        maps += load_real_generation_maps(args.real_dir, args.spacing)
    for spec in args.labels:
        path, _, names = spec.partition(":")
        maps.append(load_label_map_file(path, names or None, args.spacing, ignore_unknown=args.ignore_unknown))
    if args.phantoms:
        maps += phantom_generation_maps(args.phantoms, args.spacing, seed=args.seed)
    if not maps:
        raise SurgitwinError("synth: give --real-dir, --labels or --phantoms")
    out = write_synth_dataset(args.out, maps, args.cases, seed=args.seed)
    print(f"wrote {args.cases} synthetic cases from {len(maps)} label sources to {out}")
    return 0


def cmd_dataset_validate(args) -> int:
    from pipeline.train.dataset import validate_dataset

    rep = validate_dataset(args.dir)
    if args.json:
        print(json.dumps({"ok": rep.ok, "cases": rep.cases, "labels": rep.labels, "errors": rep.errors,
                          "warnings": rep.warnings, "voxels_per_label": rep.voxels_per_label}, indent=1))
    else:
        print(rep.summary())
    return 0 if rep.ok else 1


def cmd_dataset_from_dicom(args) -> int:
    from pipeline.train.dataset import dataset_from_dicom

    names = [n.strip() for n in args.labels.split(",")] if args.labels else None
    rep = dataset_from_dicom(args.out, [tuple(c) for c in args.case], name=args.name, label_names=names)
    print(rep.summary())
    return 0 if rep.ok else 1


def cmd_dataset_add_scene(args) -> int:
    from pipeline.train.from_scene import add_scene

    cid, rep = add_scene(args.scene, args.dataset, case_id=args.case_id, background=tuple(args.background),
                         replace=args.replace, name=args.name)
    print(f"case {cid} added to {args.dataset} (lineage/{cid}.json)")
    print(rep.summary())
    return 0 if rep.ok else 1


def cmd_train(args) -> int:
    from pipeline.train.config import load_train_config
    from pipeline.train.train import run_training

    cfg = load_train_config(args.config)
    if args.output_dir:
        cfg.output_dir = str(Path(args.output_dir).resolve())
    if args.device:
        cfg.device = args.device
    res = run_training(cfg, resume=args.resume, max_iterations=args.max_iterations, reset_best=args.reset_best)
    print(json.dumps({k: res[k] for k in ("output_dir", "iterations", "elapsed_s", "best_val_mean_dice",
                                          "best_iteration", "interrupted", "validation")}, indent=1))
    if res["interrupted"]:  # the shell's convention: 128 + signal number
        return 143 if res["interrupted"] == "SIGTERM" else 130
    return 0


def cmd_evaluate(args) -> int:
    from pipeline.errors import SurgitwinError
    from pipeline.train.evaluate import evaluate, evaluate_reference_image, format_table, write_json

    def one(model):
        if args.reference:
            return evaluate_reference_image(model, args.dataset, args.reference, args.reference_names, args.tolerance)
        return evaluate(model, args.dataset, args.tolerance)

    from pipeline.train.evaluate import settings_differences

    results = [one(args.model)] + ([one(args.compare)] if args.compare else [])
    if args.compare:
        diff = settings_differences(results[0]["settings"], results[1]["settings"])
        if diff and args.same_settings:
            raise SurgitwinError(f"--same-settings: the two models run with different settings: {'; '.join(diff)}",
                                 rule="compare-settings")
        for r in results:
            r["settings_differences"] = diff
        print("settings: identical" if not diff else
              f"settings differ ({args.model} vs {args.compare}), so not only the weights are compared:\n  "
              + "\n  ".join(diff))
    print(format_table(results))
    if args.json_out:
        write_json(results if args.compare else results[0], args.json_out)
        print(f"wrote {args.json_out}", file=sys.stderr)
    return 0


def cmd_models_export(args) -> int:
    from pipeline.train.export import export_model

    from pipeline.segment.bundle import parse_overrides

    card = Path(args.card).read_text() if args.card else None
    out = export_model(args.train_dir, name=args.name, weights=args.weights, bundle_dir=args.bundle,
                       description=args.description, card=card, force=args.force,
                       inference=parse_overrides(args.inference_set) or None)
    print(json.dumps(out, indent=1))
    return 0


def cmd_models_card_tables(args) -> int:
    from pipeline.errors import SurgitwinError
    from pipeline.segment.registry import resolve_model
    from pipeline.train.card import card_tables, replace_tables
    from pipeline.train.evaluate import write_json

    if not Path(args.real_dir).exists():
        raise SurgitwinError("the card's measurements need the real label maps and CT", path=args.real_dir)
    spec = resolve_model(args.model)
    if args.write and not (spec.card and Path(spec.card).exists()):
        raise SurgitwinError(f"--write: model '{spec.name}' has no card file", path=spec.source_file)
    text, results = card_tables(args.model, args.real_dir, args.work_dir, args.cases, args.seed, args.previous)
    print(text)
    if args.json_out:
        write_json(results, args.json_out)
    if args.write:
        card = Path(spec.card)
        card.write_text(replace_tables(card.read_text(), text))
        print(f"wrote the tables into {card}", file=sys.stderr)
    return 0
