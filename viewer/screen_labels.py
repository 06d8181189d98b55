"""The window's plan labels as 2-D overlay widgets with a background, laid out on screen.

Open3D 0.19's 3-D labels (:class:`Label3D`) take only a text colour: black text on a dark CT
plane or a dark organ could not be read. Here each label is a :class:`gui.Label` over the 3-D
view with a light, nearly opaque background (tinted with the record's colour for a cut) and dark
text, placed by projecting its 3-D anchor through the current camera and laid out with
:func:`pipeline.render.labels2d.place_boxes` (the headless snapshots use the same), so no two
overlap. :meth:`ScreenLabels.layout` runs again whenever the camera or the view's frame
changes. Open3D widgets cannot be removed from a window, so labels are pooled: unused ones are
hidden.
"""
from __future__ import annotations

import numpy as np

from pipeline.render.labels2d import LABEL_TEXT, box_colours

from .labels import pose_from_model, screen_boxes


class ScreenLabels:
    """Overlay labels of one :class:`viewer.app.ViewerApp` (call on the GUI thread)."""

    def __init__(self, app):
        self.app = app
        self.pool: list = []
        self.plan: list[tuple[np.ndarray, str, tuple | None]] = []
        self.fixed: list[OverlayText] = []  # labels that are not plan records (QC marks)
        self.items: list[tuple[np.ndarray, str, tuple | None]] = []
        self.boxes: list[list[int]] = []  # (x, y, w, h) in window pixels; [] for a hidden label
        self._size: dict[str, tuple[int, int]] = {}
        self.started = False  # widgets are made only once the 3-D view is in the window (drawn above it)

    def set_items(self, items) -> None:
        """``items``: the plan's labels [(anchor LPS mm, text, rgb 0..255 or None)]; shown at once."""
        self.plan = [(np.asarray(a, float), str(t), c) for a, t, c in items]
        self.started = True
        self.refresh()

    def refresh(self) -> None:
        """Show the plan's labels and the other labels that have text, laid out together."""
        if not self.started:
            return
        gui = self.app.gui
        self.items = self.plan + [(o.anchor, o.text, o.rgb) for o in self.fixed if o.text]
        while len(self.pool) < len(self.items):
            lab = gui.Label("")
            lab.visible = False
            self.app.window.add_child(lab)
            self.pool.append(lab)
        for n, lab in enumerate(self.pool):
            if n < len(self.items):
                _, text, rgb = self.items[n]
                fill, _ = box_colours(rgb)
                lab.text = f" {text} "
                lab.text_color = gui.Color(*(c / 255 for c in LABEL_TEXT))
                lab.background_color = gui.Color(*(c / 255 for c in fill), 0.92)
            else:
                lab.text = ""
                lab.visible = False
        self.layout()

    def _sizes(self, ctx) -> list[tuple[int, int]]:
        em = self.app.window.theme.font_size
        out = []
        for lab in self.pool[: len(self.items)]:
            if ctx is not None and lab.text not in self._size:
                sz = lab.calc_preferred_size(ctx, self.app.gui.Widget.Constraints())
                # Open3D paints a label's background at least 2 em tall (measured under Xvfb:
                # 32 px at em 16 for a 22 px frame): lay out the box as it is painted
                self._size[lab.text] = (int(sz.width), max(int(sz.height), int(2 * em)))
            out.append(self._size.get(lab.text, (int(0.55 * em * len(lab.text)) + 4, int(2 * em))))
        return out

    def layout(self, ctx=None) -> list[list[int]]:
        """Place every label for the current camera; returns the boxes (x, y, w, h window
        pixels; NaN for a label whose anchor is off the view)."""
        gui = self.app.gui
        f = self.app.widget.frame
        self.boxes = []
        if not self.items:
            return []
        if f.width <= 1 or f.height <= 1:
            return [[] for _ in self.items]
        cam = self.app.widget.scene.camera
        model = np.asarray(cam.get_model_matrix())
        vfov = cam.get_field_of_view()
        if cam.get_field_of_view_type() != self.app.rendering.Camera.FovType.Vertical:
            vfov = float(np.degrees(2 * np.arctan(np.tan(np.radians(vfov) / 2) * f.height / f.width)))
        pose = pose_from_model(model, vfov)
        em = self.app.window.theme.font_size
        pos = screen_boxes([a for a, _, _ in self.items], self._sizes(ctx), pose, (f.width, f.height), 0.5 * em)
        sizes = self._sizes(None)
        where = {n: p for n, p in enumerate(pos) if np.all(np.isfinite(p))}
        for n, lab in enumerate(self.pool[: len(self.items)]):
            if n in where:
                x, y = where[n]
                w, h = sizes[n]
                lab.frame = gui.Rect(int(f.x + x), int(f.y + y), int(w), int(h))
                lab.visible = True
                self.boxes.append([int(f.x + x), int(f.y + y), int(w), int(h)])
            else:
                lab.visible = False
                self.boxes.append([])
        self.app._labels_camera = model
        return [b or [float("nan")] * 4 for b in self.boxes]

    def state(self) -> list[dict]:
        """What each label shows and where (for scripts and tests)."""
        return [{"text": t, "rgb": list(c) if c is not None else None, "box": b,
                 "background": list(box_colours(c)[0])} for (_, t, c), b in zip(self.items, self.boxes)]


class OverlayText:
    """A label that is not a plan record (the '?' over a QC-flagged structure): an overlay laid
    out with the plan's labels; set ``text`` to '' to hide it (same use as a :class:`Label3D`)."""

    def __init__(self, labels: ScreenLabels, anchor, text: str, rgb=None):
        self._labels, self.anchor, self._text, self.rgb = labels, np.asarray(anchor, float), str(text), rgb
        labels.fixed.append(self)

    @property
    def text(self) -> str:
        return self._text

    @text.setter
    def text(self, value: str) -> None:
        if str(value) != self._text:
            self._text = str(value)
            self._labels.refresh()
