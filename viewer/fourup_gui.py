"""Four-up in the interactive window: three slice panes (gui.ImageWidget) beside the 3-D view.

A mixin of :class:`viewer.app.ViewerApp` (``surgitwin view SCENE --layout four-up``). The panes
are drawn by :class:`viewer.fourup.FourUp` (the same pictures as the headless four-up), so the
window and ``--screenshot`` agree. Mouse in a pane: click moves the linked crosshair (the other
panes follow, the 3-D view marks it), the wheel scrolls slices, **Ctrl+click** paints and
**Ctrl+Shift+click** erases with the brush (structure and radius in the panel's "Correct"
section), through :func:`pipeline.scene.edit.edit_structure`; the edited structure's surface is
replaced in the 3-D view. Every method here is scriptable (``--script``) and callable from tests.
"""
from __future__ import annotations

import numpy as np

from pipeline.errors import SurgitwinError

from .render import material_for, set_priority, to_o3d_mesh

PANE_SLOTS = {"axial": (0, 0), "coronal": (0, 1), "sagittal": (1, 1)}  # (column, row); 3-D at (1, 0)


class FourUpMixin:
    def _setup_four_up(self, settings: dict):
        """``settings``: crosshair (LPS mm), window, overlay, opacity (all optional)."""
        from pipeline.render.fourup import FourUp

        gui = self.gui
        self.fourup = FourUp(self.scene.root, window=settings.get("window") or "soft_tissue",
                             overlay=settings.get("overlay") or "outline", opacity=settings.get("opacity") or 0.35)
        if settings.get("crosshair") is not None:
            self.fourup.set_crosshair(settings["crosshair"])
        self.panes = {}
        self._pane_size = {}
        self.brush_state = {"structure": self.scene.structure_names[0] if self.scene.meshes else None,
                            "radius_mm": 5.0}
        for plane in PANE_SLOTS:
            w = gui.ImageWidget()
            w.set_on_mouse(lambda e, p=plane: self._on_pane_mouse(p, e))
            self.panes[plane] = w
            self.window.add_child(w)

    # -- layout and drawing ------------------------------------------------------------------
    def _layout_four_up(self, r, pw):
        """Frames: 3-D top right of the view area, panes in the other three quadrants."""
        Rect = self.gui.Rect
        area_w = r.width - pw
        cw, ch = area_w // 2, r.height // 2
        self.widget.frame = Rect(r.x + cw, r.y, area_w - cw, ch)
        for plane, (c, row) in PANE_SLOTS.items():
            self.panes[plane].frame = Rect(r.x + c * cw, r.y + row * ch, cw if c == 0 else area_w - cw,
                                           ch if row == 0 else r.height - ch)
        sizes = {p: (w.frame.width, w.frame.height) for p, w in self.panes.items()}
        if sizes != self._pane_size:
            self._pane_size = sizes
            self._draw_panes()

    def _draw_panes(self, planes=None):
        import open3d as o3d

        for plane in planes or PANE_SLOTS:
            w, h = self._pane_size.get(plane, (0, 0))
            if w < 16 or h < 16:
                continue
            img, _ = self.fourup.pane(plane, w, h)
            self.panes[plane].update_image(o3d.geometry.Image(np.ascontiguousarray(np.asarray(img))))
        self._touch()

    def _pane_px(self, plane, fx: float, fy: float):
        w, h = self._pane_size[plane]
        return fx * w, fy * h, w, h

    # -- API (scripts, tests, mouse) -----------------------------------------------------------
    def set_crosshair(self, x: float, y: float, z: float) -> list:
        p = self.fourup.set_crosshair((x, y, z))
        self._on_main(self._draw_panes)
        return p.tolist()

    def pane_click(self, plane: str, fx: float, fy: float) -> list:
        """Click at (fx, fy) (fractions of the pane) in ``plane``: the crosshair moves there."""
        x, y, w, h = self._on_main(self._pane_px, plane, fx, fy)
        p = self.fourup.click(plane, x, y, w, h)
        self._on_main(self._draw_panes)
        return p.tolist()

    def scroll_pane(self, plane: str, steps: int = 1) -> list:
        p = self.fourup.scroll(plane, int(steps))
        self._on_main(self._draw_panes)
        return p.tolist()

    def pane_tool_point(self, plane: str, fx: float, fy: float) -> dict | None:
        """Feed the point under (fx, fy) of a pane to the current measuring tool (landmark,
        distance, angle, ...): measurements and landmarks are placed in the panes too."""
        x, y, w, h = self._on_main(self._pane_px, plane, fx, fy)
        point = self.fourup.pane_point(plane, x, y, w, h)
        rec = self.add_point(point.tolist(), None)
        self.fourup.scene.plan = self.scene.plan
        self._on_main(self._draw_panes)
        return rec

    def set_overlay(self, mode: str = "outline", opacity: float | None = None):
        from pipeline.render.fourup import OVERLAYS

        if mode not in OVERLAYS:
            raise SurgitwinError(f"overlay must be one of {list(OVERLAYS)}; found {mode!r}")
        self.fourup.overlay = mode
        if opacity is not None:
            self.fourup.opacity = float(np.clip(opacity, 0.0, 1.0))
        self._on_main(self._draw_panes)

    def set_pane_window(self, name: str):
        """CT window preset of the slice panes (soft_tissue, bone, lung)."""
        self.fourup.set_window(name)
        self._on_main(self._draw_panes)

    def set_brush(self, structure: str, radius_mm: float | None = None):
        self._check_structure(structure)
        self.brush_state["structure"] = structure
        if radius_mm is not None:
            self.brush_state["radius_mm"] = float(radius_mm)

    def brush(self, plane: str, fx: float, fy: float, erase: bool = False, structure: str | None = None,
              radius_mm: float | None = None) -> dict:
        """Paint (erase) at (fx, fy) of a pane: the core edit, then panes and the 3-D surface follow."""
        name = structure or self.brush_state["structure"]
        r = float(radius_mm or self.brush_state["radius_mm"])
        x, y, w, h = self._on_main(self._pane_px, plane, fx, fy)
        with self._lock:
            res = self.fourup.brush(plane, x, y, w, h, name, r, erase=erase)
        self._after_edit(res)
        return res.to_dict()

    def undo_edit(self) -> dict:
        from pipeline.scene.edit import undo_last

        with self._lock:
            res = undo_last(self.scene.root)
            self.fourup.reload_labels()
        self._after_edit(res)
        return res.to_dict()

    def _after_edit(self, res):
        """Swap the edited structure's surface in the 3-D view; redraw the panes; say what changed."""
        from pipeline.scene import load_scene

        from .tools import PlanSession

        fresh = load_scene(self.scene.root)
        self.scene.meshes = fresh.meshes
        self.scene.plan = fresh.plan
        self.scene.provenance = fresh.provenance
        self.scene.extra = fresh.extra
        self.session = PlanSession.open(self.scene)

        def ui():
            name = res.structure
            key = f"struct:{name}"
            if self.widget.scene.has_geometry(key):
                self.widget.scene.remove_geometry(key)
            m = self.scene.mesh(name)
            mat = material_for(self.styles[name])
            self.widget.scene.add_geometry(key, to_o3d_mesh(m.mesh), mat)
            set_priority(self.widget.scene, key, name)
            self._shader[name] = mat.shader
            self._vertex_coloured.discard(name)
            self.widget.scene.show_geometry(key, self.styles[name].visible)
            self._ray_scene = None
            self._redraw_plan()  # recomputed cuts and trajectories are drawn anew
            self.fourup.scene.plan = self.scene.plan
            self._draw_panes()
            self._set_status(f"{res.id} {res.op} {name}: +{res.voxels_added}/-{res.voxels_removed} voxels, "
                             f"{res.volume_ml_after:.1f} ml" + (f"; plan: {len(res.plan)} record(s) updated" if res.plan else ""))
        self._on_main(ui)

    def _on_pane_mouse(self, plane, event):
        gui = self.gui
        f = self.panes[plane].frame
        fx, fy = (event.x - f.x) / max(f.width, 1), (event.y - f.y) / max(f.height, 1)
        if event.type == gui.MouseEvent.Type.WHEEL:
            self._background(self.scroll_pane, plane, -int(np.sign(event.wheel_dy)) or 1)
            return gui.Widget.EventCallbackResult.CONSUMED
        if event.type == gui.MouseEvent.Type.BUTTON_DOWN and event.is_button_down(gui.MouseButton.LEFT):
            if event.is_modifier_down(gui.KeyModifier.ALT):  # the measuring tool's point
                self._background(self.pane_tool_point, plane, fx, fy)
            elif event.is_modifier_down(gui.KeyModifier.CTRL):
                erase = event.is_modifier_down(gui.KeyModifier.SHIFT)
                self._background(self.brush, plane, fx, fy, erase)
            else:
                self._background(self.pane_click, plane, fx, fy)
            return gui.Widget.EventCallbackResult.CONSUMED
        return gui.Widget.EventCallbackResult.IGNORED


def build_correct_section(app, root, em):
    """Panel section: brush structure, radius, undo; window preset and overlay of the panes."""
    from .slices import WINDOWS

    gui = app.gui
    sec = gui.CollapsableVert("Correct (slice panes)", int(0.25 * em), gui.Margins(int(0.5 * em), 0, 0, 0))
    sec.add_child(gui.Label("Ctrl+click paints, Ctrl+Shift+click erases; Alt+click: tool point"))
    names = app.scene.structure_names
    combo = gui.Combobox()
    for n in names:
        combo.add_item(n)
    combo.set_on_selection_changed(lambda text, idx: app.set_brush(text))
    rad = gui.NumberEdit(gui.NumberEdit.DOUBLE)
    rad.set_limits(0.5, 50.0)
    rad.double_value = app.brush_state["radius_mm"]
    rad.set_on_value_changed(lambda v: app.brush_state.__setitem__("radius_mm", float(v)))
    row = gui.Horiz(int(0.25 * em))
    row.add_child(combo)
    row.add_child(gui.Label("mm"))
    row.add_child(rad)
    sec.add_child(row)
    row = gui.Horiz(int(0.25 * em))
    undo = gui.Button("undo edit")
    undo.set_on_clicked(lambda: app._background(app.undo_edit))
    fill = gui.Checkbox("filled")
    fill.set_on_checked(lambda on: app._background(app.set_overlay, "fill" if on else "outline"))
    win = gui.Combobox()
    for w in WINDOWS:
        win.add_item(w)
    win.set_on_selection_changed(lambda text, idx: app._background(app.set_pane_window, text))
    for w in (undo, fill, win):
        row.add_child(w)
    sec.add_child(row)
    root.add_child(sec)
    return {"brush_structure": combo, "brush_radius": rad, "overlay_fill": fill, "pane_window": win}
