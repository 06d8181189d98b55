"""Batch commands: ``batch`` (and ``batch status``), ``deid``. Heavy imports inside handlers."""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "batch", help="run many studies (folders, a CSV list, DICOM trees) with a manifest; 'batch status DIR' shows it",
        description="Run the single-case pipeline on every study found in INPUT... and keep a manifest in DIR "
                    "(manifest.sqlite, exported to manifest.jsonl). 'surgitwin batch status DIR [--json]' prints it. "
                    "Exit status: 0 when no study failed, 1 when at least one failed, 130 when interrupted.")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="study folders, DICOM trees holding many studies, CSV lists of paths, image files")
    p.add_argument("--out", help="batch folder (manifest, cases/, logs/)")
    p.add_argument("--workers", type=int, help="process pool size (default from config batch.workers; 0 = in-process)")
    p.add_argument("--scheduler", help="'local' to start a Dask LocalCluster, or tcp://HOST:PORT of an existing one")
    p.add_argument("--resume", action="store_true", help="continue the batch in --out: skip done studies, re-run the rest")
    p.add_argument("--model", help="segmentation model (default from configs/pipeline.yaml)")
    p.add_argument("--config", help="pipeline YAML (default configs/pipeline.yaml)")
    p.add_argument("--snapshot", action="store_true", default=None, help="also render a snapshot per study")
    p.add_argument("--deidentify", action="store_true",
                   help="process a PS3.15 Basic-profile de-identified copy of each study (outputs carry no identity)")
    p.add_argument("--deid-map", metavar="FILE", help="keep the re-identification table here (PHI; written nowhere else)")
    p.add_argument("--allow-burned-in", action="store_true", help="de-identify instances flagged BurnedInAnnotation=YES")
    p.add_argument("--timeout", type=float, metavar="S", help="per-study time limit in seconds")
    p.add_argument("--progress", choices=("auto", "rich", "plain", "none"), help="live bar, plain lines or nothing")
    p.add_argument("--follow-up", action="store_true",
                   help="a study of a patient who already has a scene in --out becomes a follow-up time point of "
                        "that scene (matched by patient key, docs/FOLLOW_UP.md) instead of a new case")
    p.add_argument("--case-fn", metavar="MODULE:FUNCTION",
                   help="run this importable function per study instead of the pipeline (fn(input, out_dir, **kw) -> dict)")
    p.add_argument("--case-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for --case-fn (VALUE parsed as JSON when it parses, else a string)")
    p.add_argument("--json", action="store_true", help="status: print the manifest as JSON; batch: print the summary as JSON")
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("deid", help="de-identify DICOM files (PS3.15 Basic Application Confidentiality Profile)",
                       description="Exit status: 0 when every DICOM instance was written, 1 when any was refused "
                                   "(each is listed with its reason) or nothing was written.")
    p.add_argument("input", help="DICOM file or folder (walked recursively)")
    p.add_argument("out", help="output folder: <StudyUID>/<SeriesUID>/<SOPUID>.dcm with new UIDs")
    p.add_argument("--map", metavar="FILE", help="read/update the re-identification table here (PHI; mode 0600)")
    p.add_argument("--allow-burned-in", action="store_true", help="accept instances flagged BurnedInAnnotation=YES")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_deid)


def cmd_batch(args) -> int:
    from pipeline.errors import SurgitwinError

    if args.inputs and args.inputs[0] == "status" and not args.out:
        if len(args.inputs) != 2:
            raise SurgitwinError("usage: surgitwin batch status DIR [--json]")
        return cmd_status(args.inputs[1], args.json)
    if not args.out:
        raise SurgitwinError("--out DIR is required (the batch folder for the manifest and results)")
    if not args.inputs and not args.resume:
        raise SurgitwinError("name at least one INPUT (or use --resume to continue the batch in --out)")

    from pipeline.configuration import batch_and_pacs
    from pipeline.batch.progress import make_reporter
    from pipeline.batch.run_case import DEFAULT_CASE_FN
    from pipeline.batch.runner import FOLLOW_UP_CASE_FN, BatchOptions, run_batch

    bcfg, _ = batch_and_pacs(args.config)
    case_kwargs = {}
    for item in args.case_arg:
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise SurgitwinError(f"--case-arg must be KEY=VALUE; found {item!r}")
        try:
            case_kwargs[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            case_kwargs[k.strip()] = v
    if args.follow_up and args.case_fn:
        raise SurgitwinError("--follow-up and --case-fn both choose the per-study function: use one")
    if case_kwargs and not args.case_fn:
        raise SurgitwinError("--case-arg needs --case-fn (the pipeline's options are --model, --config, --snapshot)")
    if args.deid_map and not args.deidentify:
        raise SurgitwinError("--deid-map needs --deidentify")
    opts = BatchOptions(
        model=args.model or bcfg.model, config=args.config,
        snapshot=bcfg.snapshot if args.snapshot is None else args.snapshot,
        workers=bcfg.workers if args.workers is None else args.workers,
        scheduler=args.scheduler or bcfg.scheduler, resume=args.resume, deidentify=args.deidentify,
        deid_map=args.deid_map, allow_burned_in=args.allow_burned_in,
        timeout_s=args.timeout or bcfg.study_timeout_s, discovery_timeout_s=bcfg.discovery_timeout_s, case_fn=args.case_fn or (FOLLOW_UP_CASE_FN if args.follow_up else DEFAULT_CASE_FN), case_kwargs=case_kwargs,
        argv=["surgitwin", *sys.argv[1:]])
    summary = run_batch(args.inputs, args.out, opts, reporter=make_reporter(args.progress or bcfg.progress))
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(summary.text())
    if summary.interrupted:
        return 130
    return 0 if summary.ok else 1


def cmd_status(out_dir, as_json: bool) -> int:
    from pipeline.batch.manifest import Manifest

    with Manifest(out_dir, readonly=True) as m:
        recs = m.records()
        counts = m.counts()
    if as_json:
        print(json.dumps(recs, indent=2))
        return 0
    w = max([5] + [len(r["study"]) for r in recs])
    print(f"{'study':<{w}}  {'status':<8} {'time s':>7}  reason / scene")
    for r in recs:
        t = r["timings"].get("total")
        detail = r["reason"] if r["status"] != "done" else r["outputs"].get("scene", "")
        print(f"{r['study']:<{w}}  {r['status']:<8} {'' if t is None else f'{t:7.1f}':>7}  {detail}")
    print("  ".join(f"{k}: {v}" for k, v in counts.items() if v))
    return 0


def cmd_deid(args) -> int:
    from pipeline.deid import deidentify_tree

    rep = deidentify_tree(args.input, args.out, map_path=args.map, allow_burned_in=args.allow_burned_in)
    if args.json:
        print(json.dumps({"written": len(rep.written), "studies": rep.studies, "refused": len(rep.refused),
                          "skipped": [{"file": f, "reason": r} for f, r in rep.skipped]}, indent=2))
    else:
        print(f"de-identified {len(rep.written)} instances into {args.out} "
              f"({len(rep.studies)} studies); {len(rep.skipped)} files not written, "
              f"{len(rep.refused)} of them DICOM instances refused")
        for f, r in rep.skipped[:20]:
            print(f"  skipped {r}")
        if len(rep.skipped) > 20:
            print(f"  ... and {len(rep.skipped) - 20} more")
        if not args.map:
            print("no mapping table kept (use --map FILE to keep one)")
    return 0 if rep.written and not rep.refused else 1  # 1: nothing written, or DICOM instances refused
