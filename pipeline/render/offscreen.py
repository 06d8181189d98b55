"""Scene -> Open3D geometries and materials; headless snapshots with the offscreen renderer.

Two entry points:

* :func:`snapshot` (alias :func:`snapshot_subprocess`) -- the safe one. It runs
  ``python -m pipeline.render.offscreen SCENE -o OUT ...`` in a child process, because Open3D's renderer
  kills the process (segfault) instead of raising when EGL/OpenGL is unusable; a crash becomes
  a :class:`RenderError` naming the cause.
* :func:`render_views` -- renders in *this* process (what the child runs). Use it only where a
  crash may take the process down.

Without a DISPLAY, ``EGL_PLATFORM=surfaceless`` must be set before the renderer is created
(Mesa's headless EGL); :func:`render_views` sets it when it is missing.

The GUI (:mod:`viewer.app`) builds its geometries with the same :func:`structure_styles`,
:func:`to_o3d_mesh` and :func:`material_for`, so a snapshot and the window agree.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from pipeline.errors import SurgitwinError

from .drawing import to_o3d_mesh  # noqa: F401 - part of this module's API
from .primitives import BODY_NAMES
from .views import VIEWS, check_view, edge_letters, fit_camera, screen_basis

# Structures that wrap everything else: shown translucent in the GUI, hidden in snapshots.
BODY_OPACITY = 0.18
BACKGROUND = (1.0, 1.0, 1.0, 1.0)
DEFAULT_VIEWS = ("anterior", "left")


class RenderError(SurgitwinError):
    """Rendering failed (no usable OpenGL/EGL, renderer crash, bad view request)."""


@dataclass
class StructureStyle:
    """How one structure is drawn. ``rgb`` 0..255, ``opacity`` 0..1."""

    name: str
    rgb: tuple[int, int, int]
    opacity: float = 1.0
    visible: bool = True
    uncertain: bool = False  # flagged by QC: drawn with a marker in the legend / GUI
    qc_note: str = ""


def qc_flag(qa: Mapping) -> tuple[bool, str]:
    """(flagged, reason) from a structure's scene.json entry.

    Accepts the forms QC writers use: ``qc: {status: warn|fail|uncertain, flags: [...],
    uncertain: bool, reason: str}`` or a top-level ``uncertain: bool``.
    """
    qc = qa.get("qc") or {}
    if not isinstance(qc, Mapping):
        qc = {}
    reasons = []
    flagged = bool(qa.get("uncertain")) or bool(qc.get("uncertain"))
    status = str(qc.get("status", "")).lower()
    if status in {"warn", "warning", "fail", "failed", "uncertain", "review"}:
        flagged = True
        reasons.append(status)
    flags = qc.get("flags") or qc.get("warnings") or []
    if isinstance(flags, str):
        flags = [flags]
    if flags:
        flagged = True
        reasons.extend(str(f) for f in flags)
    if qc.get("reason"):
        reasons.append(str(qc["reason"]))
    return flagged, "; ".join(dict.fromkeys(reasons))


def structure_styles(scene, *, hide: Iterable[str] = (), opacity: Mapping[str, float] | None = None,
                     body_opacity: float | None = BODY_OPACITY) -> dict[str, StructureStyle]:
    """Display style of every structure of ``scene``, in scene order.

    Colours are :func:`pipeline.scene.colors.scene_colors` (the label table's, separated by at
    least CIEDE2000 20 within the scene), the same the report's outlines use.

    ``body_opacity=None`` hides body/skin structures (snapshots); a number draws them
    translucent so the organs show through (GUI default).
    """
    from pipeline.scene.colors import scene_colors

    hide = set(hide)
    opacity = dict(opacity or {})
    colors = scene_colors(scene.labels)  # the whole table: the report uses the same
    styles = {}
    for m in scene.meshes:
        flagged, note = qc_flag(m.qa)
        st = StructureStyle(m.name, colors.get(m.name, tuple(m.label.rgb)), 1.0, m.name not in hide, flagged, note)
        if m.name in BODY_NAMES:
            if body_opacity is None:
                st.visible = False
            else:
                st.opacity = float(body_opacity)
        if m.name in opacity:
            st.opacity = float(np.clip(opacity[m.name], 0.0, 1.0))
        styles[m.name] = st
    return styles


def material_for(style: StructureStyle, vertex_colors: bool = False):
    """Filament material: lit, opaque or translucent; white base when vertex colours carry the colour."""
    from open3d.visualization import rendering

    mat = rendering.MaterialRecord()
    translucent = style.opacity < 0.999
    mat.shader = "defaultLitTransparency" if translucent else "defaultLit"
    rgb = np.array((1.0, 1.0, 1.0) if vertex_colors else [c / 255.0 for c in style.rgb])
    if translucent and style.opacity > 0:
        # Filament's transparent shading weights the colour by alpha twice (premultiplied), so
        # a 40 % liver reads as grey glass; dividing by sqrt(alpha) brings its hue back
        # without washing low opacities out to white
        rgb = np.clip(rgb / np.sqrt(style.opacity), 0.0, 1.0)
    mat.base_color = (*rgb.tolist(), float(style.opacity))
    mat.base_roughness = 0.6
    mat.base_reflectance = 0.3
    return mat


def uncertainty_at_vertices(vertices: np.ndarray, uncertainty) -> np.ndarray:
    """(n,) trilinear samples of an uncertainty Volume (0..1) at (n, 3) LPS vertices.

    Surface vertices sit on the 0.5 iso-level between voxels, so linear interpolation gives
    the boundary's uncertainty rather than that of a single voxel on either side.
    """
    from scipy.ndimage import map_coordinates

    idx = uncertainty.lps_to_index(np.asarray(vertices, dtype=np.float64))
    vals = map_coordinates(np.asarray(uncertainty.array, dtype=np.float32), idx.T, order=1, mode="nearest")
    return np.clip(vals, 0.0, 1.0)


def uncertainty_colormap(values: np.ndarray) -> np.ndarray:
    """(n,) 0..1 -> (n, 3) RGB 0..1: blue (certain) -> yellow -> red (uncertain)."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)[:, None]
    stops = np.array([[0.17, 0.35, 0.85], [0.98, 0.85, 0.2], [0.85, 0.1, 0.1]])
    lo = np.where(v < 0.5, stops[0], stops[1])
    hi = np.where(v < 0.5, stops[1], stops[2])
    t = np.where(v < 0.5, v * 2.0, (v - 0.5) * 2.0)
    return lo + (hi - lo) * t


def scene_geometries(scene, styles: Mapping[str, StructureStyle], *, color_by_uncertainty: bool = False):
    """[(name, open3d mesh, material)] for the visible structures of ``scene``."""
    unc = scene.load_uncertainty() if color_by_uncertainty and scene.uncertainty else None
    out = []
    for m in scene.meshes:
        st = styles[m.name]
        if not st.visible or m.mesh is None or len(m.mesh.faces) == 0:
            continue
        rgb = None if unc is None else uncertainty_colormap(uncertainty_at_vertices(m.mesh.vertices, unc))
        out.append((m.name, to_o3d_mesh(m.mesh, rgb), material_for(st, vertex_colors=rgb is not None)))
    return out


def configure_view(view) -> None:
    """Same render settings offscreen and in the GUI: no shadows (they hide structures behind
    others and cost most of a software-rendered frame), no SSAO; tone mapping and FXAA stay."""
    view.set_shadowing(False)
    view.set_ambient_occlusion(False)


def set_priority(o3d_scene, key: str, name: str) -> None:
    """Draw body/skin after everything else: a translucent skin drawn first writes depth and
    hides the translucent organs inside it."""
    o3d_scene.scene.set_geometry_priority(key, 7 if name in BODY_NAMES else 3)


def sun_direction(view: str) -> np.ndarray:
    """Light travelling from over the viewer's upper-left shoulder into the scene."""
    right, up, forward = screen_basis(view)
    d = forward - 0.6 * up + 0.35 * right
    return d / np.linalg.norm(d)


# -- offscreen rendering (in this process) -----------------------------------------------------
def _ensure_headless_env():
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("EGL_PLATFORM", "surfaceless")


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 without sized default fonts
        return ImageFont.load_default()


def _text(draw, xy, text, size, anchor="la", fill=(30, 30, 30)):
    draw.text(xy, text, font=_font(size), fill=fill, anchor=anchor, stroke_width=max(1, size // 10),
              stroke_fill=(255, 255, 255))


def annotate_tile(img, view: str):
    """Draw the view name and the patient direction at each edge (PIL, in place)."""
    from PIL import ImageDraw

    d = ImageDraw.Draw(img)
    w, h = img.size
    s = max(12, min(w, h) // 24)
    pad = max(4, s // 2)
    letters = edge_letters(view)
    _text(d, (pad, pad), view, s + 2, "la")
    _text(d, (pad, h // 2), letters["left"], s + 4, "lm")
    _text(d, (w - pad, h // 2), letters["right"], s + 4, "rm")
    _text(d, (w // 2, pad), letters["top"], s + 4, "ma")
    _text(d, (w // 2, h - pad), letters["bottom"], s + 4, "md")
    d.line([(w - 1, 0), (w - 1, h)], fill=(200, 200, 200), width=1)


def draw_legend(img, styles: Mapping[str, StructureStyle]):
    """Colour swatch and name of each visible structure (QC-flagged ones marked '?')."""
    from PIL import ImageDraw

    d = ImageDraw.Draw(img)
    shown = [s for s in styles.values() if s.visible]
    w, h = img.size
    if not shown:
        return
    row = max(12, min(22, (h - 16) // max(len(shown), 1)))
    size = max(9, row - 6)
    y = 8
    for s in shown:
        d.rectangle([8, y + 2, 8 + row - 4, y + row - 2], fill=tuple(s.rgb), outline=(60, 60, 60))
        name = s.name.replace("_", " ") + (" (?)" if s.uncertain else "")
        _text(d, (8 + row + 2, y + row // 2), name, size, "lm")
        y += row
        if y + row > h:
            break


def colorbar_image(width: int, height: int, title: str = "uncertainty"):
    """PIL picture of the uncertainty colour scale (:func:`uncertainty_colormap`) with its ends
    named: 0 certain (blue) .. 1 uncertain (red)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (int(width), int(height)), (250, 250, 250))
    d = ImageDraw.Draw(img)
    s = max(9, min(14, height // 4))
    bar_h = max(6, height - 2 * s - 10)
    x0, x1, y0 = 6, width - 6, s + 4
    ramp = (uncertainty_colormap(np.linspace(0, 1, max(x1 - x0, 2))) * 255).astype(np.uint8)
    img.paste(Image.fromarray(np.repeat(ramp[None], bar_h, axis=0)), (x0, y0))
    d.rectangle([x0 - 1, y0 - 1, x1, y0 + bar_h], outline=(60, 60, 60))
    d.text((x0, 2), title, font=_font(s), fill=(30, 30, 30))
    d.text((x0, y0 + bar_h + 2), "0 certain", font=_font(s), fill=(30, 30, 30))
    d.text((x1, y0 + bar_h + 2), "1 uncertain", font=_font(s), fill=(30, 30, 30), anchor="ra")
    return img


def render_views(scene_path, out_png, views: Sequence[str] = DEFAULT_VIEWS, size=(1280, 720), *,
                 hide: Iterable[str] = (), show_body: bool = False, legend: bool = True,
                 color_by_uncertainty: bool = False, vfov_deg: float = 30.0,
                 slices: Mapping[str, int] | None = None, window: str = "soft_tissue",
                 opacity: Mapping[str, float] | None = None, plan: bool = False) -> Path:
    """Render named patient views of a scene side by side into one PNG (in this process).

    Parameters
    ----------
    scene_path : scene folder or scene.json
    out_png : output path (written atomically)
    views : names from :data:`.views.VIEWS`
    size : (width, height) of the whole PNG in pixels; the views share the width (minus a
        legend strip when ``legend``)
    hide : structure names not to draw; body/skin are hidden unless ``show_body``
    slices : optional {plane: array index} of CT planes to draw ('axial', 'coronal', 'sagittal')
    window : CT window for the planes (:data:`.slices.WINDOWS`)
    opacity : optional {structure: 0..1}, e.g. {'liver': 0.4} to see a tumour inside it
    plan : draw the scene's plan as the viewer does (landmarks, measurements, cut planes with
        the resected part translucent, trajectories as tools); a cut structure is drawn as its
        remnant and resected halves

    Returns
    -------
    Path of the PNG.
    """
    from PIL import Image

    from pipeline.scene import load_scene

    views = [check_view(v) for v in views] or list(DEFAULT_VIEWS)
    width, height = (int(size[0]), int(size[1]))
    if width < 64 or height < 64:
        raise RenderError(f"snapshot size must be at least 64x64 pixels; found {width}x{height}")
    scene = load_scene(scene_path)
    styles = structure_styles(scene, hide=hide, body_opacity=BODY_OPACITY if show_body else None, opacity=opacity)
    plan_geoms = plan_geometries(scene, hide=hide) if plan else []
    labels = plan_labels(scene, hide=hide) if plan else []
    drawn = styles
    if plan_geoms:  # a cut structure is shown as its two halves, not whole underneath them
        cut = {r["structure"] for sec in ("cuts", "segments") for r in scene.plan.get(sec, []) if r.get("meshes")}
        drawn = {n: dataclasses.replace(st, visible=False) if n in cut else st for n, st in styles.items()}
    geoms = scene_geometries(scene, drawn, color_by_uncertainty=color_by_uncertainty) + plan_geoms
    legend_w = min(240, width // 4) if legend else 0
    tile_w = (width - legend_w) // len(views)
    if tile_w < 32:
        raise RenderError(f"snapshot width {width} is too small for {len(views)} views")

    tiles = _render_tiles(scene, geoms, views, (tile_w, height), vfov_deg, slices, window, labels)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    for n, t in enumerate(tiles):
        canvas.paste(t, (n * tile_w, 0))
    if legend:
        canvas.paste(_legend_strip(styles, legend_w, height, color_by_uncertainty), (width - legend_w, 0))
    from pipeline.fileio import atomic_save_png

    return atomic_save_png(canvas, out_png)


def _render_tiles(scene, geoms: list, views: Sequence[str], tile: tuple[int, int], vfov_deg: float,
                  slices: Mapping[str, int] | None, window: str, labels) -> list:
    """One offscreen picture per view of the same geometries (and CT planes), annotated."""

    _ensure_headless_env()
    from open3d.visualization import rendering

    tile_w, height = tile
    renderer = rendering.OffscreenRenderer(tile_w, height)
    try:
        sc = renderer.scene
        sc.set_background(list(BACKGROUND))
        configure_view(sc.view)
        for name, mesh, mat in geoms:
            sc.add_geometry(name, mesh, mat)
            set_priority(sc, name, name.split(":")[-1] if name.startswith("plan:") else name)
        if slices:
            from .slices import quad_geometry, slice_quad

            image = scene.load_image()
            for plane, index in slices.items():
                q_mesh, q_mat = quad_geometry(slice_quad(image, plane, int(index), window))
                sc.add_geometry(f"slice:{plane}", q_mesh, q_mat)
                geoms = [*geoms, (f"slice:{plane}", q_mesh, q_mat)]
        pts = np.concatenate([np.asarray(g.vertices) for _, g, _ in geoms]) if geoms else np.zeros((1, 3))
        return shoot_views(renderer, pts, views, (tile_w, height), vfov_deg, labels)
    finally:
        del renderer  # release the EGL context before PIL work / process exit


def shoot_views(renderer, pts: np.ndarray, views: Sequence[str], tile: tuple[int, int], vfov_deg: float,
                labels=()) -> list:
    """One annotated PIL picture per named view of what ``renderer`` holds, the camera framing
    ``pts`` (LPS mm) and the light over the viewer's shoulder; plan ``labels`` drawn in boxes."""
    from PIL import Image
    from open3d.visualization import rendering

    sc = renderer.scene
    tile_w, height = tile
    sc.scene.enable_sun_light(True)
    tiles = []
    for view in views:
        pose = fit_camera(pts, view, tile_w / height, vfov_deg, frame_slab=True)
        sc.camera.set_projection(pose.vfov_deg, tile_w / height, pose.near, pose.far, rendering.Camera.FovType.Vertical)
        sc.camera.look_at(pose.center, pose.eye, pose.up)
        sc.scene.set_sun_light(sun_direction(view), [1.0, 1.0, 1.0], 90000)
        img = Image.fromarray(np.asarray(renderer.render_to_image())[..., :3].copy())
        draw_plan_labels(img, labels, pose, tile_w / height)
        annotate_tile(img, view)
        tiles.append(img)
    return tiles


def _legend_strip(styles, legend_w: int, height: int, color_by_uncertainty: bool):
    """The legend (and below it the uncertainty colour scale when the surfaces carry it)."""
    from PIL import Image

    strip = Image.new("RGB", (legend_w, height), (250, 250, 250))
    bar_h = min(64, height // 5) if color_by_uncertainty else 0
    if not bar_h:
        draw_legend(strip, styles)
    else:  # the legend above, the colour scale of the surfaces below
        top = Image.new("RGB", (legend_w, height - bar_h), (250, 250, 250))
        draw_legend(top, styles)
        strip.paste(top, (0, 0))
        strip.paste(colorbar_image(legend_w, bar_h), (0, height - bar_h))
    return strip


def _plan_prims(scene, hide: Iterable[str] = ()):
    """(record, n, primitive, colour of its structure 0..1, drawn) for every plan primitive, as the
    viewer draws them: a cut in its own colour (:func:`pipeline.scene.colors.cut_colors`), its
    pieces in the structure's display colour; ``drawn`` is False for the pieces of a structure in
    ``hide`` (a close-up of the tumour must not draw the liver) and for superseded pieces."""
    from pipeline.scene.colors import cut_colors

    from .primitives import marker_scale, record_primitives, superseded_pieces

    if not scene.meshes:
        return
    scale = marker_scale(np.concatenate([m.mesh.bounds for m in scene.meshes if m.mesh is not None]))
    shown = structure_styles(scene)  # cut pieces in the structure's display colour
    cuts = cut_colors(scene.labels, scene.plan)
    skip = superseded_pieces(scene.plan)
    hide = set(hide)
    for sec in ("landmarks", "measurements", "segments", "cuts", "trajectories"):
        for rec in scene.plan.get(sec, []):
            rgb = (200, 200, 200)
            if rec.get("kind") == "cut" and rec.get("structure") in shown:
                rgb = shown[rec["structure"]].rgb
            own = cuts.get(rec.get("id")) if rec.get("kind") == "cut" else None
            prims = record_primitives(rec, scale, None if own is None else tuple(c / 255 for c in own))
            for n, prim in enumerate(prims):
                drawn = not (prim.kind == "mesh" and (rec.get("structure") in hide or rec.get("id") in skip))
                yield rec, n, prim, tuple(c / 255 for c in rgb), drawn


def plan_geometries(scene, hide: Iterable[str] = ()) -> list:
    """[(name, open3d mesh, material)] for every plan record, drawn as in the viewer; names are
    ``plan:<record id>:<n>:<structure>`` (the structure sets the draw order)."""
    from .drawing import primitive_geometry

    out = []
    for rec, n, prim, rgb, drawn in _plan_prims(scene, hide):
        g = primitive_geometry(prim, scene.root, rgb) if drawn else None
        if g is not None:
            out.append((f"plan:{rec.get('id')}:{n}:{rec.get('structure', '')}", *g))
    return out


def plan_labels(scene, hide: Iterable[str] = ()) -> list[tuple[np.ndarray, str, tuple | None]]:
    """[(anchor LPS mm, text, box colour 0..255 or None)] of the plan's labels, anchored where
    the viewer anchors them; a cut's label carries the cut's colour."""
    from .primitives import marker_scale

    if not scene.meshes:
        return []
    scale = marker_scale(np.concatenate([m.mesh.bounds for m in scene.meshes if m.mesh is not None]))
    out = []
    for rec, _, prim, _, drawn in _plan_prims(scene, hide):
        if drawn and prim.label and prim.label_at is not None:
            own = tuple(int(round(c * 255)) for c in prim.rgb) if rec.get("kind") == "cut" else None
            out.append((np.asarray(prim.label_at, float) + scale * 1.5, prim.label, own))
    return out


def draw_plan_labels(img, labels, pose, aspect: float) -> list[tuple]:
    """Draw ``labels`` (:func:`plan_labels`) on a tile rendered with camera ``pose``: boxed,
    laid out so that none overlaps (:mod:`.labels2d`); returns the boxes."""
    from .labels2d import draw_labels
    from .views import project

    if not labels:
        return []
    w, h = img.size
    anchors = np.array([a for a, _, _ in labels])
    fwd = pose.center - pose.eye
    front = (anchors - pose.eye) @ fwd > 0
    xy = project(pose, aspect, anchors) * (w, h)
    xy[~front] = np.nan  # behind the camera: not drawn
    size = max(11, min(w, h) // 34)
    return draw_labels(img, xy, [t for _, t, _ in labels], size, [c for _, _, c in labels])


# -- subprocess wrapper ------------------------------------------------------------------------
def parse_size(text: str) -> tuple[int, int]:
    """'1280x720' -> (1280, 720)."""
    try:
        w, h = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise RenderError(f"size must be WIDTHxHEIGHT in pixels, e.g. 1280x720; found {text!r}") from None
    return w, h


def parse_slices(items: Iterable[str]) -> dict[str, int]:
    """['axial=30', 'coronal=12'] -> {'axial': 30, 'coronal': 12}."""
    out = {}
    for it in items:
        plane, _, idx = str(it).partition("=")
        try:
            out[plane.strip()] = int(idx)
        except ValueError:
            raise RenderError(f"slice must be PLANE=INDEX, e.g. axial=40; found {it!r}") from None
    return out


def parse_opacity(items: Iterable[str]) -> dict[str, float]:
    """['liver=0.4'] -> {'liver': 0.4}."""
    out = {}
    for it in items:
        name, _, val = str(it).partition("=")
        try:
            out[name.strip()] = float(val)
        except ValueError:
            raise RenderError(f"opacity must be STRUCTURE=VALUE with VALUE in 0..1, e.g. liver=0.4; found {it!r}") from None
    return out


def snapshot_subprocess(scene_path, out_png, views: Sequence[str] = DEFAULT_VIEWS, size=(1280, 720), *,
                        hide: Iterable[str] = (), show_body: bool = False, legend: bool = True,
                        color_by_uncertainty: bool = False, timeout: float = 180.0,
                        slices: Mapping[str, int] | None = None, window: str = "soft_tissue",
                        opacity: Mapping[str, float] | None = None, plan: bool = False) -> Path:
    """:func:`render_views` in a child process; a crash or hang raises :class:`RenderError`."""
    for v in views:
        check_view(v)
    out = Path(out_png).resolve()
    cmd = [sys.executable, "-m", f"{__package__}.offscreen", str(Path(scene_path).resolve()), "-o", str(out),
           "--size", f"{int(size[0])}x{int(size[1])}"]
    for v in views:
        cmd += ["--view", v]
    for h in hide:
        cmd += ["--hide", h]
    for plane, index in (slices or {}).items():
        cmd += ["--slice", f"{plane}={int(index)}"]
    cmd += ["--window", window]
    for name, value in (opacity or {}).items():
        cmd += ["--opacity", f"{name}={float(value)}"]
    cmd += ["--plan"] * bool(plan)
    cmd += ["--show-body"] * bool(show_body) + ["--no-legend"] * (not legend) + ["--uncertainty"] * bool(color_by_uncertainty)
    env = dict(os.environ)
    if not env.get("DISPLAY"):
        env.setdefault("EGL_PLATFORM", "surfaceless")
    root = str(Path(__file__).resolve().parents[__package__.count(".") + 1])  # the folder holding the top package
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise RenderError(f"snapshot of {scene_path}: renderer did not finish within {timeout:.0f} s") from None
    tail = "\n".join((p.stderr or "").strip().splitlines()[-8:])
    if p.returncode != 0:
        if p.returncode < 0 or p.returncode in (134, 139):
            why = (f"the Open3D renderer crashed (signal {-p.returncode if p.returncode < 0 else p.returncode - 128}); "
                   "headless rendering needs EGL/OpenGL: apt-get install -y libegl1 libgl1 libegl-mesa0 "
                   "libgl1-mesa-dri, and EGL_PLATFORM=surfaceless when there is no DISPLAY")
        else:
            why = f"the renderer exited with code {p.returncode}"
        raise RenderError(f"snapshot of {scene_path} failed: {why}\n{tail}")
    if not out.is_file():
        raise RenderError(f"snapshot of {scene_path}: the renderer exited cleanly but wrote no {out}\n{tail}")
    _ = time.perf_counter() - t0
    return out


snapshot = snapshot_subprocess


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.render.offscreen", description="Headless snapshot of a scene.")
    ap.add_argument("scene")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--view", action="append", choices=list(VIEWS))
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--hide", action="append", default=[])
    ap.add_argument("--show-body", action="store_true")
    ap.add_argument("--no-legend", action="store_true")
    ap.add_argument("--uncertainty", action="store_true")
    ap.add_argument("--slice", action="append", default=[], metavar="PLANE=INDEX")
    ap.add_argument("--window", default="soft_tissue")
    ap.add_argument("--opacity", action="append", default=[], metavar="STRUCTURE=0..1")
    ap.add_argument("--plan", action="store_true", help="draw the scene's plan")
    a = ap.parse_args(argv)
    try:
        render_views(a.scene, a.output, a.view or DEFAULT_VIEWS, parse_size(a.size), hide=a.hide,
                     show_body=a.show_body, legend=not a.no_legend, color_by_uncertainty=a.uncertainty,
                     slices=parse_slices(a.slice), window=a.window, opacity=parse_opacity(a.opacity),
                     plan=a.plan)
    except SurgitwinError as e:
        print(f"pipeline.render.offscreen: error: {e}", file=sys.stderr)
        return 2
    print(a.output)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
