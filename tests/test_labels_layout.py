"""Label layout: measurement labels at one spot are spread so none overlaps on screen."""
from __future__ import annotations

import numpy as np

from viewer.labels import layout_labels
from viewer.views import fit_camera, project


def test_labels_at_one_point_are_stacked_without_overlap():
    pose = fit_camera(np.array([[-100.0, -100, -100], [100, 100, 100]]), "anterior", 1.5)
    anchors = np.array([[0.0, 0, 0]] * 4 + [[80.0, 0, 60]])
    texts = ["T1 12.0 mm", "M2 30.1 mm", "M3 8.2 mm", "C1 54 %", "M4 far away"]
    pos = layout_labels(anchors, texts, pose, (900, 600))
    xy = project(pose, 1.5, pos) * (900, 600)
    ys = np.sort(xy[:4, 1])
    assert np.all(np.diff(ys) >= 18 - 1e-6)  # one label height apart: no overlap
    assert np.allclose(pos[4], anchors[4])  # a label with room stays on its anchor
    # moved along the screen's up/down only, at the anchor's depth
    assert np.allclose(xy[:4, 0], xy[0, 0]) and np.allclose(pos[:4, 1], 0.0)


def test_label_layout_keeps_free_labels_in_place_from_any_view():
    for view in ("left", "superior"):
        pose = fit_camera(np.array([[-100.0, -100, -100], [100, 100, 100]]), view, 1.0)
        anchors = np.array([[-60.0, -60, -60], [60, 60, 60]])
        assert np.allclose(layout_labels(anchors, ["a", "b"], pose, (600, 600)), anchors)
