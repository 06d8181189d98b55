"""Mesh exports of a scene: STL (3D printing), OBJ (+MTL colours), PLY (vertex colours), GLB.

Coordinates: STL, OBJ and PLY keep the scene's LPS millimetres and say so in their header
(``SPACE=LPS``, the tag 3D Slicer reads to place models). GLB follows the glTF convention
(metres, +Y up, +Z forward): each node carries the matrix that maps LPS mm to
(x = patient Left, y = Superior, z = Anterior) metres, so any glTF viewer shows the patient
upright, facing the viewer, with the patient's left on the viewer's right, and the LPS
vertices are kept untouched in the buffers. The matrix is also in ``asset.extras``.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable

import numpy as np

from ..fileio import atomic_write_bytes

from . import ExportError, MESH_FORMATS

# LPS mm -> glTF metres: x_g = L, y_g = S, z_g = A = -P (right-handed: L x S = A)
LPS_TO_GLTF = np.array([[0.001, 0, 0, 0], [0, 0, 0.001, 0], [0, -0.001, 0, 0], [0, 0, 0, 1.0]])


def _atomic_write(path: Path, data: bytes) -> Path:
    return atomic_write_bytes(path, data)


def export_items(scene, structures: Iterable[str] | None = None, include_cuts: bool = False) -> list[tuple[str, object, tuple]]:
    """(name, trimesh.Trimesh in LPS mm, rgb) for the selected structures (and plan cut pieces)."""
    names = list(structures) if structures else scene.structure_names
    items = []
    for n in names:
        am = scene.mesh(n)  # raises SceneError naming the unknown structure
        if am.mesh is None:
            raise ExportError(f"structure '{n}': scene loaded without meshes")
        items.append((n, am.mesh, tuple(am.label.rgb)))
    if include_cuts and scene.root is not None:
        import trimesh

        for cut in scene.plan.get("cuts", []):
            if structures and cut.get("structure") not in names:
                continue
            rgb = tuple(scene.mesh(cut["structure"]).label.rgb) if cut.get("structure") in scene.structure_names else (200, 200, 200)
            for part, rel in (cut.get("meshes") or {}).items():
                p = Path(scene.root) / rel
                if p.exists():
                    shade = rgb if part == "remnant" else tuple(int(c + (255 - c) * 0.5) for c in rgb)
                    items.append((f"{cut['id']}_{cut['structure']}_{part}", trimesh.load_mesh(str(p), process=False), shade))
    return items


def stl_bytes(mesh, name: str) -> bytes:
    """Binary STL (trimesh) with an 80-byte header naming the structure and ``SPACE=LPS``."""
    from trimesh.exchange.stl import export_stl

    data = export_stl(mesh)
    header = f"SPACE=LPS surgitwin structure={name} units=mm".encode("ascii", "replace")[:80].ljust(80, b" ")
    return header + data[80:]


def obj_text(items, mtl_name: str | None) -> str:
    """OBJ with one object per item (``o name``, ``usemtl name``) and 1-based indices."""
    out = io.StringIO()
    out.write("# SPACE=LPS units=mm written by surgitwin\n")
    if mtl_name:
        out.write(f"mtllib {mtl_name}\n")
    offset = 1
    for name, mesh, _ in items:
        out.write(f"o {name}\n")
        if mtl_name:
            out.write(f"usemtl {name}\n")
        np.savetxt(out, np.asarray(mesh.vertices), fmt="v %.6f %.6f %.6f")
        np.savetxt(out, np.asarray(mesh.faces) + offset, fmt="f %d %d %d")
        offset += len(mesh.vertices)
    return out.getvalue()


def mtl_text(items) -> str:
    lines = ["# surgitwin structure colours"]
    for name, _, rgb in items:
        r, g, b = (c / 255.0 for c in rgb)
        lines += [f"newmtl {name}", f"Kd {r:.4f} {g:.4f} {b:.4f}", "Ka 0 0 0", "Ks 0.1 0.1 0.1", "d 1", "illum 2", ""]
    return "\n".join(lines)


def ply_bytes(mesh, rgb) -> bytes:
    import trimesh

    m = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    m.visual = trimesh.visual.ColorVisuals(m, vertex_colors=np.tile([*rgb, 255], (len(m.vertices), 1)).astype(np.uint8))
    return m.export(file_type="ply", encoding="binary")


def glb_bytes(items, case_id: str) -> bytes:
    """GLB with one named node + mesh + PBR material (structure colour) per item."""
    import trimesh

    sc = trimesh.Scene()
    for name, mesh, rgb in items:
        m = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
        m.visual = trimesh.visual.TextureVisuals(material=trimesh.visual.material.PBRMaterial(
            name=name, baseColorFactor=[*rgb, 255], metallicFactor=0.0, roughnessFactor=0.6, doubleSided=False))
        sc.add_geometry(m, node_name=name, geom_name=name, transform=LPS_TO_GLTF)

    def extras(tree):
        tree.setdefault("asset", {})["extras"] = {
            "generator_detail": "surgitwin", "case_id": case_id, "vertex_space": "LPS mm",
            "node_matrix": "LPS mm -> glTF metres (x Left, y Superior, z Anterior)",
            "lps_to_gltf": LPS_TO_GLTF.tolist()}

    return trimesh.exchange.gltf.export_glb(sc, include_normals=True, tree_postprocessor=extras)


def export_meshes(scene, out, fmt: str, structures: Iterable[str] | None = None, *, include_cuts: bool = False) -> list[Path]:
    """Write the scene's meshes; returns the files written.

    Parameters
    ----------
    scene : pipeline.scene.Scene (with meshes)
    out : ``glb``: the output file (``.glb``); otherwise a folder receiving ``<name>.<fmt>``
        per structure (``obj`` also writes ``<case_id>_scene.obj`` + ``.mtl`` with all
        structures as named, coloured objects)
    fmt : one of stl, obj, ply, glb
    structures : names to export (default: all)

    Raises
    ------
    ExportError : STL requested for a surface that is not watertight (nothing is written).
    """
    fmt = fmt.lower()
    if fmt not in MESH_FORMATS:
        raise ExportError(f"mesh export format must be one of {list(MESH_FORMATS)}; found {fmt!r}")
    items = export_items(scene, structures, include_cuts)
    if not items:
        raise ExportError("nothing to export: the scene has no structures")
    out = Path(out)
    if fmt == "glb":
        target = out if out.suffix.lower() == ".glb" else out / f"{scene.case_id}.glb"
        return [_atomic_write(target, glb_bytes(items, scene.case_id))]
    if fmt == "stl":
        import trimesh

        bad = []
        for name, mesh, _ in items:
            if not mesh.is_watertight:
                m = trimesh.Trimesh(mesh.vertices, mesh.faces, process=True)
                open_edges = len(trimesh.grouping.group_rows(m.edges_sorted, require_count=1))
                bad.append(f"'{name}' ({open_edges} open edges)")
        if bad:
            raise ExportError("STL is for 3D printing and needs closed (watertight) surfaces; not watertight: "
                              + ", ".join(bad) + ". Repair the segmentation or export OBJ/PLY/GLB instead")
        return [_atomic_write(out / f"{n}.stl", stl_bytes(m, n)) for n, m, _ in items]
    written = []
    for name, mesh, rgb in items:
        if fmt == "ply":
            written.append(_atomic_write(out / f"{name}.ply", ply_bytes(mesh, rgb)))
        else:
            written.append(_atomic_write(out / f"{name}.mtl", mtl_text([(name, mesh, rgb)]).encode()))
            written.append(_atomic_write(out / f"{name}.obj", obj_text([(name, mesh, rgb)], f"{name}.mtl").encode()))
    if fmt == "obj":
        stem = f"{scene.case_id}_scene"
        written.append(_atomic_write(out / f"{stem}.mtl", mtl_text(items).encode()))
        written.append(_atomic_write(out / f"{stem}.obj", obj_text(items, f"{stem}.mtl").encode()))
    return written
