"""File-level segmentation: read an input, segment it, write labels/uncertainty/QC atomically.

``surgitwin segment INPUT --model NAME --out DIR`` is a thin wrapper over :func:`segment_file`.
Outputs in ``DIR`` (each written under a temporary name, then renamed)::

    labels.nii.gz        label map on exactly the input's grid (uint8, or uint16 above 255)
    uncertainty.nii.gz   voxel-wise normalised entropy 0..1 (uint8 x scl_slope 1/255), same grid
    qc.json              {model, labels: [table], qc: {structure: {...}}, provenance: StageRecord}
"""
from __future__ import annotations

from pathlib import Path


from ..fileio import atomic_write_json
from .api import SegmentationResult, segment
from .registry import resolve_model


def _atomic_json(path: Path, data) -> None:
    atomic_write_json(path, data, indent=1)


def write_segmentation(result: SegmentationResult, out_dir) -> dict[str, Path]:
    """Write labels.nii.gz, uncertainty.nii.gz (if any) and qc.json into ``out_dir``."""
    from ..geometry import write_image_file, write_unit_map

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"labels": out / "labels.nii.gz", "qc": out / "qc.json"}
    write_image_file(result.labelmap.volume, paths["labels"], result.labelmap.file_array())
    if result.uncertainty is not None:
        paths["uncertainty"] = out / "uncertainty.nii.gz"
        write_unit_map(result.uncertainty, paths["uncertainty"])
    _atomic_json(paths["qc"], {"model": result.record.inputs.get("model"),
                               "labels": result.labelmap.labels.to_list(), "qc": result.qc,
                               "provenance": result.record.to_dict()})
    return paths


def segment_file(input_path, out_dir, model: str = "hu_rules", overrides=None, trust: bool = False,
                 config=None) -> tuple[SegmentationResult, dict[str, Path]]:
    """Read ``input_path`` (DICOM folder/file or NIfTI/NRRD/MHA) as `surgitwin run` does (``config``'s
    selection and ingest sections), segment, write into ``out_dir``."""
    from ..configuration import load_pipeline_config

    from ..ingest import read_configured
    from .bundle import parse_overrides

    cfg = config if isinstance(config, dict) else load_pipeline_config(config)
    overrides = parse_overrides(overrides)  # once, before any work (as `run`)
    volume = read_configured(input_path, cfg)  # the file's selection rules and ingest options, as `run` reads
    spec = resolve_model(model, overrides=overrides, trust=trust)
    seg_cfg = dict(cfg.get("segment") or {})
    if cfg.get("__file__"):
        seg_cfg["__file__"] = cfg["__file__"]
    result = segment(volume, spec, seg_cfg)
    return result, write_segmentation(result, out_dir)
