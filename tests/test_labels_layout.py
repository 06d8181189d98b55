"""Label layout: measurement labels at one spot are spread so none overlaps on screen."""
from __future__ import annotations

import numpy as np

from viewer.labels import screen_boxes
from viewer.views import fit_camera, project


def test_labels_at_one_point_are_stacked_without_overlap():
    pose = fit_camera(np.array([[-100.0, -100, -100], [100, 100, 100]]), "anterior", 1.5)
    anchors = np.array([[0.0, 0, 0]] * 4 + [[80.0, 0, 60]])
    sizes = np.array([[80, 18]] * 5)
    pos = screen_boxes(anchors, sizes, pose, (900, 600), offset_px=0)
    ys = np.sort(pos[:4, 1])
    assert np.all(np.diff(ys) >= 18 - 1e-6)  # one label height apart: no overlap
    assert np.allclose(pos[:4, 0], pos[0, 0])  # moved along the screen's up/down only
    xy = project(pose, 1.5, anchors[4:]) * (900, 600)
    assert np.allclose(pos[4], xy[0] - [0, 9])  # a label with room stays on its anchor


def test_label_layout_keeps_free_labels_in_place_from_any_view_and_drops_hidden_ones():
    for view in ("left", "superior"):
        pose = fit_camera(np.array([[-100.0, -100, -100], [100, 100, 100]]), view, 1.0)
        anchors = np.array([[-60.0, -60, -60], [60, 60, 60]])
        xy = project(pose, 1.0, anchors) * 600
        assert np.allclose(screen_boxes(anchors, [[20, 10]] * 2, pose, (600, 600), 0), xy - [0, 5])
        behind = pose.eye - 50 * (pose.center - pose.eye) / np.linalg.norm(pose.center - pose.eye)
        assert np.isnan(screen_boxes([behind], [[20, 10]], pose, (600, 600))).all()
