"""CT slice planes in 3D: the three orthogonal array planes as textured quads in LPS mm.

Each plane is a plane of the *voxel grid* (so oblique and flipped acquisitions are drawn
exactly where their voxels are), named after the patient plane it is closest to: the array
axis whose direction is most aligned with S-I is moved by the axial slider, A-P by the
coronal slider, L-R by the sagittal slider.

The quad's corners are the outer voxel edges (index -0.5 and n-0.5) mapped by the affine, and
texture coordinates are assigned per corner from the same indices, so pixel (row r, column c)
of the texture is voxel (r, c) of the slice whatever the orientation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import SurgitwinError

# (window width, level) in HU
WINDOWS: dict[str, tuple[float, float]] = {
    "soft_tissue": (400.0, 40.0),
    "bone": (1800.0, 400.0),
    "lung": (1500.0, -600.0),
}
PLANES = ("axial", "coronal", "sagittal")
_PLANE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}  # LPS component the plane is normal to


def check_window(name: str) -> str:
    if name not in WINDOWS:
        raise SurgitwinError(f"window must be one of {list(WINDOWS)}; found {name!r}")
    return name


def plane_array_axes(affine: np.ndarray) -> dict[str, int]:
    """Array axis (0=k, 1=j, 2=i) moved by each named plane's slider.

    Assigned greedily by alignment so each array axis serves exactly one plane, even for
    strongly oblique grids.
    """
    d = np.abs(affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0))  # rows LPS, cols array axes
    out: dict[str, int] = {}
    free = {0, 1, 2}
    for _ in range(3):
        best = max(((d[_PLANE_AXIS[p], a], p, a) for p in PLANES if p not in out for a in free))
        out[best[1]] = best[2]
        free.discard(best[2])
    return {p: out[p] for p in PLANES}


def apply_window(values: np.ndarray, window: str) -> np.ndarray:
    """HU -> uint8 grey with a named window (width, level)."""
    width, level = WINDOWS[check_window(window)]
    lo = level - width / 2.0
    g = (np.asarray(values, dtype=np.float32) - lo) * (255.0 / width)
    return np.clip(g, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class SliceQuad:
    """A slice of the grid: ``corners`` (4, 3) LPS mm, ``uv`` (4, 2), ``image`` (rows, cols) uint8.

    Corner order: (row 0, col 0), (row 0, col end), (row end, col end), (row end, col 0).
    """

    plane: str
    index: int
    corners: np.ndarray
    uv: np.ndarray
    image: np.ndarray


def slice_quad(volume, plane: str, index: int, window: str = "soft_tissue") -> SliceQuad:
    """The ``plane`` slice at array ``index`` of ``volume`` (a :class:`pipeline.types.Volume`)."""
    if plane not in PLANES:
        raise SurgitwinError(f"plane must be one of {list(PLANES)}; found {plane!r}")
    axis = plane_array_axes(volume.affine)[plane]
    n = volume.shape[axis]
    if not 0 <= int(index) < n:
        raise SurgitwinError(f"{plane} slice index must be in 0..{n - 1}; found {index}")
    rows_ax, cols_ax = [a for a in range(3) if a != axis]
    img = np.take(volume.array, int(index), axis=axis)  # (shape[rows_ax], shape[cols_ax])
    nr, nc = volume.shape[rows_ax], volume.shape[cols_ax]
    corners_idx = np.zeros((4, 3))
    corners_idx[:, axis] = index
    for c, (r, q) in enumerate(((-0.5, -0.5), (-0.5, nc - 0.5), (nr - 0.5, nc - 0.5), (nr - 0.5, -0.5))):
        corners_idx[c, rows_ax] = r
        corners_idx[c, cols_ax] = q
    # u runs along image columns; v runs *up* the image (OpenGL convention, checked by
    # rendering: v = 0 samples the last row), so the first row gets v = 1
    uv = np.array([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    return SliceQuad(plane, int(index), volume.index_to_lps(corners_idx), uv, apply_window(img, window))


def quad_geometry(quad: SliceQuad):
    """(open3d TriangleMesh with UVs, unlit textured material) for a slice, visible from both sides."""
    import open3d as o3d
    from open3d.visualization import rendering

    tris = np.array([[0, 1, 2], [0, 2, 3], [0, 2, 1], [0, 3, 2]], dtype=np.int32)  # front + back
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(quad.corners), o3d.utility.Vector3iVector(tris))
    mesh.triangle_uvs = o3d.utility.Vector2dVector(quad.uv[tris.ravel()])
    mesh.compute_vertex_normals()
    rgb = np.ascontiguousarray(np.repeat(quad.image[:, :, None], 3, axis=2))
    mat = rendering.MaterialRecord()
    mat.shader = "defaultUnlit"
    mat.albedo_img = o3d.geometry.Image(rgb)
    return mesh, mat


def default_indices(volume) -> dict[str, int]:
    """Middle slice of each plane."""
    axes = plane_array_axes(volume.affine)
    return {p: volume.shape[a] // 2 for p, a in axes.items()}
