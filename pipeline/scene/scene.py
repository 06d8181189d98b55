"""The scene bundle on disk: the contract between the pipeline, the viewer and other tools.

Layout of a scene folder::

    scene.json            the index (below); every path in it is relative to the folder
    image.nii.gz          the CT/MR volume (NIfTI; RAS on disk as NIfTI demands, LPS in memory)
    labels.nii.gz         the label map on exactly the image's grid
    uncertainty.nii.gz    optional voxel-wise uncertainty (0..1), same grid
    meshes/<name>.ply     one closed surface per structure, vertices in LPS mm
    snapshots/*.png       optional pictures

``scene.json`` keys (schema_version "2.0"; typed in :mod:`.schema`, published as
docs/scene.schema.json; 1.0 files are migrated on load):
    schema_version, case_id, coordinate_system ("LPS"), units ("mm"),
    source        {study_instance_uid, series_instance_uid, frame_of_reference_uid, modality, ...}
    image         relative path of the image NIfTI
    labelmap      relative path of the label map NIfTI
    uncertainty   relative path or null
    labels        the label table: [{id, name, rgb, code, critical, expected_ml, components}]
    structures    [{name, label, color, mesh, volume_ml, voxel_volume_ml, watertight,
                    n_faces, area_mm2, deviation_percent, qc: {...}}]
                  qc also carries anatomical plausibility (pipeline/scene/plausibility.py):
                  plausible (bool), flags [reasons], status "fail" when flagged
    plan          {landmarks: [], measurements: [], cuts: [], trajectories: []} and, once
                  used, lesions: [] (surgitwin lesion) and segments: [] (Couinaud)
    provenance    [StageRecord dicts, in order]
    snapshots     [relative paths]
    qc, input_checks, scan_warnings, truth_comparison   optional, written by the run / demo
    further keys  allowed (open sections, see :mod:`.schema`) and kept on a round trip

Mesh PLY files store float32 vertices; save_scene rounds in-memory vertices to float32 first,
so save -> load round-trips exactly.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SceneError
from ..fileio import atomic_write, atomic_write_json
from ..types import AnatomyMesh, LabelTable, StageRecord
from .schema import SCHEMA_VERSION, migrate, validate_scene_dict

SCENE_FILE = "scene.json"
REQUIRED_KEYS = ("schema_version", "case_id", "source", "image", "labelmap", "structures", "plan", "provenance")


def new_plan() -> dict:
    return {"landmarks": [], "measurements": [], "cuts": [], "trajectories": []}


@dataclass(eq=False)
class Scene:
    """In-memory scene. ``root`` is the folder it was loaded from / saved to (None if new)."""

    case_id: str
    source: dict
    labels: LabelTable
    meshes: list[AnatomyMesh]
    image: str = "image.nii.gz"
    labelmap: str = "labels.nii.gz"
    uncertainty: str | None = None
    plan: dict = field(default_factory=new_plan)
    provenance: list[StageRecord] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # unknown keys survive a load/save round trip
    root: Path | None = None

    # -- access ------------------------------------------------------------------------------
    def mesh(self, name: str) -> AnatomyMesh:
        for m in self.meshes:
            if m.name == name:
                return m
        raise SceneError(f"structure '{name}' is not in scene '{self.case_id}'; known: {[m.name for m in self.meshes]}",
                         path=str(self.root) if self.root else None)

    @property
    def structure_names(self) -> list[str]:
        return [m.name for m in self.meshes]

    def path(self, rel: str | None, key: str = "path") -> Path | None:
        if rel is None:
            return None
        if self.root is None:
            raise SceneError("scene has no folder yet (save it first)")
        return inside_scene(self.root, rel, key)

    def load_image(self):
        from ..geometry import read_image_file
        return read_image_file(self.path(self.image, "image"))

    def load_labelmap(self):
        from ..geometry import read_image_file
        from ..types import LabelMap
        vol = read_image_file(self.path(self.labelmap, "labelmap"))
        arr = vol.array
        if not np.issubdtype(arr.dtype, np.integer):
            arr = np.rint(arr).astype(np.int32)
        return LabelMap(vol.with_array(arr), self.labels)

    def load_uncertainty(self):
        from ..geometry import read_image_file
        return None if self.uncertainty is None else read_image_file(self.path(self.uncertainty, "uncertainty"))

    # -- serialisation ----------------------------------------------------------------------
    def to_json(self) -> dict:
        structures = []
        for m in self.meshes:
            qa = dict(m.qa)
            entry = {
                "name": m.name,
                "label": m.label.id,
                "color": list(m.label.rgb),
                "mesh": qa.pop("mesh_path", f"meshes/{m.name}.ply"),
                "volume_ml": qa.pop("volume_ml", None),
                "voxel_volume_ml": qa.pop("voxel_volume_ml", None),
                "watertight": qa.pop("watertight", None),
            }
            entry.update(qa)
            structures.append(entry)
        d = {
            "schema_version": SCHEMA_VERSION,
            "case_id": self.case_id,
            "coordinate_system": "LPS",
            "units": "mm",
            "source": self.source,
            "image": self.image,
            "labelmap": self.labelmap,
            "uncertainty": self.uncertainty,
            "labels": self.labels.to_list(),
            "structures": structures,
            "plan": self.plan,
            "provenance": [p.to_dict() for p in self.provenance],
            "snapshots": self.snapshots,
        }
        d.update(self.extra)
        return d


def inside_scene(folder, rel, key: str) -> Path:
    """``folder / rel`` after checking it stays inside the scene folder (symlinks resolved).

    A scene names its files relative to its folder; a path that leaves it (``../other/image``,
    an absolute path, a symlink to elsewhere) would put another patient's data into this
    scene's numbers. ``key`` names the scene.json key in the error.
    """
    folder = Path(folder)
    if not isinstance(rel, str) or not rel.strip():
        raise SceneError(f"scene contract: '{key}' must be a relative path string; found {rel!r}",
                         path=str(folder / SCENE_FILE), rule="scene paths are relative to the scene folder")
    p = folder / rel
    root = folder.resolve()
    target = p.resolve()  # follows symlinks, also of missing files' parents
    if Path(rel).is_absolute() or not target.is_relative_to(root):
        raise SceneError(f"scene contract: '{key}' = {rel!r} resolves to {target}, outside the scene folder",
                         path=str(folder / SCENE_FILE), rule="every scene path resolves inside the scene folder")
    return p


def _check_paths(folder: Path, d: dict) -> None:
    for key in ("image", "labelmap"):
        inside_scene(folder, d[key], key)
    if d.get("uncertainty") is not None:
        inside_scene(folder, d["uncertainty"], "uncertainty")
    for n, s in enumerate(d["structures"]):
        if isinstance(s, dict) and "mesh" in s:
            inside_scene(folder, s["mesh"], f"structures[{n}].mesh ({s.get('name', '?')})")
    for n, rel in enumerate(d.get("snapshots") or []):
        inside_scene(folder, rel, f"snapshots[{n}]")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write a scene.json atomically after checking it against the scene contract (a writer
    that breaks the contract fails here, naming the key, not in the next reader)."""
    validate_scene_dict(data, path=str(path))
    atomic_write_json(path, data)


def resolve_scene_path(path) -> Path:
    """Accept a scene folder or its scene.json; return the folder."""
    p = Path(path)
    if p.is_file() and p.name == SCENE_FILE:
        return p.parent
    if p.is_dir() and (p / SCENE_FILE).is_file():
        return p
    raise SceneError(f"not a scene: expected a folder containing {SCENE_FILE} or the {SCENE_FILE} itself", path=str(p))


def _export_ply(mesh, path: Path) -> None:
    mesh.export(str(path), file_type="ply", encoding="binary")


def save_scene(scene: Scene, folder=None, *, write_meshes: bool = True) -> Path:
    """Write scene.json (atomically) and the meshes into ``folder`` (default: scene.root).

    Image/label NIfTI files are written by the stage that produced them
    (:func:`pipeline.run.run_case`); this function checks they exist.
    """
    folder = Path(folder or scene.root or ".")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meshes").mkdir(exist_ok=True)
    for rel in (scene.image, scene.labelmap):
        if rel is not None and not (folder / rel).exists():
            raise SceneError(f"scene contract: '{rel}' must exist in the scene folder before scene.json is written", path=str(folder))
    if write_meshes:
        for m in scene.meshes:
            rel = m.qa.get("mesh_path", f"meshes/{m.name}.ply")
            m.qa["mesh_path"] = rel
            v = np.asarray(m.mesh.vertices)
            if v.dtype != np.float32 and not np.array_equal(v, v.astype(np.float32)):
                m.mesh.vertices = v.astype(np.float32).astype(np.float64)
            atomic_write(folder / rel, partial(_export_ply, m.mesh))
    scene.root = folder
    write_json_atomic(folder / SCENE_FILE, scene.to_json())
    return folder


def load_scene(path, *, load_meshes: bool = True) -> Scene:
    """Load a scene bundle (folder or scene.json). Meshes are trimesh.Trimesh in LPS mm."""
    folder = resolve_scene_path(path)
    try:
        d = json.loads((folder / SCENE_FILE).read_text())
    except json.JSONDecodeError as e:
        raise SceneError(f"scene.json is not valid JSON ({e})", path=str(folder / SCENE_FILE)) from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(d, dict) or k not in d]
    if missing:
        raise SceneError(f"scene contract: keys {missing} are required", path=str(folder / SCENE_FILE),
                         rule="scene.json follows the scene contract (docs/scene.schema.json)")
    d = migrate(d, path=str(folder / SCENE_FILE))  # 1.0 -> 2.0
    validate_scene_dict(d, path=str(folder / SCENE_FILE))
    _check_paths(folder, d)
    labels = LabelTable.from_list(d["labels"])
    meshes = []
    for s in d["structures"]:
        s = dict(s)
        label = labels.by_id(s.pop("label"))
        s.pop("name"), s.pop("color", None)
        rel = s.pop("mesh")
        mesh = None
        if load_meshes:
            mp = folder / rel
            if not mp.is_file():
                raise SceneError(f"scene contract: mesh file '{rel}' of structure '{label.name}' is missing", path=str(folder))
            mesh = _load_mesh(mp, rel, label.name)
        qa = {"mesh_path": rel, **s}
        meshes.append(AnatomyMesh(label, mesh, qa))
    known = set(REQUIRED_KEYS) | {"coordinate_system", "units", "uncertainty", "labels", "snapshots"}
    plan = new_plan()
    plan.update(d["plan"] or {})
    return Scene(
        case_id=d["case_id"], source=d["source"], labels=labels, meshes=meshes,
        image=d["image"], labelmap=d["labelmap"], uncertainty=d.get("uncertainty"),
        plan=plan, provenance=[StageRecord.from_dict(p) for p in d["provenance"]],
        snapshots=list(d.get("snapshots", [])), extra={k: v for k, v in d.items() if k not in known},
        root=folder,
    )


def _load_mesh(mp: Path, rel: str, name: str):
    import trimesh

    try:
        mesh = trimesh.load_mesh(str(mp), process=False)
    except Exception as e:  # noqa: BLE001 - any loader failure is this file's problem
        raise SceneError(f"scene contract: mesh file '{rel}' of structure '{name}' is not a readable mesh "
                         f"({type(e).__name__}: {' '.join(str(e).split())[:160]})", path=str(mp),
                         rule="structure meshes are triangle meshes (PLY)") from None
    if not isinstance(mesh, trimesh.Trimesh):
        raise SceneError(f"scene contract: mesh file '{rel}' of structure '{name}' holds no triangle mesh "
                         f"({type(mesh).__name__})", path=str(mp), rule="structure meshes are triangle meshes (PLY)")
    return mesh


def copy_scene(src, dst) -> Path:
    """Copy a scene folder (used by tests and by tools that must not modify the original)."""
    src = resolve_scene_path(src)
    shutil.copytree(src, dst)
    return Path(dst)
