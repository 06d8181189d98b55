"""The real window's time point section under Xvfb: switch, compare, colour by change.

The same baseline + follow-up pair as tests/test_followup_view.py (known motion, tumour grown
6 mm on the patient's right). One scripted session: the time point selector lists the time
points in order with the current one marked, shows the current one; comparing overlays the
baseline's surfaces; colouring the tumour by change paints it red on the screen side the
orientation letters call R; switching to the baseline swaps the surfaces (and the change
colours follow: growth still red). Its numbers must equal the headless core's.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import start_xvfb
from followup_helpers import FOLLOWUP_DATE, write_timepoint_pair

pytestmark = pytest.mark.slow  # a real window under Xvfb (~30-60 s)

ROOT = Path(__file__).resolve().parents[1]
SIZE = (1000, 640)


@pytest.fixture(scope="module")
def xvfb():
    yield from start_xvfb("1280x1024x24")


@pytest.fixture(scope="module")
def session(xvfb, tmp_path_factory):
    root, _ = write_timepoint_pair(tmp_path_factory.mktemp("tp_gui"), growth_mm=6.0)
    out = tmp_path_factory.mktemp("tp_gui_out")
    script = [
        {"do": "show_marker", "args": [False]},
        {"do": "panel_state"},
        {"do": "set_compare", "args": ["baseline"]},
        {"do": "set_color_by_change", "args": ["liver_tumor", True]},
        {"do": "screenshot", "args": [str(out / "change.png"), "scene"]},
        {"do": "panel_state"},
        {"do": "set_visible", "args": ["spleen", False]},
        {"do": "screenshot", "args": [str(out / "no_spleen.png"), "scene"]},
        {"do": "set_visible", "args": ["spleen", True]},
        {"do": "set_compare_opacity", "args": [0.6]},
        {"do": "set_timepoint", "args": ["baseline"]},
        {"do": "screenshot", "args": [str(out / "baseline.png"), "scene"]},
        {"do": "panel_state"},
        {"do": "set_color_by_change", "args": ["liver_tumor", False]},
        {"do": "panel_state"},
    ]
    (out / "script.json").write_text(json.dumps(script))
    env = dict(os.environ, DISPLAY=xvfb)
    env.pop("WAYLAND_DISPLAY", None)
    p = subprocess.run([sys.executable, "-m", "pipeline.cli", "view", str(root), "--size", f"{SIZE[0]}x{SIZE[1]}",
                        "--change-threshold", "1.5", "--script", str(out / "script.json"), "--result", str(out / "result.json")],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=400)
    assert (out / "result.json").exists(), f"no result (rc {p.returncode}):\n{p.stderr[-3000:]}"
    res = json.loads((out / "result.json").read_text())
    assert res.get("ok"), f"{res.get('error')}\n{res.get('traceback')}\n{p.stderr[-2000:]}"
    res["values"] = [a.get("value") for a in res["actions"]]
    res["out"], res["root"] = out, root
    return res


def _rgb(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_selector_lists_time_points_in_order_with_the_current_marked(session):
    tp = session["values"][1]["timepoints"]
    w = tp["widgets"]
    assert tp["timepoints"] == ["20250101", FOLLOWUP_DATE] and tp["current"] == FOLLOWUP_DATE
    assert tp["viewed"] == FOLLOWUP_DATE and tp["compare"] is None
    assert w["show_items"] == ["baseline 20250101", f"{FOLLOWUP_DATE} (current)"]
    assert w["show"] == f"{FOLLOWUP_DATE} (current)"
    assert w["compare_items"] == ["(none)", *w["show_items"]] and w["compare"] == "(none)"
    assert w["change_structure"] == "liver_tumor" and not w["change_on"]


def test_compare_and_colour_by_change_match_the_core(session):
    from pipeline.followup.view import timepoint_view

    tp = session["values"][5]["timepoints"]
    assert tp["compare"] == "20250101" and "compare:liver_tumor" in tp["compare_drawn"]
    ch = tp["change"]
    core = timepoint_view(session["root"], compare="baseline", color_by_change="liver_tumor",
                          threshold_mm=1.5).change.summary()
    assert ch == core and ch["threshold_mm"] == 1.5  # --change-threshold reaches the window
    assert 4.5 < ch["mean_mm"] < 7.5 and ch["growth_fraction"] > 0.97
    assert tp["widgets"]["change_on"] and tp["widgets"]["colorbar_visible"] and "+" in tp["widgets"]["change_text"]
    assert tp["widgets"]["compare"] == "baseline 20250101"
    a = _rgb(session["out"] / "change.png")
    red = (a[..., 0] > 150) & (a[..., 1] < 0.6 * a[..., 0]) & (a[..., 2] < 0.6 * a[..., 0])
    assert red.sum() > 300
    # the tumour is in the patient's right: where the window's edge letter says R
    letters = session["values"][5]["edge_letters"]
    x = np.nonzero(red)[1].mean() / a.shape[1]
    assert (x < 0.5) == (letters["left"] == "R") and letters["left"] in ("R", "L")


def test_hiding_a_structure_hides_its_compared_surface_too(session):
    a, b = _rgb(session["out"] / "change.png"), _rgb(session["out"] / "no_spleen.png")
    # the spleen (patient left: screen right) and its teal ghost both gone: nothing left there
    bg = b[5, 5]
    right = np.s_[:, a.shape[1] * 3 // 5:]
    drawn_a = (np.abs(a[right] - bg).sum(axis=2) > 40).sum()
    drawn_b = (np.abs(b[right] - bg).sum(axis=2) > 40).sum()
    assert drawn_a > 2000 and drawn_b < 0.7 * drawn_a, (drawn_a, drawn_b)


def test_switching_to_the_baseline_swaps_surfaces_and_keeps_growth_red(session):
    tp = session["values"][12]["timepoints"]
    assert tp["viewed"] == "20250101" and Path(tp["scene_root"]).resolve() == Path(session["root"]).resolve()
    assert tp["compare"] is None  # the compared time point is the one shown now
    assert tp["change"]["other"] == FOLLOWUP_DATE and tp["change"]["growth_fraction"] > 0.97
    assert tp["widgets"]["show"] == "baseline 20250101" and tp["compare_opacity"] == 0.6
    a = _rgb(session["out"] / "baseline.png")
    red = (a[..., 0] > 150) & (a[..., 1] < 0.6 * a[..., 0]) & (a[..., 2] < 0.6 * a[..., 0])
    assert red.sum() > 500
    last = session["values"][14]
    assert last["timepoints"]["change"] is None and not last["timepoints"]["widgets"]["colorbar_visible"]
    assert last["structures"]["liver"]["opacity"] == 1.0  # restored after the change colours
