"""The fast paths of the segment stage give exactly what the plain numpy/scipy code gives.

Each fast path exists for a measured reason (README, "Clinical size"): ITK labels big masks with
less CPU than ``ndimage.label``, float16 maps go through torch or bit patterns because numpy
converts float16 subnormals voxel by voxel, QC statistics come from integer histograms. None of
them may change a single voxel or statistic.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipeline.segment import postprocess as pp
from pipeline.segment import qc


def _blobs(seed: int, shape=(24, 40, 36), threshold: float = 0.62) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), 1.2) > threshold * 0.8 + 0.1


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("full", [True, False])
def test_itk_components_are_scipys(monkeypatch, seed, full):
    mask = _blobs(seed)
    ref, n_ref = ndimage.label(mask, structure=np.ones((3, 3, 3), bool) if full else None)
    assert n_ref > 3  # a real test: several components
    monkeypatch.setattr(pp, "ITK_MIN_VOXELS", 0)
    with pp.components(mask, full) as (lab, n):
        assert n == n_ref
        assert np.array_equal(lab, ref)  # same ids: raster order of each component's first voxel


@pytest.mark.parametrize("seed", [3, 4])
def test_postprocess_same_with_itk(monkeypatch, seed):
    mask = _blobs(seed, threshold=0.6)
    mask[8:16, 10:30, 10:26] |= True
    mask[11:13, 15:20, 15:20] = False  # an enclosed hole
    scipy_kept = pp.keep_components(mask, 1, 0), pp.keep_components(mask, 0, 20), pp.fill_holes_3d(mask)
    monkeypatch.setattr(pp, "ITK_MIN_VOXELS", 0)
    itk_kept = pp.keep_components(mask, 1, 0), pp.keep_components(mask, 0, 20), pp.fill_holes_3d(mask)
    for a, b in zip(scipy_kept[:2], itk_kept[:2]):
        assert np.array_equal(a[0], b[0]) and a[1:] == b[1:]
    assert np.array_equal(scipy_kept[2], itk_kept[2])
    assert itk_kept[2][12, 17, 17] and not mask[12, 17, 17]  # the hole is filled


def test_store_float16_is_numpys_cast_and_fast_on_subnormals():
    from pipeline.segment.runner import store_float16

    rng = np.random.default_rng(0)
    src = np.concatenate([rng.random(5000) ** 12, [0.0, 1.0, 6.0e-8, 5.96e-8, 3e-8, 6.1e-5, 0.5, 0.99951]])
    src = src.astype(np.float32).reshape(2, -1, 1)
    ref = src.astype(np.float16)
    assert np.count_nonzero((ref > 0) & (ref < np.float16(6.104e-5))) > 100  # subnormals present
    out = np.empty(src.shape, np.float16)
    store_float16(out, src)
    assert np.array_equal(out.view(np.uint16), ref.view(np.uint16))


def test_qc_histogram_sums_equal_weighted_sums():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 9, (20, 30, 30)).astype(np.uint8)
    hu = rng.integers(-1024, 3071, labels.shape).astype(np.int16)
    hu[0, 0, :4] = [-32768, 32767, 0, -1]  # the ends of int16
    unc = (rng.random(labels.shape) ** 6).astype(np.float16)
    fast = qc._label_sums(labels, 9, hu, unc)
    slow = qc._weighted_sums(labels, 9, hu, unc, 16)
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    unc[3, 3, 3] = np.nan  # a NaN makes its label's sum NaN, as a float sum would
    fast, slow = qc._label_sums(labels, 9, hu, unc)[3], qc._weighted_sums(labels, 9, hu, unc, 16)[3]
    assert np.array_equal(np.isnan(fast), np.isnan(slow)) and np.isnan(fast).sum() == 1


def test_unit_map_float16_lookup_equals_float32_path():
    from pipeline.geometry import _unit_steps

    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    every_f16 = bits.view(np.float16)
    with np.errstate(invalid="ignore"):
        ref = np.rint(np.clip(np.nan_to_num(every_f16.astype(np.float32), nan=0.0), 0, 1) * 255).astype(np.uint8)
    assert np.array_equal(_unit_steps(every_f16), ref)


def test_maximum_where_float16_bits_equals_float_maximum():
    from pipeline.segment.api import _maximum_where

    rng = np.random.default_rng(2)
    a = (rng.random(4000) ** 8).astype(np.float16)
    b = (rng.random(4000) ** 8).astype(np.float16)
    where = rng.random(4000) > 0.3
    ref = a.copy()
    np.maximum(a.astype(np.float32), b.astype(np.float32), out=ref, where=where, casting="unsafe")
    out = a.copy()
    _maximum_where(out, b, where)
    assert np.array_equal(out.view(np.uint16), ref.view(np.uint16))


def _ct_like(shape=(30, 40, 36), spacing=(2.5, 0.9, 0.8), seed=7):
    from pipeline.types import Volume

    rng = np.random.default_rng(seed)
    arr = (ndimage.gaussian_filter(rng.normal(0, 300, shape), 2) * 8 - 200).clip(-1024, 2000).astype(np.int16)
    aff = np.eye(4)
    aff[:3, :3] = np.diag(spacing)[[2, 1, 0]].T  # (k, j, i) -> LPS with k along S
    aff[:3, 3] = (-20.0, 15.0, -100.0)
    return Volume(arr, aff)


def _assert_equals_monai(vol):
    """The per-axis resampling onto the network grid against MONAI's Orientation + Spacing."""
    import torch

    from pipeline.segment import runner
    from pipeline.segment.spec import Preprocessing

    pre = Preprocessing(orientation="RAS", spacing=[3.0, 3.0, 3.0], intensity=[])
    ours = runner.separable_resample_in(vol, pre)
    runner.SEPARABLE = False
    try:
        ref = runner.preprocess(vol, pre)
    finally:
        runner.SEPARABLE = True
    assert ours is not None and ours.shape == ref.shape
    np.testing.assert_allclose(ours.affine.numpy(), ref.affine.numpy(), atol=1e-9)
    torch.testing.assert_close(ours.as_tensor(), ref.as_tensor(), atol=0.05, rtol=0)  # HU


@pytest.mark.parametrize("layout", ["as_is", "flip_k", "flip_i", "swap_ji"])
def test_separable_resample_in_equals_monai(layout):
    """The per-axis resampling onto the network grid equals MONAI's Orientation + Spacing
    (up to float rounding: MONAI samples at float32 coordinates), in every storage layout."""

    from pipeline.types import Volume

    vol = _ct_like()
    n = vol.shape
    flips = {"flip_k": (0, n[0]), "flip_i": (2, n[2])}
    if layout in flips:
        ax, size = flips[layout]
        f = np.eye(4)
        f[ax, ax], f[ax, 3] = -1.0, size - 1
        vol = Volume(np.ascontiguousarray(np.flip(vol.array, ax)), vol.affine @ f)
    elif layout == "swap_ji":
        vol = Volume(np.ascontiguousarray(vol.array.transpose(0, 2, 1)), vol.affine[:, [0, 2, 1, 3]])
    _assert_equals_monai(vol)


def test_separable_resample_in_oblique_volume_equals_monai():
    """MONAI's Spacing keeps an oblique volume's directions (zoom only), so the network grid is
    still the volume's grid rescaled: the per-axis path applies and agrees with MONAI."""

    from pipeline.types import Volume

    vol = _ct_like()
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.eye(4)
    rot[:2, :2] = [[c, -s], [s, c]]
    oblique = Volume(vol.array, rot @ vol.affine)
    _assert_equals_monai(oblique)
