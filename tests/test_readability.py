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
