"""nnU-Net dataset writing/validation, canonical grids and synthesis (no training here)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.errors import SurgitwinError
from pipeline.types import Volume
from tests.conftest import real_data


def _vol(arr, spacing=(3.0, 3.0, 3.0), flip_rows=False, origin=(0.0, 0.0, 0.0)):
    """Axial volume [k, j, i]: i -> +x (L), j -> +y (P) (or -y when flip_rows), k -> +z."""
    a = np.eye(4)
    a[:3, 0] = [0, 0, spacing[0]]
    a[:3, 1] = [0, -spacing[1] if flip_rows else spacing[1], 0]
    a[:3, 2] = [spacing[2], 0, 0]
    a[:3, 3] = origin
    return Volume(arr, a)


def _case(n=20, shift=0):
    img = np.full((n, n, n), -100, np.int16)
    lab = np.zeros((n, n, n), np.uint8)
    lab[5:12, 5 + shift:12 + shift, 4:9] = 1
    lab[6:14, 6:12, 12:17] = 2
    img[lab == 1] = 150
    img[lab == 2] = 60
    return img, lab


def test_write_and_validate_dataset(tmp_path):
    from pipeline.train.dataset import list_cases, validate_dataset, write_case, write_dataset_json

    for c in range(2):
        img, lab = _case(shift=c)
        v = _vol(img)
        write_case(tmp_path, f"case_{c:03d}", v, v.with_array(lab))
    write_dataset_json(tmp_path, {"liver": 1, "spleen": 2}, 2)
    d = json.loads((tmp_path / "dataset.json").read_text())
    assert d["labels"] == {"background": 0, "liver": 1, "spleen": 2} and d["file_ending"] == ".nii.gz"
    assert (tmp_path / "imagesTr" / "case_000_0000.nii.gz").exists()
    rep = validate_dataset(tmp_path)
    assert rep.ok, rep.summary()
    assert rep.cases == 2 and len(list_cases(tmp_path)) == 2
    assert rep.voxels_per_label[1] == 2 * 7 * 7 * 5


def test_validate_lists_every_broken_rule(tmp_path):
    from pipeline.geometry import write_image_file
    from pipeline.train.dataset import check_dataset, validate_dataset, write_case, write_dataset_json

    img, lab = _case()
    v = _vol(img)
    write_case(tmp_path, "good", v, v.with_array(lab))
    lab3 = lab.copy()
    lab3[0, 0, 0] = 7  # undeclared value
    write_case(tmp_path, "undeclared", v, v.with_array(lab3))
    write_case(tmp_path, "empty", v, v.with_array(np.zeros_like(lab)))
    write_case(tmp_path, "shifted", v, v.with_array(lab))
    # the image of 'shifted' moves by 1.5 mm: geometry no longer equals its label's
    write_image_file(_vol(img, origin=(1.5, 0, 0)), tmp_path / "imagesTr" / "shifted_0000.nii.gz")
    write_dataset_json(tmp_path, {"liver": 1, "spleen": 2}, 5)
    rep = validate_dataset(tmp_path)
    text = "\n".join(rep.errors)
    assert not rep.ok
    assert "undeclared [7]" in text and "undeclared.nii.gz" in text
    assert "empty.nii.gz: case is empty" in text
    assert "shifted_0000.nii.gz: image geometry must equal" in text and "origin" in text
    assert "numTraining must equal the number of cases in labelsTr (4); found 5" in text
    with pytest.raises(SurgitwinError, match="nnU-Net convention"):
        check_dataset(tmp_path)


def test_validate_missing_json(tmp_path):
    from pipeline.train.dataset import validate_dataset

    rep = validate_dataset(tmp_path)
    assert not rep.ok and "dataset.json not found" in rep.errors[0]


def test_canonical_grid_keeps_left_left():
    """A marker on the patient's left lands at low R index whatever the source axis order."""
    from pipeline.train.synth import to_canonical

    arr = np.zeros((10, 12, 14), np.uint8)
    arr[4:6, 5:7, 11:13] = 1  # high column index = +x = patient left
    for flip in (False, True):
        v = _vol(arr, spacing=(3.0, 3.0, 3.0), flip_rows=flip, origin=(-20.0, -15.0, 0.0))
        c = to_canonical(v, 3.0)
        idx = np.argwhere(c.array == 1).mean(0)
        lps_src = v.index_to_lps(np.argwhere(arr == 1).mean(0)[None])[0]
        lps_can = c.index_to_lps(idx[None])[0]
        assert np.allclose(lps_src, lps_can, atol=1.6)
        assert idx[0] < c.shape[0] / 2  # axis 0 runs towards patient Right: left is low


def test_sidedness_check_catches_swapped_names():
    from pipeline.train.labels import GEN_BY_NAME
    from pipeline.train.synth import check_sidedness

    arr = np.zeros((8, 10, 30), np.uint8)
    arr[2:6, 3:7, 22:27] = GEN_BY_NAME["kidney_left"]   # +x: patient left
    arr[2:6, 3:7, 3:8] = GEN_BY_NAME["kidney_right"]
    v = _vol(arr)
    check_sidedness(v)
    swapped = arr.copy()
    swapped[arr == GEN_BY_NAME["kidney_left"]] = GEN_BY_NAME["kidney_right"]
    swapped[arr == GEN_BY_NAME["kidney_right"]] = GEN_BY_NAME["kidney_left"]
    with pytest.raises(SurgitwinError, match="names look swapped"):
        check_sidedness(v.with_array(swapped))


def test_synth_augmentation_never_mirrors():
    """Random rotations/scales/elastic fields keep kidney_left on the left in every sample."""
    from pipeline.train.labels import GEN_BY_NAME
    from pipeline.train.synth import GEN_TO_TARGET, paint_intensities, warp_labels

    g = np.zeros((40, 30, 30), np.uint8)  # RAS order: low axis-0 index = patient left
    g[5:14, 10:20, 10:20] = GEN_BY_NAME["kidney_left"]
    g[26:35, 10:20, 10:20] = GEN_BY_NAME["kidney_right"]
    rng = np.random.default_rng(0)
    for _ in range(8):
        w = warp_labels(g, (40, 30, 30), (19.5, 14.5, 14.5), rng, 3.0, rot_deg=(10, 10, 15))
        t = GEN_TO_TARGET[w]
        left, right = np.argwhere(t == 3)[:, 0].mean(), np.argwhere(t == 4)[:, 0].mean()
        assert left < right
        img = paint_intensities(w, rng)
        assert img.shape == w.shape and np.isfinite(img).all()


def test_hollow_organs_get_food_and_anterior_gas_liver_gets_vessels():
    """Stomach contents are mottled with gas on the anterior (non-dependent) side; the liver
    gets vessel tubes at a vessel's HU; a plain organ stays uniform."""
    from pipeline.train.labels import GEN_BY_NAME
    from pipeline.train.synth import _hollow_contents, _liver_vessels

    g = np.zeros((30, 40, 20), np.uint8)  # RAS: axis 1 = anterior
    g[2:14, 5:35] = GEN_BY_NAME["stomach"]
    g[16:28, 5:35] = GEN_BY_NAME["liver"]
    st, lv = g == GEN_BY_NAME["stomach"], g == GEN_BY_NAME["liver"]
    means = np.full(256, -1000.0, np.float32)
    means[GEN_BY_NAME["liver"]], means[GEN_BY_NAME["stomach"]] = 90.0, 20.0
    means[GEN_BY_NAME["other_vessel"]] = means[GEN_BY_NAME["inferior_vena_cava"]] = 250.0
    rng = np.random.default_rng(3)
    gas_ant = gas_post = mottled = vessels = 0
    for _ in range(40):
        img = means[g].copy()
        _hollow_contents(img, g, rng)
        _liver_vessels(img, g, rng, means)
        gas = st & (img < -500)
        gas_ant += int(gas[:, 20:].sum())
        gas_post += int(gas[:, :20].sum())
        mottled += int(img[st & (img > -500) & (img < 150)].std() > 5)
        vessels += int((lv & (img > 200)).any())
        assert np.all(img[lv & (img <= 200)] == 90.0)  # the liver is only ever liver or vessel
    assert gas_ant > 3 * max(gas_post, 1)
    assert mottled >= 20 and 12 <= vessels <= 36


def test_real_label_maps_synthesise():
    real = real_data()
    from pipeline.train.synth import SynthSampler, load_real_generation_maps

    maps = load_real_generation_maps(real, 6.0)  # coarse: fast
    assert len(maps) == 2
    s = SynthSampler(maps, patch=(32, 32, 32), spacing=6.0)
    img, tgt = s.sample(np.random.default_rng(1))
    assert img.shape == (32, 32, 32) and tgt.max() <= 6
    img, tgt = s.whole_case(0, np.random.default_rng(2))
    present = set(np.unique(tgt).tolist())
    assert {1, 2, 3, 4, 5, 6} <= present  # the torso map has all six organs
    # liver (right) lies at higher R index than spleen (left) in the canonical RAS grid
    assert np.argwhere(tgt == 1)[:, 0].mean() > np.argwhere(tgt == 2)[:, 0].mean()


@pytest.mark.slow  # test-fast stays under 60 s; runs in make test
def test_from_dicom_seg_and_label_file_agree(tmp_path):
    """A DICOM SEG and the NRRD it was made from give the same liver on the CT grid."""
    base = real_data("ct_abdomen_3slice_ge")
    import SimpleITK as sitk

    from pipeline.train.dataset import dataset_from_dicom

    rep = dataset_from_dicom(tmp_path, [(str(base / "ct-3slice"), str(base / "liver.dcm")),
                                        (str(base / "ct-3slice"), str(base / "liver_seg.nrrd"))])
    assert rep.ok, rep.summary()
    assert rep.labels == {"background": 0, "liver": 1, "label_1": 2}
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labelsTr" / "case_000.nii.gz"))) == 1
    nrrd = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labelsTr" / "case_001.nii.gz"))) == 2
    assert seg.sum() > 50000 and (seg == nrrd).all()
