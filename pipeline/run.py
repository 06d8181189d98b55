"""The single-case pipeline: ingest -> segment -> mesh -> scene -> snapshot.

:func:`run_case` is what `surgitwin run`, `make demo`, the batch executors and the PACS
listener all call. It writes the scene into ``<out>.tmp-<pid>`` and renames it to ``out``
only when every stage succeeded, so a folder named ``out`` is always complete.

A case is the list :data:`STAGES`; :func:`run_stages` runs them and is the one place that keeps
the records (timing, peak memory, provenance). :func:`pipeline.rerun.rerun_case` runs the
stages from a later one on an existing scene (``surgitwin run --from mesh SCENE``).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .config import config_hash, software_versions
from .configuration import load_pipeline_config  # every section validated before ingest
from .errors import SurgitwinError
from .fileio import replace_dir
from .resources import StagePeaks, release_memory
from .types import StageRecord

Progress = Callable[[str, str], None]  # (stage, message)
# the ingested series' keys a scene's ``source`` keeps (CaseResult.source too)
SOURCE_KEYS = ("study_instance_uid", "series_instance_uid", "frame_of_reference_uid", "modality", "series_description",
               "patient_position", "input", "n_files", "dicom_dir", "sop_instance_uids")


@dataclass
class CaseResult:
    status: str  # "done"
    scene_path: Path
    case_id: str
    timings: dict[str, float] = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    structures: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    snapshot: Path | None = None
    peak_rss_mb: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "status": self.status, "scene_path": str(self.scene_path), "case_id": self.case_id,
            "timings": self.timings, "source": self.source, "structures": self.structures,
            "warnings": self.warnings, "snapshot": None if self.snapshot is None else str(self.snapshot),
            "peak_rss_mb": self.peak_rss_mb,
        }


def _quiet(stage: str, msg: str) -> None:
    pass


def _case_id(source: dict, input_path: Path) -> str:
    uid = source.get("series_instance_uid") or ""
    stem = input_path.name.split(".")[0] or "case"
    return f"{stem}-{uid[-8:]}" if uid else stem


def _children_peak_mb() -> float:
    """Largest peak RSS of the child processes waited for so far (the snapshot renderer), MiB."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0, 1)


def _write_images(folder: Path, volume, labelmap, uncertainty) -> str | None:
    """image, labels (uint8/uint16) and uncertainty (0..1 as uint8 x 1/255) NIfTI files; returns
    the uncertainty's file name."""
    from .geometry import write_image_file, write_unit_map

    write_image_file(volume, folder / "image.nii.gz")
    write_image_file(labelmap.volume, folder / "labels.nii.gz", labelmap.file_array())
    if uncertainty is None:
        return None
    write_unit_map(uncertainty, folder / "uncertainty.nii.gz")
    return "uncertainty.nii.gz"


def _fits(declared: list[str], have) -> bool:
    return not declared or not have or bool(set(declared) & set(have))


def check_model_fits(spec, volume, modality: str, where: str) -> str:
    """Refuse a scan the model was not made for (its declared ``modality`` / ``body_region``).

    Returns a note for the scene; raises :class:`~pipeline.errors.DicomError` naming the input,
    the rule and the registry models that would fit.
    """
    from .errors import DicomError
    from .ingest.region import scan_regions

    mod = modality.rstrip("?").upper() if modality not in ("unknown", "") else ""
    regions, evidence = scan_regions(volume) if (not mod or mod == "CT") else (set(), "not checked (not CT)")
    problems = []
    if not _fits(spec.modality, [mod] if mod else []):
        problems.append(f"model '{spec.name}' segments {'/'.join(spec.modality)}; this series is {mod}")
    if not _fits(spec.body_region, regions):
        problems.append(f"model '{spec.name}' is made for the {', '.join(spec.body_region)}; this scan shows the "
                        f"{', '.join(sorted(regions))} ({evidence})")
    if not problems:
        return (f"model fits: modality {mod or 'unknown'}, body region {', '.join(sorted(regions)) or 'unknown'}"
                f" ({evidence})")
    raise DicomError(f"{'; '.join(problems)}. {_fitting_models(mod, regions)}", path=where,
                     rule="the scan's modality and body region match the model's declaration")


def _fitting_models(mod: str, regions: set) -> str:
    from .segment.registry import load_model_file, registry_files

    names = []
    for f in registry_files():
        try:
            m = load_model_file(f)
        except Exception:  # noqa: BLE001 - a broken registry entry is not this scan's problem
            continue
        if _fits(m.modality, [mod] if mod else []) and _fits(m.body_region, regions):
            names.append(m.name)
    if names:
        return f"Models that fit: {', '.join(names)} (--model NAME)"
    return f"No installed model declares {mod or 'this modality'}{' and the ' + ', '.join(sorted(regions)) if regions else ''}"


def segment_in_canonical_order(volume, reorient, run_segment):
    """``run_segment(volume)`` on the canonical axis order, its results mapped back to ``volume``'s grid.

    The answer does not depend on how the scan was stored (see :mod:`pipeline.ingest.canonical`):
    the same physical CT stored with columns reversed or slices numbered from the other end gives
    the same labels, voxel for voxel in patient space.
    """
    import dataclasses

    from .types import LabelMap

    seg = run_segment(reorient.forward(volume))
    if reorient.identity:
        return seg
    lm = LabelMap(reorient.backward(seg.labelmap.volume, volume), seg.labelmap.labels)
    unc = None if seg.uncertainty is None else reorient.backward(seg.uncertainty, volume)
    probs = None if seg.probabilities is None else reorient.backward_array(seg.probabilities)
    return dataclasses.replace(seg, labelmap=lm, uncertainty=unc, probabilities=probs)


def _identity(src: dict) -> dict:
    """Patient ID and study date of a DICOM input (for the report's header), and whether the
    series is de-identified (PatientIdentityRemoved YES): then no identity is kept."""
    files = src.get("files") or []
    if not files:
        return {}
    try:
        import pydicom

        ds = pydicom.dcmread(files[0], stop_before_pixels=True, force=True,
                             specific_tags=["PatientID", "StudyDate", "PatientIdentityRemoved"])
    except Exception:  # noqa: BLE001 - identity is optional: an unreadable header leaves it out
        return {}
    if str(ds.get("PatientIdentityRemoved", "")).upper() == "YES":
        return {"deidentified": True}
    out = {"patient_id": str(ds.get("PatientID", "") or "") or None, "study_date": str(ds.get("StudyDate", "") or "") or None}
    return {k: v for k, v in out.items() if v}


def _existing_plan(out_dir: Path, policy: str) -> dict | None:
    """The plan to carry over from ``out_dir`` (policy keep), None, or a refusal (policy refuse)."""
    from .errors import SceneError
    from .planning.revalidate import plan_size, read_plan

    if policy not in ("refuse", "keep", "discard"):
        raise SurgitwinError(f"existing_plan must be refuse, keep or discard; found {policy!r}")
    plan = read_plan(out_dir)
    n = plan_size(plan)
    if n == 0 or policy == "discard":
        return None
    if policy == "refuse":
        raise SceneError(f"a run never drops a plan silently; the scene there holds a plan of {n} record(s): pass "
                         f"--keep-plan to carry it over (recomputed on the new structures) or --discard-plan "
                         f"to drop it, or write to another --out", path=str(out_dir / "scene.json"),
                         rule="a run never drops a plan silently")
    return plan


@dataclass
class CaseState:
    """What the stages of one case hand on to each other (each stage reads and fills a few fields)."""

    out_dir: Path
    tmp: Path
    cfg: dict
    progress: Progress
    input_path: Path | None = None
    model: str = "hu_rules"
    bundle_overrides: dict | None = None
    trust_bundle: bool = False
    case_id: str | None = None
    old_plan: dict | None = None
    volume: object = None
    reorient: object = None
    checks: object = None
    source: dict = field(default_factory=dict)  # what CaseResult shows (no identity)
    identity: dict = field(default_factory=dict)  # scene.json only (report header)
    labelmap: object = None
    labels: object = None  # the label table
    uncertainty: object = None
    unc_rel: str | None = None
    extra: dict = field(default_factory=dict)  # scene.json's qc, input_checks, scan_warnings, ...
    meshes: list = field(default_factory=list)
    scene: object = None
    snapshot: Path | None = None
    warnings: list[str] = field(default_factory=list)
    records: list[StageRecord] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    peaks: StagePeaks = field(default_factory=StagePeaks)


@dataclass(frozen=True)
class Stage:
    """One step of a case: ``run(state)`` returns the stage's provenance record, or None for a
    step that keeps none (write, scene, snapshot). Timing and peak memory are filled in by
    :func:`run_stages`, the one place that keeps records."""

    name: str
    run: Callable[[CaseState], StageRecord | None]


def run_stages(stages, st: CaseState) -> None:
    """Run ``stages`` in order, recording each one's time, peak RSS and provenance record."""
    for stage in stages:
        started, t0 = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.perf_counter()
        with st.peaks.stage(stage.name):
            rec = stage.run(st)
        st.timings[stage.name] = time.perf_counter() - t0
        if rec is not None:
            st.records.append(dataclasses.replace(rec, duration_s=round(st.timings[stage.name], 3), started_at=started,
                                                  peak_rss_mb=st.peaks.mb[stage.name]))


def _ingest(st: CaseState) -> StageRecord:
    from .ingest import read_configured
    from .ingest.canonical import Reorientation
    from .ingest.plausible import check_volume

    cfg, input_path = st.cfg, st.input_path
    st.progress("ingest", f"reading {input_path}")
    volume = read_configured(input_path, cfg)
    src = dict(volume.source)
    st.volume, st.reorient = volume, Reorientation.of(volume)
    st.progress("ingest", f"{volume.shape} voxels, spacing {np.round(volume.spacing, 3).tolist()} mm")
    st.checks = check_volume(volume, str(input_path))  # refuses what cannot be a patient scan
    for w in st.checks.warnings:
        st.progress("ingest", f"warning: {w}")
    st.source = {k: src.get(k) for k in SOURCE_KEYS if src.get(k) is not None}
    st.source.setdefault("input", str(input_path.resolve()))
    st.identity = _identity(src)
    return StageRecord(
        "ingest", software_versions("pydicom", "SimpleITK"), config_hash(cfg.get("selection")),
        inputs={k: src.get(k) for k in ("study_instance_uid", "series_instance_uid", "input", "n_files") if k in src},
        outputs={"shape": list(volume.shape), "spacing_mm": [round(float(s), 4) for s in volume.spacing],
                 "affine_lps": np.round(volume.affine, 6).tolist()},
        notes=(*src.get("notes", ()), st.reorient.note()))


def _segment(st: CaseState) -> StageRecord:
    from .scene.plausibility import merge_into_qc, plausibility
    from .segment import resolve_model, segment

    spec = resolve_model(st.model, overrides=st.bundle_overrides, trust=st.trust_bundle)
    fit_note = check_model_fits(spec, st.volume, st.checks.modality, str(st.input_path))  # refuses in seconds
    st.progress("segment", f"model {spec.name} ({spec.backend}); {fit_note}")
    seg_cfg = {k: v for k, v in (st.cfg.get("segment") or {}).items() if k != "model"}
    seg = segment_in_canonical_order(st.volume, st.reorient, lambda v: segment(v, spec, seg_cfg))
    st.labelmap, st.labels, st.uncertainty = seg.labelmap, seg.labelmap.labels, seg.uncertainty
    merge_into_qc(seg.qc, plausibility(seg.labelmap, st.volume, seg.qc))
    st.extra = {"qc": seg.qc, "input_checks": {**st.checks.to_dict(), "model_fit": fit_note}}
    if seg.record.outputs.get("scan_warnings"):
        st.extra["scan_warnings"] = list(seg.record.outputs["scan_warnings"])
    return seg.record


def _write(st: CaseState) -> None:
    st.unc_rel = _write_images(st.tmp, st.volume, st.labelmap, st.uncertainty)
    st.uncertainty = None  # on disk now: not kept in memory
    release_memory()


def _mesh(st: CaseState) -> StageRecord:
    from .mesh import MeshConfig, labelmap_to_meshes
    from .mesh.surfaces import mesh_stage_record

    mcfg = MeshConfig.from_dict(st.cfg.get("mesh"))
    st.meshes = labelmap_to_meshes(st.labelmap, mcfg)
    qc = st.extra.get("qc") or {}
    for m in st.meshes:
        if m.name in qc:
            m.qa["qc"] = qc[m.name]
    st.progress("mesh", f"{len(st.meshes)} structures meshed")
    return mesh_stage_record(st.meshes, mcfg, 0.0)


def _scene(st: CaseState) -> None:
    from .scene import Scene, save_scene

    # the identity (PHI) goes into scene.json for the report's header only, never into the
    # CaseResult that batch manifests and logs print
    scene = Scene(case_id=st.case_id or _case_id(st.source, st.input_path), source={**st.source, **st.identity},
                  labels=st.labels, meshes=st.meshes, uncertainty=st.unc_rel)
    scene.extra.update(st.extra)
    scene.provenance = st.records
    save_scene(scene, st.tmp)
    qc = scene.extra.get("qc") or {}
    st.warnings += [f"{n}: {q['warning']}" for n, q in qc.items() if q.get("warning")]
    st.warnings += [f"scan: {w}" for w in scene.extra.get("scan_warnings", [])]
    if st.old_plan:
        from .planning.revalidate import revalidate_plan

        st.progress("scene", f"carrying over the plan of {st.out_dir} (recomputed on the new structures)")
        _, notes = revalidate_plan(scene, st.old_plan)
        st.warnings += [f"plan: {n}" for n in notes]
    st.warnings += [f"input: {w}" for w in (scene.extra.get("input_checks") or {}).get("warnings", [])]
    st.scene = scene


def _snapshot(st: CaseState) -> None:
    """A picture of the scene, rendered in a separate process: an EGL failure must not take the case down."""
    try:
        from pipeline.render.offscreen import snapshot_subprocess

        from .scene import save_scene

        (st.tmp / "snapshots").mkdir(exist_ok=True)
        snapshot_subprocess(st.tmp, st.tmp / "snapshots" / "overview.png", views=("anterior", "left"))
        st.scene.snapshots = ["snapshots/overview.png"]
        save_scene(st.scene, st.tmp, write_meshes=False)
        st.snapshot = st.out_dir / "snapshots" / "overview.png"
    except (SurgitwinError, ImportError) as e:
        st.warnings.append(f"snapshot not rendered: {e}")
    st.peaks.mb["snapshot_process"] = _children_peak_mb()


STAGES = (Stage("ingest", _ingest), Stage("segment", _segment), Stage("write", _write), Stage("mesh", _mesh),
          Stage("scene", _scene), Stage("snapshot", _snapshot))


def stages_from(name: str, snapshot: bool = True) -> list[Stage]:
    """The stages from ``name`` on (``snapshot=False`` leaves the picture out)."""
    names = [s.name for s in STAGES]
    return [s for s in STAGES[names.index(name):] if snapshot or s.name != "snapshot"]


def publish(st: CaseState, stages) -> CaseResult:
    """Run ``stages`` into ``st.tmp`` and rename it to ``st.out_dir`` only when all succeeded;
    on any failure the temporary folder goes and ``out_dir`` stays as it was."""
    try:
        run_stages(stages, st)
        replace_dir(st.tmp, st.out_dir)
    except BaseException:
        shutil.rmtree(st.tmp, ignore_errors=True)
        raise
    structures = [{"name": m.name, "label": m.label.id, "volume_ml": m.qa["volume_ml"],
                   "voxel_volume_ml": m.qa["voxel_volume_ml"], "watertight": m.qa["watertight"],
                   "deviation_percent": m.qa["deviation_percent"]} for m in st.meshes]
    return CaseResult("done", st.out_dir, st.scene.case_id, {k: round(v, 3) for k, v in st.timings.items()},
                      st.source, structures, st.warnings, st.snapshot, st.peaks.mb)


def staging_dir(out_dir: Path) -> Path:
    """A fresh temporary folder beside ``out_dir`` (same file system, so publishing is a rename)."""
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def run_case(input_path, out_dir, *, model: str | None = None, config=None, progress: Progress | None = None,
             snapshot: bool = True, bundle_overrides: dict | list | None = None, trust_bundle: bool = False,
             case_id: str | None = None, existing_plan: str = "refuse") -> CaseResult:
    """Run the whole pipeline on one input (DICOM folder/file, NIfTI/NRRD/MHA) into ``out_dir``.

    Raises a :class:`~pipeline.errors.SurgitwinError` subclass naming the input and the rule
    broken; in that case ``out_dir`` is left untouched.

    ``existing_plan``: what to do when ``out_dir`` already holds a scene with a plan:
    ``refuse`` (raise before any work), ``keep`` (carry it over, recomputed on the new
    structures: :func:`pipeline.planning.revalidate.revalidate_plan`) or ``discard``.
    A scene can be rerun from a later stage on: :func:`pipeline.rerun.rerun_case`.
    """
    from .segment.bundle import parse_overrides

    cfg = config if isinstance(config, dict) else load_pipeline_config(config)
    bundle_overrides = parse_overrides(bundle_overrides)  # once, before any work (ModelError on a bad item)
    out_dir = Path(out_dir)
    old_plan = _existing_plan(out_dir, existing_plan)
    st = CaseState(out_dir, staging_dir(out_dir), cfg, progress or _quiet, input_path=Path(input_path),
                   model=model or (cfg.get("segment") or {}).get("model", "hu_rules"),
                   bundle_overrides=bundle_overrides, trust_bundle=trust_bundle, case_id=case_id, old_plan=old_plan)
    return publish(st, stages_from("ingest", snapshot))
