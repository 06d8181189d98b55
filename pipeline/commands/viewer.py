"""Viewer commands: ``snapshot`` (headless picture) and ``view`` (interactive Open3D window).

Nothing heavy at module level: Open3D is imported by the handlers (or in a child process).
"""
from __future__ import annotations

import sys


def _views_help() -> str:
    return "anterior, posterior, left, right, superior, inferior"


def register(sub) -> None:
    p = sub.add_parser("snapshot", help="render named patient views of a scene into one PNG, headless (no display needed)")
    p.add_argument("scene", help="scene folder or its scene.json")
    p.add_argument("-o", "--output", required=True, help="PNG to write")
    p.add_argument("--view", action="append", metavar="VIEW", help=f"repeatable; one of {_views_help()} (default anterior, left)")
    p.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of the whole picture (default 1280x720)")
    p.add_argument("--hide", action="append", default=[], metavar="STRUCTURE", help="structure not to draw (repeatable)")
    p.add_argument("--show-body", action="store_true", help="draw the body/skin surface translucent (hidden by default)")
    p.add_argument("--no-legend", action="store_true")
    p.add_argument("--uncertainty", action="store_true", help="colour surfaces by the scene's uncertainty map")
    p.add_argument("--plan", action="store_true", help="draw the saved plan (landmarks, measurements, cuts, trajectories)")
    p.add_argument("--opacity", action="append", default=[], metavar="STRUCTURE=0..1",
                   help="e.g. liver=0.4 to see a tumour inside it (repeatable)")
    p.add_argument("--slice", action="append", default=[], metavar="PLANE=INDEX",
                   help="draw a CT plane: axial|coronal|sagittal = array index (repeatable)")
    p.add_argument("--window", default="soft_tissue", help="CT window of the planes (soft_tissue, bone, lung)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds before the renderer is given up")
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser("view", help="open the scene in the interactive Open3D viewer (needs a display)")
    p.add_argument("scene", help="scene folder or its scene.json")
    p.add_argument("--view", default="anterior", metavar="VIEW", help=f"initial camera: {_views_help()}")
    p.add_argument("--screenshot", metavar="PNG", help="open the window, render, save what it shows and exit")
    p.add_argument("--size", default="1440x900", help="window WIDTHxHEIGHT (default 1440x900)")
    p.add_argument("--script", metavar="JSON", help="run a list of viewer actions, then exit (tests, automation)")
    p.add_argument("--result", metavar="JSON", help="with --script/--screenshot: write panel values and measurements here")
    p.add_argument("--layout", choices=("3d", "four-up"), default="3d",
                   help="four-up: axial, coronal, sagittal slice panes with outlines beside the 3-D view "
                        "(with --screenshot it needs no display)")
    p.add_argument("--crosshair", nargs=3, type=float, metavar=("X", "Y", "Z"),
                   help="four-up: the linked crosshair, LPS mm (default: the centre of the structures)")
    p.add_argument("--window", default="soft_tissue", help="four-up: CT window preset (soft_tissue, bone, lung)")
    p.add_argument("--overlay", choices=("outline", "fill"), default="outline", help="four-up: structure overlay")
    p.add_argument("--overlay-opacity", type=float, default=0.35, help="four-up: opacity of filled overlays (0..1)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="with --script/--screenshot: seconds before a stuck viewer is reported and ended (exit 3)")
    _timepoint_options(p)
    p.set_defaults(func=cmd_view)


def _timepoint_options(p) -> None:
    """Time points of a scene (surgitwin follow-up): which one, which other one over it, change colours."""
    g = p.add_argument_group("time points (see docs/FOLLOW_UP.md)")
    g.add_argument("--timepoint", metavar="ID", help="show this time point (default: the current one)")
    g.add_argument("--compare", metavar="ID", help="overlay this time point's surfaces, translucent, mapped rigidly "
                                                   "into the viewed time point's space")
    g.add_argument("--compare-opacity", type=float, default=0.4, help="opacity of the compared surfaces (0..1)")
    g.add_argument("--color-by-change", metavar="STRUCTURE", help="colour STRUCTURE by signed distance to the other "
                   "time point (--compare, else the previous): growth red, shrinkage blue, +-5 mm")
    g.add_argument("--change-threshold", type=float, default=1.0, metavar="MM",
                   help="changes smaller than this are drawn white (default 1 mm)")
    g.add_argument("--hide", action="append", default=[], metavar="STRUCTURE",
                   help="time point pictures without a display: structure not to draw (repeatable)")


def cmd_snapshot(args) -> int:
    from pipeline.render.offscreen import parse_opacity, parse_size, parse_slices, snapshot_subprocess
    from pipeline.render.views import check_view

    views = [check_view(v) for v in (args.view or ["anterior", "left"])]
    out = snapshot_subprocess(args.scene, args.output, views, parse_size(args.size), hide=args.hide,
                              show_body=args.show_body, legend=not args.no_legend,
                              color_by_uncertainty=args.uncertainty, timeout=args.timeout, plan=args.plan,
                              slices=parse_slices(args.slice), window=args.window,
                              opacity=parse_opacity(args.opacity))
    print(out)
    return 0


def cmd_view(args) -> int:
    from pipeline.render.offscreen import parse_size
    from pipeline.render.views import check_view

    check_view(args.view)
    if not 0.0 <= args.change_threshold < 5.0:
        from pipeline.errors import SurgitwinError

        raise SurgitwinError(f"--change-threshold must be 0 to 5 mm (colours saturate at 5 mm); found {args.change_threshold}",
                             rule="change threshold in mm")
    if args.layout == "four-up":
        return _four_up(args)
    from viewer.app import DisplayMissing, require_display, run_viewer

    timepoints = {"timepoint": args.timepoint, "compare": args.compare, "compare_opacity": args.compare_opacity,
                  "color_by_change": args.color_by_change, "threshold_mm": args.change_threshold}
    asked = any(timepoints[k] for k in ("timepoint", "compare", "color_by_change"))
    try:
        require_display()
    except DisplayMissing:
        if not (asked and args.screenshot):
            raise
        return _timepoint_picture(args, timepoints)
    return run_viewer(args.scene, view=args.view, size=parse_size(args.size), screenshot=args.screenshot,
                      script=args.script, result=args.result, timeout=args.timeout,
                      timepoints=timepoints)


def _timepoint_picture(args, timepoints: dict) -> int:
    """``view --timepoint/--compare/--color-by-change --screenshot`` without a display: drawn headless."""
    from pipeline.followup.view import screenshot_subprocess
    from pipeline.render.offscreen import parse_size

    out = screenshot_subprocess(args.scene, args.screenshot, [args.view], parse_size(args.size), hide=args.hide,
                                state_json=args.result, timeout=args.timeout, **timepoints)
    print(out)
    return 0


def _four_up(args) -> int:
    """Four-up: the interactive window when a display is usable; a --screenshot without one is
    composed headless (panes in numpy, the 3-D pane with EGL)."""
    from viewer.app import DisplayMissing, require_display, run_viewer
    from pipeline.render.offscreen import parse_size

    settings = {"crosshair": args.crosshair, "window": args.window, "overlay": args.overlay,
                "opacity": args.overlay_opacity}
    try:
        require_display()
    except DisplayMissing as e:
        if not args.screenshot:
            raise DisplayMissing(f"{e}; or draw the four-up without a display: --layout four-up --screenshot OUT.png",
                                 rule="the interactive viewer needs a display") from None
        from pipeline.followup.view import timepoint_scene_path
        from pipeline.render.fourup import four_up_screenshot

        # the time point the window would open (--timepoint, else the current one)
        out = four_up_screenshot(timepoint_scene_path(args.scene, args.timepoint), args.screenshot, parse_size(args.size), view=args.view,
                                 crosshair=args.crosshair, window=args.window, overlay=args.overlay,
                                 opacity=args.overlay_opacity)
        print(out)
        return 0
    return run_viewer(args.scene, view=args.view, size=parse_size(args.size), screenshot=args.screenshot,
                      script=args.script, result=args.result, layout="four-up", four_up=settings,
                      timeout=args.timeout, timepoints={"timepoint": args.timepoint})


if __name__ == "__main__":  # pragma: no cover
    from pipeline.cli import main

    sys.exit(main())
