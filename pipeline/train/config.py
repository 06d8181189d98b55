"""Training configuration (``configs/train/*.yaml``): pydantic models, values only, no code."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..config import load_yaml
from ..errors import ConfigError, pydantic_config_error


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _three(v, what: str):
    if v is not None and len(v) != 3:
        raise ValueError(f"{what} must have 3 values (one per axis); found {len(v)}")
    return v


class NetworkConfig(_Strict):
    """A class of ``monai.networks.nets`` and its keyword arguments (``out_channels`` comes from the labels).

    The arguments are checked against the class's signature when the config is loaded
    (:func:`check_network`), so a misspelt argument fails before any data is read."""

    name: str = "UNet"
    args: dict[str, Any] = Field(default_factory=lambda: {
        "spatial_dims": 3, "in_channels": 1, "channels": [16, 32, 64, 128, 128], "strides": [2, 2, 2, 2],
        "num_res_units": 2})

    @field_validator("args")
    @classmethod
    def _no_out_channels(cls, v):
        if "out_channels" in v:
            raise ValueError("out_channels is set from the label list; remove it")
        return v


class IntensityConfig(_Strict):
    """window: (HU - a_min) / (a_max - a_min) * (b_max - b_min) + b_min, clipped if ``clip``;
    zscore / zscore_nonzero: per image; none: HU as they are."""

    kind: Literal["window", "zscore", "zscore_nonzero", "none"] = "window"
    a_min: Optional[float] = None
    a_max: Optional[float] = None
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = True

    @model_validator(mode="after")
    def _window(self):
        if self.kind == "window":
            if self.a_min is None or self.a_max is None:
                raise ValueError("kind 'window' needs a_min and a_max (HU)")
            if self.a_max <= self.a_min:
                raise ValueError(f"a_max ({self.a_max}) must be greater than a_min ({self.a_min})")
        return self

    def as_dict(self) -> dict:
        return self.model_dump(exclude_none=True)


class LossConfig(_Strict):
    lambda_dice: float = Field(1.0, ge=0)
    lambda_ce: float = Field(1.0, ge=0)
    batch_dice: float = 0.0   # non-zero: Dice pooled over the batch (nnU-Net's choice)


class DataConfig(_Strict):
    """Where training pairs come from.

    ``kind: dataset`` reads an nnU-Net-layout dataset (images + labels, MONAI transforms and
    augmentation); ``kind: synth`` draws SynthSeg-style images on the fly from generation maps
    (the real label maps under ``real_dir`` and/or an nnU-Net dataset's ``labelsGen/``).
    """

    kind: Literal["dataset", "synth"] = "dataset"
    dataset: Optional[str] = None            # nnU-Net dataset folder (kind: dataset, or extra gen maps)
    real_dir: Optional[str] = None           # ../shared/data/real style folder (kind: synth)
    phantoms: int = Field(0, ge=0)           # extra generation maps from pipeline.phantom (kind: synth)
    source_weights: Optional[list[float]] = None
    spacing: list[float] = Field(default_factory=lambda: [3.0, 3.0, 3.0])
    patch: list[int] = Field(default_factory=lambda: [80, 80, 80])
    batch_size: int = Field(2, ge=1)
    samples_per_case: int = Field(2, ge=1)   # patches cropped from one cached case (kind: dataset)
    val_cases: int = Field(2, ge=0)           # held-out cases (dataset) / fixed synthetic cases (synth)
    num_workers: int = Field(1, ge=0)
    cache_memory_gb: float = Field(4.0, gt=0) # CacheDataset budget (kind: dataset)
    # spatial augmentation; there is deliberately no flip option: mirroring swaps left/right organs
    rotate_deg: list[float] = Field(default_factory=lambda: [10.0, 10.0, 15.0])
    scale: list[float] = Field(default_factory=lambda: [0.85, 1.2])

    @field_validator("spacing", "patch", "rotate_deg")
    @classmethod
    def _xyz(cls, v, info):
        return _three(v, info.field_name)

    @field_validator("scale")
    @classmethod
    def _range(cls, v):
        if len(v) != 2 or not 0 < v[0] <= v[1]:
            raise ValueError(f"scale must be [low, high] with 0 < low <= high; found {v}")
        return v


class OptimConfig(_Strict):
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    max_iterations: int = Field(1000, ge=1)
    max_minutes: Optional[float] = Field(None, gt=0)  # wall-clock budget; the schedule follows it
    warmup_iterations: int = Field(20, ge=0)
    poly_power: float = 0.9
    grad_clip: float = 12.0


class FinetuneConfig(_Strict):
    """Start from an existing model: registry name or a weights file (+ its network/labels)."""

    model: Optional[str] = None              # registry name (configs/models/<name>.yaml)
    weights: Optional[str] = None            # or a safetensors / state-dict file of the same network
    labels: Optional[list[str]] = None       # label names of `weights`' output channels 1..N


class TrainConfig(_Strict):
    name: str
    output_dir: str
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Optional[int] = Field(None, ge=1)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    labels: Optional[list[str]] = None        # target label names (default: the dataset's)
    intensity: IntensityConfig = Field(default_factory=lambda: IntensityConfig(a_min=-200.0, a_max=300.0))
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    val_every: int = Field(100, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    log_every: int = Field(10, ge=1)
    roi_size: list[int] = Field(default_factory=lambda: [96, 96, 96])
    finetune: Optional[FinetuneConfig] = None
    tensorboard: bool = True
    # inference settings carried into the exported registry entry (docs/MODEL_FORMAT.md,
    # `inference:`), e.g. {resample: probabilities, min_extent_mm: [0, 0, 24]}
    inference: dict[str, Any] = Field(default_factory=dict)

    @field_validator("roi_size")
    @classmethod
    def _roi(cls, v):
        return _three(v, "roi_size")

    @field_validator("labels")
    @classmethod
    def _labels(cls, v):
        if v is not None:
            bad = [n for n in v if not re.match(r"^[a-z][a-z0-9_]*$", n)]
            if bad:
                raise ValueError(f"label names must be lower_snake_case; found {bad}")
            if len(set(v)) != len(v) or "background" in v:
                raise ValueError(f"label names must be unique and not 'background'; found {v}")
        return v

    @field_validator("inference")
    @classmethod
    def _inference(cls, v):
        from ..segment.registry import InferenceDef

        if "roi_size" in v:
            raise ValueError("roi_size is the top-level key roi_size")
        InferenceDef.model_validate(v)  # unknown keys and bad values fail here, with their key
        return v

    def resolve_paths(self, base: Path) -> "TrainConfig":
        """Relative paths in the file are relative to the current directory, then to the file."""
        def fix(p):
            if p is None:
                return None
            q = Path(p).expanduser()
            if q.is_absolute() or q.exists():
                return str(q.resolve())
            return str((base / q).resolve())

        c = self.model_copy(deep=True)
        c.output_dir = fix(c.output_dir)
        c.data.dataset = fix(c.data.dataset)
        c.data.real_dir = fix(c.data.real_dir)
        if c.finetune and c.finetune.weights:
            c.finetune.weights = fix(c.finetune.weights)
        return c


def load_train_config(path) -> TrainConfig:
    """Parse and validate a training YAML; errors name the file and the key."""
    path = Path(path)
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"a training config must be a mapping; found {type(data).__name__}", path=str(path))
    try:
        cfg = TrainConfig.model_validate(data)
    except ValidationError as e:
        raise pydantic_config_error(e, path=path) from None
    check_network(cfg.network, path)
    return cfg.resolve_paths(path.parent)


def validate_config(data: dict, path=None) -> TrainConfig:
    """A config mapping -> TrainConfig, every key checked (ConfigError names the dotted key)."""
    try:
        cfg = TrainConfig.model_validate(data)
    except ValidationError as e:
        raise pydantic_config_error(e, path=path) from None
    check_network(cfg.network, path)
    return cfg


def check_network(network: NetworkConfig, path=None) -> None:
    """``network.name`` is a class of monai.networks.nets and ``network.args`` its arguments.

    Builds the network once with two output channels (milliseconds for the networks used
    here), so wrong values (e.g. channels and strides of different lengths) fail up front too."""
    import inspect

    import monai.networks.nets as nets
    import torch

    where = None if path is None else str(path)
    cls = getattr(nets, network.name.rsplit(".", 1)[-1], None)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise ConfigError(f"key 'network.name': must be a class of monai.networks.nets (e.g. UNet, SegResNet); "
                          f"found {network.name!r}", path=where, rule="network.name")
    params = inspect.signature(cls.__init__).parameters
    named = [k for k, p in params.items() if k != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        for k in network.args:
            if k not in named:
                raise ConfigError(f"key 'network.args.{k}': not an argument of monai.networks.nets.{cls.__name__} "
                                  f"(its arguments: {', '.join(n for n in named if n != 'out_channels')})",
                                  path=where, rule=f"network.args.{k}")
    for k in named:
        if params[k].default is inspect.Parameter.empty and k != "out_channels" and k not in network.args:
            raise ConfigError(f"key 'network.args.{k}': required by monai.networks.nets.{cls.__name__}",
                              path=where, rule=f"network.args.{k}")
    try:
        cls(**network.args, out_channels=2)
    except Exception as e:  # noqa: BLE001 - a constructor raises anything: report the key, not a traceback at iteration 0
        raise ConfigError(f"key 'network.args': monai.networks.nets.{cls.__name__} refuses these arguments: "
                          f"{type(e).__name__}: {e}", path=where, rule="network.args") from None
