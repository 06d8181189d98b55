"""Screenshots (window or 3-D view), saving the plan and opening the report: a mixin of
:class:`viewer.app.ViewerApp`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from pipeline.errors import SurgitwinError

from .render import RenderError


def unchanged_blocks(a: np.ndarray, b: np.ndarray, block: int = 16, fraction: float = 0.05) -> bool:
    """Two grabs of a window show the same picture: Filament's dithering moves single pixels
    all over a frame (measured: 0.03 % of them), a real change (a label, a moved structure)
    moves many pixels in one place, so no ``block`` x ``block`` tile may have more than
    ``fraction`` of its pixels changed by more than 12 levels."""
    moved = (np.abs(a.astype(np.int16) - b).max(axis=2) > 12)
    h, w = moved.shape
    hb, wb = -(-h // block), -(-w // block)
    pad = np.zeros((hb * block, wb * block), bool)
    pad[:h, :w] = moved
    per_tile = pad.reshape(hb, block, wb, block).sum(axis=(1, 3))
    return bool(per_tile.max() <= fraction * block * block)


class CaptureMixin:
    # -- plan, screenshots, report -----------------------------------------------------------
    def save_plan(self) -> str:
        with self._lock:
            path = self.session.planner.save()
        self._on_main(self._set_status, f"plan saved to {path}")
        return str(path)

    def screenshot(self, path, what: str = "window", settle_timeout: float = 60.0) -> str:
        """Save what the window shows (``what='window'``: panel and all, via the X server) or
        the 3-D view alone (``'scene'``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if what == "scene":
            self._render_scene_image(path)
            return str(path)
        from PIL import Image

        from .xcapture import grab_window

        wid = self._x_window_id()

        def same(a, b):  # Filament dithers frames: "same" = no 16x16 block with 5 % of its pixels moved by more than 12
            return a.shape == b.shape and unchanged_blocks(a, b)

        # Draw one frame (render_to_image waits for it), let the window flush, grab; done when
        # two such grabs agree (a dropped or stale frame shows as a difference and is redrawn).
        # Each frame of a big scene costs seconds in a software renderer: draw no more than that.
        t0 = time.monotonic()
        last = None
        while True:
            def hud():  # the letters and labels a tick would set, before the frame is drawn
                if self._update_hud():
                    self.window.set_needs_layout()
            self._on_main(hud, touch=False)
            self._render_scene_image(None)
            self.timings.setdefault("first_frame_s", round(time.perf_counter() - self._t0, 3))
            time.sleep(0.2)
            try:
                shot = grab_window(wid)
            except SurgitwinError:  # window being remapped/resized: try once more
                time.sleep(1.0)
                shot = grab_window(wid)
            done = last is not None and same(shot, last)
            last = shot
            if done or time.monotonic() - t0 > settle_timeout:
                break
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        Image.fromarray(last).save(tmp, format="PNG")
        os.replace(tmp, path)
        return str(path)

    def _x_window_id(self) -> int | None:
        """X id of this window (xdotool, by our pid); None -> the root window is captured."""
        if not shutil.which("xdotool"):
            return None
        out = subprocess.run(["xdotool", "search", "--sync", "--pid", str(os.getpid()), "--name", "surgitwin"],
                             capture_output=True, text=True, timeout=10).stdout.split()
        return int(out[-1]) if out else None

    def _render_scene_image(self, path):
        import open3d as o3d

        done = threading.Event()
        box = {}

        def cb(img):
            if path is not None:
                tmp = Path(path).with_name(f".tmp-{os.getpid()}-{Path(path).name}")
                o3d.io.write_image(str(tmp), img)
                os.replace(tmp, path)
            box["ok"] = True
            done.set()

        self._on_main(lambda: self.widget.scene.scene.render_to_image(cb), touch=False)  # draws its own frame
        if threading.current_thread() is not threading.main_thread() and not done.wait(120):
            raise RenderError("the viewer did not render a frame within 120 s")

    def open_report(self) -> str | None:
        """Open the scene's HTML report in the default browser (None if the scene has none)."""
        import webbrowser

        root = Path(self.scene.root)
        cands = [root / str(self.scene.extra.get("report", "")), root / "report" / "report.html",
                 root / "report.html", root / "report" / "index.html"]
        rep = next((p for p in cands if p.is_file() and p.suffix == ".html"), None)
        if rep is None:  # none yet: write it now (pipeline.scene.report, the same as `surgitwin report`)
            from pipeline.scene.report import build_report

            self._on_main(self._set_status, "writing the report ...")
            try:
                rep = Path(build_report(root).html)
            except Exception as e:  # noqa: BLE001 - a report failure must not take the viewer down
                self._on_main(self._set_status, f"report failed: {e}")
                return None
        webbrowser.open(rep.resolve().as_uri())
        return str(rep)
