"""Segmentation stage: HU rules, this project's checkpoints and MONAI bundles, one interface.

Public API::

    resolve_model(name_or_path, overrides=None, trust=False) -> ModelSpec
    segment(volume, model="hu_rules", cfg=None) -> SegmentationResult
    list_models() -> list[dict]

Importing this package imports neither torch nor MONAI; only running a network model does
(:mod:`pipeline.segment.runner`).
"""
from .api import SegmentConfig, SegmentationResult, segment
from .registry import ModelSpec, list_models, resolve_model

__all__ = ["segment", "SegmentationResult", "SegmentConfig", "ModelSpec", "resolve_model", "list_models"]
