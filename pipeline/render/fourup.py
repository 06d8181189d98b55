"""Four-up review: axial, coronal and sagittal slice panes beside the 3-D view.

Layout (as 3D Slicer's "Four-Up")::

    +-----------+-----------+--------+
    |  axial    |    3-D    | legend |
    +-----------+-----------+        |
    |  coronal  |  sagittal |        |
    +-----------+-----------+--------+

Slice panes are resampled onto patient-aligned planes through one **crosshair** point (LPS
mm) and drawn in the radiological convention (:mod:`pipeline.scene.report_slices`: patient
Right on the image left, anterior / superior at the top), with the patient direction letter
on every edge, the structures as outlines or filled overlays (opacity), a CT window preset and
the crosshair lines of the two other planes. The 3-D pane is the headless snapshot renderer
with the three CT planes drawn at the crosshair, so clicking any pane moves the others: the
crosshair is linked. Panes are pure numpy/PIL; only the 3-D pane needs EGL.

Headless and GUI-free (the core's renderer package): ``surgitwin view --layout four-up
--screenshot`` draws it without a display, and :mod:`viewer.fourup_gui` shows the same panes in
the window. Corrections from a pane: :meth:`FourUp.brush` maps a pane pixel to LPS and calls the core
(:func:`pipeline.scene.edit.edit_structure`), so the pane, the CLI and the tests share one path.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import SurgitwinError

from .slices import WINDOWS, apply_window, check_window

PANES = ("axial", "coronal", "sagittal")
OVERLAYS = ("outline", "fill")
# crosshair line colour per plane (Slicer: axial red, sagittal yellow, coronal green)
PLANE_RGB = {"axial": (235, 70, 70), "coronal": (80, 200, 90), "sagittal": (240, 210, 40)}


@dataclass(frozen=True)
class PaneGeometry:
    """Pixel <-> LPS of one pane: pixel (x, y) centre = origin + x*px_mm*col + y*px_mm*row."""

    plane: str
    origin: np.ndarray  # LPS of pixel (0, 0)'s centre (the fixed coordinate: the crosshair's)
    col: tuple[int, int]  # (LPS axis, sign) along image columns
    row: tuple[int, int]
    px_mm: float
    width: int
    height: int

    def to_lps(self, x: float, y: float) -> np.ndarray:
        p = np.array(self.origin, float)
        p[self.col[0]] += self.col[1] * x * self.px_mm
        p[self.row[0]] += self.row[1] * y * self.px_mm
        return p

    def to_px(self, p) -> tuple[float, float]:
        p = np.asarray(p, float)
        x = (p[self.col[0]] - self.origin[self.col[0]]) * self.col[1] / self.px_mm
        y = (p[self.row[0]] - self.origin[self.row[0]]) * self.row[1] / self.px_mm
        return float(x), float(y)


def plane_line_px(g: PaneGeometry, p0: np.ndarray, n: np.ndarray):
    """The two ends (pane pixels) of the line where the plane through ``p0`` with normal ``n``
    meets the pane, or None when it misses the pane or lies parallel to it."""
    a, b = g.col[0], g.row[0]
    if abs(n[a]) < 1e-9 and abs(n[b]) < 1e-9:
        return None
    lo, hi = g.to_lps(0, 0), g.to_lps(g.width - 1, g.height - 1)
    (lo_a, hi_a), (lo_b, hi_b) = sorted((lo[a], hi[a])), sorted((lo[b], hi[b]))
    fixed = 3 - a - b
    rest = n[fixed] * (g.origin[fixed] - p0[fixed])
    ends = []
    if abs(n[b]) > 1e-9:
        ends += [(va, p0[b] - (n[a] * (va - p0[a]) + rest) / n[b]) for va in (lo_a, hi_a)]
    if abs(n[a]) > 1e-9:
        ends += [(p0[a] - (n[b] * (vb - p0[b]) + rest) / n[a], vb) for vb in (lo_b, hi_b)]
    ends = [e for e in ends if lo_a - 1e-6 <= e[0] <= hi_a + 1e-6 and lo_b - 1e-6 <= e[1] <= hi_b + 1e-6]
    if len(ends) < 2:
        return None
    out = []
    for va, vb in ends[:2]:
        q = np.array(g.origin, float)
        q[a], q[b] = va, vb
        out.append(g.to_px(q))
    return out


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def label_text(draw, xy, text, size, anchor="la", fg=(255, 255, 255), bg=(0, 0, 0)):
    """Text on a dark box with a halo: readable on CT, on white and on colours alike."""
    font = _font(size)
    box = draw.textbbox(xy, text, font=font, anchor=anchor)
    pad = max(2, size // 6)
    draw.rectangle([box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad], fill=bg)
    draw.text(xy, text, font=font, fill=fg, anchor=anchor)
    return box


class FourUp:
    """The four-up state over one scene: crosshair, window, overlay; panes and composition."""

    def __init__(self, scene_path, *, window: str = "soft_tissue", overlay: str = "outline", opacity: float = 0.35):
        from pipeline.scene import load_scene
        from pipeline.scene.colors import scene_colors

        self.scene = load_scene(scene_path)
        self.image = self.scene.load_image()
        self.labelmap = self.scene.load_labelmap()
        self.colors = scene_colors(self.scene.labels)
        self.window = check_window(window)
        if overlay not in OVERLAYS:
            raise SurgitwinError(f"overlay must be one of {list(OVERLAYS)}; found {overlay!r}")
        self.overlay = overlay
        self.opacity = float(np.clip(opacity, 0.0, 1.0))
        n = np.array(self.image.shape)
        corners = np.array([[a, b, c] for a in (0, n[0] - 1) for b in (0, n[1] - 1) for c in (0, n[2] - 1)], float)
        lps = self.image.index_to_lps(corners)
        self.lo, self.hi = lps.min(0), lps.max(0)
        self.crosshair = self._default_crosshair()

    def _default_crosshair(self) -> np.ndarray:
        """The centre of the structures' voxels (else the image centre), on a voxel centre."""
        arr = self.labelmap.array
        body = {l.id for l in self.scene.labels if l.name in ("body", "skin")}
        fg = (arr > 0) & ~np.isin(arr, list(body)) if body else arr > 0
        if fg.any():
            kji = np.argwhere(fg[::2, ::2, ::2]).mean(0) * 2
        else:
            kji = (np.array(arr.shape) - 1) / 2
        return self.image.index_to_lps(np.rint(kji)[None])[0]

    # -- state --------------------------------------------------------------------------------
    def set_crosshair(self, point) -> np.ndarray:
        p = np.asarray(point, float).reshape(3)
        if not np.all(np.isfinite(p)):
            raise SurgitwinError(f"crosshair must be 3 finite LPS coordinates; found {point!r}")
        self.crosshair = np.clip(p, self.lo, self.hi)
        return self.crosshair

    def scroll(self, plane: str, steps: int = 1) -> np.ndarray:
        """Move the crosshair through ``plane``'s slices by whole voxel steps."""
        from pipeline.scene.report_slices import PLANES as RP

        axis = RP[plane][2]
        step = float(np.min(self.image.spacing))
        p = self.crosshair.copy()
        p[axis] += steps * step
        return self.set_crosshair(p)

    def set_window(self, name: str):
        self.window = check_window(name)

    def reload_labels(self):
        from pipeline.scene import load_scene

        self.scene = load_scene(self.scene.root)
        self.labelmap = self.scene.load_labelmap()

    # -- panes --------------------------------------------------------------------------------
    def geometry(self, plane: str, width: int, height: int) -> PaneGeometry:
        """Fit the image's patient-space extent into a ``width`` x ``height`` pane (aspect kept)."""
        from pipeline.scene.report_slices import PLANES as RP

        if plane not in RP:
            raise SurgitwinError(f"pane must be one of {list(PANES)}; found {plane!r}")
        (ca, cs), (ra, rs), fixed = RP[plane]
        ext_c, ext_r = self.hi[ca] - self.lo[ca], self.hi[ra] - self.lo[ra]
        px = max(ext_c / max(width - 1, 1), ext_r / max(height - 1, 1), 1e-3)
        # centre the image in the pane: the first pixel sits half the free space before the image
        c0 = (self.lo[ca] + self.hi[ca]) / 2 - cs * (width - 1) / 2 * px
        r0 = (self.lo[ra] + self.hi[ra]) / 2 - rs * (height - 1) / 2 * px
        origin = np.array(self.crosshair, float)
        origin[ca], origin[ra] = c0, r0
        return PaneGeometry(plane, origin, (ca, cs), (ra, rs), float(px), int(width), int(height))

    def pane(self, plane: str, width: int, height: int):
        """(PIL image, PaneGeometry) of one slice pane."""
        from PIL import Image
        from scipy import ndimage
        from scipy.ndimage import map_coordinates

        g = self.geometry(plane, width, height)
        xs, ys = np.meshgrid(np.arange(width), np.arange(height))
        pts = np.broadcast_to(g.origin, (height, width, 3)).copy()
        pts[..., g.col[0]] += g.col[1] * xs * g.px_mm
        pts[..., g.row[0]] += g.row[1] * ys * g.px_mm
        idx = self.image.lps_to_index(pts.reshape(-1, 3)).T
        hu = map_coordinates(np.asarray(self.image.array, np.float32), idx, order=1, mode="constant", cval=-1024.0,
                             prefilter=False).reshape(height, width)
        inside = np.all((idx > -0.5) & (idx < np.array(self.image.shape)[:, None] - 0.5), axis=0).reshape(height, width)
        grey = np.where(inside, apply_window(hu, self.window), 0)
        rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
        labs = map_coordinates(self.labelmap.array, idx, order=0, mode="constant", cval=0,
                               prefilter=False).reshape(height, width)
        for lab in self.scene.labels:
            m = labs == lab.id
            if not m.any() or lab.name in ("body", "skin"):
                continue  # the body outline is the skin: it would frame every pane in one colour
            c = np.array(self.colors[lab.name], np.float32)
            if self.overlay == "fill":
                rgb[m] = (1 - self.opacity) * rgb[m] + self.opacity * c
            edge = m & ~ndimage.binary_erosion(m)
            edge = ndimage.binary_dilation(edge) & m if min(width, height) > 300 else edge  # 2 px lines
            rgb[edge] = c
        img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
        self._decorate(img, g)
        return img, g

    def _decorate(self, img, g: PaneGeometry):
        from PIL import ImageDraw

        from pipeline.scene.report_slices import EDGE, PLANES as RP

        d = ImageDraw.Draw(img)
        w, h = img.size
        x, y = g.to_px(self.crosshair)
        others = [p for p in PANES if p != g.plane]
        for p in others:  # the line where each other plane cuts this one, in that plane's colour
            axis = RP[p][2]
            if axis == g.col[0]:
                d.line([(x, 0), (x, h)], fill=PLANE_RGB[p], width=1)
            elif axis == g.row[0]:
                d.line([(0, y), (w, y)], fill=PLANE_RGB[p], width=1)
        self._draw_plan(d, g)
        self._draw_cuts(img, d, g)
        s = max(14, min(w, h) // 22)
        first_c, last_c = EDGE[g.col]
        first_r, last_r = EDGE[g.row]
        pad = s // 2 + 4
        label_text(d, (pad, h // 2), first_c, s, "lm")
        label_text(d, (w - pad, h // 2), last_c, s, "rm")
        label_text(d, (w // 2, pad), first_r, s, "mt")
        label_text(d, (w // 2, h - pad), last_r, s, "mb")
        fixed = RP[g.plane][2]
        ww, wl = WINDOWS[self.window]
        title = f"{g.plane}  {'LPS'[fixed]} {self.crosshair[fixed]:+.1f} mm"
        label_text(d, (4, 4), title, max(11, s - 3), "la", fg=PLANE_RGB[g.plane])
        label_text(d, (4, h - 4), f"{self.window.replace('_', ' ')}  W{ww:g} L{wl:g}", max(10, s - 5), "lb")
        d.rectangle([0, 0, w - 1, h - 1], outline=PLANE_RGB[g.plane], width=2)

    def _draw_plan(self, d, g: PaneGeometry, near_mm: float | None = None):
        """Landmarks and measurement points within a slice of this pane's plane (green crosses,
        distances as lines with their value), so what was placed in 3-D shows in the panes."""
        from pipeline.scene.report_slices import PLANES as RP

        fixed = RP[g.plane][2]
        near = near_mm if near_mm is not None else float(np.max(self.image.spacing))
        plan = self.scene.plan or {}
        for rec in plan.get("landmarks", []) + plan.get("measurements", []):
            pts = [np.asarray(p, float) for p in rec.get("points") or []]
            on = [p for p in pts if abs(p[fixed] - self.crosshair[fixed]) <= near]
            if not on:
                continue
            xy = [g.to_px(p) for p in on]
            for x, y in xy:
                d.line([(x - 6, y), (x + 6, y)], fill=(0, 255, 120), width=2)
                d.line([(x, y - 6), (x, y + 6)], fill=(0, 255, 120), width=2)
            if rec.get("kind") == "distance" and len(xy) == 2:
                d.line(xy, fill=(0, 255, 120), width=1)
            text = str(rec.get("id", ""))
            if isinstance(rec.get("value"), (int, float)):
                text += f" {rec['value']:.1f} {rec.get('unit', '')}"
            label_text(d, (xy[0][0] + 8, xy[0][1] - 8), text.strip(), 12, "ld", fg=(0, 255, 120))

    def _draw_cuts(self, img, d, g: PaneGeometry):
        """Where each saved cut's planes meet this pane: a line in the cut's own colour
        (:func:`pipeline.scene.colors.cut_colors`, as in 3-D and the report) and its boxed label."""
        from pipeline.scene.colors import cut_colors

        from .labels2d import draw_labels

        plan = self.scene.plan or {}
        colours = cut_colors(self.scene.labels, plan)
        tags = []
        for cut in plan.get("cuts", []):
            rgb = colours.get(cut.get("id"), (0, 220, 255))
            for pl in cut.get("planes", []):
                ends = plane_line_px(g, np.asarray(pl["point"], float), np.asarray(pl["normal"], float))
                if ends is None:
                    continue
                d.line(ends, fill=tuple(rgb), width=2)
                if not any(t[1] == cut.get("id") for t in tags):
                    tags.append((min(ends, key=lambda e: (e[1], e[0])), str(cut.get("id", "")), rgb))
        if tags:
            draw_labels(img, [t[0] for t in tags], [t[1] for t in tags], 13, [t[2] for t in tags])

    def pane_point(self, plane: str, x: float, y: float, width: int, height: int) -> np.ndarray:
        """LPS point under pane pixel (x, y) (for landmarks and measurements placed in a pane)."""
        return self.geometry(plane, width, height).to_lps(x, y)

    # -- 3-D pane -------------------------------------------------------------------------------
    def slice_indices(self) -> dict[str, int]:
        """Array index of each CT plane through the crosshair (for the 3-D pane's planes)."""
        from .slices import plane_array_axes

        kji = np.rint(self.image.lps_to_index(self.crosshair[None])[0]).astype(int)
        axes = plane_array_axes(self.image.affine)
        return {p: int(np.clip(kji[axes[p]], 0, self.image.shape[axes[p]] - 1)) for p in PANES}

    def view3d(self, width: int, height: int, view: str = "anterior", timeout: float = 180.0):
        """The 3-D pane (headless renderer in a child process) with the crosshair marked where it
        projects (the snapshot's own camera maths), so the slice panes and the 3-D view agree.
        The CT planes are not drawn here: opaque planes would hide the anatomy behind them."""
        import tempfile

        from PIL import Image, ImageDraw

        from .offscreen import snapshot_subprocess
        from .primitives import BODY_NAMES
        from .views import fit_camera, project

        with tempfile.TemporaryDirectory() as tmp:
            png = snapshot_subprocess(self.scene.root, Path(tmp) / "3d.png", views=(view,), size=(width, height),
                                      legend=False, timeout=timeout)
            img = Image.open(png).convert("RGB").copy()
        pts = [np.asarray(m.mesh.vertices) for m in self.scene.meshes
               if m.mesh is not None and len(m.mesh.vertices) and m.name not in BODY_NAMES]
        if pts:
            pose = fit_camera(np.concatenate(pts), view, width / height, 30.0, frame_slab=True)
            x, y = project(pose, width / height, [self.crosshair])[0] * (width, height)
            d = ImageDraw.Draw(img)
            r = max(8, min(width, height) // 30)
            for (dx, dy), plane in (((1, 0), "axial"), ((0, 1), "sagittal")):
                d.line([(x - dx * r, y - dy * r), (x + dx * r, y + dy * r)], fill=PLANE_RGB[plane], width=3)
            d.ellipse([x - r / 3, y - r / 3, x + r / 3, y + r / 3], outline=(20, 20, 20), width=2)
        return img

    # -- interaction: linked crosshair and the brush --------------------------------------------
    def click(self, plane: str, x: float, y: float, width: int, height: int) -> np.ndarray:
        """A click in a pane moves the crosshair there: the two other panes and the 3-D planes follow."""
        return self.set_crosshair(self.geometry(plane, width, height).to_lps(x, y))

    def brush(self, plane: str, x: float, y: float, width: int, height: int, structure: str, radius_mm: float,
              erase: bool = False, user: str | None = None):
        """Paint (or erase) a sphere of ``radius_mm`` at pane pixel (x, y): the core edit, then
        the panes show the new label map."""
        from pipeline.scene.edit import edit_structure

        center = self.geometry(plane, width, height).to_lps(x, y)
        res = edit_structure(self.scene.root, structure, "erase_sphere" if erase else "paint_sphere",
                             center=center, radius_mm=radius_mm, user=user)
        self.reload_labels()
        return res

    # -- composition ----------------------------------------------------------------------------
    def compose(self, size=(1440, 900), *, view: str = "anterior", legend: bool = True, view3d_image=None):
        """The whole four-up picture (PIL); ``view3d_image`` replaces the rendered 3-D pane."""
        from PIL import Image, ImageDraw

        width, height = int(size[0]), int(size[1])
        if width < 200 or height < 200:
            raise SurgitwinError(f"four-up size must be at least 200x200 pixels; found {width}x{height}")
        legend_w = min(260, width // 5) if legend else 0
        pw, ph = (width - legend_w) // 2, height // 2
        canvas = Image.new("RGB", (width, height), (20, 20, 20))
        for plane, (cx, cy) in (("axial", (0, 0)), ("coronal", (0, 1)), ("sagittal", (1, 1))):
            img, _ = self.pane(plane, pw, ph)
            canvas.paste(img, (cx * pw, cy * ph))
        v3 = view3d_image if view3d_image is not None else self.view3d(pw, ph, view)
        v3 = v3.resize((pw, ph)) if v3.size != (pw, ph) else v3
        canvas.paste(v3, (pw, 0))
        d = ImageDraw.Draw(canvas)
        d.rectangle([pw, 0, 2 * pw - 1, ph - 1], outline=(120, 120, 120), width=2)
        if legend:
            self._legend(canvas, (2 * pw, 0, width, height))
        return canvas

    def _legend(self, canvas, box):
        from PIL import ImageDraw

        d = ImageDraw.Draw(canvas)
        x0, y0, x1, y1 = box
        d.rectangle([x0, y0, x1 - 1, y1 - 1], fill=(250, 250, 250))
        present = {int(v) for v in np.unique(self.labelmap.array)}
        shown = [l for l in self.scene.labels if l.id in present]
        row = max(16, min(28, (y1 - y0 - 20) // max(len(shown), 1)))
        y = y0 + 10
        for lab in shown:
            d.rectangle([x0 + 8, y + 2, x0 + 8 + row - 4, y + row - 2], fill=self.colors[lab.name], outline=(60, 60, 60))
            d.text((x0 + row + 10, y + row // 2), lab.name.replace("_", " "), font=_font(max(10, row - 8)),
                   fill=(20, 20, 20), anchor="lm")
            y += row
            if y + row > y1:
                break
        c = self.crosshair
        d.text((x0 + 8, y1 - 10), f"crosshair LPS\n{c[0]:+.1f} {c[1]:+.1f} {c[2]:+.1f} mm", font=_font(12),
               fill=(20, 20, 20), anchor="ld")


def four_up_screenshot(scene_path, out_png, size=(1440, 900), *, view: str = "anterior", crosshair=None,
                       window: str = "soft_tissue", overlay: str = "outline", opacity: float = 0.35) -> Path:
    """Write the four-up picture of a scene (no display needed: panes in numpy, 3-D headless)."""
    from pipeline.fileio import atomic_save_png

    fu = FourUp(scene_path, window=window, overlay=overlay, opacity=opacity)
    if crosshair is not None:
        fu.set_crosshair(crosshair)
    return atomic_save_png(fu.compose(size, view=view), out_png)
