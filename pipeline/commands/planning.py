"""Planning commands: measure, plan (cut, trajectory, list, remove), export, report.

Each handler is a thin wrapper over :mod:`pipeline.planning`, :mod:`pipeline.export` or
:mod:`pipeline.scene.report`; heavy imports happen inside the handlers. Coordinates on the
command line are LPS millimetres (x y z). Results are added to the scene's plan (unless
``--no-save``) and printed; ``--json`` prints exactly one JSON object for scripts.
"""
from __future__ import annotations

import json
import sys


def _xyz(p, name: str, metavar=("X", "Y", "Z"), **kw):
    p.add_argument(name, nargs=3, type=float, metavar=metavar, **kw)


def _common(p):
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-save", action="store_true", help="compute and print only; leave the plan unchanged")


def _measure_common(p):
    import argparse

    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--save", action="store_true", help="add the result to the scene's plan (default: print only)")
    p.add_argument("--no-save", action="store_true", help=argparse.SUPPRESS)  # the default; kept for old scripts


def register(sub) -> None:
    # -- measure --------------------------------------------------------------------------
    m = sub.add_parser("measure", help="measure in a scene (LPS mm); --save adds the result to the plan")
    m.add_argument("scene", help="scene folder or scene.json")
    ms = m.add_subparsers(dest="what", metavar="WHAT", required=True)
    p = ms.add_parser("between", help="minimum distance between two structures and the two closest points")
    p.add_argument("name_a")
    p.add_argument("name_b")
    _measure_common(p)
    p = ms.add_parser("distance", help="distance between two points: X Y Z X Y Z")
    p.add_argument("coords", nargs=6, type=float, metavar="C")
    p.add_argument("--label")
    _measure_common(p)
    p = ms.add_parser("angle", help="angle at the second of three points: X Y Z X Y Z X Y Z")
    p.add_argument("coords", nargs=9, type=float, metavar="C")
    p.add_argument("--label")
    _measure_common(p)
    p = ms.add_parser("structure", help="volume (voxels, mesh), surface area, extents, maximal diameter")
    p.add_argument("name")
    _measure_common(p)
    p = ms.add_parser("landmark", help="a named point, optionally snapped to a structure's surface")
    p.add_argument("name")
    p.add_argument("coords", nargs=3, type=float, metavar="C")
    p.add_argument("--snap", metavar="STRUCTURE", help="move the point to this structure's closest surface point")
    _measure_common(p)
    m.set_defaults(func=cmd_measure)

    # -- plan -----------------------------------------------------------------------------
    pl = sub.add_parser("plan", help="virtual resection and trajectories; list or remove plan records")
    ps = pl.add_subparsers(dest="what", metavar="WHAT", required=True)
    p = ps.add_parser("cut", help="cut a structure with a plane (resected = the side the normal points to)")
    p.add_argument("scene")
    p.add_argument("--structure", required=True)
    _xyz(p, "--point", help="a point of the plane (LPS mm)")
    _xyz(p, "--normal", help="plane normal, pointing to the resected side")
    p.add_argument("--plane", nargs=6, type=float, action="append", default=[], metavar="C",
                   help="another plane 'PX PY PZ NX NY NZ' (repeat; resected = inside all half-spaces)")
    p.add_argument("--margin-to", metavar="STRUCTURE", help="report the cut's margin to this structure (e.g. the tumour)")
    p.add_argument("--liver-state", choices=["normal", "compromised"],
                   help="remnant threshold to warn below (configs/planning.yaml; default normal: 25%%, compromised: 40%%)")
    _common(p)
    p = ps.add_parser("trajectory", help="tool path entry -> target: length, clearances, crossings, warnings")
    p.add_argument("scene")
    _xyz(p, "--entry", required=True)
    _xyz(p, "--target", required=True)
    p.add_argument("--radius", type=float, required=True, help="tool radius in mm")
    p.add_argument("--safety-margin", type=float,
                   help="warn for critical structures closer than this (mm); default: per structure class, configs/planning.yaml")
    _common(p)
    p = ps.add_parser("segments", help="Couinaud segments I-VIII of the liver from landmarks (plane model)")
    p.add_argument("scene")
    p.add_argument("--structure", default="liver")
    for k, h in (("ivc", "the IVC where the hepatic veins join it"), ("rhv", "a point on the right hepatic vein"),
                 ("mhv", "a point on the middle hepatic vein"), ("lhv", "a point on the left hepatic vein"),
                 ("portal", "the portal bifurcation"), ("umbilical", "a point on the umbilical fissure (default: --lhv)")):
        _xyz(p, f"--{k}", help=h + " (LPS mm; default: a plan landmark of that name)")
    _common(p)
    p = ps.add_parser("resect", help="resect whole Couinaud segments, e.g. --segments VI VII (or VI-VII)")
    p.add_argument("scene")
    p.add_argument("--segments", nargs="+", required=True)
    p.add_argument("--structure", default="liver")
    p.add_argument("--liver-state", choices=["normal", "compromised"])
    _common(p)
    p = ps.add_parser("list", help="print the plan")
    p.add_argument("scene")
    p.add_argument("--json", action="store_true")
    p = ps.add_parser("remove", help="remove a plan record by id (e.g. M2, C1, T1)")
    p.add_argument("scene")
    p.add_argument("id")
    pl.set_defaults(func=cmd_plan)

    # -- lesion ---------------------------------------------------------------------------
    p = sub.add_parser("lesion", help="segment a lesion (tumour, nodule, cyst) from one seed point and add it to the scene")
    p.add_argument("scene", help="scene folder or scene.json")
    _xyz(p, "--seed", required=True, help="a point inside the lesion (LPS mm)")
    p.add_argument("--name", help="structure name (lower_snake_case; default lesion_N)")
    p.add_argument("--within", metavar="STRUCTURE",
                   help="the organ holding the lesion (default: the structure under the seed)")
    p.add_argument("--max-radius", type=float, default=60.0, help="search box half-size around the seed in mm (default 60)")
    p.add_argument("--json", action="store_true", help="print {name, label, volume_ml, long_axis_mm, short_axis_mm, centroid_lps}")
    p.set_defaults(func=cmd_lesion)

    # -- export ---------------------------------------------------------------------------
    p = sub.add_parser("export", help="export meshes (stl, obj, ply, glb) or a DICOM SEG of a scene")
    p.add_argument("scene")
    p.add_argument("--format", required=True, choices=["stl", "obj", "ply", "glb", "dicom-seg"])
    p.add_argument("--out", help="file (glb, dicom-seg) or folder (stl, obj, ply); default <scene>/export/")
    p.add_argument("--structure", action="append", default=[], help="only these structures (repeat)")
    p.add_argument("--include-cuts", action="store_true", help="also export the plan's cut pieces")
    p.add_argument("--source-dicom", help="folder with the source DICOM series (dicom-seg; default from the scene)")
    p.add_argument("--seg-type", default="BINARY", choices=["BINARY", "LABELMAP"])
    p.add_argument("--deidentify", action="store_true",
                   help="dicom-seg: de-identify the SEG (PS3.15 Basic profile, pipeline/deid.py)")
    p.add_argument("--deid-map", metavar="FILE", help="with --deidentify: UID/ID map shared with the de-identified "
                                                       "source series (PHI; written only here)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)

    # -- report ---------------------------------------------------------------------------
    p = sub.add_parser("report", help="self-contained HTML planning report (and PDF with --pdf)")
    p.add_argument("scene")
    p.add_argument("--out", help="HTML file (default <scene>/report/report.html)")
    p.add_argument("--pdf", action="store_true", help="also print a PDF with headless Chromium")
    p.add_argument("--no-render", action="store_true", help="leave out the 3D pictures")
    p.add_argument("--closeups", type=int, default=2, help="structure close-ups (default 2)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)


def _emit(args, obj: dict, text: str) -> None:
    if args.json:
        print(json.dumps(obj, default=str))
    else:
        print(text)


def _fmt_pt(p) -> str:
    return "(" + ", ".join(f"{x:.1f}" for x in p) + ")"


def cmd_measure(args) -> int:
    from pipeline.planning import Planner

    pl = Planner(args.scene)
    c = getattr(args, "coords", None)
    if args.what == "between":
        r = pl.measure_between(args.name_a, args.name_b)
        text = (f"{r['id']}  {args.name_a} <-> {args.name_b}: {r['distance_mm']:.2f} mm"
                f"{' (overlapping)' if r['overlap'] else ''}  from {_fmt_pt(r['point_a'])} to {_fmt_pt(r['point_b'])} (LPS mm)")
    elif args.what == "distance":
        r = pl.measure_distance(c[:3], c[3:], label=args.label)
        text = f"{r['id']}  distance {r['distance_mm']:.2f} mm"
    elif args.what == "angle":
        r = pl.measure_angle(c[:3], c[3:6], c[6:], label=args.label)
        text = f"{r['id']}  angle {r['angle_deg']:.2f} deg"
    elif args.what == "structure":
        vol, ext = pl.measure_structure(args.name)
        r = {"volume": vol, "extents": ext}
        text = (f"{vol['id']}  {args.name}: {vol['voxel_volume_ml']} ml (voxels), {vol['mesh_volume_ml']} ml (mesh), "
                f"surface {vol['area_mm2']:.0f} mm2\n{ext['id']}  extents L-R {ext['extent_left_right_mm']:.1f} x "
                f"A-P {ext['extent_anterior_posterior_mm']:.1f} x S-I {ext['extent_superior_inferior_mm']:.1f} mm, "
                f"max diameter {ext['max_diameter_mm']:.1f} mm")
    else:
        r = pl.add_landmark(args.name, c, snap_to=args.snap)
        text = f"{r['id']}  landmark '{args.name}' at {_fmt_pt(r['point'])}" + (
            f" (snapped to {args.snap}, moved {r['snap_distance_mm']:.1f} mm)" if args.snap else "")
    if args.save:
        pl.save()
    elif not args.json:
        text += "\n(not saved: add --save to keep it in the plan)"
    _emit(args, r, text)
    return 0


def _clearance_table(r: dict) -> str:
    lines = [f"  {'structure':<22}{'clearance mm':>13}{'at depth mm':>13}  note"]
    for c in r["clearance"]:
        note = "target" if c.get("target") else "host" if c.get("host") else ("CROSSED" if c["crossed"] else "")
        if c.get("near"):
            note = "NEAR"
        if c.get("critical"):
            note = (note + f" critical {c.get('class', '')} (margin {c.get('margin_mm', 0):.0f} mm)").strip()
        if c.get("qc_flags"):
            note += " QC-flagged"
        lines.append(f"  {c['structure']:<22}{c['distance_mm']:>13.1f}{c['at_depth_mm']:>13.0f}  {note}")
    return "\n".join(lines)


def _list_line(rec: dict) -> str:
    """One line of `plan list`: for a trajectory, every structure it crosses or nears."""
    v = rec.get("value")
    value = "" if v is None else f"{v:.2f} {rec.get('unit', '')}"
    if rec.get("kind") == "trajectory":
        near = rec.get("near")
        if near is None:  # records written before `near` existed
            near = [c["structure"] for c in rec.get("clearance", [])
                    if c.get("critical") and not c["crossed"] and c["distance_mm"] < (rec.get("safety_margin_mm") or 5.0)]
        what = (f"crosses {', '.join(rec.get('crossed') or []) or 'nothing'}"
                + (f"; near {', '.join(near)}" if near else ""))
    elif rec.get("kind") == "segments_resection":
        what = f"{rec.get('structure')}: segments {', '.join(rec.get('segments', []))}"
    elif rec.get("kind") == "lesion":
        what = f"{rec.get('name')} in {rec.get('within') or '-'}"
    else:
        what = ", ".join(rec.get("structures", []))
    warn = f"  [{len(rec['warnings'])} warning(s)]" if rec.get("warnings") else ""
    return f"{rec['id']:<5}{rec['kind']:<20}{what:<48} {value}{warn}"


def cmd_plan(args) -> int:
    from pipeline.planning import Planner

    pl = Planner(args.scene)
    if args.what == "cut":
        planes = [{"point": args.point, "normal": args.normal}]
        planes += [{"point": q[:3], "normal": q[3:]} for q in args.plane]
        r = pl.add_cut(args.structure, planes, margin_to=args.margin_to, save_meshes=not args.no_save,
                       liver_state=args.liver_state)
        mesh = r.get("mesh") or {}
        text = (f"{r['id']}  {args.structure}: resected {r['resected_ml']:.2f} ml ({r['resected_percent']:.1f}%), "
                f"remnant {r['remnant_ml']:.2f} ml ({r['remnant_percent']:.1f}%) [label map]")
        if mesh:
            text += (f"\n    mesh: resected {mesh['resected_ml']:.2f} ml, remnant {mesh['remnant_ml']:.2f} ml "
                     f"({mesh['remnant_percent']:.1f}%); agreement {r['agreement']['volume_difference_percent']:.2f}%")
        if r.get("flr"):
            f = r["flr"]
            text += (f"\n    future remnant {f['flr_percent']:.1f}% of the functional {args.structure} "
                     f"({f['functional_total_ml']:.1f} ml without {', '.join(f['lesions'])}); "
                     f"{f['whole_remnant_percent']:.1f}% of the whole organ")
        if not r.get("remnant_valid", True):
            text += f"\n    remnant percentage INVALID: {r['invalid_reason']}"
        for g in ([r["margin"]] if r.get("margin") else []) + r.get("lesion_margins", []):
            text += f"\n    margin to {g['structure']}: {g['margin_mm']:.1f} mm ({g['structure']} on the {g['side']} side)"
        text += "".join(f"\n    WARNING: {w}" for w in r["warnings"])
    elif args.what == "trajectory":
        r = pl.add_trajectory(args.entry, args.target, args.radius, safety_margin_mm=args.safety_margin)
        text = (f"{r['id']}  length {r['length_mm']:.1f} mm, direction {_fmt_pt(r['direction'])}, "
                f"target structure {r['target_structure'] or '-'}; crosses {', '.join(r['crossed']) or 'nothing'}\n"
                + _clearance_table(r) + "".join(f"\nWARNING: {w}" for w in r["warnings"]))
    elif args.what == "segments":
        given = {k: getattr(args, k) for k in ("ivc", "rhv", "mhv", "lhv", "portal", "umbilical") if getattr(args, k)}
        r = pl.add_segments(args.structure, given)
        text = f"{r['id']}  Couinaud segments of {args.structure} ({r['total_ml']:.1f} ml):\n" + "\n".join(
            f"  {k:<5}{v['volume_ml']:>9.1f} ml {v['percent']:>6.1f}%" for k, v in r["segments"].items())
        text += "".join(f"\n  {les} in segment(s) {', '.join(s)}" for les, s in r["lesion_segments"].items())
    elif args.what == "resect":
        r = pl.add_segment_resection(args.segments, args.structure, liver_state=args.liver_state)
        text = (f"{r['id']}  resect segments {', '.join(r['segments'])} of {args.structure}: resected {r['resected_ml']:.1f} ml "
                f"({r['resected_percent']:.1f}%), remnant {r['remnant_ml']:.1f} ml ({r['remnant_percent']:.1f}%)")
        if r.get("flr"):
            text += f"\n    future remnant {r['flr']['flr_percent']:.1f}% of the functional {args.structure}"
        for g in r.get("lesion_margins", []):
            text += f"\n    margin to {g['structure']}: {g['margin_mm']:.1f} mm ({g['side']} side)"
        text += "".join(f"\n    WARNING: {w}" for w in r["warnings"])
    elif args.what == "list":
        plan = pl.scene.plan
        if args.json:
            print(json.dumps(plan, default=str))
            return 0
        for sec in ("landmarks", "measurements", "lesions", "segments", "cuts", "trajectories"):
            for rec in plan.get(sec, []):
                print(_list_line(rec))
        return 0
    else:
        r = pl.remove(args.id, save=True)
        print(f"removed {r['id']} ({r['kind']})")
        return 0
    if not args.no_save:
        pl.save()
    _emit(args, r, text)
    return 0


def cmd_lesion(args) -> int:
    from pipeline.planning import Planner

    pl = Planner(args.scene)
    r = pl.add_lesion(args.seed, name=args.name, within=args.within, options={"max_radius_mm": args.max_radius})
    if args.json:
        print(json.dumps({k: r[k] for k in ("name", "label", "volume_ml", "long_axis_mm", "short_axis_mm", "centroid_lps")}))
        return 0
    print(f"{r['id']}  {r['name']} (label {r['label']}) in {r['within'] or '-'}: {r['volume_ml']:.2f} ml, "
          f"RECIST long axis {r['long_axis_mm']:.1f} mm, short axis {r['short_axis_mm']:.1f} mm (axial plane "
          f"z = {r['recist_z_mm']:.1f} mm), centroid {_fmt_pt(r['centroid_lps'])} (LPS mm)"
          + "".join(f"\nWARNING: {w}" for w in r["warnings"]))
    return 0


def cmd_export(args) -> int:
    from pathlib import Path

    from pipeline.scene import load_scene

    scene = load_scene(args.scene)
    default = Path(scene.root) / "export"
    if args.format == "dicom-seg":
        from pipeline.export.dicom_seg import write_dicom_seg

        out = Path(args.out) if args.out else default / f"{scene.case_id}_seg.dcm"
        files = [write_dicom_seg(scene, out, dicom_dir=args.source_dicom, structures=args.structure or None,
                                 segmentation_type=args.seg_type)]
        if getattr(args, "deidentify", False):  # added by the batch/PACS area (issue 7)
            from pipeline.deid import deidentify_file_inplace

            files = [deidentify_file_inplace(f, map_path=args.deid_map) for f in files]
    else:
        if getattr(args, "deidentify", False):
            from pipeline.errors import SurgitwinError

            raise SurgitwinError("--deidentify applies to --format dicom-seg (mesh files carry no DICOM identity)")
        from pipeline.export.meshes import export_meshes

        out = Path(args.out) if args.out else (default / f"{scene.case_id}.glb" if args.format == "glb" else default / args.format)
        files = export_meshes(scene, out, args.format, args.structure or None, include_cuts=args.include_cuts)
    _emit(args, {"format": args.format, "files": [str(f) for f in files]},
          "\n".join(f"wrote {f}" for f in files))
    return 0


def cmd_report(args) -> int:
    from pipeline.scene.report import build_report

    r = build_report(args.scene, args.out, render=not args.no_render, closeups=args.closeups, pdf=args.pdf)
    obj = {"html": str(r.html), "pdf": None if r.pdf is None else str(r.pdf), "pictures": r.pictures, "notes": r.notes}
    _emit(args, obj, f"wrote {r.html}" + (f"\nwrote {r.pdf}" if r.pdf else "") + "".join(f"\nnote: {n}" for n in r.notes))
    if not args.json:
        sys.stdout.flush()
    return 0
