"""Run a MONAI network on a Volume and bring labels + uncertainty back onto the input grid.

Steps: Volume -> MetaTensor (:mod:`.monai_io`, the only RAS/xyz conversion) -> MONAI
``Orientation`` + ``Spacing`` (bilinear) -> intensity steps (MONAI transforms) -> sliding-window
inference with Gaussian blending -> softmax -> argmax + normalised entropy on the network grid
-> back onto the input grid (labels nearest, or probabilities trilinear for few classes;
entropy trilinear), so the label map's geometry equals the input's exactly.

Memory. The blended logits on the network grid are C x voxels floats (105 classes on a 3 mm
body CT: ~1.2 GB). When that exceeds ``inference.max_buffer_mb`` the windows are run in
order of their slice position and accumulated in a ring buffer one window deep along that
axis; planes no later window can touch are finalised (softmax, argmax, entropy) and dropped.
Window placement, Gaussian weights and blending are MONAI's own (``dense_patch_slices``,
``compute_importance_map``), so both paths give the same numbers. Below the budget the runner
calls ``monai.inferers.sliding_window_inference`` itself: zero overhead over bare MONAI.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import ModelError
from ..types import Volume
from .registry import InferenceDef, ModelSpec, Preprocessing


@dataclass
class NetworkOutput:
    """Network result on the input grid. labels: (nk, nj, ni) label ids; uncertainty: float32
    0..1 or None; probabilities: (C, nk, nj, ni) float32 or None."""

    labels: np.ndarray
    uncertainty: np.ndarray | None
    probabilities: np.ndarray | None
    timings: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


@contextlib.contextmanager
def torch_threads(n: int | None):
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def pick_device(choice: str):
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' requested but CUDA is not available (use device: auto or cpu)")
    if choice in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


# --- preprocessing -------------------------------------------------------------------------

def preprocess(volume: Volume, pre: Preprocessing):
    """Volume -> MetaTensor (1, x, y, z) on the network grid, intensities normalised."""
    import torch
    from monai.transforms import NormalizeIntensity, Orientation, ScaleIntensity, ScaleIntensityRange, Spacing

    from .monai_io import volume_to_metatensor

    img = volume_to_metatensor(volume, torch.float32)
    img = Orientation(axcodes=pre.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S")))(img)
    if pre.spacing:
        img = Spacing(pixdim=pre.spacing, mode="bilinear", padding_mode="border", dtype=np.float32)(img)
    for step in pre.intensity:
        if step.kind == "window":
            img = ScaleIntensityRange(step.a_min, step.a_max, step.b_min, step.b_max, clip=step.clip)(img)
        elif step.kind in ("zscore", "zscore_nonzero"):
            img = NormalizeIntensity(nonzero=step.kind == "zscore_nonzero")(img)
        elif step.kind == "scale":
            img = ScaleIntensity(minv=step.minv, maxv=step.maxv)(img)
    return img


# --- inference -----------------------------------------------------------------------------

class _Finaliser:
    """Collects finalised logits planes (C, x, y, dz) into per-voxel results on the network grid."""

    def __init__(self, shape_xyz, n_channels: int, keep_probs: bool):
        self.ch = np.zeros(shape_xyz, np.uint8 if n_channels <= 256 else np.int16)
        self.entropy = np.zeros(shape_xyz, np.float32)
        self.probs = np.zeros((n_channels, *shape_xyz), np.float32) if keep_probs else None
        self.log_c = math.log(max(n_channels, 2))

    def __call__(self, z0: int, logits):
        import torch

        logits = logits.float()
        lse = torch.logsumexp(logits, 0)
        p = torch.exp(logits - lse)
        z1 = z0 + logits.shape[-1]
        self.ch[..., z0:z1] = p.argmax(0).cpu().numpy()
        self.entropy[..., z0:z1] = ((lse - (p * logits).sum(0)) / self.log_c).clamp_(0, 1).cpu().numpy()
        if self.probs is not None:
            self.probs[..., z0:z1] = p.cpu().numpy()


def _whole(image, predictor, inf: InferenceDef, device, finalise: _Finaliser, chunk: int = 16):
    from monai.inferers import sliding_window_inference

    logits = sliding_window_inference(image, inf.roi_size, inf.sw_batch_size, predictor, overlap=inf.overlap,
                                      mode=inf.mode, sigma_scale=inf.sigma_scale, padding_mode=inf.padding_mode,
                                      sw_device=device, device=device)
    logits = logits[0]
    for z0 in range(0, logits.shape[-1], chunk):  # bounded softmax temporaries
        finalise(z0, logits[..., z0:z0 + chunk])
    return 0


def streamed_sliding_window(image, predictor, inf: InferenceDef, device, emit) -> int:
    """MONAI's sliding-window blending, windows ordered along z, ring buffer one window deep.

    ``emit(z0, logits)`` receives finalised planes (C, x, y, dz) in increasing z. Returns the
    number of windows run.
    """
    import torch
    import torch.nn.functional as F
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval, compute_importance_map

    x = image[0:1]
    size0 = list(x.shape[2:])
    roi = [s if r <= 0 else r for r, s in zip(inf.roi_size, size0)]
    pad = []
    for d in (2, 1, 0):  # F.pad order: last dim first (MONAI pads the same way)
        diff = max(roi[d] - size0[d], 0)
        pad += [diff // 2, diff - diff // 2]
    if any(pad):
        x = F.pad(x, pad, mode={"constant": "constant", "reflect": "reflect", "replicate": "replicate",
                                "circular": "circular"}[inf.padding_mode])
    size = list(x.shape[2:])
    scan = _get_scan_interval(size, roi, 3, [inf.overlap] * 3)
    slices = dense_patch_slices(size, roi, scan)
    weight = compute_importance_map(tuple(roi), mode=inf.mode, sigma_scale=inf.sigma_scale, device=device,
                                    dtype=torch.float32)
    by_z: dict[int, list] = {}
    for s in slices:
        by_z.setdefault(s[2].start, []).append(s)
    lo_pad_z, crop = pad[0], (slice(pad[4], pad[4] + size0[0]), slice(pad[2], pad[2] + size0[1]))
    rz = roi[2]
    buf = cnt = None
    lo = 0

    def flush(upto: int):
        nonlocal lo
        if upto <= lo:
            return
        d = upto - lo
        planes = buf[:, crop[0], crop[1], :d] / cnt[crop[0], crop[1], :d]
        z_from, z_to = max(lo, lo_pad_z), min(upto, lo_pad_z + size0[2])  # drop padded planes
        if z_to > z_from:
            emit(z_from - lo_pad_z, planes[..., z_from - lo:z_to - lo])
        buf[..., :rz - d] = buf[..., d:].clone()
        buf[..., rz - d:] = 0
        cnt[..., :rz - d] = cnt[..., d:].clone()
        cnt[..., rz - d:] = 0
        lo = upto

    n_win = 0
    for z_start in sorted(by_z):
        flush(z_start)
        group = by_z[z_start]
        for b in range(0, len(group), inf.sw_batch_size):
            batch = group[b:b + inf.sw_batch_size]
            win = torch.cat([x[(slice(None), slice(None), *s)] for s in batch]).to(device)
            out = predictor(win)
            if buf is None:
                buf = torch.zeros((out.shape[1], size[0], size[1], rz), dtype=torch.float32, device=device)
                cnt = torch.zeros((size[0], size[1], rz), dtype=torch.float32, device=device)
            for o, s in zip(out, batch):
                buf[:, s[0], s[1], :] += o.float() * weight
                cnt[s[0], s[1], :] += weight
            n_win += len(batch)
    flush(lo + rz)
    return n_win


def _predictor(net, device, amp: bool):
    import torch

    if device.type == "cuda" and amp:
        def run(x):
            with torch.autocast("cuda", dtype=torch.float16):
                return net(x)
        return run
    return net


# --- back onto the input grid --------------------------------------------------------------

def _index_map(volume: Volume, net_affine_lps: np.ndarray) -> np.ndarray:
    """4x4: input index (k, j, i) -> network-grid index (z, y, x) in our [k, j, i] view order."""
    return np.linalg.inv(net_affine_lps) @ volume.affine


def _resample(arr_kji: np.ndarray, m: np.ndarray, shape, order: int, dtype) -> np.ndarray:
    from scipy import ndimage

    out = np.empty(shape, dtype)
    ndimage.affine_transform(arr_kji, m[:3, :3], offset=m[:3, 3], output_shape=tuple(shape), output=out,
                             order=order, mode="nearest", prefilter=False)
    return out


def _probabilities_back(probs_xyz: np.ndarray, m: np.ndarray, shape, slab: int = 16):
    """Trilinear probabilities on the input grid, reduced slab by slab: (argmax, entropy, probs)."""
    from scipy import ndimage

    c = probs_xyz.shape[0]
    probs_kji = probs_xyz.transpose(0, 3, 2, 1)
    ch = np.zeros(shape, np.uint8 if c <= 256 else np.int16)
    ent = np.zeros(shape, np.float32)
    log_c = math.log(max(c, 2))
    for k0 in range(0, shape[0], slab):
        n = min(slab, shape[0] - k0)
        off = m[:3, 3] + m[:3, :3] @ np.array([k0, 0, 0], float)
        p = np.empty((c, n, *shape[1:]), np.float32)
        for ci in range(c):
            ndimage.affine_transform(np.ascontiguousarray(probs_kji[ci]), m[:3, :3], offset=off,
                                     output_shape=(n, *shape[1:]), output=p[ci], order=1, mode="nearest",
                                     prefilter=False)
        ch[k0:k0 + n] = p.argmax(0)
        np.clip(p, 1e-12, 1.0, out=p)
        ent[k0:k0 + n] = np.clip(-(p * np.log(p)).sum(0) / log_c, 0, 1)
    return ch, ent


def run_network(volume: Volume, spec: ModelSpec, cfg, keep_probabilities: bool = False) -> NetworkOutput:
    """Segment ``volume`` with a checkpoint or bundle model (see module doc). ``cfg``: SegmentConfig."""
    import torch

    from .checkpoint import load_network
    from .monai_io import metatensor_affine_lps

    if spec.network is None or not spec.weights:
        raise ModelError(f"model '{spec.name}' has no network/weights", path=spec.source_file)
    inf = spec.inference
    device = pick_device(cfg.device)
    amp = inf.amp if cfg.amp is None else cfg.amp
    threads = cfg.threads or inf.threads
    timings: dict[str, float] = {}
    notes: list[str] = []
    with torch_threads(threads), torch.inference_mode():
        t0 = time.perf_counter()
        net, sha, n_params = load_network(spec.network.name, spec.network.args, spec.weights)
        net = net.to(device)
        timings["load"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        img = preprocess(volume, spec.preprocessing)
        net_affine = metatensor_affine_lps(img)
        image = img.as_tensor()[None].to(device)  # (1, 1, x, y, z)
        timings["preprocess"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        n_ch = int(spec.network.args.get("out_channels") or (max(spec.channel_ids(), default=0) + 1))
        shape_xyz = tuple(image.shape[2:])
        resample = inf.resample
        if resample == "auto":
            resample = "probabilities" if n_ch <= inf.max_prob_channels or keep_probabilities else "labels"
        fin = _Finaliser(shape_xyz, n_ch, keep_probs=resample == "probabilities")
        predictor = _predictor(net, device, amp)
        whole_mb = n_ch * int(np.prod(shape_xyz)) * 4 / 2**20
        if whole_mb <= inf.max_buffer_mb:
            _whole(image, predictor, inf, device, fin)
            path = "whole"
        else:
            streamed_sliding_window(image, predictor, inf, device, fin)
            path = "streamed"
        del image
        timings["inference"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    m = _index_map(volume, net_affine)
    probabilities = None
    if resample == "probabilities":
        ch, ent = _probabilities_back(fin.probs, m, volume.shape)
        if keep_probabilities:
            probabilities = np.stack([_resample(np.ascontiguousarray(p.transpose(2, 1, 0)), m, volume.shape, 1,
                                                np.float32) for p in fin.probs])
    else:
        ch = _resample(np.ascontiguousarray(fin.ch.transpose(2, 1, 0)), m, volume.shape, 0, fin.ch.dtype)
        ent = _resample(np.ascontiguousarray(fin.entropy.transpose(2, 1, 0)), m, volume.shape, 1, np.float32)
    lut = np.zeros(max(n_ch, 1), np.int32)
    for c, lid in spec.channel_ids().items():
        if c < n_ch:
            lut[c] = lid
    labels = lut[ch]
    timings["resample_back"] = time.perf_counter() - t0
    inputs = {"weights_sha256": sha, "parameters": n_params, "device": str(device), "threads": threads or
              torch.get_num_threads(), "amp": bool(amp and device.type == "cuda"), "inference_path": path,
              "resample": resample, "network_grid": {"shape_xyz": list(shape_xyz),
                                                     "spacing_mm": [round(float(s), 4) for s in
                                                                    np.linalg.norm(net_affine[:3, :3], axis=0)]}}
    return NetworkOutput(labels, ent, probabilities, timings, inputs, notes)
