"""The four-up window under Xvfb (`surgitwin view SCENE --layout four-up`): three slice panes
with outlines beside the 3-D view, the linked crosshair, and a brush stroke in a pane that
edits the label map through the core."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import require_tool
from scene_factory import cached_constructed_scene
from test_viewer_gui import xvfb  # noqa: F401 - the private Xvfb display fixture

ROOT = Path(__file__).resolve().parents[1]
SIZE = (1200, 760)


def _run(display, scene, script, tmp_path) -> dict:
    """`surgitwin view SCENE --layout four-up --script ...` on ``display``; the result JSON."""
    (tmp_path / "s.json").write_text(json.dumps(script))
    res = tmp_path / "res.json"
    env = dict(os.environ, DISPLAY=display)
    env.pop("WAYLAND_DISPLAY", None)
    p = subprocess.run([sys.executable, "-m", "pipeline.cli", "view", str(scene), "--layout", "four-up", "--size",
                        f"{SIZE[0]}x{SIZE[1]}", "--script", str(tmp_path / "s.json"), "--result", str(res)],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=400)
    out = json.loads(res.read_text())
    assert p.returncode == 0 and out["ok"], (out.get("error"), p.stderr[-1500:])
    return out


@pytest.mark.slow
def test_four_up_window_panes_crosshair_and_brush(xvfb, tmp_path):  # noqa: F811
    require_tool("xdotool")
    require_tool("import", "imagemagick")
    from PIL import Image

    from pipeline.scene import load_scene
    from viewer.fourup import FourUp

    scene, _ = cached_constructed_scene(tmp_path)
    before = load_scene(scene, load_meshes=False).load_labelmap().array.copy()
    shot = tmp_path / "four_up.png"
    script = [{"do": "set_crosshair", "args": [-30.0, 22.0, 0.0]},
              {"do": "screenshot", "args": [str(shot)]},
              {"do": "panel_state"}]
    out = _run(xvfb, scene, script, tmp_path)
    panel = out["panel"]
    assert panel["layout"] == "four-up" and panel["crosshair"] == pytest.approx([-30.0, 22.0, 0.0])
    a = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    fu = FourUp(scene)
    liver, kidney = np.array(fu.colors["liver"]), np.array(fu.colors["kidney_left"])
    for plane, (x, y, w, h) in panel["panes"].items():
        tile = a[y:y + h, x:x + w]
        lv = np.argwhere(np.abs(tile - liver).sum(axis=2) < 40)
        assert len(lv) > 50, f"{plane} pane shows the liver's outline"
        assert tile.std() > 20  # CT, not an empty pane
        if plane != "sagittal":  # radiological: the liver (patient right) left of the kidney
            kd = np.argwhere(np.abs(tile - kidney).sum(axis=2) < 40)
            assert len(kd) > 20 and lv[:, 1].mean() < kd[:, 1].mean(), plane
    x, y, w, h = panel["widget_frame"]
    assert a[y:y + h, x:x + w].std() > 15  # the 3-D view draws the anatomy

    # a brush stroke (erase, 6 mm) in the axial pane at the liver's right edge, as Ctrl+Shift+click does
    ax = panel["panes"]["axial"]
    fu.set_crosshair((-30.0, 22.0, 0.0))
    gx, gy = fu.geometry("axial", ax[2], ax[3]).to_px((-70.0, 0.0, 0.0))
    script = [{"do": "set_crosshair", "args": [-30.0, 22.0, 0.0]},
              {"do": "brush", "args": ["axial", gx / ax[2], gy / ax[3], True],
               "kwargs": {"structure": "liver", "radius_mm": 6.0}},
              {"do": "set_mode", "args": ["landmark"]},
              {"do": "pane_tool_point", "args": ["axial", gx / ax[2], gy / ax[3]]},
              {"do": "measure_distance", "args": [[-45, 0, 0], [45, 0, 0]]},
              {"do": "measure_distance", "args": [[-45, 0, 0], [45, 0, 0]]},  # same place: labels would overlap
              {"do": "layout_labels3d"},
              {"do": "panel_state"}]
    out = _run(xvfb, scene, script, tmp_path)
    pos = np.array(out["actions"][6]["value"])
    assert len(pos) >= 2 and np.linalg.norm(pos[-1] - pos[-2]) > 1.0  # the two labels were moved apart
    lm = out["actions"][3]["value"]  # a landmark placed in the axial pane lies where it was clicked
    assert lm["kind"] == "landmark" and lm["point"] == pytest.approx([-70.0, 0.0, 0.0], abs=1.5)
    edit = out["actions"][1]["value"]
    after = load_scene(scene, load_meshes=False).load_labelmap()
    gone = np.argwhere((before == 1) & (after.array != 1))
    assert len(gone) == edit["voxels_removed"] > 0 and edit["op"] == "erase_sphere"
    assert np.all(after.volume.index_to_lps(gone)[:, 0] < -60)  # on the patient's right, where it was brushed
