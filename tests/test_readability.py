"""Pictures that read at a glance: the orientation marker's letters never overlap, colour by
uncertainty comes with its colour bar."""
from __future__ import annotations

import numpy as np
import pytest

from viewer.synthetic import Blob, make_scene


@pytest.mark.parametrize("view,hidden", [("left", {"L", "R"}), ("right", {"L", "R"}), ("anterior", {"A", "P"}),
                                         ("superior", {"S", "I"})])
def test_marker_letters_of_an_axis_seen_end_on_are_left_out(view, hidden):
    from viewer.drawing import marker_letters
    from viewer.views import screen_basis

    _, _, forward = screen_basis(view)
    shown = marker_letters(forward)
    assert len(shown) == 6 and {t for t in shown if t} == {"L", "R", "A", "P", "S", "I"} - hidden
    assert set(marker_letters([1.0, -1.0, 1.0])) == {"L", "R", "A", "P", "S", "I"}  # oblique: all six


@pytest.mark.slow
def test_uncertainty_snapshot_has_a_colour_bar(tmp_path):
    from PIL import Image

    from viewer.render import snapshot_subprocess

    make_scene(tmp_path / "s", (Blob("organ", (-20.0, 0.0, 0.0), (15, 15, 15), (200, 60, 60)),
                                Blob("vessel", (25.0, 0.0, 0.0), (10, 10, 10), (40, 80, 220))),
               shape=(30, 40, 50), spacing=2.0, uncertainty=True)
    w, h, legend_w = 600, 300, 150
    bars = {}
    for on in (True, False):
        out = snapshot_subprocess(tmp_path / "s", tmp_path / f"u{on}.png", views=("anterior",), size=(w, h),
                                  color_by_uncertainty=on)
        strip = np.asarray(Image.open(out).convert("RGB")).astype(int)[:, w - legend_w:]
        bars[on] = strip[h - 60:]  # the bottom of the legend strip
    bar = bars[True]
    blue = (bar[..., 2] > 150) & (bar[..., 0] < 100)
    red = (bar[..., 0] > 180) & (bar[..., 1] < 60) & (bar[..., 2] < 60)
    assert blue.sum() > 50 and red.sum() > 50
    assert np.nonzero(blue)[1].mean() < np.nonzero(red)[1].mean()  # certain (blue) left, uncertain (red) right
    b2 = bars[False]
    assert ((b2[..., 0] > 180) & (b2[..., 1] < 60) & (b2[..., 2] < 60)).sum() == 0  # no bar without the colours


def _screen_fill(pose, aspect, pts):
    from viewer.views import project

    xy = project(pose, aspect, pts)
    return xy.max(0) - xy.min(0)  # fraction of the width and of the height the points cover


def test_a_thin_slab_fills_the_frame_and_keeps_its_letters():
    from viewer.views import direction_letter, fit_camera

    g = np.stack(np.meshgrid([-175.0, 175.0], [-175.0, 175.0], [-20.0, 20.0], indexing="ij"), -1).reshape(-1, 3)
    flat = fit_camera(g, "anterior", 16 / 9)
    framed = fit_camera(g, "anterior", 16 / 9, frame_slab=True)
    fw, fh = _screen_fill(flat, 16 / 9, g)
    gw, gh = _screen_fill(framed, 16 / 9, g)
    assert fh < 0.25 and gh > 2 * fh  # 40 mm of a 350 mm slab: a strip before, a filled frame after
    assert gw > 0.7 and gh > 0.5
    assert direction_letter(framed.up) == "S" and framed.eye[2] > framed.center[2]  # looks down from above
    right = np.cross(framed.center - framed.eye, framed.up)
    assert direction_letter(right) == "L"  # the image's right is still the patient's left
    box = np.stack(np.meshgrid([-100.0, 100.0], [-80.0, 80.0], [-90.0, 90.0], indexing="ij"), -1).reshape(-1, 3)
    a, b = fit_camera(box, "left", 1.3), fit_camera(box, "left", 1.3, frame_slab=True)
    assert np.allclose(a.eye, b.eye) and np.allclose(a.up, b.up)  # not a slab: the named view as it was
