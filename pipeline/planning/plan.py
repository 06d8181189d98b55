"""Plan records in ``scene.plan`` and the :class:`Planner` front object (viewer and CLI alike).

``scene.plan`` has four lists (``landmarks``, ``measurements``, ``cuts``, ``trajectories``) of
JSON records. Every record has::

    id          "L1", "M3", "C1", "T2": unique in its list, stable, what the viewer redraws by
    kind        landmark | distance | angle | structure_distance | volume | extents | cut | trajectory
    created     ISO-8601 local time
    points      [[x, y, z], ...] LPS mm: what the viewer draws (empty for pure structure metrics)
    value, unit the headline number ("mm", "deg", "ml") when the kind has one
    structures  names of the structures involved
    provenance  {function, software: {surgitwin, ...}, inputs: {relative file: sha256[:16]}}

plus kind-specific keys (see :mod:`.measure`, :mod:`.cut`, :mod:`.trajectory`). The inputs'
hashes tie each number to the exact mesh / label files, which the scene's provenance chain ties
to the source series UIDs.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import PlanningError, SceneError
from .records import _software, check_point, file_hash, lps_list  # noqa: F401 - this module's API since 0.1

SECTIONS = {"landmarks": "L", "measurements": "M", "lesions": "LS", "segments": "S", "cuts": "C", "trajectories": "T"}
_ID = re.compile(r"^([A-Z]+)(\d+)$")


def next_id(plan: dict, section: str) -> str:
    """Next free id of a plan section: prefix + (largest number in use + 1)."""
    prefix = SECTIONS[section]
    used = [int(m.group(2)) for r in plan.get(section, []) if (m := _ID.match(str(r.get("id", ""))))]
    return f"{prefix}{max(used, default=0) + 1}"


def save_plan(scene) -> Path:
    """Rewrite only the ``plan`` key of the scene's scene.json, atomically.

    Reads the file on disk first so concurrent edits to other keys (QC, snapshots) are kept.
    """
    from ..scene.scene import SCENE_FILE, write_json_atomic

    if scene.root is None:
        raise SceneError("save_plan: the scene has no folder yet (save_scene it first)")
    path = Path(scene.root) / SCENE_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SceneError(f"save_plan: cannot read scene.json ({e})", path=str(path)) from None
    data["plan"] = scene.plan
    write_json_atomic(path, data)
    return path


def find_record(plan: dict, record_id: str) -> tuple[str, dict]:
    for section in SECTIONS:
        for r in plan.get(section, []):
            if r.get("id") == record_id:
                return section, r
    raise PlanningError(f"plan has no record with id '{record_id}'")


def remove_record(plan: dict, record_id: str) -> dict:
    section, rec = find_record(plan, record_id)
    plan[section] = [r for r in plan[section] if r is not rec]
    return rec


class Planner:
    """Planning operations on one scene, with cached mesh indexes and label map.

    Every ``add_*``/``measure_*`` method computes with :mod:`.measure`, :mod:`.cut` or
    :mod:`.trajectory`, appends a record to ``scene.plan`` and returns it; call
    :meth:`save` (or pass ``save=True``) to persist. The viewer keeps one Planner per scene.
    """

    def __init__(self, scene):
        from ..scene import load_scene

        if isinstance(scene, (str, Path)):
            scene = load_scene(scene)
        self.scene = scene
        self._index: dict[str, Any] = {}
        self._labelmap = None
        self._lesions_cache: dict[tuple, list[str]] = {}

    # -- cached inputs ---------------------------------------------------------------------
    def index(self, name: str):
        """:class:`~.distance.MeshIndex` of a structure (built once)."""
        from .distance import MeshIndex

        if name not in self._index:
            am = self.scene.mesh(name)
            if am.mesh is None:
                raise PlanningError(f"structure '{name}': the scene was loaded without meshes")
            self._index[name] = MeshIndex.from_mesh(am.mesh, name)
        return self._index[name]

    def mesh(self, name: str):
        return self.scene.mesh(name).mesh

    @property
    def labelmap(self):
        if self._labelmap is None:
            self._labelmap = self.scene.load_labelmap()
        return self._labelmap

    def qc(self, name: str) -> dict:
        """The structure's QC entry (scene.json ``qc`` and the structure's own ``qc``), or {}."""
        qc = dict((self.scene.extra.get("qc") or {}).get(name) or {})
        if name in self.scene.structure_names and isinstance(self.scene.mesh(name).qa.get("qc"), dict):
            qc.update(self.scene.mesh(name).qa["qc"])
        return qc

    def qc_flags(self, name: str) -> list[str]:
        """QC flags that make a structure unreliable for planning (implausible side, position
        or size; see :mod:`pipeline.scene.plausibility`); [] when none."""
        flags = self.qc(name).get("flags") or []
        return [flags] if isinstance(flags, str) else [str(f) for f in flags]

    def lesions_of(self, name: str) -> list[str]:
        """Lesions inside structure ``name``: those the lesion tool carved out of it (plan
        ``lesions`` records) and tumour-named structures touching it (e.g. a liver tumour)."""
        from ..export.dicom_seg import TUMOUR_WORDS
        from .distance import mesh_distance

        names = self.scene.structure_names
        key = (name, tuple(names), tuple(r.get("name") for r in self.scene.plan.get("lesions", [])))
        cache = self._lesions_cache
        if key in cache:  # the viewer's live cut preview asks on every move
            return list(cache[key])
        out = [r["name"] for r in self.scene.plan.get("lesions", []) if r.get("within") == name and r.get("name") in names]
        for n in names:
            if n == name or n in out or not any(w in n for w in TUMOUR_WORDS) or any(w in name for w in TUMOUR_WORDS):
                continue
            a, b = self.index(n), self.index(name)
            inside_box = np.all(a.bounds[0] >= b.bounds[0] - 1) and np.all(a.bounds[1] <= b.bounds[1] + 1)
            if inside_box and mesh_distance(a, b).distance <= 2.0:
                out.append(n)
        cache[key] = list(out)
        return out

    def critical(self, name: str) -> bool:
        return bool(self.scene.labels.by_name(name).critical) if name in self.scene.labels else False

    def provenance(self, function: str, structures: Iterable[str] = (), labelmap: bool = False) -> dict:
        inputs = {}
        if self.scene.root is not None:
            for n in structures:
                rel = self.scene.mesh(n).qa.get("mesh_path", f"meshes/{n}.ply")
                if (Path(self.scene.root) / rel).exists():
                    inputs[rel] = file_hash(Path(self.scene.root) / rel)
            if labelmap and (Path(self.scene.root) / self.scene.labelmap).exists():
                inputs[self.scene.labelmap] = file_hash(Path(self.scene.root) / self.scene.labelmap)
        return {"function": function, "software": _software(), "inputs": inputs}

    def add(self, section: str, record: dict, *, save: bool = False) -> dict:
        rec = {"id": next_id(self.scene.plan, section), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record}
        self.scene.plan.setdefault(section, []).append(rec)
        if save:
            self.save()
        return rec

    def save(self) -> Path:
        return save_plan(self.scene)

    def remove(self, record_id: str, *, save: bool = False) -> dict:
        """Remove a record (and the cut meshes it wrote) from the plan."""
        if find_record(self.scene.plan, record_id)[0] == "lesions":
            raise PlanningError(f"plan record {record_id} is a lesion: it changed the label map and the meshes, so it "
                                f"cannot be removed from the plan alone; re-run the pipeline (run --discard-plan)")
        rec = remove_record(self.scene.plan, record_id)
        if self.scene.root is not None:
            for rel in (rec.get("meshes") or {}).values():
                (Path(self.scene.root) / rel).unlink(missing_ok=True)
        if save:
            self.save()
        return rec

    # -- operations (each returns the stored record) ----------------------------------------
    def measure_distance(self, p, q, *, label: str | None = None, save: bool = False) -> dict:
        from .measure import distance_record

        return self.add("measurements", distance_record(p, q, label=label), save=save)

    def measure_angle(self, a, vertex, c, *, label: str | None = None, save: bool = False) -> dict:
        from .measure import angle_record

        return self.add("measurements", angle_record(a, vertex, c, label=label), save=save)

    def measure_between(self, name_a: str, name_b: str, *, save: bool = False) -> dict:
        from .measure import structure_distance_record

        rec = structure_distance_record(self.index(name_a), self.index(name_b))
        rec["provenance"] = self.provenance("pipeline.planning.measure.structure_distance", [name_a, name_b])
        return self.add("measurements", rec, save=save)

    def measure_structure(self, name: str, *, save: bool = False) -> list[dict]:
        """Volume (voxels and mesh), surface area, extents and maximal diameter: two records."""
        from .measure import structure_records

        recs = structure_records(name, self.mesh(name), self.labelmap)
        prov = self.provenance("pipeline.planning.measure.structure_records", [name], labelmap=True)
        out = [self.add("measurements", {**r, "provenance": prov}) for r in recs]
        if save:
            self.save()
        return out

    def add_landmark(self, name: str, point, *, snap_to: str | None = None, save: bool = False) -> dict:
        from .measure import landmark_record

        rec = landmark_record(name, point, None if snap_to is None else self.index(snap_to))
        rec["provenance"] = self.provenance("pipeline.planning.measure.landmark", [snap_to] if snap_to else [])
        return self.add("landmarks", rec, save=save)

    def add_cut(self, structure: str, planes, *, margin_to: str | None = None, save_meshes: bool = True,
                save: bool = False, liver_state: str | None = None) -> dict:
        from .cut import cut_record

        cut_id = next_id(self.scene.plan, "cuts")
        rec = cut_record(self, structure, planes, margin_to=margin_to, cut_id=cut_id, save_meshes=save_meshes,
                         liver_state=liver_state)
        return self.add("cuts", rec, save=save)

    def add_lesion(self, seed, *, name: str | None = None, within: str | None = None,
                   options: dict | None = None) -> dict:
        """Segment a lesion from a seed point (LPS mm), add it to the scene as a structure carved
        out of its host and record it in the plan; the scene on disk is updated (always saved)."""
        from ..scene.scene import save_scene
        from .lesion import segment_lesion

        if self.scene.root is None:
            raise SceneError("add_lesion: the scene has no folder yet (save_scene it first)")
        rec = self.add("lesions", segment_lesion(self, seed, name=name, within=within, options=options))
        save_scene(self.scene, write_meshes=False)
        return rec

    def add_segments(self, structure: str = "liver", landmarks: dict | None = None, *, save_meshes: bool = True,
                     save: bool = False) -> dict:
        """Couinaud segments I-VIII of the liver from landmarks (see :mod:`.segments`), with a
        mesh per segment (``meshes``) for the viewer and the report."""
        from .segments import segments_record, write_segment_meshes

        rec = segments_record(self, structure, landmarks)
        rid = next_id(self.scene.plan, "segments")
        rec["meshes"] = write_segment_meshes(self, rec, rid) if save_meshes else {}
        return self.add("segments", rec, save=save)

    def add_segment_resection(self, segments, structure: str = "liver", landmarks: dict | None = None, *,
                              liver_state: str | None = None, save: bool = False) -> dict:
        """Resect whole Couinaud segments (e.g. ["VI", "VII"]): a record in ``cuts``."""
        from .segments import segment_resection_record

        if landmarks is None and self.scene.plan.get("segments"):
            landmarks = self.scene.plan["segments"][-1]["landmarks"]
        rec = segment_resection_record(self, segments, structure, landmarks, liver_state=liver_state)
        return self.add("cuts", rec, save=save)

    def add_trajectory(self, entry, target, radius_mm: float, *, safety_margin_mm: float | None = None,
                       structures: Iterable[str] | None = None, save: bool = False) -> dict:
        from .trajectory import trajectory_record

        rec = trajectory_record(self, entry, target, radius_mm, safety_margin_mm=safety_margin_mm,
                                structures=structures)
        return self.add("trajectories", rec, save=save)
