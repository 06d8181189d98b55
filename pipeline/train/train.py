"""``surgitwin train CONFIG``: train or fine-tune a MONAI network, checkpoint, resume.

Outputs in ``output_dir``:

- ``last.safetensors`` / ``best.safetensors``: the network's ``state_dict`` (registry format);
- ``state.pt``: optimiser, iteration, elapsed time, best metric, RNG states (``--resume``);
- ``model.json``: network, labels, preprocessing -- what :mod:`pipeline.train.export` needs;
- ``log.csv`` (+ TensorBoard events when ``tensorboard`` is installed), ``config.yaml``.

Checkpoints are written atomically (temp name + rename), so an interrupted run always
leaves a loadable ``last``. The learning rate follows a poly schedule over
``max_iterations``, or over ``max_minutes`` of wall-clock when that is set.
"""
from __future__ import annotations

import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ModelError
from ..evaluation import dice
from ..fileio import atomic_write
from .config import TrainConfig, load_train_config


# --- small helpers -----------------------------------------------------------------------------

def _atomic(path: Path, write) -> None:
    atomic_write(path, write)


def save_weights(state_dict, path) -> None:
    """Atomically write a state dict as safetensors (contiguous CPU tensors)."""
    from safetensors.torch import save_file

    sd = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    _atomic(Path(path), lambda p: save_file(sd, str(p)))


def load_weights(path) -> dict:
    """Read a safetensors file, or a ``torch.save``d state dict with ``weights_only=True``."""
    import torch

    path = Path(path)
    if not path.exists():
        raise ModelError("weights file not found", path=str(path))
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def build_network(network: dict, out_channels: int):
    """Instantiate ``monai.networks.nets.<name>(**args, out_channels=...)`` (no code from config)."""
    import monai.networks.nets as nets

    name = str(network.get("name")).rsplit(".", 1)[-1]
    cls = getattr(nets, str(name), None)
    if cls is None or not isinstance(cls, type):
        raise ConfigError(f"key 'network.name': not a class in monai.networks.nets; found {name!r}")
    args = dict(network.get("args", {}))
    args["out_channels"] = out_channels
    return cls(**args)


def normalize(img_hu: np.ndarray, intensity: dict) -> np.ndarray:
    """Apply the model's intensity step (window or z-score) to a HU array."""
    kind = intensity.get("kind", "window")
    if kind == "window":
        a0, a1 = float(intensity["a_min"]), float(intensity["a_max"])
        b0, b1 = float(intensity.get("b_min", 0.0)), float(intensity.get("b_max", 1.0))
        x = (img_hu.astype(np.float32) - a0) / (a1 - a0) * (b1 - b0) + b0
        return np.clip(x, min(b0, b1), max(b0, b1)) if intensity.get("clip", True) else x
    if kind in ("zscore", "zscore_nonzero"):
        m = img_hu != 0 if kind == "zscore_nonzero" else np.ones(img_hu.shape, bool)
        mu, sd = img_hu[m].mean(), img_hu[m].std() + 1e-8
        out = img_hu.astype(np.float32).copy()
        out[m] = (img_hu[m] - mu) / sd
        return out
    if kind == "none":
        return img_hu.astype(np.float32)
    raise ConfigError(f"key 'intensity.kind': must be window, zscore, zscore_nonzero or none; found {kind!r}")


def adapt_state_dict(old: dict, new_net, old_labels: list[str], new_labels: list[str]) -> tuple[dict, list[str]]:
    """Fine-tuning: copy every tensor whose shape fits; remap output channels by label name.

    Output layers (a dimension equal to the old channel count that must become the new one)
    get rows for labels present in both tables copied (background -> background), and keep
    their fresh initialisation for new labels. Returns (state dict, names of re-initialised keys).
    """
    import torch

    target = new_net.state_dict()
    n_old, n_new = len(old_labels) + 1, len(new_labels) + 1
    old_of_new = {0: 0}
    for ci, name in enumerate(new_labels, start=1):
        if name in old_labels:
            old_of_new[ci] = old_labels.index(name) + 1
    out, fresh = {}, []
    for k, t in target.items():
        o = old.get(k)
        if o is not None and o.shape == t.shape and (n_old == n_new and old_labels == new_labels or
                                                        not any(s in (n_old, n_new) for s in t.shape[:2])):
            out[k] = o.clone()
            continue
        if o is not None and o.dim() == t.dim():
            dims = [d for d in range(min(2, t.dim())) if o.shape[d] == n_old and t.shape[d] == n_new]
            rest_ok = all(o.shape[d] == t.shape[d] for d in range(t.dim()) if d not in dims)
            if dims and rest_ok:
                new_i = torch.tensor(list(old_of_new.keys()))
                old_i = torch.tensor(list(old_of_new.values()))
                v = t.clone()
                if dims == [0]:
                    v[new_i] = o[old_i]
                elif dims == [1]:
                    v[:, new_i] = o[:, old_i]
                else:  # a class -> class layer (Conv: out, in): new inputs must not disturb old outputs
                    v[new_i[:, None], new_i[None, :]] = o[old_i[:, None], old_i[None, :]]
                    unmapped = [c for c in range(n_new) if c not in old_of_new]
                    if unmapped:
                        v[new_i[:, None], torch.tensor(unmapped)[None, :]] = 0.0
                out[k] = v
                continue
            if o.shape == t.shape:
                out[k] = o.clone()
                continue
        out[k] = t
        fresh.append(k)
    return out, fresh


# --- data --------------------------------------------------------------------------------------

def _synth_sources(cfg: TrainConfig):
    """Generation maps for kind: synth (real label maps, dataset labelsGen/, phantoms)."""
    from .synth import load_real_generation_maps, phantom_generation_maps
    from .dataset import load_generation_maps

    sp = float(cfg.data.spacing[0])
    maps = []
    if cfg.data.real_dir:
        maps += load_real_generation_maps(cfg.data.real_dir, sp)
    if cfg.data.dataset:
        maps += load_generation_maps(cfg.data.dataset, sp)
    if cfg.data.phantoms:
        maps += phantom_generation_maps(cfg.data.phantoms, sp, seed=cfg.seed)
    if not maps:
        raise ConfigError("key 'data': kind 'synth' needs real_dir, a dataset with labelsGen/, or phantoms > 0")
    return maps


class SynthBatches:
    """Synthetic batches for iterations start, start+1, ...: batch ``it`` depends on (seed, it) only,
    so a resumed run draws exactly what an uninterrupted one would have."""

    def __init__(self, sampler, intensity: dict, seed: int, start: int, batch_size: int):
        self.sampler, self.intensity = sampler, intensity
        self.seed, self.start, self.batch_size = seed, start, batch_size

    def batch(self, it: int):
        import torch

        rng = np.random.default_rng([self.seed, it])
        xs, ys, failures = [], [], 0
        while len(xs) < self.batch_size:
            try:
                img, tgt = self.sampler.sample(rng)
            except Exception as e:  # noqa: BLE001 - one bad random draw must not end a long run; repeated ones must
                failures += 1
                print(f"synthesis failed ({failures}): {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                if failures > 20:
                    raise
                continue
            xs.append(torch.from_numpy(normalize(img, self.intensity)[None]))
            ys.append(torch.from_numpy(tgt[None].astype(np.int64)))
        return torch.stack(xs), torch.stack(ys)


def _ignore_sigint(_worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the training process, which saves a checkpoint."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def batch_iterator(source, num_workers: int):
    """Iterator over ``source.batch(it)`` for it = source.start, source.start + 1, ...

    With W workers, worker w makes batches start+w, start+w+W, ...; the loader returns them
    in iteration order, so the sequence is the same for any W."""
    import torch

    if num_workers == 0:
        def serial():
            it = source.start
            while True:
                yield source.batch(it)
                it += 1
        return serial()

    class _Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            wid, n = (info.id, info.num_workers) if info else (0, 1)
            it = source.start + wid
            while True:
                yield source.batch(it)
                it += n

    loader = torch.utils.data.DataLoader(_Stream(), batch_size=None, num_workers=num_workers,
                                         persistent_workers=True, worker_init_fn=_ignore_sigint)
    return iter(loader)


def make_data(cfg: TrainConfig, labels: list[str], start_iteration: int):
    """(infinite batch iterator, validation (image (1, ...) float, label (...) int) pairs, a line
    saying which cases validate)."""
    intensity = cfg.intensity.as_dict()
    if cfg.data.kind == "synth":
        from .synth import SynthSampler

        maps = _synth_sources(cfg)
        sampler = SynthSampler(maps, patch=tuple(cfg.data.patch), weights=cfg.data.source_weights,
                               spacing=float(cfg.data.spacing[0]), n_targets=len(labels),
                               rot_deg=tuple(cfg.data.rotate_deg), scale=tuple(cfg.data.scale))
        vrng = np.random.default_rng([cfg.seed, 987654321])  # never the training streams
        val, names = [], []
        for v in range(cfg.data.val_cases):
            img, tgt = sampler.whole_case(v % len(maps), vrng)
            val.append((normalize(img, intensity)[None], tgt.astype(np.int64)))
            names.append(maps[v % len(maps)].source.get("name", f"map_{v % len(maps)}"))
        source = SynthBatches(sampler, intensity, cfg.seed, start_iteration, cfg.data.batch_size)
        what = (f"{len(val)} whole synthetic cases (seed {cfg.seed}, fixed for the run) drawn from the generation "
                f"maps {names}")
        return batch_iterator(source, cfg.data.num_workers), val, what
    from .dataset import monai_training_data

    source, val, ids = monai_training_data(cfg, labels, start_iteration)
    what = f"{len(ids)} held-out dataset cases {ids}" if ids else "none (data.val_cases: 0)"
    return batch_iterator(source, cfg.data.num_workers), val, what


# --- validation ---------------------------------------------------------------------------------

def validate(net, val, n_classes: int, roi, device) -> list[float]:
    """Mean sliding-window Dice per foreground class over the validation cases (NaN if absent)."""
    import torch
    from monai.inferers import sliding_window_inference

    net.eval()
    scores = [[] for _ in range(n_classes)]
    with torch.no_grad():
        for img, tgt in val:
            x = torch.from_numpy(np.ascontiguousarray(img))[None].to(device)
            roi_c = [min(r, 16 * math.ceil(s / 16)) for r, s in zip(roi, x.shape[2:])]  # UNet needs multiples of 16
            pred = sliding_window_inference(x, roi_c, 1, net, overlap=0.25, mode="gaussian").argmax(1)[0].cpu().numpy()
            for c in range(1, n_classes + 1):
                t, p = tgt == c, pred == c
                if t.any():
                    scores[c - 1].append(dice(t, p))
    net.train()
    return [float(np.mean(s)) if s else float("nan") for s in scores]


# --- the loop ------------------------------------------------------------------------------------

def _labels_of(cfg: TrainConfig) -> list[str]:
    if cfg.data.kind == "dataset":
        from .dataset import read_dataset_json
        lab = read_dataset_json(cfg.data.dataset)["labels"]
        have = [n for n, v in sorted(lab.items(), key=lambda kv: int(kv[1])) if int(v) != 0]
        missing = [n for n in (cfg.labels or []) if n not in have]
        if missing:
            raise ConfigError(f"key 'labels': {missing} not declared in the dataset's dataset.json (labels there: "
                              f"{have}); a label without training data cannot be learnt",
                              path=str(Path(cfg.data.dataset) / "dataset.json"), rule="labels")
        return list(cfg.labels) if cfg.labels else have
    if cfg.labels:
        return list(cfg.labels)
    from .labels import TARGET_LABELS
    return TARGET_LABELS.names


def check_training_data(cfg: TrainConfig) -> None:
    """What ``dataset validate`` checks, before anything is trained (kind: dataset)."""
    if cfg.data.kind != "dataset":
        return
    if not cfg.data.dataset:
        raise ConfigError("key 'data.dataset': required for kind 'dataset'", rule="data.dataset")
    from .dataset import check_dataset

    check_dataset(cfg.data.dataset)


def _lr_factor(cfg: TrainConfig, it: int, elapsed_s: float) -> float:
    o = cfg.optim
    if it < o.warmup_iterations:
        return (it + 1) / (o.warmup_iterations + 1)
    frac = it / o.max_iterations
    if o.max_minutes:
        frac = max(frac, elapsed_s / (60.0 * o.max_minutes))
    return max(1.0 - min(frac, 1.0), 0.0) ** o.poly_power + 0.01


def _model_json(cfg: TrainConfig, labels: list[str], info: dict) -> dict:
    return {"name": cfg.name, "network": {"name": cfg.network.name,
                                          "args": {**cfg.network.args, "out_channels": len(labels) + 1}},
            "labels": labels, "preprocessing": {"orientation": "RAS", "spacing": list(cfg.data.spacing),
                                                "intensity": cfg.intensity.as_dict()},
            "roi_size": list(cfg.roi_size), "inference": dict(cfg.inference), "data_kind": cfg.data.kind, **info}


class _Stop:
    """SIGINT/SIGTERM during training: finish the iteration, save a checkpoint, return.

    A second signal stops at once (KeyboardInterrupt), as Ctrl-C normally does."""

    def __init__(self):
        self.signal: str | None = None
        self._old: dict = {}

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, _frame):
        import signal

        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        print(f"\n{self.signal}: finishing this iteration and saving a checkpoint (again to stop at once)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        import signal

        for s, h in self._old.items():
            signal.signal(s, h)
        return False


def _truncate_log(log_path: Path, fields: list[str], upto: int) -> None:
    """Keep the header and the rows up to iteration ``upto`` (a resumed run rewrites later ones)."""
    if not log_path.exists():
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerow(fields)
        return
    rows = list(csv.reader(open(log_path, newline="")))
    keep = [rows[0] if rows else fields] + [r for r in rows[1:] if r and int(r[0]) <= upto]
    with open(log_path, "w", newline="") as f:
        csv.writer(f).writerows(keep)


def run_training(config, resume: bool = False, max_iterations: int | None = None,
                 progress: bool | None = None, reset_best: bool = False) -> dict:
    """Train per ``config`` (a TrainConfig or a YAML path). Returns a summary dict.

    The dataset is validated first (the rules of ``surgitwin dataset validate``). ``resume=True``
    continues from ``output_dir/state.pt`` + ``last.safetensors`` (iteration, optimiser, elapsed
    time, best metric and recent losses restored); the batches depend only on the seed and the
    iteration number, so with an iteration-based schedule (no ``max_minutes``) a resumed run
    ends with the same weights, bit for bit, as an uninterrupted one. ``reset_best`` (with
    ``resume``) forgets the best validation score so far: use it when the validation cases
    changed. ``max_iterations`` overrides the config. SIGINT/SIGTERM end the current iteration,
    save a checkpoint and return with ``interrupted`` set to the signal's name. A fine-tune is
    validated at iteration 0, so "best" can be the starting model.
    """
    from .config import check_network

    cfg = config if isinstance(config, TrainConfig) else load_train_config(config)
    check_network(cfg.network)
    if max_iterations is not None:
        cfg = cfg.model_copy(deep=True)
        cfg.optim.max_iterations = int(max_iterations)
    check_training_data(cfg)
    run = _Training(cfg, _labels_of(cfg))
    run.start(resume, reset_best)
    run.prepare(resume, sys.stderr.isatty() if progress is None else progress)
    if cfg.finetune and not resume and run.val:
        run.score_starting_weights()
    with _Stop() as stop:
        while run.it < cfg.optim.max_iterations and stop.signal is None:
            if not run.iteration(stop):
                break
        run.checkpoint(False)
    return run.finish(stop)


class _Training:
    """One training run's state (network, optimiser, counters, log) and its steps; the order of
    the steps is :func:`run_training`'s (and fixes the random streams: resumed == uninterrupted)."""

    def __init__(self, cfg: TrainConfig, labels: list[str]):
        import torch
        from monai.utils import set_determinism

        self.cfg, self.labels = cfg, labels
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda" if cuda else "cpu")
        set_determinism(seed=cfg.seed)
        self.net = build_network(cfg.network.model_dump(), len(labels) + 1)
        self.state_file, self.last_file = self.out / "state.pt", self.out / "last.safetensors"
        self.it0, self.elapsed0, self.best, self.best_it, self.losses = 0, 0.0, -1.0, -1, []
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.amp = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.info: dict = {}
        self.tb = None
        self.first_losses: list[float] = []

    def start(self, resume: bool, reset_best: bool) -> None:
        """The starting weights (a checkpoint to resume, a fine-tune source, or fresh), on the device."""
        import torch

        if resume:
            self._resume(reset_best)
        elif self.cfg.finetune:
            self.info["finetune"] = _load_finetune(self.cfg, self.net, self.labels)
        self.net.to(self.device)
        for g in self.opt.param_groups:  # optimizer state onto the device after load
            for p in g["params"]:
                for v in self.opt.state.get(p, {}).values():
                    if torch.is_tensor(v):
                        v.data = v.data.to(self.device)

    def _resume(self, reset_best: bool) -> None:
        import torch

        if not (self.state_file.exists() and self.last_file.exists()):
            raise ModelError("--resume: no state.pt + last.safetensors to resume from", path=str(self.out))
        self.net.load_state_dict(load_weights(self.last_file))
        st = torch.load(str(self.state_file), map_location="cpu", weights_only=True)
        self.opt.load_state_dict(st["optimizer"])
        if "scaler" in st and self.amp:
            self.scaler.load_state_dict(st["scaler"])
        self.it0, self.elapsed0 = int(st["iteration"]), float(st["elapsed_s"])
        self.best, self.best_it = float(st["best"]), int(st["best_iteration"])
        self.losses = [float(v) for v in st.get("recent_losses", torch.zeros(0)).tolist()]
        if reset_best:
            self.best, self.best_it = -1.0, -1
        print(f"[{self.cfg.name}] resumed at iteration {self.it0} from {self.last_file}", file=sys.stderr)

    def prepare(self, resume: bool, show: bool) -> None:
        """Data, the output folder's model.json / config.yaml, the loss, the log; the clock starts."""
        import yaml
        from monai.losses import DiceCELoss

        cfg, out = self.cfg, self.out
        self.batches, self.val, val_what = make_data(cfg, self.labels, self.it0)
        self.info["validation"] = val_what
        print(f"[{cfg.name}] validation: {val_what}", file=sys.stderr)
        (out / "model.json").write_text(json.dumps(_model_json(cfg, self.labels, self.info), indent=1))
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
        # batch dice (nnU-Net's choice) pools each class over the batch: small organs absent from one
        # patch no longer contribute a noisy 0-or-1 term per sample
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=True,
                                  batch=bool(cfg.loss.batch_dice), lambda_dice=cfg.loss.lambda_dice,
                                  lambda_ce=cfg.loss.lambda_ce)
        self._open_log(resume)
        self.show = show
        self.t_start = time.perf_counter() - self.elapsed0
        self.it = self.it0
        self.net.train()

    def _open_log(self, resume: bool) -> None:
        self.log_path = self.out / "log.csv"
        self.fields = (["iteration", "elapsed_s", "loss", "lr"] + [f"val_dice_{n}" for n in self.labels]
                       + ["val_mean_dice"])
        if resume:
            _truncate_log(self.log_path, self.fields, self.it0)
        else:
            with open(self.log_path, "w", newline="") as f:
                csv.writer(f).writerow(self.fields)
        if self.cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(self.out / "tb"))
            except Exception:  # noqa: BLE001 - tensorboard missing or broken: the CSV log is the record
                self.tb = None

    def checkpoint(self, tag_best: bool) -> None:
        import torch

        save_weights(self.net.state_dict(), self.last_file)
        if tag_best:
            save_weights(self.net.state_dict(), self.out / "best.safetensors")
        st = {"iteration": torch.tensor(self.it), "elapsed_s": torch.tensor(time.perf_counter() - self.t_start),
              "best": torch.tensor(self.best), "best_iteration": torch.tensor(self.best_it),
              "optimizer": self.opt.state_dict(),
              "recent_losses": torch.tensor(self.losses[-self.cfg.log_every:], dtype=torch.float64),
              "scaler": self.scaler.state_dict()}
        _atomic(self.state_file, lambda p: torch.save(st, str(p)))

    def write_row(self, row: dict) -> None:
        with open(self.log_path, "a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in self.fields])

    def validation_row(self, row: dict) -> bool:
        """Validation Dice into ``row``; True when it is the best so far."""
        scores = validate(self.net, self.val, len(self.labels), self.cfg.roi_size, self.device)
        mean = float(np.nanmean(scores)) if not all(math.isnan(d) for d in scores) else 0.0
        row.update({f"val_dice_{n}": round(d, 4) for n, d in zip(self.labels, scores)})
        row["val_mean_dice"] = round(mean, 4)
        if self.tb:
            for n, d in zip(self.labels, scores):
                self.tb.add_scalar(f"val_dice/{n}", d, self.it)
        if mean > self.best:
            self.best, self.best_it = mean, self.it
            return True
        return False

    def score_starting_weights(self) -> None:
        """A fine-tune's starting model is a candidate too: one that only gets worse keeps it as "best"."""
        row = {"iteration": 0, "elapsed_s": 0.0, "loss": "", "lr": ""}
        self.validation_row(row)
        self.write_row(row)
        self.checkpoint(True)
        print(f"[{self.cfg.name}] iteration 0 (starting weights): mean validation Dice {row['val_mean_dice']:.4f}",
              file=sys.stderr)

    def iteration(self, stop) -> bool:
        """One optimiser step, then its log row, validation and checkpoint; False when the time
        budget is spent or the loader was interrupted by the stopping signal."""
        elapsed = time.perf_counter() - self.t_start
        if self.cfg.optim.max_minutes and elapsed > 60.0 * self.cfg.optim.max_minutes:
            return False
        lr = self.cfg.optim.lr * _lr_factor(self.cfg, self.it, elapsed)
        for g in self.opt.param_groups:
            g["lr"] = lr
        try:
            x, y = next(self.batches)
        except Exception:  # noqa: BLE001 - re-raised unless the stopping signal interrupted the loader
            if stop.signal is not None:
                return False
            raise
        lv = self._step(x, y)
        self.it += 1
        self.losses = (self.losses + [lv])[-max(self.cfg.log_every, 5):]
        if len(self.first_losses) < 5:
            self.first_losses.append(lv)
        self._record(lr)
        return True

    def _step(self, x, y) -> float:
        import torch

        x, y = x.to(self.device), y.to(self.device)
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=self.amp):
            loss = self.loss_fn(self.net(x), y)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        return float(loss.detach())

    def _record(self, lr: float) -> None:
        """The log row, validation and checkpoint due after iteration ``self.it``."""
        cfg, it, val = self.cfg, self.it, self.val
        row, is_best = None, False
        last_it = it == cfg.optim.max_iterations
        if it % cfg.log_every == 0 or last_it or (val and it % cfg.val_every == 0):
            row = {"iteration": it, "elapsed_s": round(time.perf_counter() - self.t_start, 1),
                   "loss": round(float(np.mean(self.losses[-cfg.log_every:])), 5), "lr": f"{lr:.3g}"}
        if val and (it % cfg.val_every == 0 or last_it):
            is_best = self.validation_row(row)
        if row:
            self.write_row(row)
            if self.tb:
                self.tb.add_scalar("loss", row["loss"], it)
                self.tb.add_scalar("lr", lr, it)
            _progress(cfg, it, lr, row, self.show)
        if is_best or it % cfg.checkpoint_every == 0 or last_it:
            self.checkpoint(is_best)

    def finish(self, stop) -> dict:
        """best.safetensors guaranteed, the log closed; the run's summary."""
        out, it = self.out, self.it
        if not (out / "best.safetensors").exists() and self.last_file.exists():
            save_weights(load_weights(self.last_file), out / "best.safetensors")
        if self.show:
            print(file=sys.stderr)
        if stop.signal:
            print(f"[{self.cfg.name}] {stop.signal}: stopped after iteration {it}; checkpoint saved in {out} "
                  f"(continue with --resume)", file=sys.stderr)
        if self.tb:
            self.tb.close()
        return {"output_dir": str(out), "iterations": it, "start_iteration": self.it0,
                "elapsed_s": time.perf_counter() - self.t_start, "best_val_mean_dice": self.best,
                "best_iteration": self.best_it, "first_losses": self.first_losses, "last_losses": self.losses[-5:],
                "labels": self.labels, "interrupted": stop.signal, "validation": self.info["validation"],
                "finetune": self.info.get("finetune")}


def _progress(cfg: TrainConfig, it: int, lr: float, row: dict, show: bool) -> None:
    done = it / cfg.optim.max_iterations
    if cfg.optim.max_minutes:
        done = max(done, row["elapsed_s"] / (60.0 * cfg.optim.max_minutes))
    eta = row["elapsed_s"] * (1 - done) / max(done, 1e-9)
    bar = "#" * int(20 * min(done, 1.0))
    msg = f"[{cfg.name}] |{bar:<20}| {100 * min(done, 1):5.1f}% it {it} loss {row['loss']:.4f} " \
          f"lr {lr:.2e} {row['elapsed_s']:.0f}s eta {eta / 60:.0f} min" \
          + (f" val {row['val_mean_dice']:.3f}" if "val_mean_dice" in row else "")
    print(("\r" if show else "") + msg, end="" if show else "\n", file=sys.stderr, flush=True)


def _load_finetune(cfg: TrainConfig, net, labels: list[str]) -> dict:
    """Start ``net`` from the fine-tune source; returns (and prints) what was transferred."""
    ft = cfg.finetune
    if ft.model:
        from ..segment.registry import resolve_model  # registry owned by pipeline.segment
        spec = resolve_model(ft.model)
        if spec.backend != "checkpoint" or not spec.weights:
            raise ConfigError(f"key 'finetune.model': {ft.model!r} is not a checkpoint model", rule="finetune.model")
        if spec.network and (spec.network.name != cfg.network.name):
            raise ConfigError(f"key 'finetune.model': network {spec.network.name} differs from {cfg.network.name}",
                              rule="finetune.model")
        old_labels = [l.name for l in sorted(spec.labels, key=lambda l: l.channel or 0)] if spec.labels else []
        weights = spec.weights
    elif ft.weights:
        weights, old_labels = ft.weights, list(ft.labels or labels)
    else:
        raise ConfigError("key 'finetune': give 'model' (registry name) or 'weights'", rule="finetune")
    sd, fresh = adapt_state_dict(load_weights(weights), net, old_labels, labels)
    net.load_state_dict(sd)
    kept = [n for n in labels if n in old_labels]
    new = [n for n in labels if n not in old_labels]
    info = {"source": ft.model or str(weights), "weights": str(weights),
            "tensors_transferred": len(sd) - len(fresh), "tensors_total": len(sd), "reinitialised": fresh,
            "channels_from_source": kept, "new_channels": new,
            "dropped_source_labels": [n for n in old_labels if n not in labels]}
    print(f"fine-tune from {info['source']} ({weights}): {info['tensors_transferred']} of {len(sd)} tensors "
          f"transferred; output channels kept by name: {kept or 'none'}; new (fresh): {new or 'none'}; "
          f"source labels dropped: {info['dropped_source_labels'] or 'none'}"
          + (f"; re-initialised: {', '.join(fresh)}" if fresh else ""), file=sys.stderr)
    return info
