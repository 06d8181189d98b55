"""Lighter frames while the camera moves, the full picture as soon as it stops.

Without a GPU the viewer draws with Mesa's software rasteriser. On the 310 k-face scene of a
512x512x300 CT (benchmarks/bench_viewer.py) one frame at 1140x900 costs about 4.8 s of CPU
with Filament's post-processing (tone mapping, FXAA) and 1.2 s without it; with the structures
decimated to a quarter of their faces, 0.7 s (measured with the same camera path on the same
loaded machine; ratios are what carries over). So while a mouse drag or the wheel moves the
camera (:meth:`MotionQuality.on_mouse`), the view renders without post-processing and, in a
scene over ``lod_faces`` faces, shows decimated copies of the visible structures (built once,
in a background thread, after the window opened); ``settle_s`` after the last movement the
full meshes and post-processing come back and one full-quality frame is drawn. 3D Slicer and
ParaView do the same ("interactive" vs "still" render quality).

Structures coloured by vertex (uncertainty) keep their full mesh (the copies carry no colours);
a copy whose source mesh was replaced (an edit, another time point) is not used.
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np

LOD_FACES = int(os.environ.get("SURGITWIN_VIEWER_LOD_FACES", "150000"))  # scene faces above which copies are made
LOD_FRACTION = 0.25
MIN_FACES = 4000  # structures smaller than this are drawn whole


def decimated(mesh, fraction: float = LOD_FRACTION):
    """A trimesh with about ``fraction`` of ``mesh``'s faces (quadric decimation; display only)."""
    import fast_simplification
    import trimesh

    from pipeline.mesh.surfaces import _DECIMATOR

    with _DECIMATOR:  # the decimator keeps its state in C++ globals: one call at a time
        v, f = fast_simplification.simplify(np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int32),
                                            target_reduction=1.0 - fraction)
    return trimesh.Trimesh(v.astype(np.float64), f.astype(np.int64), process=False)


class MotionQuality:
    """Interactive render quality for one :class:`viewer.app.ViewerApp` (GUI thread only, except
    the background build of the copies)."""

    def __init__(self, app, *, lod_faces: int | None = None, settle_s: float = 0.3):
        self.app = app
        self.settle_s = settle_s
        self.moving = False
        self._last = 0.0
        self._lod: dict[str, tuple[object, object]] = {}  # name -> (source mesh, decimated copy)
        self._added: dict[str, tuple] = {}  # name -> material signature of the copy in the scene
        self._swapped: list[str] = []
        meshes = [m for m in app.scene.meshes if m.mesh is not None and len(m.mesh.faces)]
        self.total_faces = sum(len(m.mesh.faces) for m in meshes)
        threshold = LOD_FACES if lod_faces is None else lod_faces
        self.uses_copies = self.total_faces > threshold
        self.ready = threading.Event()
        if self.uses_copies:
            threading.Thread(target=self._build, args=(meshes, min(MIN_FACES, threshold // 10)), daemon=True,
                             name="lod-build").start()
        else:
            self.ready.set()

    def _build(self, meshes, min_faces: int) -> None:
        try:
            for m in meshes:
                if len(m.mesh.faces) >= min_faces:
                    self._lod[m.name] = (m.mesh, decimated(m.mesh))
        finally:
            self.ready.set()

    # -- events -------------------------------------------------------------------------------
    def on_mouse(self, event) -> None:
        """Called for every mouse event of the 3-D view (before the camera handles it)."""
        gui = self.app.gui
        kind = event.type
        if event.is_modifier_down(gui.KeyModifier.CTRL):
            return  # a pick, not a camera move
        if kind in (gui.MouseEvent.Type.DRAG, gui.MouseEvent.Type.WHEEL):
            self._last = time.monotonic()
            if not self.moving:
                self.set_moving(True)
        elif kind == gui.MouseEvent.Type.BUTTON_UP and self.moving:
            self._last = time.monotonic() - self.settle_s  # settle at the next tick

    def on_tick(self) -> bool:
        """True when a redraw is needed (the full-quality frame after a movement)."""
        if self.moving and time.monotonic() - self._last >= self.settle_s:
            self.set_moving(False)
            return True
        return False

    # -- the switch ---------------------------------------------------------------------------
    def set_moving(self, moving: bool) -> list[str]:
        """Switch to interactive (True) or full (False) quality; returns the structures drawn
        from their decimated copies."""
        app = self.app
        scene = app.widget.scene
        self.moving = bool(moving)
        scene.view.set_post_processing(not self.moving)
        if self.moving:
            self._last = time.monotonic()
            self._swapped = [n for n in list(self._lod) if self._swap_in(n)]
        else:
            for name in self._swapped:
                st = app.styles.get(name)
                scene.show_geometry(f"lod:{name}", False)
                if st is not None and scene.has_geometry(f"struct:{name}"):
                    scene.show_geometry(f"struct:{name}", st.visible and name not in app._hidden_by_cut)
            self._swapped = []
        return list(self._swapped)

    def _swap_in(self, name: str) -> bool:
        from .render import material_for, set_priority, to_o3d_mesh

        app, scene = self.app, self.app.widget.scene
        key, lkey = f"struct:{name}", f"lod:{name}"
        source, copy = self._lod[name]
        current = app.scene.mesh(name) if name in app.styles else None
        if (current is None or current.mesh is not source or not scene.has_geometry(key)
                or not scene.geometry_is_visible(key) or name in app._vertex_coloured):
            return False
        st = app.styles[name]
        sig = (tuple(st.rgb), round(float(st.opacity), 4))
        if self._added.get(name) != sig:  # a changed material: add the copy again (see ViewerApp._restyle)
            if scene.has_geometry(lkey):
                scene.remove_geometry(lkey)
            scene.add_geometry(lkey, to_o3d_mesh(copy), material_for(st))
            set_priority(scene, lkey, name)
            self._added[name] = sig
        scene.show_geometry(lkey, True)
        scene.show_geometry(key, False)
        return True
