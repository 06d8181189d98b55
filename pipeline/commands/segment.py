"""Segmentation commands: `models list|show` (no torch import) and `segment`."""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    models = sub.add_parser("models", help="model registry (configs/models/*.yaml)")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION")
    models.set_defaults(func=lambda a: (models.print_help(), 2)[1])
    p = msub.add_parser("list", help="list registered models (instant: reads YAML only)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models_list)
    p = msub.add_parser("show", help="the resolved definition of a model or MONAI bundle folder")
    p.add_argument("model", help="registry name, model YAML or MONAI bundle folder")
    p.add_argument("--bundle-set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--trust-bundle", action="store_true")
    p.set_defaults(func=cmd_models_show)

    p = sub.add_parser("segment", help="segment one image: writes labels.nii.gz, uncertainty.nii.gz, qc.json")
    p.add_argument("input", help="DICOM folder or file, or a NIfTI/NRRD/MHA image")
    p.add_argument("--model", default="hu_rules",
                   help="registry name, model YAML, MONAI bundle folder or `surgitwin train` output folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", help="pipeline YAML (its ingest, selection and segment sections; default configs/pipeline.yaml)")
    p.add_argument("--bundle-set", action="append", default=[], metavar="KEY=VALUE",
                   help="set a MONAI bundle config value instead of evaluating it, e.g. pixdim=3,3,3")
    p.add_argument("--trust-bundle", action="store_true",
                   help="allow MONAI's ConfigParser to evaluate the bundle's $-expressions (runs its code)")
    p.set_defaults(func=cmd_segment)


def cmd_models_list(args) -> int:
    from pipeline.segment.registry import list_models

    rows = list_models()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'name':<28}{'backend':<12}{'labels':>7}  description")
    for r in rows:
        desc = r["problem"] and f"INVALID: {r['problem']}" or r["description"]
        print(f"{r['name']:<28}{r['backend']:<12}{r['labels']:>7}  {desc}")
    return 0 if all(r["problem"] is None for r in rows) else 1


def cmd_models_show(args) -> int:
    from pipeline.segment.registry import resolve_model

    spec = resolve_model(args.model, overrides=args.bundle_set or None, trust=args.trust_bundle)
    print(json.dumps(spec.model_dump(), indent=1))
    return 0


def cmd_segment(args) -> int:
    from pipeline.segment.files import segment_file

    result, paths = segment_file(args.input, args.out, model=args.model, overrides=args.bundle_set or None,
                                 trust=args.trust_bundle, config=args.config)
    print(f"{'structure':<28}{'ml':>10}{'mean HU':>10}{'uncert.':>9}  warning")
    for name, q in result.qc.items():
        unc = "" if q.get("uncertainty") is None else f"{q['uncertainty']:.3f}"
        hu = "" if q.get("mean_hu") is None else f"{q['mean_hu']:.0f}"
        print(f"{name:<28}{q['volume_ml']:>10.1f}{hu:>10}{unc:>9}  {q.get('warning') or ''}")
    print(f"wrote {', '.join(str(p) for p in paths.values())} in {result.record.duration_s:.1f} s", file=sys.stderr)
    return 0
