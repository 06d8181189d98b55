"""Checkpoint backend, runner geometry (oblique, anisotropic, left/right), streaming, combining."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from segment_synth import dice, grid_affine, synthetic_chest  # noqa: E402
from pipeline.errors import ConfigError, ModelError  # noqa: E402
from pipeline.segment import resolve_model, segment  # noqa: E402
from pipeline.segment.checkpoint import build_network  # noqa: E402
from pipeline.types import Volume  # noqa: E402

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP spin-waiting makes 2 threads
    up to 50x slower than 1 for these tiny networks."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


UNET = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8], "strides": [2],
        "num_res_units": 0}


def _entry(tmp_path, weights="w.safetensors", **extra):
    entry = {"name": "tiny_unet", "backend": "checkpoint", "weights": weights,
             "network": {"name": "UNet", "args": UNET},
             "labels": [{"id": 1, "name": "organ_a", "expected_ml": [1, 10]}, {"id": 7, "name": "organ_b"}],
             "preprocessing": {"orientation": "RAS", "spacing": [6, 6, 6],
                               "intensity": {"kind": "window", "a_min": -1000, "a_max": 1000, "clip": True}},
             "inference": {"roi_size": [16, 16, 16], "overlap": 0.25}, **extra}
    path = tmp_path / "tiny_unet.yaml"
    path.write_text(yaml.safe_dump(entry))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    net = build_network("UNet", UNET)
    save_file(net.state_dict(), str(d / "w.safetensors"))
    torch.save(net.state_dict(), str(d / "w.pt"))
    return d


@pytest.fixture(scope="module")
def small_ct():
    return synthetic_chest(shape=(24, 40, 48), spacing=(10.0, 7.0, 7.0))


@pytest.mark.slow  # test-fast stays under 60 s; runs in make test
def test_checkpoint_end_to_end(tiny, small_ct):
    vol, _ = small_ct
    spec = resolve_model(str(_entry(tiny)))
    res = segment(vol, spec)
    assert res.labelmap.volume.geometry_equal(vol)
    assert res.uncertainty.geometry_equal(vol) and res.uncertainty.array.dtype == np.float16  # half of float32
    assert set(np.unique(res.labelmap.array)) <= {0, 1, 7}
    assert 0 <= res.uncertainty.array.min() and res.uncertainty.array.max() <= 1
    rec = res.record.inputs
    assert len(rec["weights_sha256"]) == 64 and rec["device"] in ("cpu", "cuda")
    assert rec["network_grid"]["spacing_mm"] == [6.0, 6.0, 6.0]
    for q in res.qc.values():
        assert q["uncertainty"] is not None and q["uncertainty_level"] in ("low", "moderate", "high")
    # the same weights as a torch state dict give the same labels
    res_pt = segment(vol, resolve_model(str(_entry(tiny, "w.pt"))))
    assert np.array_equal(res_pt.labelmap.array, res.labelmap.array)


@pytest.mark.slow  # test-fast stays under 60 s; runs in make test
def test_scan_thinner_than_the_model_expects_is_flagged(tiny, small_ct):
    """inference.min_extent_mm (R-L, A-P, S-I for RAS): a scan thinner than that still runs but
    the record, its notes and the warnings name the axis and both lengths."""
    from pipeline.segment.api import scan_extent_mm

    vol, _ = small_ct  # 24 slices x 10 mm head-foot, 40 rows x 7 mm, 48 columns x 7 mm
    ext = scan_extent_mm(vol)
    assert ext == pytest.approx({"L": 336.0, "P": 280.0, "S": 240.0})
    spec = resolve_model(str(_entry(tiny, inference={"roi_size": [16, 16, 16], "min_extent_mm": [0, 0, 300]})))
    res = segment(vol, spec)
    [w] = res.record.outputs["scan_warnings"]
    assert "240 mm head-foot" in w and "300 mm" in w and w in res.record.notes
    ok = resolve_model(str(_entry(tiny, inference={"roi_size": [16, 16, 16], "min_extent_mm": [300, 0, 200]})))
    assert segment(vol, ok).record.outputs["scan_warnings"] == []


def test_pickled_module_is_refused(tiny, small_ct, tmp_path):
    torch.save(build_network("UNet", UNET), str(tiny / "module.pt"))  # a whole pickled object
    spec = resolve_model(str(_entry(tiny, "module.pt")))
    with pytest.raises(ModelError, match="plain state dict"):
        segment(small_ct[0], spec)


def test_weights_that_do_not_fit(tiny, small_ct):
    args = dict(UNET, channels=[8, 16])
    spec = resolve_model(str(_entry(tiny, network={"name": "UNet", "args": args})))
    with pytest.raises(ModelError, match="do not fit"):
        segment(small_ct[0], spec)


def test_registry_errors_name_file_and_key(tmp_path):
    bad = _entry(tmp_path, inference={"roi_size": [16, 16, 16], "overlap": 1.5})
    with pytest.raises(ConfigError) as e:
        resolve_model(str(bad))
    assert str(bad) in str(e.value) and "inference.overlap" in str(e.value)
    bad = _entry(tmp_path, preprocessing={"orientation": "RAX"})
    with pytest.raises(ConfigError, match="preprocessing.orientation"):
        resolve_model(str(bad))
    bad = _entry(tmp_path, labels=[{"id": 1, "name": "Liver"}])
    with pytest.raises(ConfigError, match="lower_snake_case"):
        resolve_model(str(bad))
    bad = _entry(tmp_path, labels=[{"id": 1, "name": "a", "channel": 5}])
    with pytest.raises(ConfigError, match="out_channels=3"):
        resolve_model(str(bad))
    bad = _entry(tmp_path, network={"name": "os.system", "args": {}})
    with pytest.raises(ConfigError, match="network.name.*monai.networks.nets"):
        resolve_model(str(bad))
    with pytest.raises(ModelError, match="not a class in monai.networks.nets"):
        build_network("compute_importance_map", {})
    with pytest.raises(ModelError, match="unknown model 'no_such_model'"):
        resolve_model("no_such_model")


class Threshold(torch.nn.Module):
    """A 'network' with a known answer: channel 1 where the (windowed) intensity is above 0.5."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(40.0))

    def forward(self, x):
        return torch.cat([-(x - 0.5) * self.scale, (x - 0.5) * self.scale], dim=1)


def _blob_volume(rot=(20.0, -15.0, 30.0), spacing=(4.0, 1.5, 2.5), shape=(30, 70, 60)):
    """Oblique, anisotropic grid with a bright ball on the patient's LEFT (+x LPS) only."""
    from segment_synth import lps_grid

    a = grid_affine(shape, spacing, rot, center=(10.0, -5.0, 20.0))
    x, y, z = lps_grid(shape, a)
    ball = (x - 35.0) ** 2 + (y + 5.0) ** 2 + (z - 20.0) ** 2 <= 18.0 ** 2
    arr = np.where(ball, 1000, -1000).astype(np.int16)  # threshold 0.5 of the window = the midpoint
    return Volume(arr, a, None, {"modality": "CT"}), ball


def _threshold_spec(tmp_path, resample="auto", orientation="RAS"):
    entry = {"name": "threshold", "backend": "checkpoint", "weights": "unused.safetensors",
             "network": {"name": "UNet", "args": dict(UNET, out_channels=2)},
             "labels": [{"id": 3, "name": "ball"}],
             "preprocessing": {"orientation": orientation, "spacing": [3.0, 3.0, 3.0],
                               "intensity": {"kind": "window", "a_min": -1000, "a_max": 1000, "clip": True}},
             "inference": {"roi_size": [24, 24, 24], "overlap": 0.25, "resample": resample}}
    p = tmp_path / "threshold.yaml"
    p.write_text(yaml.safe_dump(entry))
    return resolve_model(str(p))


@pytest.mark.parametrize("resample,orientation", [("probabilities", "RAS"), ("labels", "LPS")])
def test_oblique_anisotropic_geometry_and_left_right(tmp_path, resample, orientation):
    vol, ball = _blob_volume()
    res = segment(vol, _threshold_spec(tmp_path, resample, orientation), {"postprocess": {"enabled": False}},
                  network=Threshold())
    assert res.labelmap.volume.geometry_equal(vol) and res.uncertainty.geometry_equal(vol)
    got = res.labelmap.mask("ball")
    assert dice(got, ball) > 0.9
    centre = vol.index_to_lps(np.argwhere(got).mean(axis=0)[None])[0]
    assert centre[0] > 30.0, f"ball must stay on the patient's left (+x); found x={centre[0]:.1f}"
    np.testing.assert_allclose(centre, [35.0, -5.0, 20.0], atol=2.0)
    # uncertainty lives on the ball's surface: zero away from it
    from scipy import ndimage

    u = res.uncertainty.array
    near_surface = ndimage.binary_dilation(ball, iterations=3) & ~ndimage.binary_erosion(ball, iterations=3)
    assert u.max() > 0.2 and u[~near_surface].max() < 0.01


def test_monai_boundary_left_right():
    from pipeline.segment.monai_io import metatensor_affine_lps, volume_to_metatensor

    vol, ball = _blob_volume()
    mt = volume_to_metatensor(vol)
    assert tuple(mt.shape) == (1, vol.shape[2], vol.shape[1], vol.shape[0])
    # the brightest voxel's RAS position is the LPS position with x and y negated
    ijk = np.unravel_index(int(torch.argmax(mt[0])), mt.shape[1:])
    ras = mt.affine.numpy() @ np.array([*ijk, 1.0])
    lps = vol.index_to_lps(np.array([ijk[::-1]], float))[0]
    np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-6)
    np.testing.assert_allclose(metatensor_affine_lps(mt), vol.affine, atol=1e-9)


def test_streamed_equals_monai_sliding_window():
    from monai.inferers import sliding_window_inference

    from pipeline.segment.registry import InferenceDef
    from pipeline.segment.runner import streamed_sliding_window

    torch.manual_seed(1)
    net = build_network("UNet", dict(UNET, out_channels=5)).eval()
    x = torch.randn(1, 1, 30, 20, 41)
    inf = InferenceDef(roi_size=[16, 16, 16], overlap=0.4, mode="gaussian", sw_batch_size=2, padding_mode="replicate")
    with torch.inference_mode():
        ref = sliding_window_inference(x, inf.roi_size, inf.sw_batch_size, net, overlap=inf.overlap, mode=inf.mode)[0]
        got = torch.zeros_like(ref)

        def emit(z0, planes):
            got[..., z0:z0 + planes.shape[-1]] = planes

        n = streamed_sliding_window(x, net, inf, torch.device("cpu"), emit)
    assert n > 8
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    # an image smaller than the window is padded like MONAI pads it
    x_small = torch.randn(1, 1, 10, 20, 12)
    with torch.inference_mode():
        ref = sliding_window_inference(x_small, inf.roi_size, 1, net, overlap=0.25, mode="gaussian",
                                       padding_mode="replicate")[0]
        got = torch.zeros_like(ref)
        streamed_sliding_window(x_small, net, inf, torch.device("cpu"), emit)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # test-fast stays under 60 s; runs in make test
def test_streamed_path_matches_whole_path(tiny, small_ct):
    vol, _ = small_ct
    spec = resolve_model(str(_entry(tiny)))
    streamed = spec.model_copy(update={"inference": spec.inference.model_copy(update={"max_buffer_mb": 1e-6})})
    a = segment(vol, spec)
    b = segment(vol, streamed)
    assert a.record.inputs["inference_path"] == "whole"
    assert b.record.inputs["inference_path"] == "streamed (float32 ring)"  # 3 channels: exact ring
    assert np.array_equal(a.labelmap.array, b.labelmap.array)
    np.testing.assert_allclose(a.uncertainty.array, b.uncertainty.array, atol=1e-5)
    half = streamed.model_copy(update={"inference": streamed.inference.model_copy(update={"buffer_dtype": "float16"})})
    c = segment(vol, half)
    assert (c.labelmap.array == a.labelmap.array).mean() > 0.99
    np.testing.assert_allclose(c.uncertainty.array, a.uncertainty.array, atol=0.02)


@pytest.mark.slow  # test-fast stays under 60 s; runs in make test
def test_combine_with_hu_rules(tiny, small_ct, tmp_path):
    vol, truth = small_ct
    spec = resolve_model(str(_entry(tiny, combine_with="hu_rules")))
    res = segment(vol, spec)
    names = set(res.labelmap.labels.names)
    assert {"organ_a", "organ_b", "body", "bone", "lungs", "airway"} <= names
    alone = segment(vol, resolve_model(str(_entry(tiny))))
    organ = alone.labelmap.array > 0
    # the model's labels win wherever the model found something (before post-processing moved them)
    kept = res.labelmap.array[organ]
    assert np.isin(kept, [0, 1, 7]).mean() > 0.95
    # HU rules fill the rest of the body
    assert (res.labelmap.array[truth["body"] & ~organ] > 0).mean() > 0.95
    # the HU rules' threshold uncertainty only counts where the HU rules decided: the model's
    # structures keep the model's own uncertainty
    own = alone.uncertainty.array
    checked = 0
    for name in ("organ_a", "organ_b"):
        if name in res.qc and name in alone.qc:
            m = res.labelmap.mask(name) & alone.labelmap.mask(name)
            np.testing.assert_array_equal(res.uncertainty.array[m], own[m])
            checked += int(m.sum())
    assert checked > 100
    hu_only = res.labelmap.array >= 201
    assert (res.uncertainty.array[hu_only] >= own[hu_only]).all()
    # an id collision is an error, not a silent merge
    clash = resolve_model(str(_entry(tmp_path, combine_with="hu_rules",
                                     labels=[{"id": 201, "name": "organ_a"}, {"id": 7, "name": "organ_b"}])))
    with pytest.raises(ModelError, match="id 201"):
        segment(vol, clash, network=build_network("UNet", UNET))


@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "PIL"])
def test_conversion_reorients_like_monai(axcodes):
    from monai.transforms import Orientation

    from pipeline.segment.monai_io import volume_to_metatensor

    vol, _ = _blob_volume()
    ours = volume_to_metatensor(vol, axcodes=axcodes)
    ref = Orientation(axcodes=axcodes, labels=(("L", "R"), ("P", "A"), ("I", "S")))(volume_to_metatensor(vol))
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours.as_tensor(), ref.as_tensor())
    np.testing.assert_allclose(ours.affine.numpy(), ref.affine.numpy(), atol=1e-9)


def test_finaliser_argmax_entropy_probabilities():
    from pipeline.segment.runner import _Finaliser

    torch.manual_seed(3)
    logits = torch.randn(5, 4, 3, 6) * 4
    fin = _Finaliser((4, 3, 6), 5, keep_probs=True)
    fin((slice(None), slice(None), slice(None)), logits[:, :, :, :])
    p = torch.softmax(logits.double(), 0)
    np.testing.assert_array_equal(fin.ch, p.argmax(0).numpy())
    np.testing.assert_allclose(fin.probs, p.numpy(), rtol=1e-5, atol=1e-6)
    h = (-(p * p.log()).sum(0) / np.log(5)).numpy()
    np.testing.assert_allclose(fin.entropy, h, atol=1e-5)


@pytest.mark.slow  # test-fast stays under 60 s; runs in make test
def test_hu_threshold_uncertainty_stays_off_model_structures(tmp_path):
    """A structure the model labels at 200 HU (a contrast vessel: exactly the HU bone threshold)
    keeps the model's low uncertainty after combining with the HU rules; the threshold's
    uncertainty counts only where the HU rules decide."""
    from segment_synth import lps_grid

    vol, _ = _blob_volume()
    x, y, z = lps_grid(vol.shape, vol.affine)
    body = x ** 2 + y ** 2 + (z - 20.0) ** 2 <= 70.0 ** 2
    ball = (x - 35.0) ** 2 + (y + 5.0) ** 2 + (z - 20.0) ** 2 <= 18.0 ** 2
    arr = np.where(ball, 200, np.where(body, -50, -1000)).astype(np.int16)
    vol = Volume(arr, vol.affine, None, {"modality": "CT"})
    from pipeline.segment.hu_rules import HURulesConfig, hu_uncertainty

    assert hu_uncertainty(arr, HURulesConfig())[ball].min() > 0.99  # right on the bone threshold
    spec = _threshold_spec(tmp_path)
    res = segment(vol, spec, {"combine_with": "hu_rules", "postprocess": {"enabled": False}}, network=Threshold())
    alone = segment(vol, spec, {"combine_with": "none", "postprocess": {"enabled": False}}, network=Threshold())
    assert res.qc["ball"]["uncertainty"] == alone.qc["ball"]["uncertainty"]
    inner = ball & res.labelmap.mask("ball")
    assert res.uncertainty.array[inner].mean() < 0.15


def test_boundary_only_probability_resampling_is_exact(tiny, tmp_path):
    """Interpolating the probabilities only where the 3x3x3 network neighbourhood mixes labels
    gives exactly the labels of interpolating them everywhere (oblique, anisotropic grid)."""
    from pipeline.segment.api import segment_config
    from pipeline.segment.runner import run_network

    vol, _ = _blob_volume()
    spec = resolve_model(str(_entry(tiny, inference={"roi_size": [16, 16, 16], "resample": "probabilities"})))
    cfg = segment_config({})
    full = run_network(vol, spec, cfg, keep_probabilities=True)
    band = run_network(vol, spec, cfg, keep_probabilities=False)
    assert len(np.unique(full.labels)) >= 2  # a random network still gives boundaries to test
    np.testing.assert_array_equal(band.labels, full.labels)
    assert np.abs(band.uncertainty - full.uncertainty).mean() < 0.02
    assert any("probabilities interpolated at" in n for n in band.notes)


@pytest.mark.parametrize("flip_rows", [False, True])
def test_separable_resampling_equals_sampling_grid(tiny, tmp_path, monkeypatch, flip_rows):
    """The per-axis fast path (axis-aligned grids, the clinical case) gives exactly the labels of
    the per-voxel sampling grid, on a grid stored with reversed rows too, and keeps left on left."""
    from pipeline.segment import runner
    from pipeline.segment.api import segment_config

    vol, ball = _blob_volume(rot=(0.0, 0.0, 0.0), spacing=(2.5, 0.9, 0.7), shape=(36, 90, 110))
    if flip_rows:  # the same image stored bottom-up: reversed row axis, affine adjusted
        a = vol.affine.copy()
        a[:3, 3] += a[:3, 1] * (vol.shape[1] - 1)
        a[:3, 1] *= -1
        vol, ball = Volume(vol.array[:, ::-1].copy(), a, None, {"modality": "CT"}), ball[:, ::-1]
    assert runner.axis_aligned(runner._index_map(vol, vol.affine)) is not None
    spec = resolve_model(str(_entry(tiny, inference={"roi_size": [16, 16, 16], "resample": "probabilities"})))
    cfg = segment_config({})
    fast = runner.run_network(vol, spec, cfg)
    monkeypatch.setattr(runner, "SEPARABLE", False)
    slow = runner.run_network(vol, spec, cfg)
    assert len(np.unique(fast.labels)) >= 2
    np.testing.assert_array_equal(fast.labels, slow.labels)
    assert np.abs(fast.uncertainty - slow.uncertainty).mean() < 0.01
    # a threshold 'network' on the same grid: the ball stays on the patient's left
    res = segment(vol, _threshold_spec(tmp_path, "probabilities"), {"postprocess": {"enabled": False}},
                  network=Threshold())
    got = res.labelmap.mask("ball")
    assert dice(got, ball) > 0.9
    assert vol.index_to_lps(np.argwhere(got).mean(axis=0)[None])[0][0] > 30.0
