"""Surgical planning geometry in patient millimetres (LPS): no GUI, used by viewer and CLI.

Topic modules of plain functions (:mod:`.measure`, :mod:`.cut`, :mod:`.trajectory`,
:mod:`.distance`) behind one front object, :class:`Planner`, which caches per-structure
indexes and stores every result as a JSON record in ``scene.plan`` (see :mod:`.plan`).
"""
from .plan import Planner, find_record, next_id, remove_record, save_plan

__all__ = ["Planner", "find_record", "next_id", "remove_record", "save_plan"]
