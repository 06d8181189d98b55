"""The viewer's planning tools: measurements, cutting plane, trajectories, drawing the plan.

A mixin of :class:`viewer.app.ViewerApp`: every number comes from :mod:`pipeline.planning`
through ``self.session`` (:class:`viewer.tools.PlanSession`); these methods only hand points
over and show the records (3-D primitives, labels, panel text).
"""
from __future__ import annotations

import textwrap

import numpy as np

from pipeline.errors import SurgitwinError

from .render import material_for, set_priority, to_o3d_mesh


def _wrap(lines, width: int = 48) -> list[str]:
    out = []
    for line in lines:
        out += textwrap.wrap(str(line), width) or [""]
    return out


class PlanningMixin:
    # -- tools (numbers from pipeline.planning) ----------------------------------------------
    def set_mode(self, mode: str):
        self.session.set_mode(mode)
        def ui():
            from .tools import MODES
            self.ui["mode"].selected_index = MODES.index(mode)
            self._draw_pending()
            self._set_status(f"tool: {mode}" + ("" if mode == "navigate" else " — Ctrl+click on a surface"))
        self._on_main(ui)

    def add_point(self, point, structure: str | None = None) -> dict | None:
        with self._lock:
            rec = self.session.add_point(point, structure)
        if self.session.mode == "cut" and rec is None and not self.session.pending:
            return self._update_cut()
        self._on_main(self._after_record, rec)
        return rec

    def _after_record(self, rec):
        self._draw_pending()
        if rec is not None and rec.get("kind") == "lesion":
            self._refresh_structures(rec.get("structures") or [])
        if rec is not None:
            self._redraw_plan()
            self._set_status(self._record_text(rec))

    def _refresh_structures(self, names):
        """Draw again structures whose mesh changed (a lesion and the organ it was carved from)."""
        from .render import structure_styles

        fresh = structure_styles(self.scene)
        for n in names:
            if n not in fresh:
                continue
            self.styles.setdefault(n, fresh[n])
            key = f"struct:{n}"
            if self.widget.scene.has_geometry(key):
                self.widget.scene.remove_geometry(key)
            mat = material_for(self.styles[n])
            self.widget.scene.add_geometry(key, to_o3d_mesh(self.scene.mesh(n).mesh), mat)
            set_priority(self.widget.scene, key, n)
            self._shader[n] = mat.shader
        self._ray_scene = None

    @staticmethod
    def _record_text(rec):
        from .tools import record_text
        return record_text(rec)

    def measure_distance(self, p, q) -> dict:
        with self._lock:
            rec = self.session.planner.measure_distance(p, q)
        self._on_main(self._after_record, rec)
        return rec

    def measure_angle(self, a, vertex, c) -> dict:
        with self._lock:
            rec = self.session.planner.measure_angle(a, vertex, c)
        self._on_main(self._after_record, rec)
        return rec

    def add_landmark(self, name: str, point, snap_to: str | None = None) -> dict:
        with self._lock:
            rec = self.session.planner.add_landmark(name, point, snap_to=snap_to)
        self._on_main(self._after_record, rec)
        return rec

    def min_distance(self, a: str, b: str) -> dict:
        """Minimum distance between two structures' surfaces, drawn as a line with its value."""
        with self._lock:
            rec = self.session.planner.measure_between(a, b)
        self._on_main(self._after_record, rec)
        return rec

    def add_trajectory(self, entry, target, radius_mm: float | None = None, safety_margin_mm: float | None = None) -> dict:
        with self._lock:
            if radius_mm is not None:
                self.session.tool_radius_mm = float(radius_mm)
            if safety_margin_mm is not None:
                self.session.safety_margin_mm = float(safety_margin_mm)
            rec = self.session.planner.add_trajectory(entry, target, self.session.tool_radius_mm,
                                                      safety_margin_mm=self.session.safety_margin_mm)
        self._on_main(self._after_record, rec)
        return rec

    def remove_record(self, record_id: str) -> dict:
        with self._lock:
            rec = self.session.remove(record_id)
        self._on_main(self._redraw_plan)
        return rec

    # cutting plane
    def start_cut(self, structure: str, anchor=None, *, orientation: str | None = None, margin_to: str | None = None) -> dict:
        """Place the live cutting plane on ``structure`` (through ``anchor``, default its centre)."""
        self._check_structure(structure)
        with self._lock:
            self.session.start_cut(structure, anchor, orientation=orientation, margin_to=margin_to)
        return self._update_cut()

    def move_cut(self, offset_mm: float | None = None, tilt_deg=None, orientation: str | None = None,
                 margin_to: str | None = "keep") -> dict:
        """Move/tilt the live plane; returns the updated preview record (volumes, margin)."""
        c = self.session.cut
        if c is None:
            raise SurgitwinError("no cutting plane: start_cut(structure) first")
        with self._lock:
            if offset_mm is not None:
                c.offset_mm = float(offset_mm)
            if tilt_deg is not None:
                c.tilt_deg = (float(tilt_deg[0]), float(tilt_deg[1]))
            if orientation is not None:
                c.orientation = orientation
            if margin_to != "keep":
                c.margin_to = margin_to or None
        return self._update_cut()

    def add_cut_plane(self, orientation: str | None = None) -> dict:
        """Fix the live plane and add another through the same point (a wedge resection)."""
        with self._lock:
            self.session.add_cut_plane(orientation)
        return self._update_cut()

    def _update_cut(self) -> dict:
        with self._lock:
            rec = self.session.preview_cut()
            mask = self.session.resected_vertex_mask()
        self._on_main(self._draw_cut_preview, rec, mask)
        return rec

    def commit_cut(self) -> dict:
        """Store the live cut in the plan (with its resected/remnant meshes) and draw it."""
        with self._lock:
            rec = self.session.commit_cut()
        self._on_main(self._remove_cut_preview)
        self._on_main(self._after_record, rec)
        return rec

    def _remove_cut_preview(self):
        for key in ("cut:preview", "cut:preview_resected") + tuple(f"cut:plane:{n}" for n in range(6)):
            if self.widget.scene.has_geometry(key):
                self.widget.scene.remove_geometry(key)

    def _draw_cut_preview(self, rec, mask):
        from dataclasses import replace

        from . import drawing
        from .tools import COLOURS, cut_summary

        c = self.session.cut
        am = self.scene.mesh(c.structure)
        self._remove_cut_preview()
        st = self.styles[c.structure]
        resected, remnant = drawing.split_by_vertex_mask(am.mesh, mask)
        for key, piece, rgb in (("cut:preview", remnant, st.rgb),
                                ("cut:preview_resected", resected, tuple(int(255 * v) for v in COLOURS["cut"]))):
            if len(piece.faces):
                self.widget.scene.add_geometry(key, to_o3d_mesh(piece), material_for(replace(st, rgb=rgb)))
                set_priority(self.widget.scene, key, c.structure)
        self.widget.scene.show_geometry(f"struct:{c.structure}", False)
        ext = float(np.linalg.norm(np.ptp(np.asarray(am.mesh.vertices), axis=0)))
        from pipeline.scene.colors import cut_colors

        # the planes in the colour the cut will keep once committed (after the saved ones)
        cuts = list(self.scene.plan.get("cuts", [])) + [{"id": "(live)"}]
        own = np.array(cut_colors(self.scene.labels, {**self.scene.plan, "cuts": cuts})["(live)"]) / 255
        for n, pl in enumerate(rec["planes"]):  # fixed planes paler, the live one (last) stronger
            live = n == len(rec["planes"]) - 1
            sq = drawing.square(pl["point"], pl["normal"], ext * 1.1)
            self.widget.scene.add_geometry(f"cut:plane:{n}", sq, drawing._material(own if live else 0.5 + 0.5 * own,
                                                                               0.3 if live else 0.2))
        lines = [cut_summary(rec)] + rec.get("warnings", [])
        self.ui["cut_result"].text = "\n".join(_wrap(lines))
        self.ui["cut_offset"].double_value = c.offset_mm
        for slider, v in zip(self.ui.get("cut_tilts", ()), c.tilt_deg):
            slider.double_value = v
        if c.fixed:
            self.ui["cut_result"].text += f"\nwedge: {len(c.fixed) + 1} planes"
        self._set_status(f"cut preview: remnant {rec['remnant_percent']:.1f}%")

    def clear_cut(self):
        self.session.cut = None

        def ui():
            self._remove_cut_preview()
            for n in self.styles:
                self._restyle(n)
            self.ui["cut_result"].text = ""
        self._on_main(ui)

    # -- drawing the plan ------------------------------------------------------------------
    def _draw_pending(self):
        from .drawing import spheres, _material

        if self.widget.scene.has_geometry("pending"):
            self.widget.scene.remove_geometry("pending")
        pts = [p for p, _ in self.session.pending]
        if pts:
            self.widget.scene.add_geometry("pending", spheres(pts, self.scale * 1.2), _material((1.0, 0.9, 0.1)))
        need = {"distance": 2, "angle": 3, "trajectory": 2}.get(self.session.mode)
        self.ui["pending"].text = f"picked {len(pts)} of {need} points" if need else ""

    def layout_labels3d(self) -> list:
        """Lay the plan's labels out on screen for the current camera (none overlaps); returns
        their boxes (x, y, w, h window pixels; NaN for a label off screen). The window does this
        whenever the camera moves (:mod:`viewer.screen_labels`)."""
        return self._on_main(self._layout_labels3d)

    def _screen_labels(self):
        if getattr(self, "_overlay_labels", None) is None:
            from .screen_labels import ScreenLabels

            self._overlay_labels = ScreenLabels(self)
        return self._overlay_labels

    def _layout_labels3d(self, ctx=None) -> list:
        return self._screen_labels().layout(ctx)

    def _layout_plan_text(self, ctx) -> None:
        """From the window's layout (font metrics known): place the plan labels over the view
        and wrap the panel's records to the list's width (:mod:`viewer.panel_text`)."""
        from .panel_text import fit_records

        self._layout_labels3d(ctx)
        fit_records(self, ctx)

    def _redraw_plan(self):
        from pipeline.scene.colors import cut_colors

        from .drawing import primitive_geometry
        from .tools import clearance_lines, record_primitives, record_text, superseded_pieces

        for key in self._plan_geoms:
            self.widget.scene.remove_geometry(key)
        self._plan_geoms, self._labels3d = [], []
        self._hidden_by_cut = set()
        records = self.session.records()
        skip = superseded_pieces(self.scene.plan)
        cuts = cut_colors(self.scene.labels, self.scene.plan)  # each cut its own colour (C1, C2 ...)
        for rec in records:
            own = cuts.get(rec.get("id")) if rec.get("kind") == "cut" else None
            for n, prim in enumerate(record_primitives(rec, self.scale, None if own is None else tuple(c / 255 for c in own))):
                if prim.kind == "mesh" and rec.get("id") in skip:
                    continue
                rgb = self.styles[rec["structure"]].rgb if rec.get("kind") == "cut" and rec.get("structure") in self.styles \
                    else (200, 200, 200)  # the structure's display colour
                g = primitive_geometry(prim, self.scene.root, tuple(c / 255 for c in rgb))
                if g is None:
                    continue
                if prim.kind == "mesh":
                    self._hidden_by_cut.add(rec["structure"])
                key = f"plan:{rec['id']}:{n}"
                self.widget.scene.add_geometry(key, *g)
                set_priority(self.widget.scene, key, rec.get("structure", ""))
                self._plan_geoms.append(key)
                if prim.label and prim.label_at is not None:  # where the record puts it; laid out on screen
                    self._labels3d.append((np.asarray(prim.label_at, float) + self.scale * 1.5, prim.label, own))
        self._screen_labels().set_items(self._labels3d)
        for n in self.styles:
            self._restyle(n)
        self.ui["record_list"].set_records([record_text(r) for r in records], [r.get("id", "") for r in records])
        self.window.set_needs_layout()  # the records wrap to the panel's width there
        trajs = self.scene.plan.get("trajectories", [])
        if trajs:
            t = trajs[-1]
            self.ui["clearance"].text = f"{t['id']}: " + "\n".join(clearance_lines(t))
            self.ui["warnings"].text = "\n".join(_wrap(t.get("warnings", []))) or "no warnings"
        else:
            self.ui["clearance"].text = ""
            self.ui["warnings"].text = ""
