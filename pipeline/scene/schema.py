"""The typed scene contract: pydantic models of ``scene.json`` (schema_version 2.0).

These models are the one description of a scene file. :func:`validate_scene_dict` checks a
parsed scene.json against them (after :func:`migrate` brought an older file up to date) and
raises :class:`~pipeline.errors.SceneError` naming every offending key (``structures[2].volume_ml``)
at once. ``docs/scene.schema.json`` is generated from them (:func:`json_schema`, ``python -m
pipeline.scene.schema > docs/scene.schema.json``) so other tools (a Slicer module, a web viewer)
can consume scenes; a test keeps the checked-in file equal to the generated one.

Open sections. Every object here types the keys that exist today and *allows* further keys
(JSON Schema ``additionalProperties: true``): stages and tools add figures to a structure's
entry, to a plan record or to the top level (time points of follow-up scans, edits, ...) without a
schema change. Such keys are kept on a load/save round trip; a later schema version may type
them. Plan records are a union keyed by ``kind``; a record of a kind not listed here is accepted
as :class:`OtherRecord` (it still needs ``id`` and ``kind``).

Version history
  1.0  untyped; ``labels``, ``coordinate_system``, ``units``, ``uncertainty``, ``snapshots`` and
       plan sections were optional (readers filled them in).
  2.0  typed (this module); those keys are always written. :func:`migrate` turns a 1.0 file into
       2.0 (labels derived from the structures when absent, empty plan sections added).
"""
from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from ..errors import SceneError

SCHEMA_VERSION = "2.0"
SUPPORTED_VERSIONS = ("1.0", "2.0")
PLAN_SECTIONS = ("landmarks", "measurements", "lesions", "segments", "cuts", "trajectories")
KNOWN_KINDS = ("landmark", "distance", "angle", "structure_distance", "volume", "extents", "cut",
               "segments_resection", "segments", "trajectory", "lesion")
RULE = "scene.json follows the scene contract (docs/scene.schema.json)"

Point = tuple[float, float, float]
RGB = Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(min_length=3, max_length=3)]


class _Open(BaseModel):
    """Known keys typed, further keys allowed and kept (an open section)."""

    model_config = ConfigDict(extra="allow")


# -- labels and structures ---------------------------------------------------------------------
class LabelEntry(_Open):
    """One row of the label table (``pipeline.types.Label``)."""

    id: Annotated[int, Field(ge=1, le=65535)]
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    rgb: RGB = [200, 200, 200]
    code: str | None = None
    critical: bool = False
    expected_ml: Annotated[list[float], Field(min_length=2, max_length=2)] | None = None
    components: Annotated[int, Field(ge=0)] = 1  # 0: keep every component


class QC(_Open):
    """Quality figures of one structure (segmentation QC, anatomical plausibility)."""

    id: int | None = None
    voxels: int | None = None
    volume_ml: float | None = None
    mean_hu: float | None = None
    sd_hu: float | None = None
    truncated: bool | None = None
    expected_ml: list[float] | None = None
    in_range: bool | None = None
    uncertainty: float | None = None
    uncertainty_level: Literal["low", "moderate", "high"] | None = None
    warning: str | None = None
    status: str | None = None
    plausible: bool | None = None
    flags: list[str] | str | None = None
    centroid_lps: Point | None = None


class Structure(_Open):
    """One structure: its label, its mesh file and the mesh stage's figures."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    label: Annotated[int, Field(ge=1, le=65535)]
    color: RGB = [200, 200, 200]
    mesh: str
    volume_ml: float | None = None
    voxel_volume_ml: float | None = None
    watertight: bool | None = None
    n_faces: int | None = None
    area_mm2: float | None = None
    deviation_percent: float | None = None
    qc: QC | None = None


class Source(_Open):
    """Where the image came from (DICOM identifiers when it was DICOM)."""

    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    frame_of_reference_uid: str | None = None
    modality: str | None = None


# -- provenance ------------------------------------------------------------------------------
class StageRecord(_Open):
    """One link of the provenance chain (``pipeline.types.StageRecord``, key for key)."""

    stage: str
    software: dict[str, str]
    config_hash: str = ""
    inputs: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    duration_s: float = 0.0
    notes: list[str] = []
    started_at: str = ""
    peak_rss_mb: float | None = None


Provenance = list[StageRecord]


class RecordProvenance(_Open):
    """What a plan number was computed from: function, versions, input files' sha256[:16]."""

    function: str
    software: dict[str, str] = {}
    inputs: dict[str, str] = {}


# -- plan records ------------------------------------------------------------------------------
class PlanRecordBase(_Open):
    """Keys every plan record has (see :mod:`pipeline.planning.plan`)."""

    id: Annotated[str, Field(min_length=1)]  # "L1", "M3", "C1": unique in its section
    kind: str
    created: str | None = None
    points: list[Point] = []
    value: float | None = None
    unit: str | None = None
    structures: list[str] = []
    warnings: list[str] = []
    provenance: RecordProvenance | None = None


class Plane(_Open):
    point: Point
    normal: Point


class LandmarkRecord(PlanRecordBase):
    kind: Literal["landmark"]
    name: str
    point: Point
    snapped_to: str | None = None


class DistanceRecord(PlanRecordBase):
    kind: Literal["distance"]
    label: str | None = None
    distance_mm: float | None = None


class AngleRecord(PlanRecordBase):
    kind: Literal["angle"]
    label: str | None = None
    angle_deg: float | None = None


class StructureDistanceRecord(PlanRecordBase):
    kind: Literal["structure_distance"]
    distance_mm: float | None = None
    point_a: Point | None = None
    point_b: Point | None = None
    overlap: bool | None = None


class VolumeRecord(PlanRecordBase):
    kind: Literal["volume"]
    voxel_volume_ml: float | None = None
    mesh_volume_ml: float | None = None
    n_voxels: int | None = None


class ExtentsRecord(PlanRecordBase):
    kind: Literal["extents"]
    max_diameter_mm: float | None = None
    bbox_min: Point | None = None
    bbox_max: Point | None = None


class _Resection(PlanRecordBase):
    structure: str
    resected_ml: float | None = None
    remnant_ml: float | None = None
    resected_percent: float | None = None
    remnant_percent: float | None = None
    meshes: dict[str, str] = {}


class CutRecord(_Resection):
    kind: Literal["cut"]
    planes: list[Plane] = []
    remnant_valid: bool | None = None


class SegmentsResectionRecord(_Resection):
    kind: Literal["segments_resection"]
    segments: list[str] = []


class SegmentsRecord(PlanRecordBase):
    kind: Literal["segments"]
    structure: str
    landmarks: dict[str, Point] = {}
    meshes: dict[str, str] = {}


class TrajectoryRecord(PlanRecordBase):
    kind: Literal["trajectory"]
    entry: Point
    target: Point
    radius_mm: float | None = None
    length_mm: float | None = None
    safety_margin_mm: float | None = None


class LesionRecord(PlanRecordBase):
    kind: Literal["lesion"]
    name: str
    label: int | None = None
    within: str | None = None
    volume_ml: float | None = None


class OtherRecord(PlanRecordBase):
    """A record of a kind this schema version does not type (kept as written)."""

    kind: Annotated[str, Field(json_schema_extra={"not": {"enum": list(KNOWN_KINDS)}})]


_KINDS = {"landmark": LandmarkRecord, "distance": DistanceRecord, "angle": AngleRecord,
          "structure_distance": StructureDistanceRecord, "volume": VolumeRecord, "extents": ExtentsRecord,
          "cut": CutRecord, "segments_resection": SegmentsResectionRecord, "segments": SegmentsRecord,
          "trajectory": TrajectoryRecord, "lesion": LesionRecord}
assert tuple(_KINDS) == KNOWN_KINDS


def _kind(rec: Any) -> str:
    kind = rec.get("kind") if isinstance(rec, dict) else getattr(rec, "kind", None)
    return kind if isinstance(kind, str) and kind in _KINDS else "other"


# Spelled out (not built from _KINDS) so a type checker sees the union; the assert below keeps
# the two in step.
PlanRecord = Annotated[Union[
    Annotated[LandmarkRecord, Tag("landmark")], Annotated[DistanceRecord, Tag("distance")],
    Annotated[AngleRecord, Tag("angle")], Annotated[StructureDistanceRecord, Tag("structure_distance")],
    Annotated[VolumeRecord, Tag("volume")], Annotated[ExtentsRecord, Tag("extents")],
    Annotated[CutRecord, Tag("cut")], Annotated[SegmentsResectionRecord, Tag("segments_resection")],
    Annotated[SegmentsRecord, Tag("segments")], Annotated[TrajectoryRecord, Tag("trajectory")],
    Annotated[LesionRecord, Tag("lesion")], Annotated[OtherRecord, Tag("other")],
], Discriminator(_kind)]
assert {get_args(a)[1].tag: get_args(a)[0] for a in get_args(get_args(PlanRecord)[0])} == {**_KINDS, "other": OtherRecord}


class Plan(_Open):
    """The surgical plan: one list of records per section (further sections allowed)."""

    landmarks: list[PlanRecord] = []
    measurements: list[PlanRecord] = []
    lesions: list[PlanRecord] = []
    segments: list[PlanRecord] = []
    cuts: list[PlanRecord] = []
    trajectories: list[PlanRecord] = []


# -- the scene ---------------------------------------------------------------------------------
class Scene(_Open):
    """scene.json. Every path is relative to the scene folder; coordinates are LPS mm."""

    schema_version: Literal["2.0"]
    case_id: str
    coordinate_system: Literal["LPS"]
    units: Literal["mm"]
    source: Source
    image: str
    labelmap: str
    uncertainty: str | None
    labels: list[LabelEntry]
    structures: list[Structure]
    plan: Plan
    provenance: Provenance
    snapshots: list[str] = []
    qc: dict[str, QC] | None = Field(None, description="segmentation QC per structure name")
    input_checks: dict[str, Any] | None = Field(None, description="the scan checks before segmentation")
    scan_warnings: list[str] | None = None
    truth_comparison: dict[str, Any] | None = Field(None, description="demo: comparison with the phantom's truth")


# -- migration and validation ------------------------------------------------------------------
def migrate(d: dict, path=None) -> dict:
    """A parsed scene.json of any supported version -> a 2.0 dict (a new dict; ``d`` untouched)."""
    if not isinstance(d, dict):
        raise SceneError(f"scene.json must hold a JSON object; found {type(d).__name__}", path=path, rule=RULE)
    version = str(d.get("schema_version", ""))
    if version not in SUPPORTED_VERSIONS:
        raise SceneError(f"scene contract: schema_version must be one of {list(SUPPORTED_VERSIONS)}; "
                         f"found {d.get('schema_version')!r}", path=path, rule=RULE)
    d = dict(d)
    if version == "1.0":
        d.setdefault("coordinate_system", "LPS")
        d.setdefault("units", "mm")
        d.setdefault("uncertainty", None)
        d.setdefault("snapshots", [])
        if not d.get("labels") and isinstance(d.get("structures"), list):
            d["labels"] = [{"id": s.get("label"), "name": s.get("name"), "rgb": s.get("color", [200, 200, 200])}
                           for s in d["structures"] if isinstance(s, dict)]
        if isinstance(d.get("plan"), dict) or d.get("plan") is None:
            d["plan"] = {**{k: [] for k in PLAN_SECTIONS}, **(d.get("plan") or {})}
        d["schema_version"] = SCHEMA_VERSION
    return d


def error_lines(err: ValidationError) -> list[str]:
    """``dotted.key[3].path: message`` for every error (union branches named by kind only once)."""
    out = []
    for e in err.errors():
        loc, prev = "", None
        for part in e["loc"]:
            if isinstance(part, int):
                loc += f"[{part}]"
            elif isinstance(prev, int) and (part in _KINDS or part == "other"):
                pass  # the union branch (the record's kind) after a record's index, not a key
            else:
                loc += ("." if loc else "") + str(part)
            prev = part
        line = f"{loc or '(top level)'}: {e['msg']}"
        if line not in out:
            out.append(line)
    return out


def validate_scene_dict(d: dict, path=None) -> Scene:
    """Migrate and validate a parsed scene.json; SceneError lists every broken key at once."""
    d = migrate(d, path)
    try:
        return Scene.model_validate(d)
    except ValidationError as e:
        lines = error_lines(e)
        raise SceneError(f"scene contract: {len(lines)} key(s) invalid: " + "; ".join(lines),
                         path=path, rule=RULE) from None


def json_schema() -> dict:
    schema = Scene.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://surgitwin.invalid/scene.schema.json"
    return schema


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(json_schema_text(), end="")
