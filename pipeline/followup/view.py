"""What the viewer shows of a scene's time points: one time point, another one overlaid, change colours.

The core the interactive window (:mod:`viewer.timepoints`) and the headless pictures
(``surgitwin view SCENE --timepoint ID --compare ID --color-by-change NAME --screenshot OUT``)
share; it never imports :mod:`viewer`.

- **Viewed time point** (``timepoint``, default the current one): its own scene bundle (meshes,
  image, plan), in its own patient space.
- **Compare** (``compare``): the other time point's surfaces mapped into the viewed time point's
  space through the stored *rigid* transforms (``transforms/registration.json``, via the
  baseline: :func:`.timepoints.rigid_between`), drawn translucent in one tint. Rigid only, as
  the change report: anatomy that did not change superimposes, growth shows as a shell.
- **Colour by change** (``color_by_change``): every vertex of the structure's viewed surface
  coloured by its signed distance (mm) to the other time point's surface (the other's label
  mask, mapped rigidly): red = growth, blue = shrinkage, *in time order* (whichever of the two
  is viewed), white within ``threshold_mm`` (segmentation noise), saturated at
  ``limit_mm``. The other time point is ``compare`` when given, else the previous one (the
  next one when the baseline is viewed).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..errors import SceneError, SurgitwinError

COMPARE_TINT = (0, 150, 160)  # teal: the compared time point's surfaces (not a structure or change colour)
COMPARE_OPACITY = 0.4
COMPARE_LIFT_MM = 0.8  # the compared surfaces are drawn this far out along their normals (display only)
FOCUS_OPACITY = 0.3  # with colour by change, the other structures (unless told otherwise)
CHANGE_LIMIT_MM = 5.0  # colours saturate here (as the report's change meshes)
CHANGE_THRESHOLD_MM = 1.0  # |distance| below this is drawn white: no change


@dataclass
class ChangeColours:
    """Signed distance (mm, + = growth in time) of each vertex of ``structure``'s viewed surface."""

    structure: str
    viewed: str
    other: str
    signed_mm: np.ndarray
    limit_mm: float = CHANGE_LIMIT_MM
    threshold_mm: float = CHANGE_THRESHOLD_MM

    @property
    def rgb(self) -> np.ndarray:
        """(n, 3) 0..1 vertex colours."""
        return change_colormap(self.signed_mm, self.limit_mm, self.threshold_mm)

    def summary(self) -> dict:
        d = self.signed_mm[np.isfinite(self.signed_mm)]
        thr = self.threshold_mm
        return {"structure": self.structure, "viewed": self.viewed, "other": self.other,
                "limit_mm": self.limit_mm, "threshold_mm": thr, "vertices": int(len(self.signed_mm)),
                "mean_mm": round(float(d.mean()), 3) if len(d) else None,
                "growth_fraction": round(float((d >= thr).mean()), 4) if len(d) else None,
                "shrinkage_fraction": round(float((d <= -thr).mean()), 4) if len(d) else None,
                "new": bool(np.isinf(self.signed_mm).all())}


@dataclass
class TimepointView:
    """The viewed time point's scene, the compared one's surfaces in its space, change colours."""

    root: Path
    timepoints: list[dict]
    viewed: dict
    scene: object  # pipeline.scene.Scene of the viewed time point (meshes loaded)
    compare: dict | None = None
    compare_meshes: dict = field(default_factory=dict)  # name -> trimesh, in the viewed space
    change: ChangeColours | None = None

    def state(self) -> dict:
        return {"timepoints": [{"id": t["id"], "study_date": t.get("study_date"), "current": bool(t.get("current"))}
                               for t in self.timepoints],
                "viewed": self.viewed["id"], "compare": self.compare["id"] if self.compare else None,
                "change": self.change.summary() if self.change else None}


# -- time points ---------------------------------------------------------------------------------
def scene_root(scene_path) -> Path:
    """The baseline folder of ``scene_path`` (a time point folder leads back to its baseline)."""
    from ..scene.scene import resolve_scene_path

    folder = resolve_scene_path(scene_path)
    d = json.loads((folder / "scene.json").read_text())
    back = (d.get("timepoint") or {}).get("baseline")
    if back and (folder / back / "scene.json").is_file():
        return (folder / back).resolve()
    return folder


def timepoint_label(tp: dict) -> str:
    """'20250601 (current)' / 'baseline 20240115': what selectors list."""
    date = tp.get("study_date")
    text = tp["id"] if not date or date == tp["id"] else f"{tp['id']} {date}"
    if tp.get("role") == "baseline" and tp["id"] != "baseline":
        text = f"baseline {text}"
    return text + (" (current)" if tp.get("current") else "")


def timepoints_of(scene_path) -> tuple[Path, list[dict]]:
    from .timepoints import list_timepoints

    root = scene_root(scene_path)
    return root, list_timepoints(root)


def opened_timepoint(scene_path, tp_id: str | None = None) -> tuple[Path, list[dict], dict]:
    """(baseline folder, time points, the one to show): ``tp_id``, else the folder opened when it
    is a time point's, else the current one (a scene folder opens on its latest study)."""
    from ..scene.scene import resolve_scene_path
    from .timepoints import find_timepoint

    root, tps = timepoints_of(scene_path)
    if tp_id is None:
        here = resolve_scene_path(scene_path).resolve()
        own = [t for t in tps if (root / t["path"]).resolve() == here and t.get("path") != "."]
        if own:
            return root, tps, own[0]
    return root, tps, find_timepoint(tps, tp_id, root)


def timepoint_scene_path(scene_path, tp_id: str | None = None) -> Path:
    """The folder of the time point to show (see :func:`opened_timepoint`)."""
    root, _, tp = opened_timepoint(scene_path, tp_id)
    return root / tp["path"]


def _index(tps: list[dict], tp: dict) -> int:
    return [t["id"] for t in tps].index(tp["id"])


def other_for_change(tps: list[dict], viewed: dict, compare: dict | None, root=None) -> dict:
    """``compare``, else the time point before ``viewed`` (after it, for the first)."""
    if compare is not None:
        return compare
    i = _index(tps, viewed)
    if len(tps) < 2:
        raise SceneError("colour by change needs a second time point; this scene has one "
                         "(add one with surgitwin follow-up)", path=root, rule="change needs two time points")
    return tps[i - 1] if i > 0 else tps[1]


# -- geometry ------------------------------------------------------------------------------------
def mapping(root, viewed: dict, other: dict) -> np.ndarray:
    """4x4 LPS: a point of ``other``'s space -> the same anatomy in ``viewed``'s space (rigid)."""
    from .timepoints import rigid_between

    return rigid_between(root, viewed, other)


def mapped_meshes(root, viewed: dict, other: dict, names: Iterable[str] | None = None) -> dict:
    """name -> trimesh: ``other``'s surfaces moved into ``viewed``'s space."""
    from ..scene import load_scene

    m = mapping(root, viewed, other)
    sc = load_scene(Path(root) / other["path"])
    keep = None if names is None else set(names)
    out = {}
    for am in sc.meshes:
        if am.mesh is None or len(am.mesh.faces) == 0 or (keep is not None and am.name not in keep):
            continue
        mesh = am.mesh.copy()
        mesh.apply_transform(m)
        out[am.name] = mesh
    return out


def signed_change(root, viewed: dict, other: dict, structure: str, viewed_mesh=None) -> np.ndarray:
    """Signed distance (mm) of each vertex of ``structure``'s viewed surface to ``other``'s surface,
    positive where the structure grew *in time* (viewed later: the viewed surface lies outside
    the other's; viewed earlier: inside it). +inf: the structure is absent at ``other`` (new)."""
    from ..scene import load_scene
    from .change import _crop, sample, signed_distance, transform_points
    from .timepoints import list_timepoints

    root = Path(root)
    if viewed_mesh is None:
        vs = load_scene(root / viewed["path"])
        if structure not in vs.structure_names or vs.mesh(structure).mesh is None:
            raise SceneError(f"structure '{structure}' has no surface at time point '{viewed['id']}'; "
                             f"known: {vs.structure_names}", path=str(root / viewed["path"]),
                             rule="colour by change needs the structure's surface")
        viewed_mesh = vs.mesh(structure).mesh
    lm = load_scene(root / other["path"], load_meshes=False).load_labelmap()
    if structure not in lm.labels:
        raise SceneError(f"structure '{structure}' is not in the label table of time point '{other['id']}'",
                         path=str(root / other["path"]), rule="colour by change needs the structure at both time points")
    pts = transform_points(mapping(root, other, viewed), np.asarray(viewed_mesh.vertices))
    mask = lm.array == lm.labels.by_name(structure).id
    if not mask.any():
        return np.full(len(pts), np.inf)
    grid, cropped = _crop(lm.volume, mask, pts, pad_mm=10.0)
    d = sample(signed_distance(cropped, grid), pts)
    tps = list_timepoints(root)
    return d if _index(tps, viewed) > _index(tps, other) else -d


def change_colormap(d: np.ndarray, limit_mm: float = CHANGE_LIMIT_MM,
                    threshold_mm: float = CHANGE_THRESHOLD_MM) -> np.ndarray:
    """(n,) signed mm -> (n, 3) RGB 0..1: white within ``threshold_mm``, then to red (growth) or
    blue (shrinkage), saturated at ``limit_mm``; NaN (outside the other scan) is white."""
    from .change import vertex_colours

    d = np.nan_to_num(np.asarray(d, dtype=np.float64), nan=0.0, posinf=limit_mm, neginf=-limit_mm)
    d = np.where(np.abs(d) < threshold_mm, 0.0, d)
    return vertex_colours(d, limit_mm)[:, :3] / 255.0


def change_colorbar_image(width: int, height: int, limit_mm: float = CHANGE_LIMIT_MM,
                          threshold_mm: float = CHANGE_THRESHOLD_MM, title: str = "change",
                          subtitle: str = ""):
    """PIL picture of the change scale in mm, its ends and the white band named."""
    from PIL import Image, ImageDraw

    from ..render.offscreen import _font

    img = Image.new("RGB", (int(width), int(height)), (250, 250, 250))
    d = ImageDraw.Draw(img)
    s = max(9, min(14, height // 6))
    head = (s + 4) * (2 if subtitle else 1)
    bar_h = max(6, height - head - 2 * s - 10)
    x0, x1, y0 = 6, width - 6, head
    ramp = (change_colormap(np.linspace(-limit_mm, limit_mm, max(x1 - x0, 2)), limit_mm, threshold_mm) * 255)
    img.paste(Image.fromarray(np.repeat(ramp.astype(np.uint8)[None], bar_h, axis=0)), (x0, y0))
    d.rectangle([x0 - 1, y0 - 1, x1, y0 + bar_h], outline=(60, 60, 60))
    d.text((x0, 2), title, font=_font(s), fill=(30, 30, 30))
    if subtitle:
        d.text((x0, s + 5), subtitle, font=_font(s), fill=(30, 30, 30))
    y = y0 + bar_h + 2
    d.text((x0, y), f"-{limit_mm:g} mm shrink", font=_font(s), fill=(30, 30, 30))
    d.text((x1, y), f"+{limit_mm:g} mm grow", font=_font(s), fill=(30, 30, 30), anchor="ra")
    d.text((x0, y + s + 2), f"white: |change| < {threshold_mm:g} mm", font=_font(s), fill=(30, 30, 30))
    return img


def timepoint_view(scene_path, *, timepoint: str | None = None, compare: str | None = None,
                   color_by_change: str | None = None, limit_mm: float = CHANGE_LIMIT_MM,
                   threshold_mm: float = CHANGE_THRESHOLD_MM) -> TimepointView:
    """Load what the viewer shows for these choices (see the module docstring)."""
    from ..scene import load_scene
    from .timepoints import find_timepoint

    root, tps, viewed = opened_timepoint(scene_path, timepoint)
    other = find_timepoint(tps, compare, root) if compare is not None else None
    if other is not None and other["id"] == viewed["id"]:
        raise SceneError(f"--compare names the viewed time point '{viewed['id']}'; choose another of "
                         f"{[t['id'] for t in tps]}", path=str(root), rule="compare with another time point")
    scene = load_scene(root / viewed["path"])
    out = TimepointView(root, tps, viewed, scene, other)
    if other is not None:
        out.compare_meshes = mapped_meshes(root, viewed, other)
    if color_by_change:
        if color_by_change not in scene.structure_names:
            raise SceneError(f"structure '{color_by_change}' is not in time point '{viewed['id']}'; known: "
                             f"{scene.structure_names}", path=str(root / viewed["path"]), rule="structure must exist")
        o = other_for_change(tps, viewed, other, root)
        d = signed_change(root, viewed, o, color_by_change, scene.mesh(color_by_change).mesh)
        out.change = ChangeColours(color_by_change, viewed["id"], o["id"], d, float(limit_mm), float(threshold_mm))
    return out


def lifted(mesh, mm: float = COMPARE_LIFT_MM):
    """A copy moved ``mm`` out along its vertex normals: where two time points' surfaces coincide
    (unchanged anatomy) the translucent one stays in front instead of flickering through in
    patches. Display only: every number is computed on the surfaces as they are."""
    out = mesh.copy()
    out.vertices = np.asarray(mesh.vertices) + mm * np.asarray(mesh.vertex_normals)
    return out


def focus_opacity(tv: TimepointView, opacity: Mapping[str, float] | None) -> dict:
    """With colour by change, the other structures are see-through (the coloured one may lie
    inside them, as a tumour in its organ); ``opacity`` overrides."""
    out = {}
    if tv.change is not None:
        out = {n: FOCUS_OPACITY for n in tv.scene.structure_names if n != tv.change.structure}
    return {**out, **dict(opacity or {})}


def compare_material(opacity: float = COMPARE_OPACITY):
    """Translucent tint, matte: with the structures' reflectance a transparent surface in
    Filament is mostly white highlight and the tint reads as grey."""
    from open3d.visualization import rendering

    mat = rendering.MaterialRecord()
    mat.shader = "defaultLitTransparency"
    a = float(np.clip(opacity, 0.02, 0.99))
    mat.base_color = (*(c / 255.0 for c in COMPARE_TINT), float(np.sqrt(a)))  # Filament blends with alpha squared
    mat.base_roughness = 1.0
    mat.base_reflectance = 0.0
    return mat


# -- headless picture ----------------------------------------------------------------------------
def timepoint_geometries(tv: TimepointView, styles, compare_opacity: float = COMPARE_OPACITY) -> list:
    """[(name, open3d mesh, material)]: the viewed structures (the change-coloured one with its
    vertex colours), then the compared time point's surfaces (``compare:<name>``) of the shown ones."""
    from ..render.drawing import to_o3d_mesh
    from ..render.offscreen import material_for, scene_geometries

    geoms = scene_geometries(tv.scene, styles)
    if tv.change is not None:  # the coloured surface replaces the plain one
        geoms = [g for g in geoms if g[0] != tv.change.structure]
        st = styles[tv.change.structure]
        geoms.append((tv.change.structure, to_o3d_mesh(tv.scene.mesh(tv.change.structure).mesh, tv.change.rgb),
                      material_for(st, vertex_colors=True)))
    shown = {n for n, st in styles.items() if st.visible}
    for name, mesh in tv.compare_meshes.items():
        if name in shown:
            geoms.append((f"compare:{name}", to_o3d_mesh(lifted(mesh)), compare_material(compare_opacity)))
    return geoms


def _render_tiles(geoms: list, views: Sequence[str], tile_w: int, height: int, vfov_deg: float) -> list:
    """One annotated PIL tile per view (Open3D offscreen, this process)."""
    from ..render.offscreen import BACKGROUND, _ensure_headless_env, configure_view, set_priority, shoot_views

    _ensure_headless_env()
    from open3d.visualization import rendering

    renderer = rendering.OffscreenRenderer(tile_w, height)
    try:
        sc = renderer.scene
        sc.set_background(list(BACKGROUND))
        configure_view(sc.view)
        for name, mesh, mat in geoms:
            sc.add_geometry(name, mesh, mat)
            set_priority(sc, name, name.split(":")[-1])
            if name.startswith("compare:"):
                sc.scene.set_geometry_priority(name, 8)  # after the opaque surfaces it wraps
        # the camera frames the viewed time point (as the window does): with or without a
        # compared one, the same anatomy lands on the same pixels
        own = [np.asarray(g.vertices) for n, g, _ in geoms if not n.startswith("compare:")]
        pts = np.concatenate(own) if own else np.zeros((1, 3))
        return shoot_views(renderer, pts, views, (tile_w, height), vfov_deg)
    finally:
        del renderer  # release the EGL context before PIL work / process exit


def render_timepoint_views(scene_path, out_png, views: Sequence[str] = ("anterior",), size=(1280, 720), *,
                           timepoint: str | None = None, compare: str | None = None,
                           compare_opacity: float = COMPARE_OPACITY, color_by_change: str | None = None,
                           threshold_mm: float = CHANGE_THRESHOLD_MM, limit_mm: float = CHANGE_LIMIT_MM,
                           hide: Iterable[str] = (), opacity: Mapping[str, float] | None = None,
                           legend: bool = True, vfov_deg: float = 30.0, state_json=None) -> Path:
    """The time point picture in this process (Open3D offscreen); ``state_json`` gets
    :meth:`TimepointView.state`. Body/skin are hidden as in snapshots."""
    from PIL import Image

    from ..fileio import atomic_save_png, atomic_write_json
    from ..render.offscreen import RenderError, structure_styles
    from ..render.views import check_view

    views = [check_view(v) for v in views]
    width, height = int(size[0]), int(size[1])
    legend_w = min(260, width // 4) if legend else 0
    tile_w = (width - legend_w) // max(len(views), 1)
    if tile_w < 32 or height < 64:
        raise RenderError(f"picture size {width}x{height} is too small for {len(views)} views")
    tv = timepoint_view(scene_path, timepoint=timepoint, compare=compare, color_by_change=color_by_change,
                        limit_mm=limit_mm, threshold_mm=threshold_mm)
    styles = structure_styles(tv.scene, hide=hide, body_opacity=None, opacity=focus_opacity(tv, opacity))
    tiles = _render_tiles(timepoint_geometries(tv, styles, compare_opacity), views, tile_w, height, vfov_deg)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    for n, t in enumerate(tiles):
        canvas.paste(t, (n * tile_w, 0))
    if legend:
        canvas.paste(legend_strip(tv, styles, legend_w, height, compare_opacity), (width - legend_w, 0))
    if state_json:
        atomic_write_json(state_json, tv.state())
    return atomic_save_png(canvas, out_png)


def legend_strip(tv: TimepointView, styles, width: int, height: int, compare_opacity: float):
    """Which time point is shown (and compared), the structures, the change scale."""
    from PIL import Image, ImageDraw

    from ..render.offscreen import _font, draw_legend

    strip = Image.new("RGB", (width, height), (250, 250, 250))
    d = ImageDraw.Draw(strip)
    s = max(10, min(15, height // 40))
    d.text((8, 6), "time point shown", font=_font(s), fill=(90, 90, 90))
    d.text((8, s + 10), timepoint_label(tv.viewed), font=_font(s), fill=(30, 30, 30))
    y = 2 * s + 18
    if tv.compare is not None:
        d.rectangle([8, y, 8 + s, y + s], fill=COMPARE_TINT, outline=(60, 60, 60))
        d.text((14 + s, y), f"{tv.compare['id']} ({compare_opacity:.0%}, rigid)", font=_font(s), fill=(30, 30, 30))
        y += s + 6
    bar_h = min(110, height // 4) if tv.change is not None else 0
    body = Image.new("RGB", (width, max(height - y - bar_h, 16)), (250, 250, 250))
    draw_legend(body, styles)
    strip.paste(body, (0, y))
    if bar_h:
        c = tv.change
        a, b = (c.other, c.viewed) if _later(tv, c) else (c.viewed, c.other)
        strip.paste(change_colorbar_image(width, bar_h, c.limit_mm, c.threshold_mm, title=f"{c.structure} change",
                                          subtitle=f"{a} -> {b}"), (0, height - bar_h))
    return strip


def _later(tv: TimepointView, c: ChangeColours) -> bool:
    ids = [t["id"] for t in tv.timepoints]
    return ids.index(c.viewed) > ids.index(c.other)


# -- child process (Open3D kills the process instead of raising when EGL is unusable) -------------
def screenshot_subprocess(scene_path, out_png, views: Sequence[str] = ("anterior",), size=(1280, 720), *,
                          timepoint=None, compare=None, compare_opacity: float = COMPARE_OPACITY,
                          color_by_change=None, threshold_mm: float = CHANGE_THRESHOLD_MM,
                          hide: Iterable[str] = (), state_json=None, timeout: float = 180.0) -> Path:
    """:func:`render_timepoint_views` in a child process; a crash or hang raises RenderError."""
    from ..render.offscreen import RenderError

    out = Path(out_png).resolve()
    cmd = [sys.executable, "-m", f"{__package__}.view", str(Path(scene_path).resolve()), "-o", str(out),
           "--size", f"{int(size[0])}x{int(size[1])}", "--compare-opacity", str(float(compare_opacity)),
           "--change-threshold", str(float(threshold_mm))]
    for v in views:
        cmd += ["--view", v]
    for h in hide:
        cmd += ["--hide", h]
    for flag, value in (("--timepoint", timepoint), ("--compare", compare), ("--color-by-change", color_by_change),
                        ("--state", state_json and str(Path(state_json).resolve()))):
        if value:
            cmd += [flag, str(value)]
    env = dict(os.environ)
    if not env.get("DISPLAY"):
        env.setdefault("EGL_PLATFORM", "surfaceless")
    top = str(Path(__file__).resolve().parents[__package__.count(".") + 1])
    env["PYTHONPATH"] = top + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise RenderError(f"time point picture of {scene_path}: the renderer did not finish within {timeout:.0f} s") from None
    tail = "\n".join((p.stderr or "").strip().splitlines()[-8:])
    if p.returncode == 2 and "error:" in tail:  # a SurgitwinError in the child: its message, as is
        raise SurgitwinError(tail.split("error: ", 1)[-1], path=str(scene_path))
    if p.returncode != 0 or not out.is_file():
        raise RenderError(f"time point picture of {scene_path} failed (renderer exit code {p.returncode}; headless "
                          f"rendering needs EGL: EGL_PLATFORM=surfaceless)\n{tail}")
    return out


def main(argv=None) -> int:
    from ..render.offscreen import parse_size
    from ..render.views import VIEWS

    ap = argparse.ArgumentParser(prog="python -m pipeline.followup.view", description="Headless time point picture.")
    ap.add_argument("scene")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--view", action="append", choices=list(VIEWS))
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--timepoint")
    ap.add_argument("--compare")
    ap.add_argument("--compare-opacity", type=float, default=COMPARE_OPACITY)
    ap.add_argument("--color-by-change")
    ap.add_argument("--change-threshold", type=float, default=CHANGE_THRESHOLD_MM)
    ap.add_argument("--hide", action="append", default=[])
    ap.add_argument("--state")
    a = ap.parse_args(argv)
    try:
        render_timepoint_views(a.scene, a.output, a.view or ["anterior"], parse_size(a.size), timepoint=a.timepoint,
                               compare=a.compare, compare_opacity=a.compare_opacity, color_by_change=a.color_by_change,
                               threshold_mm=a.change_threshold, hide=a.hide, state_json=a.state)
    except SurgitwinError as e:
        print(f"pipeline.followup.view: error: {e}", file=sys.stderr)
        return 2
    print(a.output)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
