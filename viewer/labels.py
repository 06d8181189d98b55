"""Screen-space layout of the plan's labels, so measurement labels never sit on top of each other.

Four records measured near one organ put "T1", "M2", "M3" and "C1" on one spot. :func:`screen_boxes`
projects every label's 3-D anchor with the current camera and places the boxes with
:func:`pipeline.render.labels2d.place_boxes` (the nearest free slot above or below the anchor,
in whole box heights; the headless snapshots use the same), leaving out anchors behind the
camera or off the view. Pure numpy: tested without a display; :mod:`viewer.screen_labels` moves
the window's label widgets there.
"""
from __future__ import annotations

import numpy as np

from pipeline.render.labels2d import place_boxes

from .views import CameraPose, project


def pose_from_model(model_matrix, vfov_deg: float) -> CameraPose:
    """A :class:`CameraPose` from an OpenGL camera->world matrix (the camera looks down -z)."""
    m = np.asarray(model_matrix, float)
    eye, forward, up = m[:3, 3], -m[:3, 2], m[:3, 1]
    return CameraPose(eye + forward, eye.copy(), up / np.linalg.norm(up), float(vfov_deg), 0.1, 1e6)


def screen_boxes(anchors, sizes, pose: CameraPose, size_px: tuple[int, int], offset_px: float = 8.0) -> np.ndarray:
    """(n, 2) top-left corners (view pixels, y down) of label boxes of ``sizes`` (n, 2) for the
    3-D ``anchors`` (n, 3) seen by ``pose`` in a view of ``size_px``, none overlapping another;
    NaN for a label whose anchor is behind the camera or outside the view."""
    anchors = np.asarray(anchors, float).reshape(-1, 3)
    out = np.full((len(anchors), 2), np.nan)
    if not len(anchors):
        return out
    w, h = size_px
    front = (anchors - pose.eye) @ (pose.center - pose.eye) > 0
    xy = project(pose, w / h, anchors) * (w, h)
    inside = front & np.all(np.isfinite(xy), axis=1) & (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
    keep = np.nonzero(inside)[0]
    if len(keep):
        out[keep] = place_boxes(xy[keep] + [offset_px, 0], np.asarray(sizes, float).reshape(-1, 2)[keep], bounds=(w, h))
    return out
