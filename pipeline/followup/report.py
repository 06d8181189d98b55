"""The "What changed" section of the HTML report: tables, side-by-side slices, a change-coloured mesh.

:func:`change_section` returns what the template needs (or None for a scene with one time
point): the change report of the current time point (for a baseline scene) or of the time
point itself (for a scene under ``timepoints/``), side-by-side axial slices through the structure
that changed most (earlier and later, each in its own space, at the same anatomical point), and
an anterior view of that structure's later surface coloured by signed distance (red = grew,
blue = shrank), drawn with PIL so it needs no OpenGL. Radiological convention: the patient's
right is on the picture's left, and the picture says so.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from .change import COLOUR_RANGE_MM


def _found(scene):
    """(change report, baseline scene folder, earlier and later time point entries), None (one
    time point), or {"refused": id, ...} when the current time point's changes were not reported."""
    from .timepoints import find_timepoint, list_timepoints

    root = Path(scene.root)
    tp = (scene.extra or {}).get("timepoint")
    if tp:  # a time point's own scene: its change report sits beside it
        if not (root / "change_report.json").exists():
            return None
        rep = json.loads((root / "change_report.json").read_text())
        base = (root / tp.get("baseline", "../..")).resolve()
    else:
        tps = (scene.extra or {}).get("timepoints") or []
        cur = [t for t in tps if t.get("current") and t.get("path") != "."]
        if not cur:
            return None
        if not cur[0].get("change_report"):  # added, but its registration was not good enough
            info = json.loads((root / cur[0]["registration"]).read_text())
            return {"refused": cur[0]["id"], "residuals": info.get("residuals"), "limit": info.get("residual_limit_mm")}
        rep = json.loads((root / cur[0]["change_report"]).read_text())
        base = root
    tps = list_timepoints(base)
    return rep, base, find_timepoint(tps, rep["from"], base), find_timepoint(tps, rep["to"], base)


def _focus_row(rep: dict) -> dict | None:
    rows = [r for r in rep["structures"] if r.get("surface") and r.get("change_mesh")]
    if not rows:
        return None
    lesions = [r for r in rows if r["lesion"]]
    return max(lesions or rows, key=lambda r: abs(r["volume_change_percent"] or 0.0))


def change_section(scene) -> dict | None:
    """What the report template's "What changed" section shows, or None (one time point)."""
    if scene.root is None:
        return None
    found = _found(scene)
    if found is None:
        return None
    if "refused" in found:
        return {"report": None, **found}
    rep, base, ta, tb = found
    out = {"report": rep, "pictures": [], "notes": [], "colour_range_mm": COLOUR_RANGE_MM}
    row = _focus_row(rep)
    if row is not None:
        try:
            out["pictures"] = _pictures(row, base, ta, tb)
            out["focus"] = row["name"]
        except Exception as e:  # noqa: BLE001 - a picture must never take the report down; say why it is missing
            out["notes"].append(f"change pictures not drawn: {type(e).__name__}: {e}")
    later = json.loads((base / tb["path"] / "scene.json").read_text())
    out["carried"] = later.get("carried_plan")
    return out


def _pictures(row: dict, base: Path, ta: dict, tb: dict) -> list[tuple[str, str]]:
    import trimesh

    from ..scene import load_scene
    from ..scene.report_slices import data_uri, slice_picture
    from .timepoints import rigid_between

    a, b = load_scene(base / ta["path"], load_meshes=False), load_scene(base / tb["path"], load_meshes=False)
    ia, la, ib, lb = a.load_image(), a.load_labelmap(), b.load_image(), b.load_labelmap()
    ca = np.asarray(row["centroid_lps"][0], float)
    a_to_b = rigid_between(base, tb, ta)  # the same anatomical point in the later space
    cb = a_to_b[:3, :3] @ ca + a_to_b[:3, 3]
    half = np.array([60.0, 60.0, 40.0])
    pics = [(f"{row['name']}: earlier ({ta['id']}), axial through its centre",
             data_uri(slice_picture(ia, la, "axial", ca, ca - half, ca + half, title=f"earlier {ta['id']}"))),
            (f"{row['name']}: later ({tb['id']}), the same point after registration",
             data_uri(slice_picture(ib, lb, "axial", cb, cb - half, cb + half, title=f"later {tb['id']}")))]
    mesh = trimesh.load_mesh(str(base / tb["path"] / row["change_mesh"]), process=False)
    earlier = None
    rel = next((m.qa.get("mesh_path") for m in a.meshes if m.name == row["name"]), None)
    if rel and (base / ta["path"] / rel).exists():
        earlier = trimesh.load_mesh(str(base / ta["path"] / rel), process=False)
        earlier.apply_transform(a_to_b)  # into the later space, where the coloured surface lies
    pics.append((f"{row['name']}: later surface coloured by signed distance from the earlier one (anterior view; "
                 f"red = grew, blue = shrank, saturating at ±{COLOUR_RANGE_MM:g} mm; white line: the earlier outline)",
                 data_uri(anterior_view(mesh, outline=earlier))))
    return pics


def anterior_view(mesh, size: int = 420, outline=None) -> bytes:
    """PNG of a vertex-coloured mesh seen from the front (patient's right on the left), flat-shaded.

    ``outline``: another mesh (the earlier surface, in the same space) drawn as a white silhouette
    line over it, so growth shows as colour outside the line.
    """
    from PIL import Image, ImageDraw, ImageFont
    from scipy import ndimage

    v = np.asarray(mesh.vertices, float)
    f = np.asarray(mesh.faces)
    col = np.asarray(mesh.visual.vertex_colors, float)[:, :3]
    allv = v if outline is None else np.concatenate([v, np.asarray(outline.vertices, float)])
    lo, hi = allv.min(0), allv.max(0)
    scale = (size - 40) / max(hi[0] - lo[0], hi[2] - lo[2], 1e-6)

    def project(p):  # LPS +x (patient left) -> picture right; superior at the top
        return 20 + (p[:, 0] - lo[0]) * scale, size - 20 - (p[:, 2] - lo[2]) * scale

    px, py = project(v)
    tri = v[f]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    facing = -normals[:, 1]  # the viewer stands anterior (towards -y)
    order = np.argsort(-tri[:, :, 1].mean(1))  # far (posterior) first
    img = Image.new("RGB", (size, size), (24, 26, 32))
    draw = ImageDraw.Draw(img)
    for k in order:
        if facing[k] <= 0:
            continue
        c = col[f[k]].mean(0) * (0.35 + 0.65 * facing[k])
        draw.polygon([(px[i], py[i]) for i in f[k]], fill=tuple(int(x) for x in np.clip(c, 0, 255)))
    if outline is not None:
        sil = Image.new("L", (size, size), 0)
        sd = ImageDraw.Draw(sil)
        ox, oy = project(np.asarray(outline.vertices, float))
        for face in np.asarray(outline.faces):
            sd.polygon([(ox[i], oy[i]) for i in face], fill=255)
        m = np.asarray(sil) > 0
        edge = m & ~ndimage.binary_erosion(m, iterations=2)
        arr = np.asarray(img).copy()
        arr[edge] = (255, 255, 255)
        img = Image.fromarray(arr)
        draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=15)
    draw.text((6, size // 2 - 8), "R", fill=(255, 255, 255), font=font)
    draw.text((size - 16, size // 2 - 8), "L", fill=(255, 255, 255), font=font)
    draw.text((size // 2 - 5, 3), "S", fill=(255, 255, 255), font=font)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
