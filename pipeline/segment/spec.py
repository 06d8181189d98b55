"""The model specification (:class:`ModelSpec` and its parts): what every backend is given.

A leaf of the segment package: :mod:`.registry` resolves names, files and bundle folders into
a ModelSpec and :mod:`.bundle` reads MONAI bundles into one; both import this module, so the
two import one way (registry -> bundle -> spec). Imports no torch and no MONAI.
"""
from __future__ import annotations

import re
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..config import CONFIG_DIR
from ..types import Label, LabelTable
from .hu_rules import HURulesConfig
from .postprocess import PostprocessConfig

MODELS_DIR = CONFIG_DIR / "models"
LABELS_DIR = CONFIG_DIR / "labels"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class NetworkDef(BaseModel):
    """A class in ``monai.networks.nets`` and its keyword arguments (plain literals only)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _monai_class(cls, v):
        if not re.match(r"^(monai\.networks\.nets\.)?[A-Za-z_][A-Za-z0-9_]*$", v):
            raise ValueError(f"network name must be a class of monai.networks.nets (e.g. UNet); found {v!r}")
        return v


class IntensityStep(BaseModel):
    """One intensity step; a model applies its steps in order.

    window: ScaleIntensityRange(a_min, a_max, b_min, b_max, clip); zscore / zscore_nonzero:
    NormalizeIntensity(nonzero); scale: ScaleIntensity(minv, maxv) over the whole volume;
    none: identity.
    """

    model_config = ConfigDict(extra="forbid")
    kind: Literal["window", "zscore", "zscore_nonzero", "scale", "none"]
    a_min: Optional[float] = None
    a_max: Optional[float] = None
    b_min: Optional[float] = 0.0
    b_max: Optional[float] = 1.0
    clip: bool = False
    minv: float = 0.0
    maxv: float = 1.0

    @field_validator("a_max")
    @classmethod
    def _window_order(cls, v, info):
        a_min = info.data.get("a_min")
        if v is not None and a_min is not None and v <= a_min:
            raise ValueError(f"a_max must be greater than a_min ({a_min})")
        return v


class Preprocessing(BaseModel):
    model_config = ConfigDict(extra="forbid")
    orientation: str = "RAS"
    spacing: Optional[list[float]] = None  # mm along the orientation's axes; None = keep
    intensity: list[IntensityStep] = Field(default_factory=lambda: [IntensityStep(kind="none")])

    @field_validator("intensity", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, dict) else v

    @field_validator("orientation")
    @classmethod
    def _axcodes(cls, v):
        v = str(v).upper()
        group = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}
        if len(v) != 3 or any(c not in group for c in v) or sorted(group[c] for c in v) != [0, 1, 2]:
            raise ValueError(f"orientation must be 3 axis codes like RAS or LPS; found {v!r}")
        return v

    @field_validator("spacing")
    @classmethod
    def _spacing(cls, v):
        if v is not None and (len(v) != 3 or any(s <= 0 for s in v)):
            raise ValueError(f"spacing must be 3 positive numbers (mm); found {v}")
        return v


class InferenceDef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    roi_size: list[int] = Field(default_factory=lambda: [96, 96, 96])
    overlap: float = Field(0.25, ge=0.0, lt=1.0)
    mode: Literal["gaussian", "constant"] = "gaussian"
    sigma_scale: float = 0.125
    padding_mode: Literal["constant", "reflect", "replicate", "circular"] = "constant"
    sw_batch_size: int = Field(1, ge=1)
    threads: Optional[int] = Field(None, ge=1)
    amp: bool = True
    # above this many MB of blended logits the runner streams windows through a ring buffer
    max_buffer_mb: float = Field(512.0, gt=0)
    # dtype of that ring buffer: float16 halves it (slower on CPUs without native float16);
    # auto = float16 for networks with more than 32 output channels, else float32
    buffer_dtype: Literal["auto", "float32", "float16"] = "auto"
    # back onto the input grid: probabilities (trilinear) or labels (nearest); auto: probabilities
    # when the network has at most max_prob_channels outputs (cost grows with the channel count)
    resample: Literal["auto", "probabilities", "labels"] = "auto"
    max_prob_channels: int = Field(4, ge=1)
    # smallest scan extent (mm along the orientation's axes, e.g. R-L, A-P, S-I for RAS) the model
    # was trained for: a thinner scan still runs, with a warning in QC, the report and the manifest
    min_extent_mm: Optional[list[float]] = None


class LabelDef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int
    name: str
    rgb: list[int] = Field(default_factory=lambda: [200, 200, 200])
    code: Optional[str] = None
    critical: bool = False
    expected_ml: Optional[list[float]] = None
    components: int = Field(1, ge=0)
    channel: Optional[int] = Field(None, ge=1)  # network output channel; default: list position + 1


class ModelSpec(BaseModel):
    """A resolved model: everything the backends need, paths absolute."""

    model_config = ConfigDict(extra="forbid")
    name: str
    backend: Literal["checkpoint", "bundle", "hu_rules"]
    description: str = ""
    weights: Optional[str] = None
    card: Optional[str] = None
    network: Optional[NetworkDef] = None
    labels: list[LabelDef] = Field(default_factory=list)
    labels_file: Optional[str] = None
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    inference: InferenceDef = Field(default_factory=InferenceDef)
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)
    combine_with: Optional[str] = None
    hu_rules: HURulesConfig = Field(default_factory=HURulesConfig)
    bundle: Optional[str] = None
    bundle_overrides: dict[str, Any] = Field(default_factory=dict)
    trust_bundle: bool = False
    source_file: Optional[str] = None
    notes: list[str] = Field(default_factory=list)
    # What the model was made for; a scan that does not match is refused before segmenting
    # (pipeline.run). Empty: any. Regions: head, neck, chest, abdomen, pelvis, extremity.
    modality: list[str] = Field(default_factory=list)
    body_region: list[str] = Field(default_factory=list)

    @field_validator("modality", "body_region")
    @classmethod
    def _upper_lower(cls, v, info):
        return [x.upper() for x in v] if info.field_name == "modality" else [x.lower() for x in v]

    @field_validator("name")
    @classmethod
    def _snake(cls, v):
        if not _NAME.match(v):
            raise ValueError(f"model name must be lower_snake_case; found {v!r}")
        return v

    def label_table(self) -> LabelTable:
        return LabelTable(Label(id=l.id, name=l.name, rgb=tuple(l.rgb), code=l.code, critical=l.critical,
                                expected_ml=tuple(l.expected_ml) if l.expected_ml else None,
                                components=l.components) for l in self.labels)

    def channel_ids(self) -> dict[int, int]:
        """Network output channel -> label id (channel 0 is background)."""
        return {(l.channel or i + 1): l.id for i, l in enumerate(self.labels)}
