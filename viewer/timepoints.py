"""Time points in the window: switch the shown one, overlay another (translucent), colour by change.

The numbers and geometry come from :mod:`pipeline.followup.view` (the same the headless
``surgitwin view --timepoint/--compare/--color-by-change --screenshot`` draws): the compared time
point's surfaces are mapped rigidly into the shown time point's space, tinted and translucent;
a structure coloured by change carries its signed distance to the other time point per vertex
(red growth, blue shrinkage in time, white below the threshold). :class:`TimepointMixin` adds
the public methods (scripts and tests call them too); :func:`build_timepoint_section` the panel.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import SurgitwinError


class TimepointMixin:
    """Mixed into :class:`viewer.app.ViewerApp`; expects its widget, styles, ``_on_main`` ..."""

    def _setup_timepoints(self):
        from pipeline.followup.view import timepoints_of

        self.tp_root, self.timepoints = timepoints_of(self.scene.root)
        here = Path(self.scene.root).resolve()
        shown = [t for t in self.timepoints if (self.tp_root / t["path"]).resolve() == here]
        self.tp_viewed = shown[0] if shown else self.timepoints[0]
        self.tp_compare: dict | None = None
        self.compare_opacity = 0.4
        self._compare_keys: list[str] = []
        self.change = None  # pipeline.followup.view.ChangeColours of the coloured structure
        self._change_saved_opacity: dict[str, float] = {}
        self.change_threshold_mm = 1.0

    # -- what the panel and the driver call ------------------------------------------------------
    def _find_tp(self, tp_id: str) -> dict:
        from pipeline.followup.timepoints import find_timepoint

        return find_timepoint(self.timepoints, tp_id, self.tp_root)

    def set_timepoint(self, tp_id: str) -> dict:
        """Show time point ``tp_id`` (its meshes, image and plan); the compared time point and the
        change colours follow it (recomputed in its space)."""
        from pipeline.scene import load_scene

        tp = self._find_tp(tp_id)
        if tp["id"] == self.tp_viewed["id"]:
            return self.timepoint_state()
        if self.tp_compare is not None and self.tp_compare["id"] == tp["id"]:
            self.tp_compare = None  # it is shown now: nothing to compare it with
        with self._lock:
            scene = load_scene(self.tp_root / tp["path"])
            self._on_main(self._swap_scene, scene)
            self.tp_viewed = tp
        structure = self.change.structure if self.change is not None else None
        self.change = None
        self.set_compare(self.tp_compare["id"] if self.tp_compare else None)
        if structure and structure in self.scene.structure_names:
            self.set_color_by_change(structure, True)
        self._on_main(self._sync_timepoint_widgets)
        return self.timepoint_state()

    def set_compare(self, tp_id: str | None, opacity: float | None = None) -> dict:
        """Overlay time point ``tp_id`` (None: no overlay), translucent, in the shown one's space."""
        from pipeline.followup.view import mapped_meshes

        if opacity is not None:
            self.compare_opacity = float(np.clip(opacity, 0.02, 0.99))
        other = self._find_tp(tp_id) if tp_id not in (None, "", "(none)") else None
        if other is not None and other["id"] == self.tp_viewed["id"]:
            raise SurgitwinError(f"time point '{other['id']}' is the one shown; compare with another")
        meshes = mapped_meshes(self.tp_root, self.tp_viewed, other) if other is not None else {}
        self.tp_compare = other
        self._on_main(self._draw_compare, meshes)
        if self.change is not None and other is not None and self.change.other != other["id"]:
            self.set_color_by_change(self.change.structure, True)  # change against the compared one
        self._on_main(self._sync_timepoint_widgets)
        return self.timepoint_state()

    def set_compare_opacity(self, opacity: float) -> dict:
        from pipeline.followup.view import compare_material

        self.compare_opacity = float(np.clip(opacity, 0.02, 0.99))

        def ui():
            for key in self._compare_keys:
                self.widget.scene.modify_geometry_material(key, compare_material(self.compare_opacity))
            self._touch()
        self._on_main(ui)
        return self.timepoint_state()

    def set_color_by_change(self, structure: str, on: bool = True) -> dict:
        """Colour ``structure`` by its signed distance to the compared (else previous) time point;
        the other structures turn see-through while it is on (restored when off)."""
        from pipeline.followup.view import FOCUS_OPACITY, ChangeColours, other_for_change, signed_change

        self._check_structure(structure)
        if on:
            other = other_for_change(self.timepoints, self.tp_viewed, self.tp_compare, self.tp_root)
            d = signed_change(self.tp_root, self.tp_viewed, other, structure, self.scene.mesh(structure).mesh)
            self.change = ChangeColours(structure, self.tp_viewed["id"], other["id"], d,
                                        threshold_mm=self.change_threshold_mm)
            if not self._change_saved_opacity:
                self._change_saved_opacity = {n: st.opacity for n, st in self.styles.items()}
            for n, st in self.styles.items():
                st.opacity = 1.0 if n == structure else min(self._change_saved_opacity.get(n, 1.0), FOCUS_OPACITY)
        else:
            self.change = None
            for n, op in self._change_saved_opacity.items():
                if n in self.styles:
                    self.styles[n].opacity = op
            self._change_saved_opacity = {}

        def ui():
            for n in self.styles:  # the opacities changed too
                self._restyle(n)
            self._sync_structure_rows()
            self._sync_timepoint_widgets()
        self._on_main(ui)
        return self.timepoint_state()

    def timepoint_state(self) -> dict:
        return {"timepoints": [t["id"] for t in self.timepoints],
                "current": next((t["id"] for t in self.timepoints if t.get("current")), None),
                "viewed": self.tp_viewed["id"], "compare": self.tp_compare["id"] if self.tp_compare else None,
                "compare_opacity": round(self.compare_opacity, 3), "compare_drawn": list(self._compare_keys),
                "change": self.change.summary() if self.change is not None else None,
                "scene_root": str(self.scene.root)}

    # -- GUI thread ---------------------------------------------------------------------------
    def _timepoint_widgets(self) -> dict:
        """What the section's widgets show (for panel_state; GUI thread)."""
        ui = self.ui
        if "tp_select" not in ui:  # one time point: no section
            return {}

        def items(c):
            return [c.get_item(i) for i in range(c.number_of_items)]
        return {"show_items": items(ui["tp_select"]), "show": ui["tp_select"].selected_text,
                "compare_items": items(ui["tp_compare"]), "compare": ui["tp_compare"].selected_text,
                "opacity": round(ui["tp_opacity"].double_value, 3), "change_on": ui["tp_change_on"].checked,
                "change_structure": ui["tp_change_structure"].selected_text, "change_text": ui["tp_change_text"].text,
                "colorbar_visible": bool(ui["tp_colorbar"].visible)}

    def _vertex_rgb(self, name: str):
        """Per-vertex colours of ``name`` now (change colours first, then uncertainty), or None."""
        if self.change is not None and self.change.structure == name:
            return self.change.rgb
        if self.color_by_uncertainty and name in self._unc_colors:
            return self._unc_colors[name]
        return None

    def _draw_compare(self, meshes: dict):
        from pipeline.followup.view import compare_material, lifted

        from .render import set_priority, to_o3d_mesh

        for key in self._compare_keys:
            self.widget.scene.remove_geometry(key)
        self._compare_keys = []
        for name, mesh in meshes.items():
            st = self.styles.get(name)
            if st is None:
                continue
            key = f"compare:{name}"
            self.widget.scene.add_geometry(key, to_o3d_mesh(lifted(mesh)), compare_material(self.compare_opacity))
            set_priority(self.widget.scene, key, name)
            self.widget.scene.scene.set_geometry_priority(key, 8)
            self.widget.scene.show_geometry(key, st.visible)  # hidden with its structure (app._restyle)
            self._compare_keys.append(key)
        self._touch()

    def _swap_scene(self, scene):
        """Replace the shown scene's surfaces, plan and image with ``scene``'s (GUI thread)."""
        from .motion import MotionQuality
        from .render import BODY_OPACITY, material_for, set_priority, structure_styles, to_o3d_mesh
        from .tools import PlanSession, marker_scale

        for m in self.scene.meshes:
            if self.widget.scene.has_geometry(f"struct:{m.name}"):
                self.widget.scene.remove_geometry(f"struct:{m.name}")
        fresh = structure_styles(scene, body_opacity=BODY_OPACITY)
        for name, st in fresh.items():  # the user's visibility and opacity stay
            if name in self.styles:
                st.visible, st.opacity = self.styles[name].visible, self.styles[name].opacity
        self.styles.update(fresh)
        self.scene, self.session = scene, PlanSession.open(scene)
        self._unc_colors, self._vertex_coloured, self._shader = {}, set(), {}
        self.color_by_uncertainty = False
        self._image, self._ray_scene = None, None
        for m in scene.meshes:
            if m.mesh is not None and len(m.mesh.faces):
                mat = material_for(self.styles[m.name])
                self.widget.scene.add_geometry(f"struct:{m.name}", to_o3d_mesh(m.mesh), mat)
                set_priority(self.widget.scene, f"struct:{m.name}", m.name)
                self._shader[m.name] = mat.shader
                self.widget.scene.show_geometry(f"struct:{m.name}", self.styles[m.name].visible)
        self._make_qc_labels()
        self.motion = MotionQuality(self)  # decimated copies of the new surfaces (viewer.motion)
        self._verts = np.concatenate([np.asarray(m.mesh.vertices) for m in scene.meshes if m.mesh is not None]) \
            if scene.meshes else np.zeros((1, 3))
        self.scale = marker_scale(self._verts)
        self.widget.scene.remove_geometry("marker")
        for lab in self._marker_labels:
            self.widget.remove_3d_label(lab)
        self._marker_labels = []
        on = self._marker_on
        self._add_marker(self._verts.min(0), self._verts.max(0))
        self._redraw_plan()
        if self.slice_state["visible"]:
            self.slice_state["index"] = {}
            from .slices import default_indices

            self.slice_state["index"] = default_indices(self._volume())
            self._draw_slices()
        if not on:
            self.show_marker(False)
        self._apply_view(self.view_name)
        self._touch(3.0)

    def _sync_timepoint_widgets(self):
        from pipeline.followup.view import timepoint_label

        ui = self.ui
        if "tp_select" not in ui:
            return
        ids = [t["id"] for t in self.timepoints]
        ui["tp_select"].selected_index = ids.index(self.tp_viewed["id"])
        ui["tp_compare"].selected_index = 0 if self.tp_compare is None else ids.index(self.tp_compare["id"]) + 1
        ui["tp_opacity"].double_value = self.compare_opacity
        ch = self.change
        ui["tp_change_on"].checked = ch is not None
        if ch is not None:
            names = [ui["tp_change_structure"].get_item(i) for i in range(ui["tp_change_structure"].number_of_items)]
            if ch.structure in names:
                ui["tp_change_structure"].selected_index = names.index(ch.structure)
            s = ch.summary()
            mean = "new since then" if s["new"] else f"mean {s['mean_mm']:+.1f} mm"
            ui["tp_change_text"].text = (f"{ch.structure} vs {ch.other}: {mean}\n"
                                         f"{s['growth_fraction']:.0%} grew, {s['shrinkage_fraction']:.0%} shrank "
                                         f"(> {ch.threshold_mm:g} mm)")
        else:
            ui["tp_change_text"].text = ""
        ui["tp_colorbar"].visible = ch is not None
        w, h, drawn = ui["tp_colorbar_size"]
        if ch is not None and ch.threshold_mm != drawn:  # the scale states the threshold in force
            ui["tp_colorbar"].update_image(_colorbar(w, h, ch.threshold_mm))
            ui["tp_colorbar_size"] = (w, h, ch.threshold_mm)
        ui["tp_shown"].text = f"shown: {timepoint_label(self.tp_viewed)}"
        self.window.set_needs_layout()


def _colorbar(width: int, height: int, threshold_mm: float):
    import open3d as o3d

    from pipeline.followup.view import change_colorbar_image

    img = change_colorbar_image(width, height, threshold_mm=threshold_mm)
    return o3d.geometry.Image(np.ascontiguousarray(np.asarray(img)))


def build_timepoint_section(app, root, em) -> dict:
    """The "Time points" panel section (scenes with more than one): shown time point, compare
    with + opacity, colour by change (its scale drawn with the threshold in force)."""
    from pipeline.followup.view import timepoint_label

    gui = app.gui
    ui: dict = {}
    sec = gui.CollapsableVert("Time points", int(0.25 * em), gui.Margins(int(0.5 * em), 0, 0, 0))
    ids = [t["id"] for t in app.timepoints]
    labels = [timepoint_label(t) for t in app.timepoints]

    sel = gui.Combobox()
    for text in labels:
        sel.add_item(text)
    sel.selected_index = ids.index(app.tp_viewed["id"])
    sel.set_on_selection_changed(lambda text, idx: app._background(app.set_timepoint, ids[idx]))
    ui["tp_select"] = sel
    ui["tp_shown"] = gui.Label(f"shown: {timepoint_label(app.tp_viewed)}")
    sec.add_child(ui["tp_shown"])
    row = gui.Horiz(int(0.25 * em))
    row.add_child(gui.Label("show"))
    row.add_child(sel)
    sec.add_child(row)

    cmp_ = gui.Combobox()
    cmp_.add_item("(none)")
    for text in labels:
        cmp_.add_item(text)
    cmp_.set_on_selection_changed(lambda text, idx: app._background(app.set_compare, None if idx == 0 else ids[idx - 1]))
    ui["tp_compare"] = cmp_
    row = gui.Horiz(int(0.25 * em))
    row.add_child(gui.Label("compare with"))
    row.add_child(cmp_)
    sec.add_child(row)
    op = gui.Slider(gui.Slider.DOUBLE)
    op.set_limits(0.02, 0.99)
    op.double_value = app.compare_opacity
    op.set_on_value_changed(lambda v: app._background(app.set_compare_opacity, v))
    ui["tp_opacity"] = op
    row = gui.Horiz(int(0.25 * em))
    row.add_child(gui.Label("opacity"))
    row.add_child(op)
    sec.add_child(row)

    names = [m.name for m in app.scene.meshes]
    st = gui.Combobox()
    for n in names:
        st.add_item(n)
    lesion = next((n for n in names if any(w in n for w in ("tumo", "lesion", "mass", "nodule"))), None)
    if lesion:
        st.selected_index = names.index(lesion)
    on = gui.Checkbox("colour by change")
    on.set_on_checked(lambda v: app._background(app.set_color_by_change, st.selected_text, v))
    st.set_on_selection_changed(lambda text, idx: app._background(app.set_color_by_change, text, True)
                                if on.checked else None)
    ui["tp_change_structure"], ui["tp_change_on"] = st, on
    row = gui.Horiz(int(0.25 * em))
    row.add_child(on)
    row.add_child(st)
    sec.add_child(row)
    bar = gui.ImageWidget(_colorbar(int(14 * em), int(3.6 * em), app.change_threshold_mm))
    bar.tooltip = "signed distance to the other time point's surface, mm"
    ui["tp_colorbar_size"] = (int(14 * em), int(3.6 * em), app.change_threshold_mm)
    bar.visible = False
    ui["tp_colorbar"] = bar
    sec.add_child(bar)
    ui["tp_change_text"] = gui.Label("")
    sec.add_child(ui["tp_change_text"])
    root.add_child(sec)
    return ui
