"""Screen-space layout of 3-D text labels, so measurement labels never sit on top of each other.

Open3D draws a :class:`Label3D` at a 3-D position with no collision handling: four records
measured near one organ put "T1", "M2", "M3" and "C1" on one spot. :func:`layout_labels`
projects every label's anchor with the current camera, then places them one by one (top to
bottom) at the nearest free slot above or below the anchor, in whole label heights, and returns
the 3-D positions that show them there (moved along the camera's up vector, at the anchor's
depth). Pure numpy: tested without a display.
"""
from __future__ import annotations

import numpy as np

from .views import CameraPose, project


def pose_from_model(model_matrix, vfov_deg: float) -> CameraPose:
    """A :class:`CameraPose` from an OpenGL camera->world matrix (the camera looks down -z)."""
    m = np.asarray(model_matrix, float)
    eye, forward, up = m[:3, 3], -m[:3, 2], m[:3, 1]
    return CameraPose(eye + forward, eye.copy(), up / np.linalg.norm(up), float(vfov_deg), 0.1, 1e6)


def _boxes_overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def layout_labels(anchors, texts, pose: CameraPose, size_px: tuple[int, int], *, char_px: float = 8.0,
                  line_px: float = 18.0, max_steps: int = 12) -> np.ndarray:
    """(n, 3) LPS positions for labels ``texts`` anchored at ``anchors`` (n, 3), none overlapping
    on screen (when a free slot exists within ``max_steps`` label heights)."""
    anchors = np.asarray(anchors, float).reshape(-1, 3)
    if not len(anchors):
        return anchors.copy()
    w, h = size_px
    xy = project(pose, w / h, anchors) * (w, h)
    fwd = pose.center - pose.eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, pose.up)
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    depth = (anchors - pose.eye) @ fwd
    mm_per_px = 2 * np.maximum(depth, 1e-6) * np.tan(np.radians(pose.vfov_deg) / 2) / h
    placed: list[tuple] = []
    out = anchors.copy()
    steps = [0] + [s for k in range(1, max_steps + 1) for s in (-k, k)]  # up first (screen y grows down)
    for i in np.argsort(xy[:, 1], kind="stable"):
        bw = char_px * max(len(str(texts[i])), 1) + 6
        for s in steps:
            y = xy[i, 1] + s * line_px
            box = (xy[i, 0], y - line_px / 2, xy[i, 0] + bw, y + line_px / 2)
            if not any(_boxes_overlap(box, b) for b in placed):
                break
        placed.append(box)
        out[i] = anchors[i] - up * (s * line_px * mm_per_px[i])  # screen y down = world up negative
    return out
