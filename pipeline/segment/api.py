"""``segment(volume, model, cfg) -> SegmentationResult``: the one entry point of the stage.

Backends (``ModelSpec.backend``): ``hu_rules`` (no network), ``checkpoint`` (this project's
network + safetensors/state-dict weights) and ``bundle`` (a MONAI Model Zoo bundle read as
data). A network model may be combined with HU rules (``combine_with: hu_rules``).

Combining, priority from high to low: the model's labels (already post-processed), then the
HU-rule structures airway > lungs > bone > body, which only fill voxels the model left as
background. An HU-rule structure whose name the model already has is dropped (names are the
contract: a model's ``lungs`` replaces the rule's; a model with lung lobes keeps them and the
rule's ``lungs`` only takes lung voxels no lobe claimed). Two labels with the same id but
different names are an error, never silently merged.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import config_hash, software_versions
from ..errors import ModelError, pydantic_config_error
from ..types import Label, LabelMap, LabelTable, StageRecord, Volume, label_dtype
from .hu_rules import CODES, HURulesConfig, check_ct, hu_rules_arrays, hu_uncertainty
from ..resources import release_memory
from .postprocess import PostprocessConfig, postprocess_labels
from .qc import QCConfig, structure_qc
from .region import RegionConfig, apply_region_check, region_qc
from .registry import LABELS_DIR, ModelSpec, load_label_file, resolve_model


class SegmentConfig(BaseModel):
    """The ``segment`` section of ``configs/pipeline.yaml`` (run-time choices, not the model)."""

    model_config = ConfigDict(extra="forbid")

    model: str = "hu_rules"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Optional[int] = Field(None, ge=1)
    amp: Optional[bool] = None
    postprocess: Optional[PostprocessConfig] = None  # replaces the model's
    hu_rules: dict[str, Any] = Field(default_factory=dict)  # overrides of HURulesConfig fields
    qc: QCConfig = Field(default_factory=QCConfig)
    region: RegionConfig = Field(default_factory=RegionConfig)  # body-region check (pipeline/segment/region.py)
    combine_with: Optional[str] = None  # "hu_rules" or "none"; None = the model's choice
    uncertainty: bool = True
    keep_probabilities: bool = False
    bundle_overrides: dict[str, Any] = Field(default_factory=dict)
    trust_bundle: bool = False


@dataclass(eq=False)
class SegmentationResult:
    """Output of :func:`segment`.

    Attributes
    ----------
    labelmap : LabelMap on exactly the input volume's grid (``geometry_equal``)
    uncertainty : Volume 0..1 (normalised entropy) on the same grid, or None: float16 from a network
        (half the memory of a full-resolution float32 map; 1e-3 precision), float32 from the HU rules
    qc : structure name -> QC entry (see :mod:`pipeline.segment.qc`)
    record : StageRecord of the stage (model, weights hash, timings, notes)
    probabilities : (C, nk, nj, ni) float32 softmax on the input grid, only when
        ``keep_probabilities`` is set (C can be 105: off by default)
    """

    labelmap: LabelMap
    uncertainty: Volume | None
    qc: dict[str, dict]
    record: StageRecord
    probabilities: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)


def segment_config(cfg: SegmentConfig | dict | None) -> SegmentConfig:
    if isinstance(cfg, SegmentConfig):
        return cfg
    raw = dict(cfg or {})
    src = raw.pop("__file__", None)
    try:
        return SegmentConfig.model_validate(raw)
    except ValidationError as e:
        raise pydantic_config_error(e, path=src, prefix="segment") from None


def _hu_config(spec: ModelSpec | None, cfg: SegmentConfig) -> HURulesConfig:
    base = spec.hu_rules.model_dump() if spec is not None else {}
    try:
        return HURulesConfig.model_validate({**base, **cfg.hu_rules})
    except ValidationError as e:
        raise pydantic_config_error(e, prefix="segment.hu_rules") from None


def hu_rule_labels(spec: ModelSpec | None = None) -> LabelTable:
    if spec is not None and spec.backend == "hu_rules":
        return spec.label_table()
    entries = load_label_file(LABELS_DIR / "hu_rules.yaml")
    return LabelTable(Label.from_dict({k: v for k, v in d.items() if k != "channel"}) for d in entries)


class Beside:
    """``fn(*args)`` run in one background thread beside the caller's work; :meth:`result`
    joins it (and re-raises its exception). numpy releases the GIL in its loops, so this pays
    wherever the caller's own work leaves a core idle."""

    def __init__(self, fn, *args):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=getattr(fn, "__name__", "beside"))
        self._future = self._pool.submit(fn, *args)

    def result(self):
        try:
            return self._future.result()
        finally:
            self._pool.shutdown()

    def abandon(self) -> None:
        """The caller failed: wait for the thread (it cannot be stopped) and drop its result."""
        self._pool.shutdown(wait=True)


def _maximum_where(out: np.ndarray, other: np.ndarray, where: np.ndarray) -> None:
    """``out = max(out, other)`` where ``where``; float16 0..1 maps compare their bit patterns
    (non-negative float16s order like uint16s: exact, and numpy's float16 arithmetic is slow)."""
    if out.dtype == other.dtype == np.float16:
        out, other = out.view(np.uint16), other.view(np.uint16)
    np.maximum(out, other, out=out, where=where)


def _paint_hu(out: np.ndarray, codes: np.ndarray, table: LabelTable) -> None:
    """Paint HU-rule structure codes into ``out`` where it is background (one table lookup)."""
    lut = np.zeros(len(CODES) + 1, out.dtype)
    for name, c in CODES.items():
        if name in table:
            lut[c] = table.by_name(name).id
    for k0 in range(0, out.shape[0], 32):  # by slabs: no full-size temporaries
        o = out[k0:k0 + 32]
        np.copyto(o, lut[codes[k0:k0 + 32]], where=o == 0)


def _merge_tables(model: LabelTable, hu: LabelTable) -> tuple[LabelTable, list[str]]:
    notes, keep = [], []
    model_ids = {l.id: l for l in model}
    for l in hu:
        if l.name in model:
            notes.append(f"HU-rule '{l.name}' dropped: the model has a structure of that name")
            continue
        if l.id in model_ids:
            raise ModelError(f"label id collision when combining with HU rules: id {l.id} is "
                             f"'{model_ids[l.id].name}' in the model and '{l.name}' in configs/labels/hu_rules.yaml")
        keep.append(l)
    return LabelTable([*model, *keep]), notes


def _dtype_for(table: LabelTable):
    return label_dtype(max(table.ids, default=0))


def scan_extent_mm(volume: Volume) -> dict[str, float]:
    """Physical extent of the scanned box along the patient axes (mm, voxel edges included)."""
    nk, nj, ni = volume.shape
    corners = np.array([[k, j, i, 1.0] for k in (-0.5, nk - 0.5) for j in (-0.5, nj - 0.5) for i in (-0.5, ni - 0.5)])
    lps = (volume.affine @ corners.T)[:3]
    ext = lps.max(axis=1) - lps.min(axis=1)
    return {"L": float(ext[0]), "P": float(ext[1]), "S": float(ext[2])}


def field_of_view_warnings(volume: Volume, spec) -> list[str]:
    """Warnings when the scan is thinner than the model's ``inference.min_extent_mm``."""
    need = spec.inference.min_extent_mm if spec.backend != "hu_rules" else None
    if not need:
        return []
    ext = scan_extent_mm(volume)
    names = {"L": "left-right", "P": "front-back", "S": "head-foot"}
    out = []
    for code, lim in zip(spec.preprocessing.orientation, need):
        axis = {"L": "L", "R": "L", "P": "P", "A": "P", "S": "S", "I": "S"}[code]
        if lim and ext[axis] < lim:
            out.append(f"scan covers {ext[axis]:.0f} mm {names[axis]}, less than the {lim:g} mm model "
                       f"{spec.name} was trained for: check every structure by eye")
    return out


@dataclass
class _Work:
    """What :func:`segment`'s steps pass along: the label map being built and its records."""

    labels: np.ndarray
    table: LabelTable
    unc: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    pp_report: dict[str, dict] = field(default_factory=dict)
    region_report: dict = field(default_factory=dict)


def segment(volume: Volume, model: str | ModelSpec = "hu_rules", cfg: SegmentConfig | dict | None = None, *,
            network=None) -> SegmentationResult:
    """Segment ``volume`` with ``model``; the label map lies on exactly ``volume``'s grid.

    Parameters
    ----------
    volume : Volume, ``array`` (nk, nj, ni) in HU for CT models, any orientation and spacing
    model : registry name, bundle folder, model YAML path or a resolved ModelSpec
    cfg : SegmentConfig or the ``segment`` dict of pipeline.yaml (device, threads, overrides)
    network : optional built ``torch.nn.Module`` to run instead of loading the model's weights

    Returns
    -------
    SegmentationResult
    """
    t_start = time.perf_counter()
    cfg = segment_config(cfg)
    spec = model if isinstance(model, ModelSpec) else resolve_model(
        model, overrides=cfg.bundle_overrides or None, trust=cfg.trust_bundle)
    combine = _combine_mode(spec, cfg)
    hu_codes = None
    if spec.backend == "hu_rules":
        work = _by_hu_rules(volume, spec, cfg)
    else:
        work, hu_codes = _by_network(volume, spec, cfg, network, combine == "hu_rules")
    work.notes[:0] = list(spec.notes)
    work.inputs = {"model": spec.name, "backend": spec.backend, "shape": list(volume.shape),
                   "spacing_mm": [round(float(s), 4) for s in volume.spacing], **work.inputs}
    _clean_up(volume, spec, cfg, work)
    if hu_codes is not None:  # after the model's clean-up, so HU structures also fill what it removed
        _add_hu_rules(volume, spec, cfg, work, hu_codes)
    release_memory(collect=False)  # the clean-up's freed masks: QC must not stack on them
    return _finish(volume, spec, cfg, work, t_start)


def _combine_mode(spec: ModelSpec, cfg: SegmentConfig) -> str | None:
    combine = cfg.combine_with if cfg.combine_with is not None else spec.combine_with
    combine = None if combine in (None, "none", "") else combine
    if combine not in (None, "hu_rules"):
        raise ModelError(f"combine_with must be 'hu_rules' or none; found {combine!r}", path=spec.source_file)
    return combine


def _by_hu_rules(volume: Volume, spec: ModelSpec, cfg: SegmentConfig) -> _Work:
    t0 = time.perf_counter()
    table = spec.label_table()
    hcfg = _hu_config(spec, cfg)
    codes, info = hu_rules_arrays(volume, hcfg)
    work = _Work(np.zeros(volume.shape, _dtype_for(table)), table, inputs={"hu_rules": info})
    _paint_hu(work.labels, codes, table)
    del codes
    if cfg.uncertainty:
        work.unc = hu_uncertainty(volume.array, hcfg)
    work.timings["hu_rules"] = time.perf_counter() - t0
    return work


def _by_network(volume: Volume, spec: ModelSpec, cfg: SegmentConfig, network, with_hu: bool):
    """The model's labels; with ``with_hu`` also the HU rules' codes, computed in a thread beside
    the network (its imports, resampling and clean-up leave one of two cores idle most of the time)."""
    from .runner import run_network  # imports torch/MONAI only for network models

    hu_codes = None
    if with_hu:
        check_ct(volume)  # refuses a non-CT before any work
        hu_codes = Beside(hu_rules_arrays, volume, _hu_config(None, cfg))
    try:
        net = run_network(volume, spec, cfg, keep_probabilities=cfg.keep_probabilities, network=network)
    except BaseException:
        if hu_codes is not None:
            hu_codes.abandon()
        raise
    release_memory()  # the network's buffers: back to the system before the full-resolution steps
    table = spec.label_table()
    work = _Work(net.labels.astype(_dtype_for(table), copy=False), table,
                 unc=net.uncertainty if cfg.uncertainty else None, probabilities=net.probabilities,
                 timings=dict(net.timings), inputs=dict(net.inputs), notes=list(net.notes))
    return work, hu_codes


def _clean_up(volume: Volume, spec: ModelSpec, cfg: SegmentConfig, work: _Work) -> None:
    """Components and holes per label, then no organ where the scan shows no region for it
    (before the HU rules fill the gaps)."""
    t0 = time.perf_counter()
    work.labels, work.pp_report = postprocess_labels(work.labels, work.table, cfg.postprocess or spec.postprocess,
                                                     volume.voxel_volume_ml, copy=False)
    work.timings["postprocess"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    work.labels, work.region_report = apply_region_check(work.labels, volume, work.table, cfg.region)
    work.inputs["body_region"], work.timings["region"] = work.region_report, time.perf_counter() - t0
    work.notes.append(work.region_report["note"])


def _add_hu_rules(volume: Volume, spec: ModelSpec, cfg: SegmentConfig, work: _Work, hu_codes: "Beside") -> None:
    """Paint the HU-rule structures where the model left background, and clean them."""
    t1 = time.perf_counter()
    hu_table = hu_rule_labels()
    work.table, merge_notes = _merge_tables(work.table, hu_table)
    work.notes.extend(merge_notes)
    hcfg = _hu_config(None, cfg)
    codes, info = hu_codes.result()
    labels = work.labels = work.labels.astype(_dtype_for(work.table), copy=False)
    unc = work.unc
    # HU-rule uncertainty (closeness to a threshold) only where the HU rules decide: a contrast
    # aorta at 180 HU is near the bone threshold, but the model, not the threshold, labelled it
    by_hu = labels == 0 if unc is not None else None
    _paint_hu(labels, codes, work.table)
    del codes
    if unc is not None:
        for k0 in range(0, labels.shape[0], 32):  # by slabs: no second full-size float array
            s = slice(k0, k0 + 32)
            _maximum_where(unc[s], hu_uncertainty(volume.array[s], hcfg, unc.dtype), by_hu[s])
        del by_hu
    work.inputs["hu_rules"] = info
    kept_hu = LabelTable(l for l in hu_table if l.name in work.table and work.table.by_name(l.name).id == l.id)
    work.labels, hu_report = postprocess_labels(labels, kept_hu, cfg.postprocess or spec.postprocess,
                                                volume.voxel_volume_ml, copy=False)
    work.pp_report.update(hu_report)
    work.timings["hu_rules"] = time.perf_counter() - t1


def _finish(volume: Volume, spec: ModelSpec, cfg: SegmentConfig, work: _Work, t_start: float) -> SegmentationResult:
    """QC of the final label map and the stage record."""
    labelmap = LabelMap(volume.with_array(work.labels, kind="labelmap", model=spec.name), work.table)
    unc_vol = volume.with_array(work.unc, kind="uncertainty") if work.unc is not None else None  # float16 or float32
    timings = work.timings
    t0 = time.perf_counter()
    qc = structure_qc(labelmap, volume, unc_vol, cfg.qc, extra={k: {"postprocess": v} for k, v in work.pp_report.items()})
    qc = region_qc(qc, work.region_report, work.table)
    timings["qc"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    scan_warnings = field_of_view_warnings(volume, spec)
    record = StageRecord(
        stage="segment",
        software=software_versions("numpy", "scipy", *(("torch", "monai") if spec.backend != "hu_rules" else ())),
        config_hash=config_hash({"model": spec.model_dump(exclude={"notes"}), "cfg": cfg.model_dump()}),
        inputs=work.inputs,
        outputs={"structures": {n: q["volume_ml"] for n, q in qc.items()},
                 "warnings": {n: q["warning"] for n, q in qc.items() if q.get("warning")},
                 "scan_warnings": scan_warnings,
                 "timings_s": {k: round(v, 3) for k, v in timings.items()}},
        duration_s=round(timings["total"], 3),
        notes=tuple(work.notes + scan_warnings),
    )
    return SegmentationResult(labelmap, unc_vol, qc, record, work.probabilities, timings)
