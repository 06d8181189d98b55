"""Interactive render quality: while the camera moves the viewer draws decimated copies without
post-processing, and the full picture comes back when it stops (viewer.motion)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import start_xvfb
from viewer.synthetic import Blob, make_scene

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ORGAN = (200, 60, 60)


def test_decimated_copy_keeps_shape():
    import trimesh

    from viewer.motion import decimated

    ball = trimesh.creation.icosphere(5, radius=30.0)
    light = decimated(ball, 0.25)
    assert 0.2 * len(ball.faces) <= len(light.faces) <= 0.3 * len(ball.faces)
    centre = np.average(light.triangles_center, axis=0, weights=light.area_faces)
    assert np.allclose(centre, 0.0, atol=0.5)  # area-weighted: decimation spaces vertices unevenly
    assert abs(np.linalg.norm(light.vertices, axis=1).mean() - 30.0) < 0.5


def _organ_mask(png):
    from PIL import Image

    a = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return (a[..., 0] > 120) & (a[..., 0] - a[..., 1] > 60) & (a[..., 0] - a[..., 2] > 60)


def test_moving_camera_draws_copies_then_the_full_scene(tmp_path):
    make_scene(tmp_path / "s", (Blob("organ", (-30.0, 0.0, 0.0), (25, 25, 25), ORGAN),
                                Blob("vessel", (35.0, 0.0, 0.0), (12, 12, 30), (40, 80, 220))),
               shape=(40, 50, 70), spacing=2.0, case_id="motion")
    shots = {k: str(tmp_path / f"{k}.png") for k in ("still", "moving", "after")}
    script = [{"do": "screenshot", "args": [shots["still"]]},
              {"do": "set_moving", "args": [True]}, {"do": "screenshot", "args": [shots["moving"]]},
              {"do": "set_moving", "args": [False]}, {"do": "screenshot", "args": [shots["after"]]}]
    (tmp_path / "script.json").write_text(json.dumps(script))
    xvfb = start_xvfb("1280x1024x24")
    display = next(xvfb)
    try:
        env = dict(os.environ, DISPLAY=display, SURGITWIN_VIEWER_LOD_FACES="1000")
        env.pop("WAYLAND_DISPLAY", None)
        p = subprocess.run([sys.executable, "-m", "pipeline.cli", "view", str(tmp_path / "s"), "--size", "900x640",
                            "--script", str(tmp_path / "script.json"), "--result", str(tmp_path / "r.json")],
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    finally:
        xvfb.close()  # stops the server
    assert p.returncode == 0, p.stderr[-2000:]
    actions = json.loads((tmp_path / "r.json").read_text())["actions"]
    swapped = actions[1]["value"]
    assert "organ" in swapped  # drawn from its decimated copy while moving
    assert actions[3]["value"] == []
    still, moving, after = (_organ_mask(shots[k]) for k in ("still", "moving", "after"))
    assert still.sum() > 2000
    iou = (still & moving).sum() / (still | moving).sum()
    assert iou > 0.85  # the copy stands where the organ is (same camera, same side)
    assert (still ^ after).sum() <= 0.01 * still.sum()  # the full picture is back
