"""Exports of a scene: meshes (STL/OBJ/PLY/GLB) and DICOM SEG (the one SEG writer)."""
from ..errors import SurgitwinError


class ExportError(SurgitwinError):
    """A scene cannot be exported as asked (non-watertight STL, missing source DICOM, ...)."""


MESH_FORMATS = ("stl", "obj", "ply", "glb")
FORMATS = MESH_FORMATS + ("dicom-seg",)

__all__ = ["ExportError", "MESH_FORMATS", "FORMATS"]
