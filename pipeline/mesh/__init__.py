"""Label map -> closed surface meshes in LPS mm, with QA figures."""
from .surfaces import MeshConfig, labelmap_to_meshes, mask_to_mesh

__all__ = ["MeshConfig", "labelmap_to_meshes", "mask_to_mesh"]
