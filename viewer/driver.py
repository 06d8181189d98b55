"""Scripted viewer sessions: a JSON list of actions run against the real window, then exit.

Used by ``surgitwin view SCENE --script actions.json --result out.json`` (automation, support
tickets) and by the GUI tests. Each action names a public :class:`viewer.app.ViewerApp`
method and its arguments::

    [{"do": "set_view", "args": ["left"]},
     {"do": "min_distance", "args": ["liver", "aorta"]},
     {"do": "screenshot", "args": ["out/window.png"]},
     {"do": "wait", "args": [0.5]}]

The result JSON holds every action's return value (or error), the panel's final state
(:meth:`ViewerApp.panel_state`), the plan, timings and ``ok``. A watchdog ends the process if
the script hangs, so a stuck GUI never hangs a caller.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np

from pipeline.errors import SurgitwinError

ACTIONS = frozenset({
    "set_view", "reset_view", "set_visible", "set_opacity", "isolate", "set_color_by_uncertainty",
    "show_slices", "set_slice", "set_window", "show_marker", "set_mode", "pick", "click", "add_point",
    "measure_distance", "measure_angle", "add_landmark", "min_distance", "add_trajectory", "remove_record",
    "start_cut", "move_cut", "add_cut_plane", "commit_cut", "clear_cut", "save_plan", "screenshot", "panel_state", "edge_letters",
    "open_report", "wait", "click_xdotool",
    "set_timepoint", "set_compare", "set_compare_opacity", "set_color_by_change", "timepoint_state",
    "set_crosshair", "pane_click", "scroll_pane", "set_overlay", "set_pane_window", "set_brush", "brush", "undo_edit", "pane_tool_point", "layout_labels3d", "set_moving",
})


def load_actions(path) -> list[dict]:
    try:
        actions = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SurgitwinError(f"viewer script must be a readable JSON list of actions ({e})", path=str(path)) from None
    if not isinstance(actions, list) or not all(isinstance(a, dict) and "do" in a for a in actions):
        raise SurgitwinError("viewer script must be a JSON list of {\"do\": name, \"args\": [...]} objects", path=str(path))
    bad = sorted({a["do"] for a in actions} - ACTIONS)
    if bad:
        raise SurgitwinError(f"viewer script: unknown actions {bad}; allowed: {sorted(ACTIONS)}", path=str(path))
    return actions


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def click_xdotool(app, x: float, y: float, ctrl: bool = True, relative: bool = False) -> dict:
    """A real X click at widget pixel (x, y) (Ctrl held): exercises the mouse wiring end to end."""
    import subprocess

    f = app._on_main(lambda: app.widget.frame)
    if relative:
        x, y = x * f.width, y * f.height
    wid = subprocess.run(["xdotool", "search", "--sync", "--pid", str(os.getpid()), "--name", "surgitwin"],
                         capture_output=True, text=True, timeout=10).stdout.split()[-1]
    before = len(app.session.records())
    cmd = ["xdotool", "mousemove", "--window", wid, str(int(f.x + x)), str(int(f.y + y))]
    if ctrl:
        cmd += ["keydown", "ctrl"]
    cmd += ["click", "1"] + (["keyup", "ctrl"] if ctrl else [])
    subprocess.run(cmd, check=True, timeout=10)
    t0 = time.time()
    while time.time() - t0 < 20:  # the click is handled asynchronously (picking runs off the GUI thread)
        if len(app.session.records()) > before or app.session.pending:
            break
        time.sleep(0.1)
    return {"records": len(app.session.records()), "pending": len(app.session.pending)}


def start_driver(app, actions: list[dict], result_path=None, *, timeout: float = 300.0) -> dict:
    """Run ``actions`` in a thread once the window has drawn; write the result; quit the app."""
    outcome: dict = {"ok": False, "actions": [], "timings": app.timings}

    def finish():
        if result_path:
            p = Path(result_path)
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(f".tmp-{os.getpid()}-{p.name}")
            tmp.write_text(json.dumps(_jsonable(outcome), indent=1, default=str))
            os.replace(tmp, p)
        app.quit()

    def watchdog():
        time.sleep(timeout)
        outcome["error"] = f"script did not finish within {timeout:.0f} s"
        done = [x["do"] for x in outcome["actions"]]
        print(f"surgitwin view: the viewer did not finish within {timeout:.0f} s (GUI thread stuck or the renderer "
              f"too slow; first frame {'drawn' if 'first_frame_s' in outcome['timings'] else 'never drawn'}; "
              f"actions done: {done or 'none'})", file=sys.stderr, flush=True)
        try:
            if result_path:
                Path(result_path).write_text(json.dumps(_jsonable(outcome), default=str))
        finally:
            os._exit(3)

    def run():
        try:
            if not actions or actions[0]["do"] != "screenshot":  # a screenshot waits for its own frames
                app._render_scene_image(None)  # the window is up and has drawn a frame
                outcome["timings"]["first_frame_s"] = round(time.perf_counter() - app._t0, 3)
            for a in actions:
                name, args, kw = a["do"], a.get("args", []), a.get("kwargs", {})
                t = time.perf_counter()
                if name == "wait":
                    time.sleep(float(args[0]) if args else 0.5)
                    value = None
                elif name == "click_xdotool":
                    value = click_xdotool(app, *args, **kw)
                else:
                    value = getattr(app, name)(*args, **kw)
                outcome["actions"].append({"do": name, "value": value, "s": round(time.perf_counter() - t, 3)})
            outcome["panel"] = app.panel_state()
            outcome["plan"] = app.scene.plan
            outcome["ok"] = True
        except Exception as e:  # noqa: BLE001 - a scripted session reports any failure with its traceback
            outcome["error"] = f"{type(e).__name__}: {e}"
            outcome["traceback"] = traceback.format_exc()
            try:
                outcome["panel"] = app.panel_state()
            except Exception:  # noqa: BLE001 - the panel state is extra detail for a failure already reported
                pass
        finally:
            finish()

    # no seconds of redraws after the window opens and each action: a screenshot draws and
    # checks its own frames, and each frame of a big scene costs seconds in a software renderer
    app.touch_cap, app._redraw_until = 0.5, time.monotonic()
    threading.Thread(target=watchdog, daemon=True).start()
    threading.Thread(target=run, daemon=True).start()
    return outcome

