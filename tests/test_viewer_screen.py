"""A window asked larger than the X screen opens at the screen's size and is captured.

Before: `surgitwin view --size 1440x900 --screenshot` on a 1280x1024 or smaller screen failed with
"XGetImage failed ... is it mapped and on screen?" (exit 1, no picture).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import start_xvfb
from viewer.xcapture import fit_to_screen

ROOT = Path(__file__).resolve().parents[1]


def test_fit_to_screen_keeps_aspect_and_says_so():
    assert fit_to_screen((1440, 900), (1920, 1080)) == ((1440, 900), None)
    assert fit_to_screen((1440, 900), None) == ((1440, 900), None)
    (w, h), note = fit_to_screen((1440, 900), (800, 600))
    assert (w, h) == (800, 500) and "larger than the X screen 800x600" in note
    (w, h), _ = fit_to_screen((1000, 2000), (1280, 1024))
    assert h <= 1024 and abs(w / h - 0.5) < 0.01


@pytest.mark.slow
def test_window_larger_than_screen_is_shrunk_and_captured(tmp_path):
    from PIL import Image

    from viewer.synthetic import Blob, make_scene

    make_scene(tmp_path / "s", (Blob("organ", (-30.0, 0.0, 0.0), (15, 15, 15), (200, 60, 60)),),
               shape=(30, 40, 50), spacing=2.0, case_id="screen")
    xvfb = start_xvfb("800x600x24")
    display = next(xvfb)
    try:
        env = dict(os.environ, DISPLAY=display)
        env.pop("WAYLAND_DISPLAY", None)
        shot = tmp_path / "shot.png"
        p = subprocess.run([sys.executable, "-m", "pipeline.cli", "view", str(tmp_path / "s"), "--size", "1440x900",
                            "--screenshot", str(shot)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    finally:
        xvfb.close()  # stops the server
    assert p.returncode == 0, p.stderr[-2000:]
    assert "larger than the X screen 800x600" in p.stderr
    w, h = Image.open(shot).size
    assert w <= 800 and h <= 600
