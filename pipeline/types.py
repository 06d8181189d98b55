"""Core data model: Volume, Label/LabelTable, LabelMap, AnatomyMesh, StageRecord.

Axis order, stated once for the whole project
---------------------------------------------
``Volume.array`` is indexed ``array[k, j, i]`` = ``[slice, row, column]`` (the order in which
DICOM frames are stacked and in which SimpleITK's ``GetArrayFromImage`` returns data).
``Volume.affine`` maps the homogeneous index ``(k, j, i, 1)`` to patient millimetres in
**LPS** (DICOM's convention: +x = patient Left, +y = Posterior, +z = Superior)::

    xyz = affine[:3, :3] @ (k, j, i) + affine[:3, 3]

so ``affine[:3, 2]`` is the DICOM row direction times the column spacing, ``affine[:3, 1]``
the column direction times the row spacing and ``affine[:3, 0]`` the slice step. RAS appears
only in explicit conversions at file boundaries (:func:`pipeline.geometry.lps_to_ras_affine`).
"""
from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .errors import GeometryError, SurgitwinError

_SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")


def _as_affine(affine) -> np.ndarray:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise GeometryError(f"affine must be 4x4; found shape {a.shape}")
    if not np.allclose(a[3], [0, 0, 0, 1]):
        raise GeometryError(f"affine's last row must be [0, 0, 0, 1]; found {a[3].tolist()}")
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise GeometryError("affine must be invertible; found a singular 3x3 part")
    if not np.all(np.isfinite(a)):
        raise GeometryError("affine must be finite; found NaN or inf")
    return a


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3-D image: ``array[k, j, i]`` plus one 4x4 affine index -> LPS mm (see module doc).

    Attributes
    ----------
    array : (nk, nj, ni) ndarray
    affine : (4, 4) float64
    frame_of_reference_uid : str or None
    source : dict, free-form provenance (study/series UIDs, files, notes such as resampling).
    """

    array: np.ndarray
    affine: np.ndarray
    frame_of_reference_uid: str | None = None
    source: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        arr = np.asarray(self.array)
        if arr.ndim != 3:
            raise GeometryError(f"Volume array must be 3-D [slice, row, column]; found {arr.ndim}-D shape {arr.shape}")
        object.__setattr__(self, "array", arr)
        object.__setattr__(self, "affine", _as_affine(self.affine))
        object.__setattr__(self, "source", dict(self.source))

    # -- derived geometry -------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """(3,) mm per voxel along the array axes (slice, row, column)."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def origin(self) -> np.ndarray:
        """(3,) LPS mm of the centre of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """(3, 3) unit column vectors: LPS direction of each array axis."""
        return self.affine[:3, :3] / self.spacing

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])) / 1000.0)

    def index_to_lps(self, idx) -> np.ndarray:
        """(n, 3) [k, j, i] float indices -> (n, 3) LPS mm."""
        idx = np.asarray(idx, dtype=np.float64)
        return idx @ self.affine[:3, :3].T + self.affine[:3, 3]

    def lps_to_index(self, xyz) -> np.ndarray:
        """(n, 3) LPS mm -> (n, 3) continuous [k, j, i] indices."""
        xyz = np.asarray(xyz, dtype=np.float64)
        inv = np.linalg.inv(self.affine)
        return xyz @ inv[:3, :3].T + inv[:3, 3]

    def center_lps(self) -> np.ndarray:
        return self.index_to_lps((np.array(self.shape) - 1) / 2.0)

    def geometry_equal(self, other: "Volume", atol: float = 1e-4) -> bool:
        """Same grid: same shape and affines equal within ``atol`` (mm)."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol))

    def with_array(self, array: np.ndarray, **source) -> "Volume":
        """A volume on the same grid with another array (shape must match)."""
        array = np.asarray(array)
        if array.shape != self.shape:
            raise GeometryError(f"with_array: shape must equal {self.shape}; found {array.shape}")
        return Volume(array, self.affine, self.frame_of_reference_uid, {**self.source, **source})


@dataclass(frozen=True)
class Label:
    """One structure: integer id in the label map, lower_snake_case name, colour 0-255."""

    id: int
    name: str
    rgb: tuple[int, int, int] = (200, 200, 200)
    code: str | None = None  # SNOMED CT code when known, e.g. "10200004" (liver)
    critical: bool = False  # trajectories warn when within the safety margin
    expected_ml: tuple[float, float] | None = None  # plausible volume range for QC
    components: int = 1  # connected components to keep in post-processing (paired: 2)

    def __post_init__(self):
        if not isinstance(self.id, (int, np.integer)) or not (1 <= int(self.id) <= 65535):
            raise SurgitwinError(f"label '{self.name}': id must be an integer in 1..65535; found {self.id!r}")
        if not _SNAKE.match(self.name):
            raise SurgitwinError(f"label name must be lower_snake_case; found {self.name!r}")
        rgb = tuple(int(c) for c in self.rgb)
        if len(rgb) != 3 or any(c < 0 or c > 255 for c in rgb):
            raise SurgitwinError(f"label '{self.name}': rgb must be 3 integers 0..255; found {self.rgb!r}")
        object.__setattr__(self, "id", int(self.id))
        object.__setattr__(self, "rgb", rgb)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["rgb"] = list(self.rgb)
        if self.expected_ml is not None:
            d["expected_ml"] = list(self.expected_ml)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Label":
        d = dict(d)
        if d.get("expected_ml") is not None:
            d["expected_ml"] = tuple(d["expected_ml"])
        d["rgb"] = tuple(d.get("rgb", (200, 200, 200)))
        return cls(**d)


class LabelTable:
    """An ordered set of labels with unique ids and names."""

    def __init__(self, labels: Iterable[Label]):
        self._labels = tuple(sorted(labels, key=lambda l: l.id))
        ids = [l.id for l in self._labels]
        names = [l.name for l in self._labels]
        pairs: tuple[tuple[str, list[Any]], ...] = (("ids", ids), ("names", names))
        for what, seq in pairs:
            dup = sorted({x for x in seq if seq.count(x) > 1})
            if dup:
                raise SurgitwinError(f"label table: {what} must be unique; found duplicates {dup}")
        self._by_id = {l.id: l for l in self._labels}
        self._by_name = {l.name: l for l in self._labels}

    def __iter__(self):
        return iter(self._labels)

    def __len__(self):
        return len(self._labels)

    def __contains__(self, key) -> bool:
        return key in self._by_name or key in self._by_id

    def __eq__(self, other):
        return isinstance(other, LabelTable) and self._labels == other._labels

    def __repr__(self):
        return f"LabelTable({[l.name for l in self._labels]})"

    def by_id(self, id_: int) -> Label:
        try:
            return self._by_id[int(id_)]
        except KeyError:
            raise SurgitwinError(f"label id {id_} is not in the label table {sorted(self._by_id)}") from None

    def by_name(self, name: str) -> Label:
        try:
            return self._by_name[name]
        except KeyError:
            raise SurgitwinError(f"structure '{name}' is not in the label table; known: {sorted(self._by_name)}") from None

    @property
    def ids(self) -> list[int]:
        return [l.id for l in self._labels]

    @property
    def names(self) -> list[str]:
        return [l.name for l in self._labels]

    def to_list(self) -> list[dict]:
        return [l.to_dict() for l in self._labels]

    @classmethod
    def from_list(cls, items: Sequence[Mapping[str, Any]]) -> "LabelTable":
        return cls(Label.from_dict(d) for d in items)


def label_dtype(max_id: int) -> type:
    """The integer type of label arrays and files whose ids go up to ``max_id``: uint8, or uint16
    above 255 (the one rule: segmentation, the files a run writes, edits, lesions, follow-ups)."""
    return np.uint8 if max_id <= 255 else np.uint16


@dataclass(frozen=True, eq=False)
class LabelMap:
    """An integer volume whose non-zero values are all ids of ``labels`` (0 = background)."""

    volume: Volume
    labels: LabelTable

    def __post_init__(self):
        arr = self.volume.array
        if not np.issubdtype(arr.dtype, np.integer):
            raise SurgitwinError(f"label map must hold integers; found dtype {arr.dtype}")
        present = np.unique(arr)
        unknown = sorted(int(v) for v in present if v != 0 and int(v) not in self.labels)
        if unknown:
            raise SurgitwinError(f"label map values must be 0 or ids of its label table; found unknown ids {unknown}")

    @property
    def array(self) -> np.ndarray:
        return self.volume.array

    def mask(self, name: str) -> np.ndarray:
        return self.volume.array == self.labels.by_name(name).id

    def file_array(self) -> np.ndarray:
        """The array as a label file stores it (:func:`label_dtype` of the table's largest id)."""
        return self.array.astype(label_dtype(max(self.labels.ids, default=0)), copy=False)

    def present(self) -> list[Label]:
        ids = set(int(v) for v in np.unique(self.volume.array))
        return [l for l in self.labels if l.id in ids]


@dataclass(eq=False)
class AnatomyMesh:
    """A structure's surface in LPS mm (``trimesh.Trimesh``) with its label and QA figures.

    ``qa`` keys: watertight (bool), volume_ml (mesh), voxel_volume_ml, deviation_percent,
    n_faces, area_mm2.
    """

    label: Label
    mesh: Any  # trimesh.Trimesh, kept untyped so importing types stays cheap
    qa: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.label.name


@dataclass(frozen=True)
class StageRecord:
    """One link of the provenance chain, appended by every stage."""

    stage: str
    software: Mapping[str, str]
    config_hash: str = ""
    inputs: Mapping[str, Any] = field(default_factory=dict)
    outputs: Mapping[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0
    notes: tuple[str, ...] = ()
    started_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    peak_rss_mb: float | None = None  # the process's peak resident memory during the stage (Linux: exact)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["software"] = dict(self.software)
        d["inputs"] = dict(self.inputs)
        d["outputs"] = dict(self.outputs)
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StageRecord":
        """From scene.json; keys a later version added (the scene contract keeps them) are left out here."""
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d["notes"] = tuple(d.get("notes", ()))
        return cls(**d)
