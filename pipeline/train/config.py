"""Training configuration (``configs/train/*.yaml``): pydantic models, values only, no code."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import load_yaml
from ..errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    network: dict[str, Any] = Field(default_factory=lambda: {
        "name": "UNet", "args": {"spatial_dims": 3, "in_channels": 1, "channels": [16, 32, 64, 128, 128],
                                 "strides": [2, 2, 2, 2], "num_res_units": 2}})
    labels: Optional[list[str]] = None        # target label names (default: the dataset's)
    intensity: dict[str, Any] = Field(default_factory=lambda: {
        "kind": "window", "a_min": -200.0, "a_max": 300.0, "b_min": 0.0, "b_max": 1.0, "clip": True})
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    loss: dict[str, float] = Field(default_factory=lambda: {"lambda_dice": 1.0, "lambda_ce": 1.0})
    val_every: int = Field(100, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    log_every: int = Field(10, ge=1)
    roi_size: list[int] = Field(default_factory=lambda: [96, 96, 96])
    finetune: Optional[FinetuneConfig] = None
    tensorboard: bool = True

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
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"key '{key}': {err['msg']} (found {err.get('input')!r})", path=str(path), rule=key) from None
    return cfg.resolve_paths(path.parent)
