"""Scene bundle: assemble, save, load (see scene.py for the on-disk contract)."""
from .scene import SCHEMA_VERSION, Scene, load_scene, resolve_scene_path, save_scene, new_plan

__all__ = ["SCHEMA_VERSION", "Scene", "load_scene", "resolve_scene_path", "save_scene", "new_plan"]
