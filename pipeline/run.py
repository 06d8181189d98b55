"""The single-case pipeline: ingest -> segment -> mesh -> scene -> snapshot.

:func:`run_case` is what `surgitwin run`, `make demo`, the batch executors and the PACS
listener all call. It writes the scene into ``<out>.tmp-<pid>`` and renames it to ``out``
only when every stage succeeded, so a folder named ``out`` is always complete.
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
    write_image_file(labelmap.volume, folder / "labels.nii.gz",
                     labelmap.array.astype(np.uint16 if labelmap.array.max() > 255 else np.uint8, copy=False))
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
    except Exception:  # identity is optional: an unreadable header leaves it out
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


def run_case(input_path, out_dir, *, model: str | None = None, config=None, progress: Progress | None = None,
             snapshot: bool = True, bundle_overrides: dict | None = None, trust_bundle: bool = False,
             case_id: str | None = None, existing_plan: str = "refuse") -> CaseResult:
    """Run the whole pipeline on one input (DICOM folder/file, NIfTI/NRRD/MHA) into ``out_dir``.

    Raises a :class:`~pipeline.errors.SurgitwinError` subclass naming the input and the rule
    broken; in that case ``out_dir`` is left untouched.

    ``existing_plan``: what to do when ``out_dir`` already holds a scene with a plan:
    ``refuse`` (raise before any work), ``keep`` (carry it over, recomputed on the new
    structures: :func:`pipeline.planning.revalidate.revalidate_plan`) or ``discard``.
    """
    from .ingest import read_input
    from .mesh import MeshConfig, labelmap_to_meshes
    from .mesh.surfaces import mesh_stage_record
    from .scene import Scene, save_scene

    progress = progress or _quiet
    cfg = config if isinstance(config, dict) else load_pipeline_config(config)
    input_path = Path(input_path)
    out_dir = Path(out_dir)
    model = model or (cfg.get("segment") or {}).get("model", "hu_rules")
    timings: dict[str, float] = {}
    records: list[StageRecord] = []
    peaks = StagePeaks()
    old_plan = _existing_plan(out_dir, existing_plan)

    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        # 1. ingest ------------------------------------------------------------------------
        t0 = time.perf_counter()
        progress("ingest", f"reading {input_path}")
        with peaks.stage("ingest"):
            volume = read_input(input_path, rules=(cfg.get("selection") or {}).get("rules"), options=cfg.get("ingest"))
        timings["ingest"] = time.perf_counter() - t0
        src = dict(volume.source)
        from .ingest.canonical import Reorientation

        reorient = Reorientation.of(volume)
        records.append(StageRecord(
            "ingest", software_versions("pydicom", "SimpleITK"), config_hash(cfg.get("selection")),
            inputs={k: src.get(k) for k in ("study_instance_uid", "series_instance_uid", "input", "n_files") if k in src},
            outputs={"shape": list(volume.shape), "spacing_mm": [round(float(s), 4) for s in volume.spacing],
                     "affine_lps": np.round(volume.affine, 6).tolist()},
            duration_s=round(timings["ingest"], 3), notes=(*src.get("notes", ()), reorient.note()),
            peak_rss_mb=peaks.mb["ingest"],
        ))
        progress("ingest", f"{volume.shape} voxels, spacing {np.round(volume.spacing, 3).tolist()} mm")
        from .ingest.plausible import check_volume

        checks = check_volume(volume, str(input_path))  # refuses what cannot be a patient scan
        for w in checks.warnings:
            progress("ingest", f"warning: {w}")

        # 2. segment -----------------------------------------------------------------------
        from .segment import resolve_model, segment

        t0 = time.perf_counter()
        spec = resolve_model(model, overrides=bundle_overrides, trust=trust_bundle)
        fit_note = check_model_fits(spec, volume, checks.modality, str(input_path))  # refuses in seconds
        progress("segment", f"model {spec.name} ({spec.backend}); {fit_note}")
        seg_cfg = {k: v for k, v in (cfg.get("segment") or {}).items() if k != "model"}
        with peaks.stage("segment"):
            seg = segment_in_canonical_order(volume, reorient, lambda v: segment(v, spec, seg_cfg))
        timings["segment"] = time.perf_counter() - t0
        records.append(dataclasses.replace(seg.record, peak_rss_mb=peaks.mb["segment"]))
        labelmap = seg.labelmap
        from .scene.plausibility import merge_into_qc, plausibility

        merge_into_qc(seg.qc, plausibility(labelmap, volume, seg.qc))
        t0 = time.perf_counter()
        with peaks.stage("write"):
            unc_rel = _write_images(tmp, volume, labelmap, seg.uncertainty)
            seg = dataclasses.replace(seg, uncertainty=None, probabilities=None)  # on disk now: not kept in memory
            release_memory()
        timings["write"] = time.perf_counter() - t0

        # 3. mesh --------------------------------------------------------------------------
        t0 = time.perf_counter()
        mcfg = MeshConfig.from_dict(cfg.get("mesh"))
        with peaks.stage("mesh"):
            meshes = labelmap_to_meshes(labelmap, mcfg)
        for m in meshes:
            if m.name in seg.qc:
                m.qa["qc"] = seg.qc[m.name]
        timings["mesh"] = time.perf_counter() - t0
        records.append(mesh_stage_record(meshes, mcfg, timings["mesh"], peaks.mb["mesh"]))
        progress("mesh", f"{len(meshes)} structures meshed")

        # 4. scene -------------------------------------------------------------------------
        t0 = time.perf_counter()
        source = {k: src.get(k) for k in ("study_instance_uid", "series_instance_uid", "frame_of_reference_uid",
                                          "modality", "series_description", "patient_position", "input", "n_files",
                                          "dicom_dir", "sop_instance_uids") if src.get(k) is not None}
        source.setdefault("input", str(input_path.resolve()))
        # the identity (PHI) goes into scene.json for the report's header only, never into the
        # CaseResult that batch manifests and logs print
        scene = Scene(case_id=case_id or _case_id(source, input_path), source={**source, **_identity(src)},
                      labels=labelmap.labels,
                      meshes=meshes, uncertainty=unc_rel)
        scene.extra["qc"] = seg.qc
        scene.extra["input_checks"] = {**checks.to_dict(), "model_fit": fit_note}
        if seg.record.outputs.get("scan_warnings"):
            scene.extra["scan_warnings"] = list(seg.record.outputs["scan_warnings"])
        scene.provenance = records
        with peaks.stage("scene"):
            save_scene(scene, tmp)
        warnings: list[str] = [f"{n}: {q['warning']}" for n, q in seg.qc.items() if q.get("warning")]
        warnings += [f"scan: {w}" for w in scene.extra.get("scan_warnings", [])]
        if old_plan:
            from .planning.revalidate import revalidate_plan

            progress("scene", f"carrying over the plan of {out_dir} (recomputed on the new structures)")
            _, notes = revalidate_plan(scene, old_plan)
            warnings += [f"plan: {n}" for n in notes]
        timings["scene"] = time.perf_counter() - t0

        # 5. snapshot (separate process: an EGL failure must not take the case down) -------
        snap = None
        warnings += [f"input: {w}" for w in checks.warnings]
        if snapshot:
            t0 = time.perf_counter()
            try:
                from pipeline.render.offscreen import snapshot_subprocess

                (tmp / "snapshots").mkdir(exist_ok=True)
                snapshot_subprocess(tmp, tmp / "snapshots" / "overview.png", views=("anterior", "left"))
                scene.snapshots = ["snapshots/overview.png"]
                save_scene(scene, tmp, write_meshes=False)
                snap = out_dir / "snapshots" / "overview.png"
            except (SurgitwinError, ImportError) as e:
                warnings.append(f"snapshot not rendered: {e}")
            timings["snapshot"] = time.perf_counter() - t0
            peaks.mb["snapshot_process"] = _children_peak_mb()

        # 6. publish atomically ------------------------------------------------------------
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    structures = [{"name": m.name, "label": m.label.id, "volume_ml": m.qa["volume_ml"],
                   "voxel_volume_ml": m.qa["voxel_volume_ml"], "watertight": m.qa["watertight"],
                   "deviation_percent": m.qa["deviation_percent"]} for m in meshes]
    return CaseResult("done", out_dir, scene.case_id, {k: round(v, 3) for k, v in timings.items()},
                      source, structures, warnings, snap, peaks.mb)
