"""``follow_up(scene, new_input)``: a new study of the same patient becomes a time point of the scene.

Ingest and segment the new study with the scene's model (the label table must be the
scene's), register it to the scene's image (rigid, then B-spline; see :mod:`.register`),
measure the registration residual at the body and bone surfaces, mesh, carry the plan of the
previous time point over, compute what changed, and publish ``timepoints/<id>/`` atomically
(built under a temporary name, renamed when complete), then list it in scene.json.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import config_hash, load_pipeline_config, software_versions
from ..errors import SceneError
from ..fileio import replace_dir
from ..types import LabelMap, StageRecord, Volume
from .register import Registration, RegistrationConfig

Progress = Callable[[str, str], None]
RESIDUAL_LIMIT_MM = 2.0  # mean body-surface distance above which changes are not reported
BONE_WORDS = ("bone", "spine", "rib", "vertebra", "skull", "pelvis", "hip", "femur", "sacrum", "sternum")


@dataclass
class FollowUpResult:
    scene_path: Path
    timepoint: dict
    folder: Path
    registration: dict
    change: dict | None
    carried: list[dict] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"scene_path": str(self.scene_path), "timepoint": self.timepoint, "folder": str(self.folder),
                "registration": self.registration, "change": self.change, "carried": self.carried,
                "timings": self.timings, "warnings": self.warnings}


def _quiet(stage: str, msg: str) -> None:
    pass


def scene_model(scene) -> str | None:
    """The model that segmented the scene (its segment StageRecord), if recorded."""
    for rec in scene.provenance:
        if rec.stage == "segment" and isinstance(rec.inputs, dict) and rec.inputs.get("model"):
            return str(rec.inputs["model"])
    return None


def study_date(volume: Volume) -> str | None:
    """StudyDate (YYYYMMDD) of the volume's first DICOM file, or the source's own ``study_date``."""
    if volume.source.get("study_date"):
        return str(volume.source["study_date"])
    files = volume.source.get("files") or []
    if not files:
        return None
    try:
        import pydicom

        ds = pydicom.dcmread(files[0], stop_before_pixels=True, specific_tags=["StudyDate"])
        return str(ds.get("StudyDate", "") or "") or None
    except Exception:  # noqa: BLE001 - a date is a nicety for the folder name, never a reason to fail
        return None


def check_same_labels(scene_labels, new_labels, scene_dir) -> None:
    a = {l.name: l.id for l in scene_labels}
    b = {l.name: l.id for l in new_labels}
    missing = sorted(n for n in a if b.get(n) != a[n])
    extra = sorted(n for n in b if a.get(n) != b[n])
    if missing or extra:
        raise SceneError(f"follow-up: the new study's label table must be the scene's (same names and ids); "
                         f"not in the new study: {missing[:8]}; not in the scene: {extra[:8]}",
                         path=str(scene_dir), rule="same label table across time points")


def surface_residual(fixed_mask: np.ndarray, fixed: Volume, moving_in_fixed: np.ndarray,
                     valid: np.ndarray | None = None) -> float | None:
    """Mean symmetric distance (mm) between two masks' boundaries on one grid.

    Only boundary voxels inside ``valid`` count (where both scans saw the patient): the edges
    of a field of view are cuts, not surfaces.
    """
    from scipy import ndimage

    if not fixed_mask.any() or not moving_in_fixed.any():
        return None
    sp = fixed.spacing

    def edge(m):
        return m & ~ndimage.binary_erosion(m)

    ea, eb = edge(fixed_mask), edge(moving_in_fixed)
    da = ndimage.distance_transform_edt(~ea, sampling=sp)
    db = ndimage.distance_transform_edt(~eb, sampling=sp)
    if valid is not None:
        ea, eb = ea & valid, eb & valid
    n = ea.sum() + eb.sum()
    return None if n == 0 else float((db[ea].sum() + da[eb].sum()) / n)


def resample_to_earlier(reg: Registration, moving: Volume, fixed: Volume, *, labels: bool, deformable: bool = True,
                        default: float | None = None) -> np.ndarray:
    """The follow-up array on the earlier grid through the registration (nearest for labels)."""
    import SimpleITK as sitk

    from ..geometry import volume_from_sitk, volume_to_sitk
    from .register import affine_to_sitk

    arr = moving.array if labels else moving.array.astype(np.float32)
    img = volume_to_sitk(moving, arr)
    ref = volume_to_sitk(fixed, np.zeros(fixed.shape, np.uint8))
    t = reg.forward_resampling_sitk(ref) if deformable else affine_to_sitk(reg.rigid)
    fill = default if default is not None else (0.0 if labels else -1024.0)
    out = sitk.Resample(img, ref, t, sitk.sitkNearestNeighbor if labels else sitk.sitkLinear, float(fill), img.GetPixelID())
    return volume_from_sitk(out).array


def residuals(reg: Registration, fixed: LabelMap, moving: LabelMap) -> dict:
    """Body and bone surface distance after registration (rigid + B-spline), mm."""
    from scipy import ndimage

    # labels + 1 with 0 outside the follow-up's field of view: one resampling gives both
    shifted = moving.volume.with_array(moving.array.astype(np.int32) + 1)
    out_arr = resample_to_earlier(reg, shifted, fixed.volume, labels=True)
    seen = out_arr > 0
    moved = np.where(seen, out_arr - 1, 0)
    valid = ndimage.binary_erosion(seen, iterations=2, border_value=0)
    out = {"body_surface_mean_mm": surface_residual(fixed.array > 0, fixed.volume, moved > 0, valid)}
    bone = [l.id for l in fixed.labels if any(w in l.name for w in BONE_WORDS)]
    if bone:
        out["bone_surface_mean_mm"] = surface_residual(np.isin(fixed.array, bone), fixed.volume, np.isin(moved, bone),
                                                       valid)
    return {k: None if v is None else round(v, 3) for k, v in out.items()}


def _write_transforms(folder: Path, reg: Registration, info: dict) -> dict:
    import SimpleITK as sitk

    from ..fileio import atomic_write, atomic_write_json
    from .register import affine_to_sitk

    folder.mkdir(parents=True, exist_ok=True)
    files = {"registration": "transforms/registration.json", "rigid": "transforms/baseline_to_timepoint.tfm"}
    atomic_write(folder / "baseline_to_timepoint.tfm", lambda p: sitk.WriteTransform(affine_to_sitk(reg.rigid), str(p)))
    if reg.bspline is not None:
        atomic_write(folder / "baseline_to_timepoint_bspline.tfm", lambda p: sitk.WriteTransform(reg.bspline, str(p)))
        files["bspline"] = "transforms/baseline_to_timepoint_bspline.tfm"
    if reg.inverse_field is not None:
        field = sitk.DisplacementFieldTransform(reg.inverse_field).GetDisplacementField()
        atomic_write(folder / "timepoint_to_baseline_field.nii.gz", lambda p: sitk.WriteImage(field, str(p), True))
        files["inverse_field"] = "transforms/timepoint_to_baseline_field.nii.gz"
    atomic_write_json(folder / "registration.json", {
        "convention": "LPS mm; baseline_to_timepoint maps a baseline point to the follow-up point "
                      "(ITK: fixed = baseline, moving = follow-up); the B-spline acts before the rigid",
        "baseline_to_timepoint": np.round(reg.rigid, 8).tolist(),
        "timepoint_to_baseline": np.round(reg.rigid_inverse, 8).tolist(),
        "metric": reg.metric, "timings_s": reg.timings, **info, "files": files})
    return files


def follow_up(scene_path, new_input, *, out=None, model: str | None = None, config=None, timepoint_id: str | None = None,
              registration: RegistrationConfig | None = None, segmenter: Callable | None = None,
              progress: Progress | None = None, replace: bool = False, residual_limit_mm: float = RESIDUAL_LIMIT_MM,
              carry_plan: bool = True) -> FollowUpResult:
    """Add ``new_input`` (DICOM folder/file, NIfTI, or a :class:`Volume`) to the scene as a time point.

    ``out``: copy the scene there first and add the time point to the copy (the original is
    untouched). ``segmenter(volume) -> (LabelMap, uncertainty Volume | None, qc dict, StageRecord)``
    replaces the model (tests use the phantom's ground truth). Raises a SurgitwinError naming the
    file and rule on bad input; nothing is published then.
    """
    from ..scene.scene import resolve_scene_path

    src_dir = resolve_scene_path(scene_path)
    if out is None:
        return _follow_up(src_dir, new_input, model=model, config=config, timepoint_id=timepoint_id,
                          registration=registration, segmenter=segmenter, progress=progress, replace=replace,
                          residual_limit_mm=residual_limit_mm, carry_plan=carry_plan)
    out = Path(out)
    if out.exists():
        raise SceneError("--out must be a new folder (the scene is copied there)", path=str(out), rule="out must not exist")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src_dir, tmp)
    try:
        res = _follow_up(tmp, new_input, model=model, config=config, timepoint_id=timepoint_id,
                         registration=registration, segmenter=segmenter, progress=progress, replace=replace,
                         residual_limit_mm=residual_limit_mm, carry_plan=carry_plan)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    res.scene_path, res.folder = out, out / res.folder.relative_to(tmp)
    return res


def _follow_up(src_dir: Path, new_input, *, model, config, timepoint_id, registration, segmenter, progress, replace,
               residual_limit_mm, carry_plan) -> FollowUpResult:
    from ..geometry import write_image_file
    from ..mesh import MeshConfig, labelmap_to_meshes
    from ..mesh.surfaces import mesh_stage_record
    from ..scene import Scene, load_scene, save_scene
    from .change import change_report, is_lesion
    from .register import register
    from .timepoints import add_timepoint, check_id, choose_id, list_timepoints, load_registration

    progress = progress or _quiet
    cfg = config if isinstance(config, dict) else load_pipeline_config(config)
    scene = load_scene(src_dir, load_meshes=True)
    timings: dict[str, float] = {}
    records: list[StageRecord] = []

    t0 = time.perf_counter()
    if isinstance(new_input, Volume):
        volume = new_input
    else:
        from ..ingest import read_input

        progress("ingest", f"reading {new_input}")
        volume = read_input(new_input, rules=(cfg.get("selection") or {}).get("rules"), options=cfg.get("ingest"))
    timings["ingest"] = time.perf_counter() - t0
    src = dict(volume.source)
    date = study_date(volume)
    known = {t.get("series_instance_uid"): t["id"] for t in list_timepoints(src_dir) if t.get("series_instance_uid")}
    uid = src.get("series_instance_uid")
    if uid and uid in known:
        if not replace or known[uid] == list_timepoints(src_dir)[0]["id"]:
            raise SceneError(f"series {uid} is already time point '{known[uid]}' of this scene"
                             + ("" if replace else " (pass --replace to redo it)"), path=str(src_dir),
                             rule="a series is added to a scene once")
        timepoint_id = timepoint_id or known[uid]
    records.append(StageRecord("ingest", software_versions("pydicom", "SimpleITK"), config_hash(cfg.get("selection")),
                               inputs={k: src.get(k) for k in ("study_instance_uid", "series_instance_uid", "input", "n_files")
                                       if k in src}, outputs={"shape": list(volume.shape), "study_date": date},
                               duration_s=round(timings["ingest"], 3)))

    t0 = time.perf_counter()
    if segmenter is not None:
        labelmap, unc, qc, seg_record = segmenter(volume)
    else:
        from ..segment import resolve_model, segment

        name = model or scene_model(scene) or (cfg.get("segment") or {}).get("model", "hu_rules")
        progress("segment", f"model {name} (the scene's)")
        seg_cfg = {k: v for k, v in (cfg.get("segment") or {}).items() if k != "model"}
        seg = segment(volume, resolve_model(name), seg_cfg)
        labelmap, unc, qc, seg_record = seg.labelmap, seg.uncertainty, seg.qc, seg.record
    check_same_labels(scene.labels, labelmap.labels, src_dir)
    timings["segment"] = time.perf_counter() - t0
    records.append(seg_record)

    # register to the scene's (baseline) image -------------------------------------------------
    t0 = time.perf_counter()
    base_img, base_lm = scene.load_image(), scene.load_labelmap()
    rcfg = registration or RegistrationConfig()
    modalities = {str(m).upper() for m in (scene.source.get("modality"), src.get("modality")) if m}
    if rcfg.bspline_metric == "mean_squares" and modalities - {"CT"}:
        from dataclasses import replace as _replace

        rcfg = _replace(rcfg, bspline_metric="mattes")  # intensities are comparable only CT to CT
    progress("register", "rigid" + (" + B-spline" if rcfg.deformable else ""))
    reg = register(base_img, base_lm.array, volume, labelmap.array, rcfg)
    res = residuals(reg, base_lm, labelmap)
    timings["register"] = time.perf_counter() - t0
    warnings: list[str] = []
    body = res.get("body_surface_mean_mm")
    reliable = body is not None and body <= residual_limit_mm
    if not reliable:
        warnings.append(f"registration residual at the body surface is {body} mm, above the {residual_limit_mm} mm limit: "
                        "changes are not reported")
    reg_info = {"residuals": res, "residual_limit_mm": residual_limit_mm, "reliable": reliable,
                "rotation_deg": round(reg.rotation_deg(), 3), "translation_mm": np.round(reg.rigid[:3, 3], 3).tolist(),
                "deformable": reg.bspline is not None}
    records.append(StageRecord("register", software_versions("SimpleITK"), config_hash(rcfg.__dict__),
                               inputs={"fixed": scene.image, "moving": src.get("series_instance_uid")},
                               outputs=dict(reg_info),
                               duration_s=round(timings["register"], 3)))
    progress("register", f"rotation {reg.rotation_deg():.2f} deg, translation {np.round(reg.rigid[:3, 3], 2).tolist()} mm, "
                         f"body residual {body} mm")

    # mesh ------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    mcfg = MeshConfig(**(cfg.get("mesh") or {}))
    names = set(scene.structure_names) or None  # the structures the scene shows, no more
    meshes = labelmap_to_meshes(labelmap, mcfg, names=names)
    for m in meshes:
        if m.name in qc:
            m.qa["qc"] = qc[m.name]
    timings["mesh"] = time.perf_counter() - t0
    records.append(mesh_stage_record(meshes, mcfg, timings["mesh"]))

    # the time point folder, built under a temporary name ----------------------------------------
    tps = list_timepoints(src_dir)
    tp_id = check_id(timepoint_id, src_dir) if timepoint_id else choose_id(
        date, src.get("series_instance_uid"), [t["id"] for t in tps] if not replace else [t["id"] for t in tps[:1]],
        "followup")
    previous = previous_in_time(tps, tp_id, date)
    tp_root = src_dir / "timepoints"
    tp_root.mkdir(exist_ok=True)
    tmp = tp_root / f".{tp_id}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write_image_file(volume, tmp / "image.nii.gz")
        write_image_file(labelmap.volume, tmp / "labels.nii.gz", labelmap.file_array())
        if unc is not None:
            write_image_file(unc, tmp / "uncertainty.nii.gz", unc.array.astype(np.float32))
        moved = resample_to_earlier(reg, volume, base_img, labels=False)
        write_image_file(base_img, tmp / "image_in_baseline.nii.gz", np.clip(np.rint(moved), -32768, 32767).astype(np.int16))
        files = _write_transforms(tmp / "transforms", reg, reg_info)
        source = {k: src.get(k) for k in ("study_instance_uid", "series_instance_uid", "frame_of_reference_uid",
                                          "modality", "series_description", "input", "n_files") if src.get(k) is not None}
        source["study_date"] = date
        if not isinstance(new_input, Volume):
            source.setdefault("input", str(Path(new_input).resolve()))
        tp_scene = Scene(case_id=scene.case_id, source=source, labels=labelmap.labels, meshes=meshes,
                         uncertainty="uncertainty.nii.gz" if unc is not None else None)
        tp_scene.extra["qc"] = qc
        tp_scene.extra["timepoint"] = {"id": tp_id, "baseline": "../..", "transforms": files}
        tp_scene.provenance = records
        save_scene(tp_scene, tmp)

        entry = {"id": tp_id, "path": f"timepoints/{tp_id}", "study_date": date,
                 "series_instance_uid": src.get("series_instance_uid"), "added": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "registration": f"timepoints/{tp_id}/transforms/registration.json"}

        # what changed since the previous time point -------------------------------------------
        t0 = time.perf_counter()
        change = None
        prev_reg = load_registration(src_dir, previous)
        if reliable:
            prev_scene = load_scene(src_dir / previous["path"], load_meshes=True)
            prev_lm = prev_scene.load_labelmap()
            b_to_a = prev_reg.rigid @ reg.rigid_inverse
            shown = {m.name for m in meshes} | {l.name for l in labelmap.labels if is_lesion(l)}
            change, dists = change_report(prev_lm, labelmap, {m.name: m.mesh for m in prev_scene.meshes},
                                          {m.name: m.mesh for m in meshes}, b_to_a, names=shown)
            change.update({"from": previous["id"], "to": tp_id, "registration": reg_info})
            _write_change_meshes(tmp, meshes, dists, change)
            from ..fileio import atomic_write_json

            atomic_write_json(tmp / "change_report.json", change)
            entry["change_report"] = f"timepoints/{tp_id}/change_report.json"
        timings["change"] = time.perf_counter() - t0

        carried = []
        if carry_plan and not reliable:
            warnings.append("the plan was not carried over: the registration is not good enough to map it")
        if carry_plan and reliable:
            from .carry import carry_plan as _carry

            t0 = time.perf_counter()
            prev_scene = load_scene(src_dir / previous["path"], load_meshes=False)
            tp_scene = load_scene(tmp, load_meshes=True)
            carried = _carry(prev_scene.plan, prev_reg, reg, tp_scene)
            timings["carry_plan"] = time.perf_counter() - t0

        final = tp_root / tp_id
        if final.exists() and not replace:
            raise SceneError(f"time point folder '{final.name}' already exists (pass --replace to redo it)",
                             path=str(final), rule="time point ids are unique")
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    add_timepoint(src_dir, entry, replace=replace)
    return FollowUpResult(src_dir, entry, final, {"rigid_baseline_to_timepoint": np.round(reg.rigid, 6).tolist(), **reg_info,
                                                  "metric": reg.metric, "timings_s": reg.timings},
                          change, carried, {k: round(v, 3) for k, v in timings.items()}, warnings)


def previous_in_time(tps: list[dict], tp_id: str, date: str | None) -> dict:
    """The time point the new study is compared with: the latest one dated on or before it
    (undated studies: the latest one); never the one being replaced; the baseline at least."""
    others = [t for t in tps if t["id"] != tp_id]
    if date:
        dated = [t for t in others[1:] if t.get("study_date") and t["study_date"] <= date]
        return dated[-1] if dated else others[0]
    return others[-1]


def _write_change_meshes(folder: Path, meshes, dists: dict, change: dict) -> None:
    from ..fileio import atomic_write
    from .change import vertex_colours

    by_name = {m.name: m for m in meshes}
    for row in change["structures"]:
        d = dists.get(row["name"])
        if d is None:
            continue
        mesh = by_name[row["name"]].mesh.copy()
        mesh.visual.vertex_colors = vertex_colours(d)
        rel = f"changes/{row['name']}.ply"
        atomic_write(folder / rel, lambda p, m=mesh: m.export(str(p), file_type="ply", encoding="binary"))
        row["change_mesh"] = rel
