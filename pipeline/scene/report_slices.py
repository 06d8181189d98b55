"""Orthogonal slice pictures (axial, coronal, sagittal) with structure outlines and the plan.

Pure numpy/scipy/PIL, so the report has images even where OpenGL/EGL is unavailable.
Slices are resampled onto planes aligned with the patient axes (whatever the scan's
orientation) and shown in the radiological convention: patient Right on the image left
(axial, coronal), anterior on the left (sagittal), superior / anterior at the top. Every edge
carries its orientation letter, so a left/right flip is visible at a glance.
"""
from __future__ import annotations

import base64
import io

import numpy as np


def data_uri(png: bytes) -> str:
    """A PNG as a data: URI (the report embeds every picture; the follow-up report too)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# plane name -> (LPS axis and sign along image columns, along image rows, fixed axis)
PLANES = {
    "axial": ((0, +1), (1, +1), 2),      # columns R->L, rows A->P
    "coronal": ((0, +1), (2, -1), 1),    # columns R->L, rows S->I
    "sagittal": ((1, +1), (2, -1), 0),   # columns A->P (anterior on the left), rows S->I
}
EDGE = {(0, +1): ("R", "L"), (1, +1): ("A", "P"), (2, -1): ("S", "I")}


def plane_points(plane: str, focus: np.ndarray, lo: np.ndarray, hi: np.ndarray, px_mm: float):
    """LPS mm of every pixel centre of a patient-aligned plane through ``focus``.

    Returns (points (h, w, 3), column axis/sign, row axis/sign).
    """
    (ca, cs), (ra, rs), fixed = PLANES[plane]
    cols = np.arange(lo[ca], hi[ca] + px_mm / 2, px_mm)[:: cs]
    rows = np.arange(lo[ra], hi[ra] + px_mm / 2, px_mm)[:: rs]
    pts = np.zeros((len(rows), len(cols), 3))
    pts[..., ca] = cols[None, :]
    pts[..., ra] = rows[:, None]
    pts[..., fixed] = focus[fixed]
    return pts, (ca, cs), (ra, rs)


def _sample(vol, pts: np.ndarray, order: int, cval: float):
    from scipy.ndimage import map_coordinates

    idx = vol.lps_to_index(pts.reshape(-1, 3)).T
    return map_coordinates(vol.array, idx, order=order, mode="constant", cval=cval, prefilter=False).reshape(pts.shape[:2])


def window(values: np.ndarray, modality: str | None) -> np.ndarray:
    """uint8 grey: CT soft-tissue window (W 400, L 40); other modalities 1-99th percentiles."""
    lo: float
    hi: float
    if (modality or "CT").upper() == "CT":
        lo, hi = 40 - 200, 40 + 200
    else:
        lo, hi = np.percentile(values, [1, 99]) if values.size else (0, 1)
        hi = max(hi, lo + 1e-6)
    return (np.clip((values - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _project(p: np.ndarray, origin_pts: np.ndarray, px_mm: float, col, row):
    """LPS point -> (x, y) pixel of the plane picture."""
    x0 = origin_pts[0, 0]
    cx = (p[col[0]] - x0[col[0]]) / px_mm * col[1]
    cy = (p[row[0]] - x0[row[0]]) / px_mm * row[1]
    return float(cx), float(cy)


def slice_picture(image, labelmap, plane: str, focus, lo, hi, *, plan: dict | None = None, px_mm: float | None = None,
                  modality: str | None = "CT", title: str = "") -> bytes:
    """PNG bytes of one patient-aligned slice through ``focus`` with outlines and plan overlays."""
    from PIL import Image, ImageDraw, ImageFont
    from scipy import ndimage

    focus = np.asarray(focus, float)
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    if px_mm is None:
        ext = hi - lo
        px_mm = max(float(np.min(image.spacing)), float(np.max(ext)) / 480.0)
    pts, col, row = plane_points(plane, focus, lo, hi, px_mm)
    grey = window(_sample(image, pts, 1, -1024.0 if (modality or "CT").upper() == "CT" else 0.0), modality)
    labs = _sample(labelmap.volume, pts, 0, 0).astype(np.int64)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    from .colors import scene_colors

    shown = scene_colors(labelmap.labels)  # the viewer's colours
    colours = {l.id: np.array(shown[l.name], np.float32) for l in labelmap.labels}
    for lid, c in colours.items():
        m = labs == lid
        if not m.any():
            continue
        rgb[m] = 0.65 * rgb[m] + 0.35 * c
        edge = m & ~ndimage.binary_erosion(m)
        rgb[edge] = c
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    scale = max(1, int(round(420 / max(img.size))))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(img)
    s = px_mm / scale
    for cut in (plan or {}).get("cuts", []):
        for pl in cut.get("planes", []):
            _draw_plane_line(draw, np.asarray(pl["point"]), np.asarray(pl["normal"]), pts, s, col, row, plane, img.size)
    for tr in (plan or {}).get("trajectories", []):
        a = _project(np.asarray(tr["entry"]), pts, s, col, row)
        b = _project(np.asarray(tr["target"]), pts, s, col, row)
        draw.line([a, b], fill=(255, 235, 0), width=3)
        draw.ellipse([b[0] - 5, b[1] - 5, b[0] + 5, b[1] + 5], outline=(255, 235, 0), width=2)
    for lm in (plan or {}).get("landmarks", []):
        x, y = _project(np.asarray(lm["point"]), pts, s, col, row)
        draw.line([(x - 6, y), (x + 6, y)], fill=(0, 255, 120), width=2)
        draw.line([(x, y - 6), (x, y + 6)], fill=(0, 255, 120), width=2)
    w, h = img.size
    first_c, last_c = EDGE[col]
    first_r, last_r = EDGE[row]
    font = ImageFont.load_default(size=16)
    for text, xy in ((first_c, (3, h // 2 - 9)), (last_c, (w - 15, h // 2 - 9)), (first_r, (w // 2 - 6, 3)),
                     (last_r, (w // 2 - 6, h - 21))):
        draw.rectangle([xy[0] - 2, xy[1] - 1, xy[0] + 13, xy[1] + 18], fill=(0, 0, 0))
        draw.text(xy, text, fill=(255, 255, 255), font=font)
    if title:
        draw.text((24, 3), title, fill=(255, 255, 255), font=font)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _draw_plane_line(draw, p0, n, pts, s, col, row, plane, size):
    """Intersection line of a cutting plane with the picture's plane (if not parallel)."""
    fixed = PLANES[plane][2]
    z = pts[0, 0, fixed]
    # points x on the view plane with n . (x - p0) = 0: solve along the two in-plane axes
    a, b = col[0], row[0]
    if abs(n[a]) < 1e-9 and abs(n[b]) < 1e-9:
        return
    corners = pts[[0, 0, -1, -1], [0, -1, 0, -1]]
    lo_a, hi_a = corners[:, a].min(), corners[:, a].max()
    lo_b, hi_b = corners[:, b].min(), corners[:, b].max()
    rest = n[fixed] * (z - p0[fixed])
    ends = []
    if abs(n[b]) > 1e-9:
        for va in (lo_a, hi_a):
            vb = p0[b] - (n[a] * (va - p0[a]) + rest) / n[b]
            if lo_b - 1e-6 <= vb <= hi_b + 1e-6:
                ends.append((va, vb))
    if abs(n[a]) > 1e-9:
        for vb in (lo_b, hi_b):
            va = p0[a] - (n[b] * (vb - p0[b]) + rest) / n[a]
            if lo_a - 1e-6 <= va <= hi_a + 1e-6:
                ends.append((va, vb))
    if len(ends) < 2:
        return
    xy = []
    for va, vb in ends[:2]:
        q = np.zeros(3)
        q[a], q[b], q[fixed] = va, vb, z
        xy.append(_project(q, pts, s, col, row))
    draw.line(xy, fill=(0, 220, 255), width=3)
