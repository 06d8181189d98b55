"""Named patient views in LPS and the camera maths shared by snapshots and the GUI.

Pure numpy: no Open3D import, so the conventions are testable anywhere.

Conventions (LPS: +x = patient Left, +y = Posterior, +z = Superior). Each view is the
direction from the scene centre to the eye and the screen's up vector. The screen's right is
``forward x up`` (``forward`` = eye -> centre), the usual right-handed camera, so:

=========  ==============  ======  ============================================
view       eye at          up      image right shows
=========  ==============  ======  ============================================
anterior   -y (in front)   +z (S)  patient Left (radiological: R on the left)
posterior  +y (behind)     +z (S)  patient Right
left       +x              +z (S)  Posterior (the face looks to the image left)
right      -x              +z (S)  Anterior
superior   +z (above)      -y (A)  patient Right
inferior   -z (below)      -y (A)  patient Left (as an axial CT slice is shown)
=========  ==============  ======  ============================================
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import SurgitwinError

# name -> (unit vector centre -> eye, screen up), both in LPS
VIEWS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "anterior": ((0.0, -1.0, 0.0), (0.0, 0.0, 1.0)),
    "posterior": ((0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
    "left": ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    "right": ((-1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    "superior": ((0.0, 0.0, 1.0), (0.0, -1.0, 0.0)),
    "inferior": ((0.0, 0.0, -1.0), (0.0, -1.0, 0.0)),
}

# letter for each signed LPS axis
_LETTERS = {(0, 1): "L", (0, -1): "R", (1, 1): "P", (1, -1): "A", (2, 1): "S", (2, -1): "I"}


def check_view(name: str) -> str:
    if name not in VIEWS:
        raise SurgitwinError(f"view must be one of {list(VIEWS)}; found {name!r}")
    return name


def direction_letter(vec) -> str:
    """Patient direction letter (L/R/A/P/S/I) of the dominant component of an LPS vector."""
    v = np.asarray(vec, dtype=float)
    ax = int(np.argmax(np.abs(v)))
    return _LETTERS[(ax, 1 if v[ax] >= 0 else -1)]


def screen_basis(view: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(right, up, forward) unit vectors in LPS for a named view; forward points eye -> scene."""
    eye_dir, up = (np.asarray(v, dtype=float) for v in VIEWS[check_view(view)])
    forward = -eye_dir
    right = np.cross(forward, up)
    return right, up, forward


def edge_letters(view: str) -> dict[str, str]:
    """Patient direction shown at each image edge: keys 'left', 'right', 'top', 'bottom'."""
    right, up, _ = screen_basis(view)
    return {"right": direction_letter(right), "left": direction_letter(-right),
            "top": direction_letter(up), "bottom": direction_letter(-up)}


@dataclass(frozen=True)
class CameraPose:
    """A perspective camera: look from ``eye`` at ``center`` with ``up`` (LPS mm)."""

    center: np.ndarray
    eye: np.ndarray
    up: np.ndarray
    vfov_deg: float
    near: float
    far: float


THIN = 0.3  # a scene whose height on screen is under this fraction of its width is a slab
SLAB_TILT_DEG = 35.0


def slab_basis(points, view: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(right, up, forward) for ``view``, tilted when the points form a slab seen edge-on.

    A 40 mm slab of a 512x512 CT seen from the front is a thin strip in an empty frame; the
    camera then rises by :data:`SLAB_TILT_DEG` about the screen's horizontal axis (looking down
    onto the slab's top, or up for an inferior-facing tilt), so what is there fills the frame.
    The screen's right is unchanged and its top keeps the same patient letter (tilt < 45 deg).
    """
    right, up, forward = screen_basis(view)
    pts = np.asarray(points, dtype=float).reshape(-1, 3)
    if len(pts) < 2:
        return right, up, forward
    ext = pts.max(axis=0) - pts.min(axis=0)
    w, h = np.abs(right) @ ext, np.abs(up) @ ext
    if w <= 0 or h >= THIN * w:
        return right, up, forward
    t = np.radians(SLAB_TILT_DEG)
    fwd = np.cos(t) * forward - np.sin(t) * up  # the eye rises: it looks down onto the slab
    new_up = np.cross(right, fwd)
    return right, new_up / np.linalg.norm(new_up), fwd / np.linalg.norm(fwd)


def fit_camera(points, view: str, aspect: float, vfov_deg: float = 30.0, margin: float = 1.08,
               frame_slab: bool = False) -> CameraPose:
    """Camera for ``view`` that frames all ``points`` (n, 3) LPS mm in a viewport of ``aspect`` (w/h).

    The distance is chosen from the extents of the points along the screen axes, so a long
    narrow scene fills a wide viewport instead of being fitted as a sphere. ``frame_slab``:
    a thin slab seen edge-on is looked at from above (:func:`slab_basis`).
    """
    pts = np.asarray(points, dtype=float).reshape(-1, 3)
    if len(pts) == 0:
        pts = np.zeros((1, 3))
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    center = (lo + hi) / 2.0
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]) - center
    right, up, forward = slab_basis(pts, view) if frame_slab else screen_basis(view)
    half_w = max(np.abs(corners @ right).max(), 1e-3)
    half_h = max(np.abs(corners @ up).max(), 1e-3)
    half_d = np.abs(corners @ forward).max()
    tan_v = np.tan(np.radians(vfov_deg) / 2.0)
    tan_h = tan_v * aspect
    dist = half_d + max(half_h / tan_v, half_w / tan_h) * margin
    eye = center - forward * dist
    near = max(dist - half_d * 2.0 - 1.0, 0.1)
    far = dist + half_d * 2.0 + 1.0
    return CameraPose(center, eye, up.copy(), float(vfov_deg), float(near), float(far))


def project(pose: CameraPose, aspect: float, points) -> np.ndarray:
    """(n, 2) viewport coordinates in 0..1 (x right, y down) of (n, 3) LPS points seen by ``pose``."""
    p = np.asarray(points, dtype=float).reshape(-1, 3)
    forward = pose.center - pose.eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, pose.up)
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    v = p - pose.eye
    depth = v @ forward
    tan_v = np.tan(np.radians(pose.vfov_deg) / 2.0)
    x = (v @ right) / (depth * tan_v * aspect)
    y = (v @ up) / (depth * tan_v)
    return np.stack([(x + 1) / 2, (1 - y) / 2], axis=1)


def pixel_ray(model_matrix, fov_deg: float, aspect: float, fx: float, fy: float, vertical: bool = True):
    """(origin, unit direction) in LPS of the ray through viewport point (fx, fy) in 0..1.

    ``model_matrix``: (4, 4) camera -> world (OpenGL: the camera looks down its -z, +y up).
    The inverse of :func:`project`; used for picking, so it does not depend on the depth
    buffer's convention (Open3D's far plane may be at infinity).
    """
    m = np.asarray(model_matrix, dtype=float)
    right, up, forward = m[:3, 0], m[:3, 1], -m[:3, 2]
    t = np.tan(np.radians(fov_deg) / 2.0)
    tan_v, tan_h = (t, t * aspect) if vertical else (t / aspect, t)
    d = forward + (2 * fx - 1) * tan_h * right + (1 - 2 * fy) * tan_v * up
    return m[:3, 3].copy(), d / np.linalg.norm(d)
