"""HU-rule backend: body/bone/lungs/airway on analytic, phantom and real CT; the public API."""
from __future__ import annotations

import time

import numpy as np
import pytest

from conftest import real_data
from segment_synth import dice, synthetic_chest
from pipeline.errors import ModelError
from pipeline.segment import SegmentationResult, segment
from pipeline.segment.hu_rules import HURulesConfig, fill_holes_slicewise, hu_rules_arrays, masks_from_codes
from pipeline.types import Volume


@pytest.fixture(scope="module")
def chest():
    return synthetic_chest()


@pytest.fixture(scope="module")
def chest_result(chest):
    return segment(chest[0], "hu_rules")


def _mask(res: SegmentationResult, name: str) -> np.ndarray:
    return res.labelmap.mask(name)


def test_public_interface(chest, chest_result):
    vol, _ = chest
    res = chest_result
    assert isinstance(res, SegmentationResult)
    assert res.labelmap.volume.geometry_equal(vol)
    assert res.uncertainty is not None and res.uncertainty.geometry_equal(vol)
    assert res.uncertainty.array.dtype == np.float32
    assert 0.0 <= res.uncertainty.array.min() and res.uncertainty.array.max() <= 1.0
    assert set(res.labelmap.labels.names) == {"body", "bone", "lungs", "airway"}
    assert min(res.labelmap.labels.ids) > 200  # no collision with organ models (1..104)
    assert res.record.stage == "segment" and res.record.inputs["backend"] == "hu_rules"
    for name in ("body", "bone", "lungs", "airway"):
        q = res.qc[name]
        for key in ("volume_ml", "mean_hu", "sd_hu", "expected_ml", "in_range", "uncertainty", "warning"):
            assert key in q, (name, key)


def test_structures_match_truth(chest, chest_result):
    vol, truth = chest
    res = chest_result
    assert dice(_mask(res, "lungs"), truth["lungs"]) > 0.97
    assert dice(_mask(res, "airway"), truth["airway"]) > 0.9
    assert dice(res.labelmap.array > 0, truth["body"]) > 0.98
    assert dice(_mask(res, "bone"), truth["bone"]) > 0.75
    # spine marrow (100 HU inside a 700 HU cortex) counts as bone
    assert res.qc["bone"]["mean_hu"] < 650
    # lung vessels are filled into the lungs; abdominal gas is not lung; the trachea is not lung
    assert _mask(res, "lungs")[truth["vessels"]].mean() > 0.95
    assert not _mask(res, "lungs")[truth["gas"]].any()
    assert not _mask(res, "lungs")[truth["airway"]].any()
    # the table the patient lies on stays out of the body except a stub under the contact line
    assert (res.labelmap.array[truth["table"]] > 0).mean() < 0.1
    # left lung on the patient's left (+x in LPS) and right on the right: 2 components kept
    assert res.qc["lungs"]["postprocess"]["components_kept"] == 2


@pytest.mark.slow
def test_oblique_reversed_grid_same_anatomy():
    vol, truth = synthetic_chest(rot_deg=(15.0, -10.0, 20.0), flip_k=True, seed=1)
    res = segment(vol)
    assert res.labelmap.volume.geometry_equal(vol)
    assert dice(_mask(res, "lungs"), truth["lungs"]) > 0.97
    assert dice(_mask(res, "airway"), truth["airway"]) > 0.85
    assert dice(res.labelmap.array > 0, truth["body"]) > 0.98


def test_uncertainty_is_high_only_near_thresholds(chest, chest_result):
    vol, _ = chest
    u = chest_result.uncertainty.array
    hu = vol.array
    assert u[hu < -990].max() < 0.01  # pure air: certain
    assert u[np.abs(hu.astype(np.int32) - 40) <= 20].max() < 0.05  # soft tissue: certain
    from pipeline.segment.hu_rules import hu_uncertainty
    cfg = HURulesConfig()
    ramp = np.array([[[-1000, -400, -300, 40, 200, 1000]]], np.int16)
    u_ramp = hu_uncertainty(ramp, cfg)[0, 0]
    np.testing.assert_allclose(u_ramp[[1, 2, 4]], 1.0, atol=1e-6)  # at a threshold: a coin flip
    assert u_ramp[0] < 1e-6 and u_ramp[5] < 1e-6
    np.testing.assert_allclose(hu_uncertainty(ramp.astype(np.float32), cfg), hu_uncertainty(ramp, cfg))


def test_no_lungs_in_abdomen_only_scan(chest):
    vol, truth = chest
    lower = Volume(vol.array[:25], vol.affine, None, {"modality": "CT"})  # z < -50 mm: gas, no lungs
    codes, info = hu_rules_arrays(lower)
    masks = masks_from_codes(codes)
    assert not masks["lungs"].any() and info["lung_candidates"] == 0
    assert info["gas_pockets"] >= 1


def test_refuses_non_ct():
    vol = Volume(np.full((8, 16, 16), 300, np.int16), np.eye(4), None, {"modality": "MR"})
    with pytest.raises(ModelError, match="modality MR"):
        segment(vol)
    with pytest.raises(ModelError, match="no negative values"):
        segment(Volume(np.full((8, 16, 16), 300, np.int16), np.eye(4)))


def test_fill_holes_slicewise_fills_open_tube():
    m = np.zeros((10, 20, 20), bool)
    m[:, 5:15, 5:15] = True
    m[:, 8:12, 8:12] = False  # a tube along axis 0, open at both ends: no 3-D hole
    from pipeline.segment.postprocess import fill_holes_3d
    assert not fill_holes_3d(m)[:, 10, 10].any()
    assert fill_holes_slicewise(m, axis=0)[:, 10, 10].all()
    assert not fill_holes_slicewise(m, axis=1)[:, 10, 10].all()  # sagittal planes: not enclosed


@pytest.mark.slow  # test-fast stays under 60 s; runs in make test
def test_phantom_ground_truth():
    phantom = pytest.importorskip("pipeline.phantom")
    ct, gt = phantom.make_phantom(0, shape=(64, 128, 128), spacing=(4.0, 2.7, 2.7))
    res = segment(ct)
    g = gt.array
    ids = {l.name: l.id for l in gt.labels}
    assert dice(_mask(res, "lungs"), g == ids["lungs"]) > 0.93
    assert dice(_mask(res, "bone"), np.isin(g, [ids["spine"], ids["ribs"]])) > 0.75
    assert dice(res.labelmap.array > 0, g > 0) > 0.97
    assert res.labelmap.volume.geometry_equal(ct)


def _read_real_ct():
    import SimpleITK as sitk
    from pipeline.geometry import volume_from_sitk

    folder = real_data("ct_thorax_abdomen_dicom_j2k", "series")
    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(folder)))
    r.SetOutputPixelType(sitk.sitkInt16)
    return volume_from_sitk(r.Execute(), {"modality": "CT", "input": str(folder)}), r


@pytest.mark.real
def test_real_ct_jpeg2000():
    """Real Siemens CT (upper abdomen, 20 slices): body holds the organs, bone matches the
    reference vertebrae/ribs, no lungs invented from stomach gas, table excluded."""
    import SimpleITK as sitk

    vol, reader = _read_real_ct()
    t0 = time.perf_counter()
    res = segment(vol)
    elapsed = time.perf_counter() - t0
    assert res.labelmap.volume.geometry_equal(vol)
    ref_img = sitk.ReadImage(str(real_data("ct_thorax_abdomen_dicom_j2k", "labels_reference.nii.gz")))
    # compare in patient space: resample the reference onto the CT grid (its rows are flipped)
    ref = sitk.GetArrayFromImage(sitk.Resample(ref_img, reader.Execute(), sitk.Transform(), sitk.sitkNearestNeighbor))
    body = res.labelmap.array > 0
    assert body[ref > 0].mean() > 0.99
    ref_bone = np.isin(ref, [32, 33, 69, 70, *range(92, 117)])  # vertebrae, humeri, ribs
    assert dice(res.labelmap.mask("bone"), ref_bone) > 0.6
    assert "lungs" not in res.qc  # this slab lies below the lungs
    # the table (rows below the patient, > 400 HU arcs) is not body
    rows = np.nonzero(body.any(axis=(0, 2)))[0]
    assert rows.max() < 430
    assert elapsed < 10.0


def test_models_list_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys; from pipeline.cli import main; rc = main(['models', 'list']); "
            "print('TORCH' if 'torch' in sys.modules or 'monai' in sys.modules else 'NO_TORCH', rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "hu_rules" in out.stdout and "NO_TORCH 0" in out.stdout, out.stdout + out.stderr
