"""Open3D geometry for plan primitives, the orientation marker and tinted structures.

Kept apart from the window code so the same shapes can be rendered offscreen.
"""
from __future__ import annotations

import numpy as np

from .primitives import Primitive, square_corners


def to_o3d_mesh(mesh, vertex_rgb: np.ndarray | None = None):
    """trimesh.Trimesh (LPS mm) -> open3d TriangleMesh with vertex normals.

    ``vertex_rgb``: optional (n_vertices, 3) float 0..1 colours (e.g. uncertainty).
    """
    import open3d as o3d

    m = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(np.asarray(mesh.vertices, dtype=np.float64)),
                                  o3d.utility.Vector3iVector(np.asarray(mesh.faces, dtype=np.int32)))
    m.compute_vertex_normals()  # without normals defaultLit renders flat silhouettes
    if vertex_rgb is not None:
        m.vertex_colors = o3d.utility.Vector3dVector(np.asarray(vertex_rgb, dtype=np.float64))
    return m


def _material(rgb, opacity: float = 1.0, lit: bool = True):
    from open3d.visualization import rendering

    m = rendering.MaterialRecord()
    if opacity < 0.999:
        m.shader = "defaultLitTransparency"
    else:
        m.shader = "defaultLit" if lit else "defaultUnlit"
    m.base_color = (float(rgb[0]), float(rgb[1]), float(rgb[2]), float(opacity))
    m.base_roughness = 0.5
    return m


def cylinder(a, b, radius: float, resolution: int = 16):
    """Open3D cylinder mesh from ``a`` to ``b`` (LPS mm)."""
    import open3d as o3d

    a, b = np.asarray(a, float), np.asarray(b, float)
    v = b - a
    h = float(np.linalg.norm(v))
    cyl = o3d.geometry.TriangleMesh.create_cylinder(radius=max(radius, 1e-3), height=max(h, 1e-3), resolution=resolution)
    z = np.array([0.0, 0.0, 1.0])
    d = v / h if h > 1e-9 else z
    axis = np.cross(z, d)
    s, c = np.linalg.norm(axis), float(np.dot(z, d))
    if s > 1e-9:
        k = axis / s
        K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        R = np.eye(3) + s * K + (1 - c) * K @ K
    else:
        R = np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    cyl.rotate(R, center=(0, 0, 0))
    cyl.translate((a + b) / 2.0)
    return cyl


def spheres(points, radius: float):
    import open3d as o3d

    out = o3d.geometry.TriangleMesh()
    for p in np.asarray(points, float).reshape(-1, 3):
        s = o3d.geometry.TriangleMesh.create_sphere(radius=radius, resolution=12)
        s.translate(p)
        out += s
    return out


def square(center, normal, size: float):
    """Two-sided square (LPS mm) of side ``size`` centred on ``center``, normal ``normal``."""
    import open3d as o3d

    v = square_corners(center, normal, size)
    t = np.array([[0, 1, 2], [0, 2, 3], [0, 2, 1], [0, 3, 2]], dtype=np.int32)
    m = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(v), o3d.utility.Vector3iVector(t))
    m.compute_vertex_normals()
    return m


def primitive_geometry(p: Primitive, scene_root=None, structure_rgb=(0.8, 0.8, 0.8)):
    """(open3d mesh, material) for a primitive, or None if there is nothing to draw."""
    import open3d as o3d

    if p.kind == "points" and len(p.points):
        g = spheres(p.points, p.radius)
    elif p.kind == "polyline" and len(p.points) >= 2:
        g = o3d.geometry.TriangleMesh()
        for a, b in zip(p.points[:-1], p.points[1:]):
            g += cylinder(a, b, p.radius, 10)
    elif p.kind == "tool" and len(p.points) == 2:
        g = cylinder(p.points[0], p.points[1], p.radius, 20)
    elif p.kind == "plane":
        g = square(p.points[0], p.normal, p.size)
    elif p.kind == "mesh" and scene_root is not None:
        import trimesh

        path = scene_root / p.path
        if not path.exists():
            return None
        g = to_o3d_mesh(trimesh.load_mesh(str(path), process=False))
        rgb = structure_rgb if p.rgb[0] < 0 else p.rgb
        return g, _material(rgb, p.opacity)
    else:
        return None
    g.compute_vertex_normals()
    return g, _material(p.rgb, p.opacity, lit=p.lit)


MARKER_AXES = ((0, (0.85, 0.2, 0.2), ("R", "L")), (1, (0.2, 0.75, 0.25), ("A", "P")), (2, (0.25, 0.4, 0.95), ("I", "S")))


def marker_letters(forward, limit: float = 0.8) -> list[str]:
    """Texts of the orientation marker's letters (order: L, R, P, A, S, I as
    :func:`orientation_marker` places them) for a camera looking along ``forward`` (LPS): an axis
    seen nearly end-on (|cos| > ``limit``) has both its letters at the same screen point, so
    they overlap (L over R in a lateral view): those are left blank; the view's edge letters
    name that direction anyway."""
    f = np.asarray(forward, float)
    f = f / (np.linalg.norm(f) or 1.0)
    out = []
    for ax, _, (neg, pos) in MARKER_AXES:
        hide = abs(f[ax]) > limit
        out += ["" if hide else pos, "" if hide else neg]
    return out


def orientation_marker(center, length: float):
    """(mesh, material, [(position, letter)]) of a patient-axes cross: L-R red, A-P green, S-I blue.

    Each axis runs from ``center - length`` to ``center + length`` with its letters at the ends.
    """
    import open3d as o3d

    c = np.asarray(center, float)
    mesh = o3d.geometry.TriangleMesh()
    letters = []
    for ax, rgb, (neg, pos) in MARKER_AXES:
        e = np.zeros(3)
        e[ax] = length
        part = cylinder(c - e, c + e, length * 0.04, 12)
        part += spheres([c + e], length * 0.09)
        part.paint_uniform_color(rgb)
        mesh += part
        letters += [(c + 1.25 * e, pos), (c - 1.2 * e, neg)]
    mesh.compute_vertex_normals()
    mat = _material((1.0, 1.0, 1.0))
    return mesh, mat, letters


def split_by_vertex_mask(mesh, mask: np.ndarray):
    """(inside, outside) trimesh pieces of ``mesh``: faces whose three vertices are all in
    ``mask`` vs the rest. Two uniform materials instead of vertex colours, because Filament's
    transparent shader drops vertex colours (a translucent tinted organ would vanish)."""
    import trimesh

    faces = np.asarray(mesh.faces)
    inside = np.asarray(mask, bool)[faces].all(axis=1)
    v = np.asarray(mesh.vertices)
    return (trimesh.Trimesh(v, faces[inside], process=False), trimesh.Trimesh(v, faces[~inside], process=False))
