"""The window under Xvfb, at its default size, on the demo abdomen with two saved cuts and two
measurements, with the CT planes in the bone window behind the labels: every label is a boxed
overlay that reads (on the dark CT too) and none overlaps another, before and after the camera
turns; the panel shows every record whole and cuts no widget; the two cuts show in their two
colours."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import require_tool, start_xvfb
from test_label_halos import _hue_mask, _text_contrast, two_cut_scene

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


@pytest.fixture(scope="module")
def wide_xvfb():
    """A private Xvfb display wide enough for the window's default size (1440x900)."""
    yield from start_xvfb("1600x1000x24")


@pytest.fixture(scope="module")
def window(wide_xvfb, tmp_path_factory):
    require_tool("xdotool")
    require_tool("import", "imagemagick")
    out = tmp_path_factory.mktemp("labels_gui")
    scene = two_cut_scene(out / "scene")
    script = [{"do": "show_slices", "args": [True]},
              {"do": "set_window", "args": ["bone"]},
              {"do": "set_view", "args": ["anterior"]},
              {"do": "screenshot", "args": [str(out / "window.png")]},
              {"do": "panel_state"},
              {"do": "set_view", "args": ["left"]},
              {"do": "layout_labels3d"},
              {"do": "panel_state"}]
    (out / "s.json").write_text(json.dumps(script))
    env = dict(os.environ, DISPLAY=wide_xvfb)
    env.pop("WAYLAND_DISPLAY", None)
    p = subprocess.run([sys.executable, "-m", "pipeline.cli", "view", str(scene), "--script", str(out / "s.json"),
                        "--result", str(out / "r.json")], capture_output=True, text=True, env=env, cwd=ROOT, timeout=400)
    res = json.loads((out / "r.json").read_text())
    assert p.returncode == 0 and res["ok"], (res.get("error"), p.stderr[-1500:])
    res["out"], res["scene"] = out, scene
    return res


def test_labels_are_boxed_readable_and_apart(window):
    from PIL import Image

    from pipeline.render.labels2d import box_colours

    front, side = window["actions"][4]["value"], window["actions"][7]["value"]
    img = Image.open(window["out"] / "window.png").convert("RGB")
    a = np.asarray(img).astype(float)
    labels = front["labels"]
    assert sorted(lab["text"] for lab in labels) == ["C1", "C2", "M1: 102.3 mm", "M2: 65.2 mm"]
    vx, vy, vw, vh = front["widget_frame"]
    on_dark = 0
    for n, lab in enumerate(labels):
        x, y, w, h = lab["box"]
        assert vx <= x and x + w <= vx + vw and vy <= y and y + h <= vy + vh  # inside the 3-D view
        assert not any(_overlap(lab["box"], other["box"]) for other in labels[:n])
        assert _text_contrast(img, lab["box"]) >= 7.0, lab["text"]
        inside = np.median(a[y + 2:y + h - 2, x + 2:x + w - 2].reshape(-1, 3), axis=0)
        want = box_colours(lab["rgb"])[0]  # light box, tinted by a cut's colour
        assert np.abs(inside - want).max() < 24, (lab["text"], inside, want)  # 92 % opaque over anything
        ring = np.concatenate([a[max(y - 6, 0):y - 1, x:x + w].reshape(-1, 3), a[y + h + 1:y + h + 6, x:x + w].reshape(-1, 3)])
        on_dark += (ring @ [0.2126, 0.7152, 0.0722]).mean() < 90  # the label sits on the dark CT
    assert on_dark >= 1
    # the camera turned: laid out again for the new view, still apart
    moved = side["labels"]
    assert [lab["box"] for lab in moved] != [lab["box"] for lab in labels]
    shown = [lab["box"] for lab in moved if lab["box"]]
    assert len(shown) >= 3
    assert not any(_overlap(b, c) for i, b in enumerate(shown) for c in shown[:i])


def test_panel_shows_every_record_whole_and_cuts_no_widget(window):
    from viewer.tools import record_text

    panel = window["actions"][4]["value"]
    plan = window["plan"]
    records = [record_text(r) for s in ("landmarks", "measurements", "cuts", "trajectories") for r in plan.get(s, [])]
    lines = panel["record_lines"]
    assert " ".join(s.strip() for s in lines) == " ".join(records)  # every record, word for word
    assert len(lines) > len(records)  # the cut records were long enough to wrap
    fit = panel["record_fit"]
    assert all(w <= fit["width"] for w in fit["widths"]), fit  # measured with the window's own font
    assert fit["overflow"] == [], fit["overflow"]  # no button, check box or label cut or past the edge


def test_two_cuts_show_in_their_own_colours_in_the_window(window):
    from PIL import Image

    from pipeline.scene import load_scene
    from pipeline.scene.colors import cut_colors

    sc = load_scene(window["scene"], load_meshes=False)
    a = np.asarray(Image.open(window["out"] / "window.png").convert("RGB")).astype(int)
    x, y, w, h = window["actions"][4]["value"]["widget_frame"]
    view = a[y:y + h, x:x + w]
    masks = {cid: _hue_mask(view, rgb) for cid, rgb in cut_colors(sc.labels, sc.plan).items()}
    assert set(masks) == {"C1", "C2"}
    assert all(m.sum() > 50 for m in masks.values()), {k: int(m.sum()) for k, m in masks.items()}
    assert (masks["C1"] & masks["C2"]).sum() == 0
