"""Follow-up commands: follow-up (add a time point), change (what changed), timepoints, demo-follow-up.

Thin wrappers over :mod:`pipeline.followup`; heavy imports happen inside the handlers.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("follow-up", help="add a follow-up study to a scene as a new time point and report what changed")
    p.add_argument("scene", help="scene folder or scene.json")
    p.add_argument("new_input", help="the follow-up study: DICOM folder or file, or a NIfTI/NRRD/MHA image")
    p.add_argument("--out", help="copy the scene to this new folder and add the time point there (original untouched)")
    p.add_argument("--model", help="segmentation model (default: the one that segmented the scene)")
    p.add_argument("--config", help="pipeline YAML (default configs/pipeline.yaml)")
    p.add_argument("--id", dest="timepoint_id", help="time point id (default: the study date, else the series UID)")
    p.add_argument("--rigid-only", action="store_true", help="skip the B-spline stage (rigid registration only)")
    p.add_argument("--control-spacing", type=float, default=80.0, metavar="MM",
                   help="B-spline control point spacing (default 80; 40-50 follows sliding organs better, 2-3x slower)")
    p.add_argument("--residual-limit", type=float, default=None, metavar="MM",
                   help="largest mean body-surface distance after registration at which changes are reported (default 2)")
    p.add_argument("--replace", action="store_true", help="redo a time point that already exists")
    p.add_argument("--no-plan", action="store_true", help="do not carry the plan over")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=cmd_follow_up)

    p = sub.add_parser("change", help="what changed between two time points of a scene (volumes, shifts, surfaces, RECIST)")
    p.add_argument("scene")
    p.add_argument("--from", dest="from_id", help="earlier time point id (default: the one before --to)")
    p.add_argument("--to", dest="to_id", help="later time point id (default: the current one)")
    p.add_argument("--force", action="store_true", help="report even when the registration residual is above its limit")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_change)

    p = sub.add_parser("timepoints", help="list a scene's time points (the current one marked *)")
    p.add_argument("scene")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_timepoints)

    p = sub.add_parser("demo-follow-up", help="the sample scan plus a synthetic follow-up (known motion, grown tumour): "
                                             "scene, time point, change report, HTML report")
    p.add_argument("--out", default="out/demo_follow_up")
    p.add_argument("--model", default="ground_truth",
                   help="model for both studies (default ground_truth: the phantoms' exact labels; hu_rules or any registry name runs it)")
    p.add_argument("--no-report", action="store_true")
    p.set_defaults(func=cmd_demo_follow_up)


def _printer():
    from pipeline.commands.core import _Printer

    return _Printer()


def cmd_follow_up(args) -> int:
    from pipeline.followup.register import RegistrationConfig
    from pipeline.followup.run import RESIDUAL_LIMIT_MM, follow_up

    res = follow_up(args.scene, args.new_input, out=args.out, model=args.model, config=args.config,
                    timepoint_id=args.timepoint_id, registration=RegistrationConfig(deformable=not args.rigid_only,
                                                                    bspline_control_mm=args.control_spacing),
                    progress=None if args.json else _printer(), replace=args.replace,
                    residual_limit_mm=RESIDUAL_LIMIT_MM if args.residual_limit is None else args.residual_limit,
                    carry_plan=not args.no_plan)
    if args.json:
        print(json.dumps(res.to_dict(), indent=2, default=str))
        return 0
    print_follow_up(res)
    return 0


def print_follow_up(res, stream=None) -> None:
    from pipeline.followup import format_change

    out = stream or sys.stdout
    reg = res.registration
    print(f"\ntime point {res.timepoint['id']} -> {res.folder}", file=out)
    print(f"registration: rotation {reg['rotation_deg']:.2f} deg, translation "
          f"{[round(v[3], 2) for v in reg['rigid_baseline_to_timepoint'][:3]]} mm (baseline -> follow-up, LPS); "
          f"residual {reg['residuals']} (limit {reg['residual_limit_mm']} mm)", file=out)
    if res.change is not None:
        print(format_change(res.change), file=out)
    for c in res.carried:
        for m in c.get("messages", []):
            print(f"plan changed: {m}", file=out)
        if c.get("error"):
            print(f"plan record {c['id']} not carried over: {c['error']}", file=out)
    for w in res.warnings:
        print(f"warning {w}", file=out)
    print("timings " + ", ".join(f"{k} {v:.1f}s" for k, v in res.timings.items()), file=out)


def cmd_change(args) -> int:
    from pipeline.followup import change_between, format_change

    rep = change_between(args.scene, args.from_id, args.to_id, force=args.force)
    print(json.dumps(rep, indent=2, default=str) if args.json else format_change(rep))
    return 0


def cmd_timepoints(args) -> int:
    from pipeline.followup.timepoints import list_timepoints

    tps = list_timepoints(args.scene)
    if args.json:
        print(json.dumps(tps, indent=2))
        return 0
    for t in tps:
        print(f"{'*' if t.get('current') else ' '} {t['id']:<24} {t.get('study_date') or '-':<10} {t['path']}")
    return 0


def cmd_demo_follow_up(args) -> int:
    from pipeline.commands.core import SAMPLE
    from pipeline.followup.demo import run_demo

    res, html = run_demo(Path(args.out), SAMPLE, model=args.model, report=not args.no_report, progress=_printer())
    print_follow_up(res)
    if html:
        print(f"report: {html}")
    return 0
