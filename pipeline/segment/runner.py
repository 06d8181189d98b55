"""Run a MONAI network on a Volume and bring labels + uncertainty back onto the input grid.

Steps: Volume -> MetaTensor (:mod:`.monai_io`, the only RAS/xyz conversion) -> MONAI
``Orientation`` + ``Spacing`` (bilinear) -> intensity steps (MONAI transforms) -> sliding-window
inference with Gaussian blending -> softmax -> argmax + normalised entropy on the network grid
-> back onto the input grid (labels nearest, or probabilities trilinear for few classes;
entropy trilinear; torch ``grid_sample`` slab by slab through the composed index affine),
so the label map's geometry equals the input's exactly.

Memory. The blended logits on the network grid are C x voxels floats (105 classes on a 3 mm
body CT: ~1.2 GB). When that exceeds ``inference.max_buffer_mb`` the windows are run in
order of their slice position and accumulated in a ring buffer one window deep along that
axis; planes no later window can touch are finalised (softmax, argmax, entropy) and dropped
(``buffer_dtype: float16`` halves the ring). Full-resolution outputs are only the label map
and the uncertainty map: never C full-resolution channels (unless ``keep_probabilities``).
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
from ..types import Volume, label_dtype
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

def _network_grid(volume: Volume, pre: Preprocessing):
    """(shape_xyz, RAS affine) of the network grid: MONAI's Orientation and Spacing run lazily
    (metadata only) on a zero-stride stand-in of the volume, so the grid is exactly theirs."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Orientation, Spacing

    from .monai_io import lps_kji_to_ras_xyz

    stand_in = MetaTensor(torch.zeros(1).expand(1, *volume.shape[::-1]),
                          affine=torch.as_tensor(lps_kji_to_ras_xyz(volume.affine), dtype=torch.float64))
    img = Orientation(axcodes=pre.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S")), lazy=True)(stand_in)
    img = Spacing(pixdim=pre.spacing, mode="bilinear", padding_mode="border", dtype=np.float32, lazy=True)(img)
    return tuple(int(n) for n in img.peek_pending_shape()), np.asarray(img.peek_pending_affine(), np.float64)


def separable_resample_in(volume: Volume, pre: Preprocessing):
    """MONAI's Orientation + Spacing (trilinear, border padding) onto the network grid, computed
    per axis from the int16 volume when the grid is the volume's scaled and permuted (the usual
    case): three 1-D interpolations on shrinking arrays instead of a float32 copy of the whole
    volume, a transposing copy and a sampling grid (2.0 s -> 0.2 s on a 512x512x300 CT; equal
    to MONAI's output within 0.06 HU -- MONAI samples at float32 coordinates -- in every storage
    layout and for oblique volumes, tested; on that CT 31 of 78.6 M voxels change label). None
    when the network grid is not a rescaling of the volume's (MONAI's Spacing keeps directions,
    so this is a guard; MONAI's transforms then run as before)."""
    import torch
    from monai.data import MetaTensor

    from .monai_io import lps_kji_to_ras_xyz

    shape_out, affine_out = _network_grid(volume, pre)
    m = np.linalg.inv(lps_kji_to_ras_xyz(volume.affine)) @ affine_out  # network (x', y', z') -> volume (x, y, z) index
    axes = axis_aligned(m)  # per network axis: (volume xyz axis, scale, offset)
    if axes is None:
        return None
    src_of = {r: (a_out, scale, offset) for a_out, (r, scale, offset) in enumerate(axes)}
    arr = np.asarray(volume.array)  # (k, j, i) = (z, y, x)
    out = arr
    for r in (2, 1, 0):  # z (k) first: the largest reduction for thin slices
        a_out, scale, offset = src_of[r]
        ax = 2 - r
        _, _, f, w = _axis_samples(scale, offset, shape_out[a_out], arr.shape[ax])
        lo = out.take(f, ax).astype(np.float32, copy=False)
        hi = out.take(np.minimum(f + 1, out.shape[ax] - 1), ax).astype(np.float32, copy=False)
        shape = [1, 1, 1]
        shape[ax] = len(w)
        hi -= lo
        hi *= w.reshape(shape)
        lo += hi
        out = lo
    # out is (k', j', i') along the volume's axes: reorder to the network's (x', y', z')
    order = [2 - r for r in sorted(src_of, key=lambda r: src_of[r][0])]
    xyz = np.ascontiguousarray(out.transpose(order))
    return MetaTensor(torch.from_numpy(xyz)[None], affine=torch.as_tensor(affine_out, dtype=torch.float64))


def preprocess(volume: Volume, pre: Preprocessing):
    """Volume -> MetaTensor (1, x, y, z) on the network grid, intensities normalised."""
    import torch
    from monai.transforms import NormalizeIntensity, Orientation, ScaleIntensity, ScaleIntensityRange, Spacing

    from .monai_io import volume_to_metatensor

    img = separable_resample_in(volume, pre) if (SEPARABLE and pre.spacing and pre.orientation) else None
    if img is None:
        img = volume_to_metatensor(volume, torch.float32, axcodes=pre.orientation)
        # a no-op after the conversion above; kept so MONAI itself confirms the orientation
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

    def __call__(self, region, logits):
        """Finalise ``logits`` (C, *region shape) of the network-grid ``region`` (3 slices):
        argmax, normalised entropy (and probabilities)."""
        import torch

        # 7 passes over C x voxels: copy, max+argmax, subtract, exp, sum, multiply, sum
        x = logits.float() if logits.dtype != torch.float32 else logits.clone()
        m, idx = x.max(0)
        self.ch[region] = idx.cpu().numpy()
        x.sub_(m)  # l - max: exp cannot overflow
        e = x.exp()
        s = e.sum(0)
        if self.probs is not None:
            self.probs[(slice(None), *region)] = (e / s).cpu().numpy()
        # H = -sum p log p with p = e / s, log p = (l - max) - log s  =>  H = log s - sum(e (l - max)) / s
        ent = (s.log() - e.mul_(x).sum(0).div_(s)).div_(self.log_c).clamp_(0, 1)
        self.entropy[region] = ent.cpu().numpy()

    def planes(self, z0: int, logits):
        """``emit`` callback of :func:`streamed_sliding_window`: planes z0.. of the grid."""
        self((slice(None), slice(None), slice(z0, z0 + logits.shape[-1])), logits)


def _whole(image, predictor, inf: InferenceDef, device, finalise: _Finaliser, max_chunk_mb: float = 64.0):
    from monai.inferers import sliding_window_inference

    logits = sliding_window_inference(image, inf.roi_size, inf.sw_batch_size, predictor, overlap=inf.overlap,
                                      mode=inf.mode, sigma_scale=inf.sigma_scale, padding_mode=inf.padding_mode,
                                      sw_device=device, device=device)
    logits = logits[0]
    # slabs along x, the outermost spatial axis: contiguous blocks (z slabs would be strided)
    per_x = logits[:, :1].numel() * 4 / 2**20
    step = max(1, int(max_chunk_mb // max(per_x, 1e-9)))
    for x0 in range(0, logits.shape[1], step):
        finalise((slice(x0, x0 + step), slice(None), slice(None)), logits[:, x0:x0 + step])
    return 0


def streamed_sliding_window(image, predictor, inf: InferenceDef, device, emit, buffer_dtype=None) -> int:
    """MONAI's sliding-window blending, windows ordered along z, ring buffer one window deep.

    ``emit(z0, logits)`` receives finalised planes (C, x, y, dz) in increasing z. Returns the
    number of windows run. ``buffer_dtype`` float16 halves the ring (logit sums keep ~3
    significant digits: argmax changes only at near-ties); default float32.
    """
    import torch
    import torch.nn.functional as F
    from monai.data.utils import dense_patch_slices

    buffer_dtype = buffer_dtype or torch.float32
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

    def flush(upto: int, step: int = 8):
        """Emit planes [lo, upto) (in slabs of ``step``: bounded temporaries), shift the ring."""
        nonlocal lo
        if upto <= lo:
            return
        d = upto - lo
        for a in range(0, d, step):
            b = min(a + step, d)
            z_from, z_to = max(lo + a, lo_pad_z), min(lo + b, lo_pad_z + size0[2])  # drop padded planes
            if z_to > z_from:
                ia, ib = z_from - lo, z_to - lo
                planes = buf[:, crop[0], crop[1], ia:ib].float() / cnt[crop[0], crop[1], ia:ib]  # contiguous copy
                emit(z_from - lo_pad_z, planes)
        # move the planes still open to the front; ascending chunks never overwrite unread data
        n = max(1, min(d, step))
        for a in range(0, rz - d, n):
            b = min(a + n, rz - d)
            buf[..., a:b] = buf[..., a + d:b + d]
            cnt[..., a:b] = cnt[..., a + d:b + d]
        buf[..., rz - d:] = 0
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
                buf = torch.zeros((out.shape[1], size[0], size[1], rz), dtype=buffer_dtype, device=device)
                cnt = torch.zeros((size[0], size[1], rz), dtype=torch.float32, device=device)
            for o, s in zip(out, batch):
                # in place, 16 channels at a time: a float16 ring would otherwise get a
                # window-sized float32 temporary from type promotion
                for c0 in range(0, o.shape[0], 16):
                    buf[c0:c0 + 16, s[0], s[1], :].addcmul_(o[c0:c0 + 16].float(), weight)
                cnt[s[0], s[1], :] += weight
            n_win += len(batch)
            del out, win, o  # else the last window's output (C x roi floats) lives through the next forward
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


def _normalised_map(m: np.ndarray, src_shape) -> np.ndarray:
    """(3, 4) float64: input (k, j, i, 1) -> grid_sample coordinates (x=i', y=j', z=k') in [-1, 1]."""
    scale = np.array([2.0 / max(sz - 1, 1) for sz in src_shape])
    mn = m[:3] * scale[:, None]
    mn[:, 3] -= 1.0
    return mn[::-1].copy()  # rows (k', j', i') -> (i', j', k'): grid_sample's (x, y, z)


def resample_back(src_kji, m: np.ndarray, shape, mode: str, device=None, slab: int = 8):
    """Sample a network-grid array (C, k', j', i') at every input voxel, slab by slab.

    ``m`` maps input (k, j, i) to network (k', j', i') indices (any affine). ``mode``:
    'nearest' or 'bilinear' (trilinear). Yields ``(k0, values (C, n, nj, ni) float32 tensor)``
    so callers reduce each slab before the next (bounded memory, torch threads). The grid of a
    slab is one in-plane grid (computed once) plus the slice offset: one add per voxel.
    """
    import torch
    import torch.nn.functional as F

    device = device or torch.device("cpu")
    src = torch.as_tensor(np.ascontiguousarray(src_kji), dtype=torch.float32, device=device)[None]
    for k0, grid in slab_grids(m, src.shape[2:], shape, device, slab):
        yield k0, F.grid_sample(src, grid, mode=mode, padding_mode="border", align_corners=True)[0]


def slab_grids(m: np.ndarray, src_shape, shape, device=None, slab: int = 8):
    """``grid_sample`` grids (1, n, nj, ni, 3) of the input slices k0..k0+n in the network grid
    ``src_shape`` (k', j', i'); yields ``(k0, grid)``."""
    import torch

    mn = torch.as_tensor(_normalised_map(m, src_shape), dtype=torch.float64)
    j = torch.arange(shape[1], dtype=torch.float64)[:, None]
    i = torch.arange(shape[2], dtype=torch.float64)[None, :]
    plane = torch.stack([mn[c, 1] * j + mn[c, 2] * i + mn[c, 3] for c in range(3)], dim=-1)  # (nj, ni, 3)
    plane = plane.to(torch.float32)
    step = mn[:, 0].to(torch.float32)  # change of (x, y, z) per input slice
    for k0 in range(0, shape[0], slab):
        n = min(slab, shape[0] - k0)
        ks = torch.arange(k0, k0 + n, dtype=torch.float32)
        yield k0, (plane[None] + ks[:, None, None, None] * step).to(device or "cpu")[None]


def probability_argmax_back(fin, m: np.ndarray, shape, ch: np.ndarray, ent: np.ndarray, slab: int = 8) -> float:
    """Argmax of the trilinearly interpolated probabilities at every input voxel, computed in full
    only where it can differ from the nearest network voxel's label (fills ``ch`` and ``ent``).

    A voxel whose 8 surrounding network voxels share one argmax gets that argmax exactly (a convex
    combination of probability vectors keeps a maximum they all share); those 8 lie in the 3x3x3
    neighbourhood of the nearest one, so a voxel is recomputed only when that neighbourhood mixes
    labels. There the probabilities are interpolated and the entropy is exact; elsewhere the
    entropy is the network grid's, interpolated. Returns the fraction of voxels recomputed.
    """
    import torch
    import torch.nn.functional as F
    from scipy import ndimage

    coarse = np.ascontiguousarray(fin.ch.transpose(2, 1, 0))  # (k', j', i')
    mixed = ndimage.maximum_filter(coarse, 3) != ndimage.minimum_filter(coarse, 3)
    lab_src = torch.as_tensor(np.stack([coarse.astype(np.float32), mixed.astype(np.float32)]))[None]
    ent_src = torch.as_tensor(np.ascontiguousarray(fin.entropy.transpose(2, 1, 0)))[None, None]
    probs = torch.as_tensor(np.ascontiguousarray(fin.probs.transpose(0, 3, 2, 1)))[None]
    recomputed = 0
    for k0, grid in slab_grids(m, coarse.shape, shape, None, slab):
        n = grid.shape[1]
        v = F.grid_sample(lab_src, grid, mode="nearest", padding_mode="border", align_corners=True)[0]
        e = F.grid_sample(ent_src, grid, mode="bilinear", padding_mode="border", align_corners=True)[0, 0]
        lab = v[0].round_()
        band = v[1] > 0.5
        nb = int(band.sum())
        if nb:
            pts = grid[0][band].reshape(1, 1, 1, nb, 3)
            p = F.grid_sample(probs, pts, mode="bilinear", padding_mode="border", align_corners=True)[0, :, 0, 0]
            lab[band] = p.argmax(0).to(lab.dtype)
            lp = p.clamp(min=1e-12).log_()
            e[band] = p.mul_(lp).sum(0).neg_().div_(fin.log_c).clamp_(0, 1)
            recomputed += nb
        ch[k0:k0 + n] = lab.numpy()
        store_float16(ent[k0:k0 + n], e)
    return recomputed / max(int(np.prod(shape)), 1)


def store_float16(dst: np.ndarray, src) -> None:
    """``dst[...] = src`` into a float16 array through torch: bit-identical to numpy's cast, but
    numpy converts float16 subnormals (entropies below 6e-5: most certain voxels) in a scalar
    loop, 30x slower: 3-5 s for the uncertainty of a 512x512x300 CT, against 0.2 s here."""
    import torch

    s = src if isinstance(src, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(src))
    torch.from_numpy(dst).copy_(s)


SEPARABLE = True  # tests switch it off to compare with the per-voxel sampling grid


def axis_aligned(m: np.ndarray, tol: float = 1e-6) -> list[tuple[int, float, float]] | None:
    """For a map input (k, j, i) -> network (k', j', i') that scales and permutes axes only:
    per input axis ``a``, (network axis, scale, offset); None for an oblique map."""
    a3 = np.asarray(m[:3, :3], dtype=np.float64)
    big = np.abs(a3) > tol * max(np.abs(a3).max(), 1e-12)
    if not (np.all(big.sum(0) == 1) and np.all(big.sum(1) == 1)):
        return None
    out = []
    for a in range(3):
        r = int(np.flatnonzero(big[:, a])[0])
        out.append((r, float(a3[r, a]), float(m[r, 3])))
    return out


def _axis_samples(scale: float, offset: float, n_in: int, n_net: int):
    """Per input index along one axis: nearest network index, floor index and weight (border-clamped)."""
    c = np.clip(scale * np.arange(n_in) + offset, 0.0, n_net - 1.0)
    nearest = np.rint(c).astype(np.intp)
    f = np.clip(np.floor(c).astype(np.intp), 0, max(n_net - 2, 0))
    w = (c - f).astype(np.float32) if n_net > 1 else np.zeros(n_in, np.float32)
    return c, nearest, f, w


def _lerp_axis(a: np.ndarray, axis: int, f: np.ndarray, w: np.ndarray) -> np.ndarray:
    lo = a.take(f, axis)
    hi = a.take(np.minimum(f + 1, a.shape[axis] - 1), axis)
    shape = [1, 1, 1]
    shape[axis] = len(w)
    hi -= lo  # in place: two arrays of the output's size, no temporaries
    hi *= w.reshape(shape)
    lo += hi
    return lo


def _mixed_cells(labels: np.ndarray) -> np.ndarray:
    """Per network cell (corners (a, b, c) .. (a+1, b+1, c+1)): do its corners' labels differ?
    (Edge cells along an axis of one voxel are the voxel itself.)"""
    lo, hi = labels.copy(), labels.copy()
    for ax, n in enumerate(labels.shape):
        nxt = np.minimum(np.arange(n) + 1, n - 1)
        lo = np.minimum(lo, lo.take(nxt, ax))
        hi = np.maximum(hi, hi.take(nxt, ax))
    return lo != hi


def separable_argmax_back(fin, m: np.ndarray, shape, ch: np.ndarray, ent: np.ndarray, slab: int = 16):
    """:func:`probability_argmax_back` for an axis-aligned map (the common case: the network grid
    is the input grid rescaled), with per-axis lookups instead of a sampling grid per voxel.

    Labels are exactly the argmax of the trilinear probabilities everywhere: where the 8 network
    voxels around a point (its cell) share one argmax, every convex combination of their
    probabilities has that argmax too, so the nearest voxel's label is the answer; only points
    in cells whose corners disagree (~4 % of a CT) are interpolated. Entropy: interpolated from
    the network grid, exact in those cells. Returns the fraction recomputed, or None when ``m``
    is oblique."""
    import torch
    import torch.nn.functional as F

    axes = axis_aligned(m)
    if axes is None:
        return None
    order = [r for r, _, _ in axes]  # network axis (in k', j', i' order) feeding each input axis
    lab_c = np.ascontiguousarray(fin.ch.transpose(2, 1, 0)).transpose(order)  # (k', j', i') -> input order
    mixed = _mixed_cells(lab_c)
    ent_c = np.ascontiguousarray(fin.entropy.transpose(2, 1, 0)).transpose(order)
    probs = torch.as_tensor(np.ascontiguousarray(fin.probs.transpose(0, 3, 2, 1).transpose(0, *[1 + r for r in order])))[None]
    net_shape = lab_c.shape
    samples = [_axis_samples(s, o, shape[a], net_shape[a]) for a, (_, s, o) in enumerate(axes)]
    norm = [(2.0 * c / max(n - 1, 1) - 1.0).astype(np.float32) for (c, *_), n in zip(samples, net_shape)]
    (_, n0, f0, w0), (_, n1, f1, w1), (_, n2, f2, w2) = samples
    recomputed = 0
    for k0 in range(0, shape[0], slab):
        k1 = min(k0 + slab, shape[0])
        lab = lab_c.take(n0[k0:k1], 0).take(n1, 1).take(n2, 2)
        band = mixed.take(f0[k0:k1], 0).take(f1, 1).take(f2, 2)
        e = _lerp_axis(_lerp_axis(_lerp_axis(ent_c, 0, f0[k0:k1], w0[k0:k1]), 1, f1, w1), 2, f2, w2)
        flat = np.flatnonzero(band)
        if len(flat):
            kk, rest = np.divmod(flat, shape[1] * shape[2])
            jj, ii = np.divmod(rest, shape[2])
            xyz = np.stack([norm[2][ii], norm[1][jj], norm[0][kk + k0]], axis=-1)  # grid_sample: (x, y, z)
            pts = torch.from_numpy(xyz).reshape(1, 1, 1, -1, 3)
            p = F.grid_sample(probs, pts, mode="bilinear", padding_mode="border", align_corners=True)[0, :, 0, 0]
            p = p.t().contiguous()  # (n, C): reductions over the last axis are the fast ones
            lab.reshape(-1)[flat] = p.argmax(1).numpy().astype(lab.dtype)
            lp = p.clamp(min=1e-12).log_()
            e.reshape(-1)[flat] = p.mul_(lp).sum(1).neg_().div_(fin.log_c).clamp_(0, 1).numpy()
            recomputed += len(flat)
        ch[k0:k1] = lab
        store_float16(ent[k0:k1], e)
    return recomputed / max(int(np.prod(shape)), 1)


def run_network(volume: Volume, spec: ModelSpec, cfg, keep_probabilities: bool = False, network=None) -> NetworkOutput:
    """Segment ``volume`` with a checkpoint or bundle model (see module doc). ``cfg``: SegmentConfig.

    ``network``: an already built ``torch.nn.Module`` used instead of loading ``spec.weights``
    (tests, benchmarks, notebooks); its outputs must have ``spec``'s channels.
    """
    import torch

    from ..config import cap_threads

    if network is None and (spec.network is None or not spec.weights):
        raise ModelError(f"model '{spec.name}' has no network/weights", path=spec.source_file)
    device = pick_device(cfg.device)
    amp = spec.inference.amp if cfg.amp is None else cfg.amp
    threads = cap_threads(cfg.threads or spec.inference.threads)
    timings: dict[str, float] = {}
    with torch_threads(threads), torch.inference_mode():
        net, sha, n_params = _load(spec, network, device, timings)
        run = _infer(volume, spec, net, device, amp, keep_probabilities, timings)
    t0 = time.perf_counter()
    with torch_threads(threads), torch.inference_mode():
        labels, ent, probabilities, notes = _back_to_volume(volume, spec, run, keep_probabilities)
    timings["resample_back"] = time.perf_counter() - t0
    inputs = {"weights_sha256": sha, "parameters": n_params, "device": str(device), "threads": threads or
              torch.get_num_threads(), "amp": bool(amp and device.type == "cuda"), "inference_path": run.path,
              "resample": run.resample, "network_grid": {"shape_xyz": list(run.shape_xyz),
                                                         "spacing_mm": [round(float(s), 4) for s in
                                                                        np.linalg.norm(run.affine[:3, :3], axis=0)]}}
    return NetworkOutput(labels, ent, probabilities, timings, inputs, notes)


@dataclass
class _Inference:
    """The network's results on its own grid (what :func:`_back_to_volume` maps back)."""

    fin: "_Finaliser"
    affine: np.ndarray  # network grid (k', j', i') -> LPS
    shape_xyz: tuple
    n_ch: int
    resample: str
    path: str


def _load(spec: ModelSpec, network, device, timings: dict):
    from .checkpoint import load_network

    t0 = time.perf_counter()
    if network is None:
        net, sha, n_params = load_network(spec.network.name, spec.network.args, spec.weights)
    else:
        net, sha, n_params = network.eval(), "in-memory", sum(p.numel() for p in network.parameters())
    timings["load"] = time.perf_counter() - t0
    return net.to(device), sha, n_params


def _infer(volume: Volume, spec: ModelSpec, net, device, amp, keep_probabilities: bool, timings: dict) -> _Inference:
    """Preprocess onto the network grid and run the network (whole or streamed sliding window)."""
    import torch

    from .monai_io import metatensor_affine_lps

    inf = spec.inference
    t0 = time.perf_counter()
    img = preprocess(volume, spec.preprocessing)
    net_affine = metatensor_affine_lps(img)
    image = img.as_tensor()[None].to(device)  # (1, 1, x, y, z)
    timings["preprocess"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    out_ch = spec.network.args.get("out_channels") if spec.network is not None else None
    n_ch = int(out_ch or (max(spec.channel_ids(), default=0) + 1))
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
        dtype = inf.buffer_dtype if inf.buffer_dtype != "auto" else "float16" if n_ch > 32 else "float32"
        streamed_sliding_window(image, predictor, inf, device, fin.planes, buffer_dtype=getattr(torch, dtype))
        path = f"streamed ({dtype} ring)"
    timings["inference"] = time.perf_counter() - t0
    return _Inference(fin, net_affine, shape_xyz, n_ch, resample, path)


def _back_to_volume(volume: Volume, spec: ModelSpec, run: _Inference, keep_probabilities: bool):
    """Labels (model label ids), float16 entropy and optionally all probabilities on the
    volume's grid; plus notes."""
    fin, n_ch = run.fin, run.n_ch
    m = _index_map(volume, run.affine)
    probabilities = None
    notes: list[str] = []
    shape = volume.shape
    ch = np.empty(shape, fin.ch.dtype)
    ent = np.empty(shape, np.float16)  # 0..1 entropy: float16 (1e-3) halves the largest array of the stage
    if run.resample == "probabilities" and not keep_probabilities:
        # few channels: the argmax of the interpolated probabilities, in full only near boundaries
        frac = separable_argmax_back(fin, m, shape, ch, ent) if SEPARABLE else None
        if frac is None:  # an oblique map: a sampling grid per voxel
            frac = probability_argmax_back(fin, m, shape, ch, ent)
        notes.append(f"probabilities interpolated at {100 * frac:.1f} % of the voxels (label boundaries); "
                     "elsewhere the nearest network voxel's label is the exact answer")
    elif run.resample == "probabilities":
        # all probabilities wanted: interpolate them everywhere, then decide per voxel
        probs = fin.probs.transpose(0, 3, 2, 1)
        if keep_probabilities:
            probabilities = np.empty((n_ch, *shape), np.float32)
        for k0, p in resample_back(probs, m, shape, "bilinear"):
            n = p.shape[1]
            ch[k0:k0 + n] = p.argmax(0).numpy()
            if probabilities is not None:
                probabilities[:, k0:k0 + n] = p.numpy()
            lp = p.clamp(min=1e-12).log_()
            store_float16(ent[k0:k0 + n], p.mul_(lp).sum(0).neg_().div_(fin.log_c).clamp_(0, 1))
    else:
        for k0, v in resample_back(fin.ch.transpose(2, 1, 0)[None], m, shape, "nearest"):
            ch[k0:k0 + v.shape[1]] = v[0].round_().numpy()
        for k0, v in resample_back(fin.entropy.transpose(2, 1, 0)[None], m, shape, "bilinear"):
            store_float16(ent[k0:k0 + v.shape[1]], v[0])
    return _channel_ids_to_labels(ch, spec, n_ch), ent, probabilities, notes


def _channel_ids_to_labels(ch: np.ndarray, spec: ModelSpec, n_ch: int) -> np.ndarray:
    """Channel index -> label id, by slabs (indexing casts the indices to intp: 8 bytes a voxel)."""
    ids = spec.channel_ids()
    lut = np.zeros(max(n_ch, 1), label_dtype(max(ids.values(), default=0)))
    for c, lid in ids.items():
        if c < n_ch:
            lut[c] = lid
    labels = ch if ch.dtype == lut.dtype else np.empty(ch.shape, lut.dtype)
    for k0 in range(0, ch.shape[0], 16):
        labels[k0:k0 + 16] = lut[ch[k0:k0 + 16]]
    return labels
