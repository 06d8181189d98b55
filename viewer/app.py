"""The interactive viewer: an Open3D GUI window over a scene bundle (Open3D 0.19).

The window is a thin layer: structures come from :mod:`viewer.render` (same styles and
materials as the headless snapshots), numbers from :mod:`pipeline.planning` through
:class:`viewer.tools.PlanSession`. :class:`ViewerApp`'s public methods are the API the panel
buttons, the mouse, scripts (``surgitwin view --script``) and tests all use; they may be
called from any thread: computation runs on the calling thread, widget and scene changes are
posted to the GUI thread (Open3D requires it) and waited for.

Mouse: left-drag rotates, wheel zooms, right-drag pans (Open3D defaults); **Ctrl+click** picks
a surface point for the current tool (landmark, distance, angle, trajectory, cut).
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np

from pipeline.errors import SurgitwinError

from .capture import CaptureMixin
from .fourup_gui import FourUpMixin
from .interact import PlanningMixin
from .motion import MotionQuality
from .timepoints import TimepointMixin
from .render import (BODY_OPACITY, RenderError, configure_view, material_for, set_priority, structure_styles, sun_direction,
                     to_o3d_mesh)
from .tools import marker_scale
from .views import check_view, direction_letter, fit_camera, pixel_ray

VFOV = 30.0


class DisplayMissing(SurgitwinError):
    """The GUI needs an X display and none is usable."""


def require_display() -> None:
    """Raise :class:`DisplayMissing` with what to do instead of Open3D's silent ``exit(1)``."""
    disp = os.environ.get("DISPLAY", "")
    hint = ("run it under a virtual display: xvfb-run -a -s '-screen 0 1280x1024x24 +extension GLX' "
            "surgitwin view SCENE, or make a picture without any display: surgitwin snapshot SCENE -o view.png")
    if not disp and not os.environ.get("WAYLAND_DISPLAY"):
        raise DisplayMissing(f"the viewer needs a display and DISPLAY is not set; {hint}")
    if disp:  # Open3D exits(1) silently when the X server cannot be opened: try it first
        from .xcapture import can_open_display

        if can_open_display(disp) is False:
            raise DisplayMissing(f"the viewer needs a display and no X server is listening on DISPLAY={disp}; {hint}")


class ViewerApp(PlanningMixin, CaptureMixin, FourUpMixin, TimepointMixin):
    """One window showing one scene. Create on the GUI thread, then :meth:`run`."""

    def __init__(self, scene_path, *, size=(1440, 900), view: str = "anterior", layout: str = "3d",
                 four_up: dict | None = None):
        import open3d.visualization.gui as gui
        import open3d.visualization.rendering as rendering

        from pipeline.scene import load_scene

        from .tools import PlanSession

        t0 = self._t0 = time.perf_counter()
        self.gui, self.rendering = gui, rendering
        self.scene = load_scene(scene_path)
        self.session = PlanSession.open(self.scene)
        self._lock = threading.RLock()  # one planning computation at a time
        self.timings = {"load_scene_s": time.perf_counter() - t0}
        self.app = gui.Application.instance
        self.app.initialize()
        self.window = self.app.create_window(f"surgitwin — {self.scene.case_id}", int(size[0]), int(size[1]))
        self.widget = gui.SceneWidget()
        self.widget.scene = rendering.Open3DScene(self.window.renderer)
        self.widget.scene.set_background([1.0, 1.0, 1.0, 1.0])
        configure_view(self.widget.scene.view)
        self.widget.scene.scene.enable_sun_light(True)
        self.styles = structure_styles(self.scene, body_opacity=BODY_OPACITY)
        self.color_by_uncertainty = False
        self._unc_colors: dict[str, np.ndarray] = {}
        self._vertex_coloured: set[str] = set()
        self._shader: dict[str, str] = {}
        self._plan_geoms: list[str] = []
        self._labels3d: list = []
        self._marker_labels: list = []
        self._hidden_by_cut: set[str] = set()
        self._ray_scene = None
        self._ticks = 0
        self._redraw_until = time.monotonic() + 3.0
        self.touch_cap = float("inf")
        self.view_name = view
        self.slice_state = {"visible": False, "window": "soft_tissue", "index": {}}
        self._slice_corners: dict[str, np.ndarray] = {}  # CT planes on screen: they catch picks too
        self._image = None
        self.status = ""
        t1 = time.perf_counter()
        for m in self.scene.meshes:
            if m.mesh is not None and len(m.mesh.faces):
                mat = material_for(self.styles[m.name])
                self.widget.scene.add_geometry(f"struct:{m.name}", to_o3d_mesh(m.mesh), mat)
                set_priority(self.widget.scene, f"struct:{m.name}", m.name)
                self._shader[m.name] = mat.shader
                self.widget.scene.show_geometry(f"struct:{m.name}", self.styles[m.name].visible)
        self.timings["add_geometry_s"] = time.perf_counter() - t1
        self._qc_labels = {}
        self._make_qc_labels()
        self._verts = np.concatenate([np.asarray(m.mesh.vertices) for m in self.scene.meshes if m.mesh is not None]) \
            if self.scene.meshes else np.zeros((1, 3))
        lo, hi = self._verts.min(0), self._verts.max(0)
        self.scale = marker_scale(self._verts)  # marker radius, mm
        self._add_marker(lo, hi)

        from .panels import build_panel

        self._setup_timepoints()
        self.ui = build_panel(self)  # with the time point section (viewer.timepoints)
        self.layout = layout
        if layout == "four-up":  # slice panes beside the 3-D view (viewer.fourup_gui)
            from .fourup_gui import build_correct_section

            self._setup_four_up(four_up or {})
            self.ui.update(build_correct_section(self, self.ui["root"], self.window.theme.font_size))
        self.edge = {k: gui.Label(" ") for k in ("left", "right", "top", "bottom")}
        try:  # larger letters for the patient directions at the view's edges
            big = self.app.add_font(gui.FontDescription(gui.FontDescription.SANS_SERIF, point_size=int(self.window.theme.font_size * 1.4)))
            for lab in self.edge.values():
                lab.font_id = big
                lab.text_color = gui.Color(0.1, 0.1, 0.1)
                lab.background_color = gui.Color(1.0, 1.0, 1.0, 0.0)
        except Exception:  # noqa: BLE001 - older Open3D: default font
            pass
        self.window.add_child(self.widget)
        self.window.add_child(self.ui["root"])
        for lab in self.edge.values():
            self.window.add_child(lab)
        self.window.set_on_layout(self._on_layout)
        self.window.set_on_tick_event(self._on_tick)
        self.widget.set_on_mouse(self._on_mouse)
        self.motion = MotionQuality(self)  # lighter frames while the camera moves (viewer.motion)
        self._apply_view(view)
        self._redraw_plan()
        self.timings["window_ready_s"] = time.perf_counter() - t0

    def _make_qc_labels(self) -> None:
        """QC-flagged structures carry a '?' label above their top (boxed overlays, orange-tinted);
        the previous scene's marks are dropped."""
        from .screen_labels import OverlayText

        labels = self._screen_labels()
        old = set(map(id, self._qc_labels.values()))
        labels.fixed = [o for o in labels.fixed if id(o) not in old]
        self._qc_labels = {}
        for m in self.scene.meshes:
            if self.styles[m.name].uncertain and m.mesh is not None and len(m.mesh.vertices):
                v = np.asarray(m.mesh.vertices)
                self._qc_labels[m.name] = OverlayText(labels, v[np.argmax(v[:, 2])], f"? {m.name}", (217, 89, 0))
        labels.refresh()

    # -- threading ---------------------------------------------------------------------------
    def _on_main(self, fn, *args, wait: bool = True, timeout: float = 60.0, touch: bool = True):
        """Run ``fn`` on the GUI thread (directly when already there) and return its result;
        ``touch``: keep redrawing for a while after (not for a call that draws its own frame)."""
        if touch:
            self._touch()
        if threading.current_thread() is threading.main_thread():
            return fn(*args)
        box: dict = {}
        done = threading.Event()

        def run():
            try:
                box["value"] = fn(*args)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                box["error"] = e
            finally:
                done.set()

        self.app.post_to_main_thread(self.window, run)
        if not wait:
            return None
        if not done.wait(timeout):
            raise RenderError(f"the viewer's GUI thread did not answer within {timeout:.0f} s")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def _background(self, fn, *args):
        """Run a planning call off the GUI thread (buttons, mouse); errors go to the status line."""
        def run():
            try:
                fn(*args)
            except SurgitwinError as e:
                self._on_main(self._set_status, f"error: {e}", wait=False)
            except Exception as e:  # noqa: BLE001 - never a silent death: the log and the status line say what broke
                import logging

                logging.getLogger(__name__).exception("viewer: %s failed", getattr(fn, "__name__", fn))
                self._on_main(self._set_status, f"internal error {type(e).__name__}: {e} (traceback in the log)",
                              wait=False)
        threading.Thread(target=run, daemon=True).start()

    def _set_status(self, text: str):
        self.status = text
        self.ui["status"].text = text

    # -- layout, HUD, ticks ------------------------------------------------------------------
    def _on_layout(self, ctx):
        r = self.window.content_rect
        pw = min(400, max(300, r.width // 4))
        if self.layout == "four-up":
            self._layout_four_up(r, pw)
        else:
            self.widget.frame = self.gui.Rect(r.x, r.y, r.width - pw, r.height)
        self.ui["root"].frame = self.gui.Rect(r.get_right() - pw, r.y, pw, r.height)
        f = self.widget.frame
        pad = 4
        for k, lab in self.edge.items():
            sz = lab.calc_preferred_size(ctx, self.gui.Widget.Constraints())
            w, h = sz.width, sz.height
            x = {"left": f.x + pad, "right": f.get_right() - w - pad}.get(k, f.x + (f.width - w) // 2)
            y = {"top": f.y + pad, "bottom": f.get_bottom() - h - pad}.get(k, f.y + (f.height - h) // 2)
            lab.frame = self.gui.Rect(x, y, w, h)
        self._layout_plan_text(ctx)  # plan labels follow the view, records wrap to the panel

    def _on_tick(self):
        # Filament drops frames when the (software) renderer is behind and Open3D does not ask
        # again, so after every change keep asking for redraws for a while.
        self._ticks += 1
        if self.motion.on_tick():  # the camera stopped: full meshes and post-processing again
            self._touch(1.0)
        redraw = time.monotonic() < self._redraw_until
        if self._ticks % 5:
            return redraw
        changed = self._update_hud()
        if changed:
            self.window.set_needs_layout()
            self._touch()
        return redraw or changed

    def _update_hud(self) -> bool:
        """Labels, marker letters and the patient directions at the edges for the current camera
        (GUI thread); True when anything changed."""
        letters = self.edge_letters()
        changed = False
        model = np.asarray(self.widget.scene.camera.get_model_matrix())
        last = getattr(self, "_labels_camera", None)
        if self._labels3d and (last is None or not np.allclose(model, last)):
            self._layout_labels3d()  # the camera moved: lay the measurement labels out again
            changed = True
        if self._marker_on:  # an axis seen end-on would draw its two letters on top of each other
            from .drawing import marker_letters

            fwd = -np.asarray(self.widget.scene.camera.get_view_matrix())[2, :3]
            for lab, text in zip(self._marker_labels, marker_letters(fwd)):
                if lab.text != text:
                    lab.text = text
                    changed = True
        for k, lab in self.edge.items():
            if lab.text != letters[k]:
                lab.text = letters[k]
                changed = True
        return changed

    def _touch(self, seconds: float = 2.0):
        """Keep asking for redraws for ``seconds`` (at most :attr:`touch_cap`: scripts, whose
        screenshots draw and check their own frames, lower it)."""
        self._redraw_until = max(self._redraw_until, time.monotonic() + min(seconds, self.touch_cap))

    def edge_letters(self) -> dict[str, str]:
        """Patient directions at the view's edges for the *current* camera (after any rotation)."""
        v = np.asarray(self.widget.scene.camera.get_view_matrix())
        right, up = v[0, :3], v[1, :3]
        return {"right": direction_letter(right), "left": direction_letter(-right),
                "top": direction_letter(up), "bottom": direction_letter(-up)}

    def _add_marker(self, lo, hi):
        from .drawing import orientation_marker

        length = float(np.linalg.norm(hi - lo)) * 0.07
        center = lo - length * 1.3  # beside the anatomy, below-right-anterior corner
        mesh, mat, letters = orientation_marker(center, length)
        self.widget.scene.add_geometry("marker", mesh, mat)
        for pos, text in letters:
            lab = self.widget.add_3d_label(pos, text)
            lab.color = self.gui.Color(0.1, 0.1, 0.1)
            self._marker_labels.append(lab)
        self._marker_box = np.array([center - 1.3 * length, center + 1.3 * length])
        self._marker_on = True

    def show_marker(self, on: bool = True):
        """Show/hide the L/R A/P S/I cross beside the anatomy."""
        self._marker_on = bool(on)

        def ui():
            self.widget.scene.show_geometry("marker", bool(on))
            for lab in self._marker_labels:
                lab.text = lab.text if on else ""
            if on:
                from .drawing import marker_letters
                fwd = -np.asarray(self.widget.scene.camera.get_view_matrix())[2, :3]
                for lab, t in zip(self._marker_labels, marker_letters(fwd)):
                    lab.text = t
        self._on_main(ui)

    # -- camera ------------------------------------------------------------------------------
    def _apply_view(self, name: str):
        f = self.widget.frame
        aspect = (f.width / f.height) if f.height > 0 else 1.4
        pose = fit_camera(self._visible_points(), name, aspect, VFOV, frame_slab=True)
        bbox = self.widget.scene.bounding_box
        self.widget.setup_camera(VFOV, bbox, pose.center.astype(np.float32))
        self.widget.scene.camera.set_projection(VFOV, aspect, pose.near, pose.far, self.rendering.Camera.FovType.Vertical)
        self.widget.look_at(pose.center, pose.eye, pose.up)
        self.widget.scene.scene.set_sun_light(sun_direction(name), [1.0, 1.0, 1.0], 90000)
        self.view_name = name

    def _visible_points(self):
        pts = [np.asarray(m.mesh.vertices) for m in self.scene.meshes
               if m.mesh is not None and self.styles[m.name].visible]
        if self._marker_on:
            pts.append(np.asarray(self._marker_box))
        return np.concatenate(pts) if pts else self._verts

    def set_view(self, name: str):
        """Named patient view: anterior, posterior, left, right, superior, inferior."""
        check_view(name)
        self._on_main(self._apply_view, name)

    def reset_view(self):
        self.set_view("anterior")

    # -- structures --------------------------------------------------------------------------
    def _restyle(self, name: str):
        st = self.styles[name]
        key = f"struct:{name}"
        if not self.widget.scene.has_geometry(key):
            return
        # uncertainty colours only on opaque surfaces: Filament's transparent shader drops
        # vertex colours (a translucent coloured organ would vanish)
        rgb = self._vertex_rgb(name) if st.opacity >= 0.999 else None  # change or uncertainty colours
        coloured = rgb is not None
        mat = material_for(st, vertex_colors=coloured)
        # a shader change (opaque <-> translucent) needs the geometry added again: Filament
        # shows nothing when modify_geometry_material switches the blending mode
        if coloured or coloured != (name in self._vertex_coloured) or mat.shader != self._shader.get(name):
            self.widget.scene.remove_geometry(key)
            m = self.scene.mesh(name).mesh
            self.widget.scene.add_geometry(key, to_o3d_mesh(m, rgb), mat)
            set_priority(self.widget.scene, key, name)
            (self._vertex_coloured.add if coloured else self._vertex_coloured.discard)(name)
            self._shader[name] = mat.shader
        else:
            self.widget.scene.modify_geometry_material(key, mat)
        self.widget.scene.show_geometry(key, st.visible and name not in self._hidden_by_cut)
        if self.widget.scene.has_geometry(f"compare:{name}"):  # the compared time point's surface follows
            self.widget.scene.show_geometry(f"compare:{name}", st.visible)
        if name in self._qc_labels:
            self._qc_labels[name].text = f"? {name}" if st.visible else ""
        self._ray_scene = None

    def _check_structure(self, name: str):
        if name not in self.styles:
            raise SurgitwinError(f"structure '{name}' is not in scene '{self.scene.case_id}'; known: {list(self.styles)}")

    def set_visible(self, name: str, visible: bool = True):
        self._check_structure(name)
        self.styles[name].visible = bool(visible)
        self._on_main(self._restyle, name)
        self._on_main(self._sync_structure_rows)

    def set_opacity(self, name: str, opacity: float):
        self._check_structure(name)
        self.styles[name].opacity = float(np.clip(opacity, 0.0, 1.0))
        self._on_main(self._restyle, name)
        self._on_main(self._sync_structure_rows)

    def isolate(self, name: str | None):
        """Show only ``name`` (None: show everything again)."""
        if name is not None:
            self._check_structure(name)
        for n, st in self.styles.items():
            st.visible = name is None or n == name
        def ui():
            for n in self.styles:
                self._restyle(n)
            self._sync_structure_rows()
        self._on_main(ui)

    def set_color_by_uncertainty(self, on: bool = True):
        """Colour surfaces by the scene's uncertainty map (blue certain -> red uncertain)."""
        if on and not self.scene.uncertainty:
            raise SurgitwinError("this scene has no uncertainty map (scene.json 'uncertainty' is null)")
        if on and not self._unc_colors:
            from .render import uncertainty_at_vertices, uncertainty_colormap

            unc = self.scene.load_uncertainty()
            for m in self.scene.meshes:
                if m.mesh is not None:
                    self._unc_colors[m.name] = uncertainty_colormap(uncertainty_at_vertices(m.mesh.vertices, unc))
        self.color_by_uncertainty = bool(on)

        def ui():
            for n in self.styles:
                self._restyle(n)
            self.ui["uncertainty"].checked = bool(on)
            self.ui["colorbar"].visible = bool(on)
            self.window.set_needs_layout()
        self._on_main(ui)

    def _sync_structure_rows(self):
        for name, row in self.ui["rows"].items():
            st = self.styles[name]
            row["visible"].checked = st.visible
            row["opacity"].double_value = st.opacity

    # -- CT slices ---------------------------------------------------------------------------
    def _volume(self):
        if self._image is None:
            self._image = self.scene.load_image()
        return self._image

    def show_slices(self, on: bool = True):
        from .slices import default_indices

        if on and not self.slice_state["index"]:
            self.slice_state["index"] = default_indices(self._volume())
        self.slice_state["visible"] = bool(on)
        self._on_main(self._draw_slices)

    def set_slice(self, plane: str, index: int):
        from .slices import PLANES, plane_array_axes

        if plane not in PLANES:
            raise SurgitwinError(f"plane must be one of {list(PLANES)}; found {plane!r}")
        vol = self._volume()
        n = vol.shape[plane_array_axes(vol.affine)[plane]]
        self.slice_state["index"][plane] = int(np.clip(index, 0, n - 1))
        self.slice_state["visible"] = True
        self._on_main(self._draw_slices)

    def set_window(self, name: str):
        from .slices import check_window

        self.slice_state["window"] = check_window(name)
        self._on_main(self._draw_slices)

    def _draw_slices(self):
        from .slices import PLANES, WINDOWS, default_indices, quad_geometry, slice_quad

        for p in PLANES:
            if self.widget.scene.has_geometry(f"slice:{p}"):
                self.widget.scene.remove_geometry(f"slice:{p}")
        self._slice_corners = {}
        self._ray_scene = None
        if self.slice_state["visible"]:
            vol = self._volume()
            idx = {**default_indices(vol), **self.slice_state["index"]}
            self.slice_state["index"] = idx
            for p in PLANES:
                quad = slice_quad(vol, p, idx[p], self.slice_state["window"])
                mesh, mat = quad_geometry(quad)
                self.widget.scene.add_geometry(f"slice:{p}", mesh, mat)
                self._slice_corners[p] = np.asarray(quad.corners, dtype=np.float32)
        ui = self.ui
        ui["slices_on"].checked = self.slice_state["visible"]
        for p, sl in ui["slice_sliders"].items():
            if p in self.slice_state["index"]:
                sl.int_value = self.slice_state["index"][p]
        ui["window"].selected_index = list(WINDOWS).index(self.slice_state["window"])

    # -- picking -----------------------------------------------------------------------------
    def _build_ray_scene(self):
        import open3d as o3d

        rs = o3d.t.geometry.RaycastingScene()
        ids = {}
        for m in self.scene.meshes:
            st = self.styles[m.name]
            if m.mesh is None or not st.visible or m.name in self._hidden_by_cut or st.opacity < 0.3:
                continue  # translucent skins do not catch picks: the organs behind them do
            tm = o3d.t.geometry.TriangleMesh.from_legacy(to_o3d_mesh(m.mesh))
            ids[rs.add_triangles(tm)] = m.name
        for rec in self.scene.plan.get("cuts", []) + self.scene.plan.get("segments", []):
            # a committed cut's pieces (or the Couinaud segments) replace its structure
            if rec.get("structure") not in self._hidden_by_cut or not self.styles[rec["structure"]].visible:
                continue
            for part, rel in (rec.get("meshes") or {}).items():
                path = Path(self.scene.root) / rel
                if path.exists():
                    tm = o3d.t.geometry.TriangleMesh.from_legacy(o3d.io.read_triangle_mesh(str(path)))
                    ids[rs.add_triangles(tm)] = rec["structure"]
        for plane, c in self._slice_corners.items():  # the CT planes are opaque: they catch picks
            tm = o3d.t.geometry.TriangleMesh()
            tm.vertex.positions = o3d.core.Tensor(c, dtype=o3d.core.Dtype.Float32)
            tm.triangle.indices = o3d.core.Tensor(np.array([[0, 1, 2], [0, 2, 3]], dtype=np.int32))
            ids[rs.add_triangles(tm)] = f"ct:{plane}"
        self._ray_scene = (rs, ids)
        return self._ray_scene

    def pick(self, x: float, y: float, relative: bool = False) -> dict | None:
        """Point under widget pixel (x, y) (origin top-left): {structure, on, point} or None.

        The nearest of the visible surfaces and the CT planes on screen: ``on`` names what was
        hit (a structure, or ``ct:axial`` etc.); ``structure`` is None on a CT plane, so a
        landmark placed there stays where it was clicked. ``relative``: x, y are fractions (0..1)
        of the 3-D view's width and height.
        """
        import open3d as o3d

        def cam():
            f = self.widget.frame
            c = self.widget.scene.camera
            vertical = c.get_field_of_view_type() == self.rendering.Camera.FovType.Vertical
            return np.asarray(c.get_model_matrix()), c.get_field_of_view(), vertical, f.width, f.height
        model, fov, vertical, w, h = self._on_main(cam)
        fx, fy = (x, y) if relative else ((x + 0.5) / w, (y + 0.5) / h)
        origin, direction = pixel_ray(model, fov, w / h, fx, fy, vertical)
        rs, ids = self._ray_scene or self._on_main(self._build_ray_scene)
        ray = o3d.core.Tensor([[*origin, *direction]], dtype=o3d.core.Dtype.Float32)
        hit = rs.cast_rays(ray)
        t = float(hit["t_hit"].numpy()[0])
        if not np.isfinite(t):
            return None
        point = origin + t * direction
        on = ids.get(int(hit["geometry_ids"].numpy()[0]))
        return {"structure": None if (on or "").startswith("ct:") else on, "on": on, "point": point.tolist()}

    def click(self, x: float, y: float, relative: bool = False) -> dict | None:
        """Pick at (x, y) and feed the point to the current tool; returns the new record if any."""
        hit = self.pick(x, y, relative)
        if hit is None:
            self._on_main(self._set_status, "no surface under the cursor")
            return None
        return self.add_point(hit["point"], hit["structure"])

    def _on_mouse(self, event):
        gui = self.gui
        self.motion.on_mouse(event)
        if (event.type == gui.MouseEvent.Type.BUTTON_DOWN and event.is_modifier_down(gui.KeyModifier.CTRL)
                and event.is_button_down(gui.MouseButton.LEFT)):
            x, y = event.x - self.widget.frame.x, event.y - self.widget.frame.y
            if self.session.mode == "navigate":
                self._set_status("choose a tool (landmark, distance, ...) before Ctrl+click")
            else:
                self._background(self.click, x, y)
            return gui.Widget.EventCallbackResult.CONSUMED
        return gui.Widget.EventCallbackResult.IGNORED

    def set_moving(self, moving: bool = True) -> list[str]:
        """Interactive render quality on/off, as a mouse drag switches it (scripts, tests);
        returns the structures drawn from their decimated copies."""
        if moving:
            self.motion.ready.wait(120)
        return self._on_main(self.motion.set_moving, bool(moving))

    def panel_state(self) -> dict:
        """What the panel shows now (for scripts and tests)."""
        def read():
            u = self.ui
            out = {
                "mode": self.session.mode, "view": self.view_name, "status": u["status"].text,
                "records": [self._record_text(r) for r in self.session.records()],
                "cut": u["cut_result"].text, "clearance": u["clearance"].text, "warnings": u["warnings"].text,
                "structures": {n: {"visible": r["visible"].checked, "opacity": round(r["opacity"].double_value, 3),
                                   "uncertain": self.styles[n].uncertain} for n, r in u["rows"].items()},
                "slices": dict(self.slice_state, index=dict(self.slice_state["index"])),
                "color_by_uncertainty": self.color_by_uncertainty,
                "colorbar_visible": bool(u["colorbar"].visible),
                "edge_letters": self.edge_letters(),
                "hud": {k: lab.text for k, lab in self.edge.items()},
                "drawn": list(self._plan_geoms), "labels3d": len(self._labels3d),
                "labels": self._screen_labels().state(),
                "record_lines": list(u["record_list"].items), "record_fit": u.get("record_fit"),
                "hidden_by_cut": sorted(self._hidden_by_cut),
                "qc_marked": sorted(n for n, lab in self._qc_labels.items() if lab.text),
                "widget_frame": [self.widget.frame.x, self.widget.frame.y, self.widget.frame.width, self.widget.frame.height],
                "layout": self.layout,
                "timepoints": {**self.timepoint_state(), "widgets": self._timepoint_widgets()},
            }
            if self.layout == "four-up":
                out["crosshair"] = self.fourup.crosshair.tolist()
                out["panes"] = {p: [w.frame.x, w.frame.y, w.frame.width, w.frame.height] for p, w in self.panes.items()}
                out["pane_window"], out["overlay"] = self.fourup.window, self.fourup.overlay
            return out
        return self._on_main(read)

    def quit(self):
        self._on_main(self.app.quit, wait=False)

    def run(self):
        self.app.run()


def _fit_window(size):
    """The requested window size, shrunk to the X screen (said on stderr when it is)."""
    from .xcapture import fit_to_screen, screen_size

    fitted, note = fit_to_screen(size, screen_size() if os.environ.get("DISPLAY") else None)
    if note:
        import sys

        print(f"surgitwin view: {note}", file=sys.stderr, flush=True)
    return fitted


def run_viewer(scene_path, *, view: str = "anterior", size=(1440, 900), screenshot: str | None = None,
               script: str | None = None, result: str | None = None, timeout: float = 300.0, layout: str = "3d",
               four_up: dict | None = None, timepoints: dict | None = None) -> int:
    """Open the window; with ``screenshot``/``script`` run those actions, write ``result`` and exit.
    ``timepoints``: {timepoint, compare, compare_opacity, color_by_change} (``surgitwin view`` options)."""
    require_display()
    size = _fit_window(size)
    tp = dict(timepoints or {})
    from pipeline.followup.view import timepoint_scene_path

    scene_path = timepoint_scene_path(scene_path, tp.get("timepoint"))  # default: the current time point
    app = ViewerApp(scene_path, size=size, view=view, layout=layout, four_up=four_up)
    app.change_threshold_mm = float(tp.get("threshold_mm") or 1.0)
    if tp.get("compare"):
        app.set_compare(tp["compare"], tp.get("compare_opacity"))
    if tp.get("color_by_change"):
        app.set_color_by_change(tp["color_by_change"], True)
    if screenshot or script:
        from .driver import load_actions, start_driver

        actions = load_actions(script) if script else []
        if screenshot:  # the window opened at ``view``: set it again only after a script moved it
            actions += [{"do": "set_view", "args": [view]}] if script else []
            actions += [{"do": "screenshot", "args": [screenshot]}]
        outcome = start_driver(app, actions, result, timeout=timeout)
        app.run()
        if not outcome.get("ok"):
            import sys

            print(f"surgitwin view: {outcome.get('error') or 'the viewer closed before its actions finished'}",
                  file=sys.stderr, flush=True)
            return 1
        return 0
    app.run()
    return 0
