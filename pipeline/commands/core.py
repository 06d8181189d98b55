"""Core commands: scan, run, demo, phantom. Heavy imports happen inside the handlers."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from pipeline.config import find_data

SAMPLE = find_data("sample_scans/phantom_ct")  # a site's own sample first, else the shipped one
# The demo's planning steps on the sample scan (LPS mm; documented in the README): a lesion seeded
# in the phantom's liver tumour (right lobe, patient right = x < 0) and a resection plane 20 mm
# medial to the seed, resecting the lateral part of the right lobe with the tumour.
DEMO_LESION_SEED = (-85.0, -20.0, -270.0)
DEMO_CUT = {"point": (-65.0, -20.0, -270.0), "normal": (-1.0, 0.0, 0.0)}
# Couinaud landmarks on the sample (LPS mm): the IVC at the hepatic veins' confluence, a point on
# each hepatic vein, the portal bifurcation (tests/test_segments.py uses the same).
DEMO_SEGMENT_LANDMARKS = {"ivc": (-22.0, -3.0, -235.0), "rhv": (-90.0, -15.0, -235.0), "mhv": (-45.0, -55.0, -235.0),
                          "lhv": (15.0, -55.0, -230.0), "portal": (-35.0, -25.0, -275.0)}


def register(sub) -> None:
    p = sub.add_parser("scan", help="index a DICOM folder into studies/series and show which series would be selected and why")
    p.add_argument("path")
    p.add_argument("--rules", help="pipeline YAML with a 'selection' section (default configs/pipeline.yaml)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("run", help="ingest -> segment -> mesh -> scene -> snapshot for one study")
    p.add_argument("input", help="DICOM folder or file, or a NIfTI/NRRD/MHA image (with --from: a scene folder)")
    p.add_argument("--out", help="scene folder to write (replaced atomically); required unless --from "
                                 "(then default: the scene folder itself)")
    p.add_argument("--from", dest="from_stage", choices=("mesh", "scene"),
                   help="rerun an existing scene from this stage on, from its stored label map (mesh) or meshes "
                        "(scene), keeping the earlier stages' results and provenance")
    p.add_argument("--model", help="registry name or MONAI bundle directory (default from configs/pipeline.yaml)")
    p.add_argument("--config", help="pipeline YAML (default configs/pipeline.yaml)")
    p.add_argument("--bundle-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a MONAI bundle config value, e.g. pixdim=3,3,3")
    p.add_argument("--trust-bundle", action="store_true", help="allow MONAI to evaluate $-expressions in the bundle")
    p.add_argument("--no-snapshot", action="store_true", help="skip the offscreen picture")
    p.add_argument("--json", action="store_true", help="print the case result as JSON")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--keep-plan", action="store_true",
                   help="OUT already holds a scene with a plan: carry it over, recomputed on the new structures")
    g.add_argument("--discard-plan", action="store_true", help="OUT already holds a scene with a plan: drop it")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="run the pipeline on the shipped sample scan and check it against its ground truth")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--model", help="model to use (default from configs/pipeline.yaml)")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report (OUT/report.html)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("phantom", help="write a synthetic CT phantom DICOM series with its ground-truth labels")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--oblique", action="store_true")
    p.add_argument("--reverse", action="store_true", help="write slices in reverse order")
    p.set_defaults(func=cmd_phantom)


def cmd_scan(args) -> int:
    from pipeline.ingest import scan_command

    print(scan_command(args.path, rules_path=args.rules, as_json=args.json))
    return 0


class _Printer:
    """One line per stage with elapsed time: readable in a terminal and in a log file."""

    def __init__(self, stream=None):
        self.t0 = time.perf_counter()
        self.stream = stream

    def __call__(self, stage: str, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f}s] {stage:<8} {msg}", file=self.stream or sys.stderr, flush=True)


def print_summary(result, stream=None) -> None:
    stream = stream or sys.stdout
    print(f"\nscene  {result.scene_path}/scene.json   case {result.case_id}", file=stream)
    src = result.source
    if src.get("series_instance_uid"):
        print(f"series {src.get('series_instance_uid')} ({src.get('modality', '?')}, {src.get('series_description', '')})", file=stream)
    print(f"{'structure':<22}{'label':>6}{'mesh ml':>11}{'voxel ml':>11}{'dev %':>8}  watertight", file=stream)
    for s in result.structures:
        mv = "-" if s["volume_ml"] is None else f"{s['volume_ml']:.1f}"
        dv = "-" if s["deviation_percent"] is None else f"{s['deviation_percent']:+.2f}"
        print(f"{s['name']:<22}{s['label']:>6}{mv:>11}{s['voxel_volume_ml']:>11.1f}{dv:>8}  {'yes' if s['watertight'] else 'NO'}", file=stream)
    print("timings " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()), file=stream)
    if result.snapshot:
        print(f"picture {result.snapshot}", file=stream)
    for w in result.warnings:
        print(f"warning {w}", file=stream)


def cmd_run(args) -> int:
    plan = "keep" if args.keep_plan else "discard" if args.discard_plan else "refuse"
    if args.from_stage:
        result = _rerun(args, plan)
    else:
        from pipeline.errors import ConfigError
        from pipeline.run import run_case

        if not args.out:
            raise ConfigError("--out is required (the scene folder to write)", rule="run writes a scene folder: --out")
        result = run_case(args.input, args.out, model=args.model, config=args.config, progress=_Printer(),
                          snapshot=not args.no_snapshot, bundle_overrides=args.bundle_set or None,
                          trust_bundle=args.trust_bundle, existing_plan=plan)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print_summary(result)
    return 0


def _rerun(args, plan: str):
    from pipeline.errors import ConfigError
    from pipeline.rerun import rerun_case

    given = [o for o, v in (("--model", args.model), ("--bundle-set", args.bundle_set),
                            ("--trust-bundle", args.trust_bundle)) if v]
    if given:
        raise ConfigError(f"{', '.join(given)} ha{'s' if len(given) == 1 else 've'} no effect with --from "
                          f"{args.from_stage}: the segmentation is not rerun",
                          rule="run --from reruns the later stages only")
    return rerun_case(args.input, args.from_stage, args.out, config=args.config, progress=_Printer(),
                      snapshot=not args.no_snapshot, existing_plan=plan)


def cmd_demo(args) -> int:
    from pipeline.run import run_case

    dicom = SAMPLE / "dicom"
    if not dicom.exists():
        from pipeline.phantom import generate_sample

        print(f"sample scan missing; generating it into {SAMPLE}", file=sys.stderr)
        generate_sample(SAMPLE, seed=0)
    from pipeline.planning.revalidate import plan_size, read_plan

    if plan_size(read_plan(args.out)):
        print(f"note: {args.out} held a plan of {plan_size(read_plan(args.out))} record(s); the demo starts afresh",
              file=sys.stderr)
    result = run_case(dicom, args.out, model=args.model, progress=_Printer(), existing_plan="discard")
    print_summary(result)
    truth = SAMPLE / "ground_truth_labels.nii.gz"
    if truth.exists():
        from pipeline.evaluation import compare_to_truth

        rows = compare_to_truth(Path(args.out), truth)
        print("\nagainst the phantom's ground truth (compared in patient space):")
        print(f"{'structure':<22}{'dice':>7}{'truth ml':>10}{'found ml':>10}{'centroid err mm':>17}")
        for r in rows:
            print(f"{r['name']:<22}{r['dice']:>7.3f}{r['truth_ml']:>10.1f}{r['found_ml']:>10.1f}{r['centroid_error_mm']:>17.2f}")
        from pipeline.scene import load_scene, save_scene

        scene = load_scene(args.out, load_meshes=False)  # the report shows the comparison too
        scene.extra["truth_comparison"] = {"truth": str(truth.relative_to(SAMPLE.parent.parent)), "rows": rows}
        save_scene(scene, write_meshes=False)
    _demo_plan(Path(args.out))
    if not args.no_report:
        from pipeline.scene.report import build_report

        res = build_report(args.out)
        print(f"\nreport: {res.html}")
    return 0


def _demo_plan(out: Path) -> None:
    """The demo's lesion and resection (when the model found a liver)."""
    from pipeline.errors import SurgitwinError
    from pipeline.planning import Planner

    pl = Planner(out)
    if "liver" not in pl.scene.structure_names:
        print("\nno liver in this segmentation: the demo's lesion and resection are left out")
        return
    try:
        les = pl.add_lesion(DEMO_LESION_SEED, name="liver_tumour", within="liver")
    except SurgitwinError as e:
        print(f"\ndemo lesion not segmented: {e}")
        return
    print(f"\nlesion {les['id']} {les['name']} from the seed {DEMO_LESION_SEED} (LPS mm): {les['volume_ml']:.1f} ml, "
          f"RECIST {les['long_axis_mm']:.1f} x {les['short_axis_mm']:.1f} mm")
    seg = pl.add_segments("liver", DEMO_SEGMENT_LANDMARKS)
    print(f"Couinaud segments {seg['id']}: " + ", ".join(f"{k} {v['volume_ml']:.0f} ml" for k, v in seg["segments"].items()))
    cut = pl.add_cut("liver", DEMO_CUT, save=True)
    g = cut["lesion_margins"][0] if cut["lesion_margins"] else None
    print(f"resection {cut['id']}: remnant {cut['remnant_percent']:.1f}% (future liver remnant of the functional liver "
          f"{cut['flr']['flr_percent']:.1f}%)" + (f", margin to {g['structure']} {g['margin_mm']:.1f} mm" if g else "")
          + "".join(f"\n  warning: {w}" for w in cut["warnings"]))


def cmd_phantom(args) -> int:
    from pipeline.phantom import phantom_command

    phantom_command(args.out, seed=args.seed, oblique=args.oblique, reverse=args.reverse)
    return 0
