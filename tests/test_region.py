"""Issue 15, Part B: no organ where there is none (pipeline/segment/region.py).

Negatives with known answers: a synthetic chest (the phantom above the diaphragm), a synthetic
pelvis (the phantom below the kidneys with a bony pelvis) and the real head CT give no
abdominal organ; the real abdominal CT and the sample scan keep every label.
"""
import json

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.segment.region import RegionConfig, apply_region_check, classify_slices
from pipeline.train.negatives import NEGATIVE_ORGANS, negative_ct

FLOOR_ML = 0.5  # "no organ": nothing above this on a negative


def _ranges(vol):
    r = classify_slices(vol)
    return {k: [(round(a), round(b)) for a, b in v] for k, v in r.ranges().items()}


def _model():
    from pipeline.segment import resolve_model

    return resolve_model("abdomen_unet_3mm")


def _volumes(seg):
    return {n: q["volume_ml"] for n, q in seg.qc.items()}


# -- the slice classes --------------------------------------------------------------------------

@pytest.mark.slow  # test-fast stays under 60 s; runs in make test
def test_slice_classes_on_the_synthetic_scans():
    from pipeline.ingest import read_input

    assert set(_ranges(negative_ct("chest"))) == {"thorax"}
    assert set(_ranges(negative_ct("pelvis"))) == {"pelvis"}
    sample = _ranges(read_input("sample_scans/phantom_ct/dicom"))
    # the sample scan: lung bases on top of the abdomen, the abdomen below (z grows to the head)
    assert set(sample) == {"thorax", "abdomen"} and sample["thorax"][0][0] == sample["abdomen"][0][1]
    assert sample["abdomen"][0][0] < sample["thorax"][0][0]


def test_slice_classes_do_not_depend_on_how_the_scan_is_stored():
    """Slices stored head to feet, columns mirrored, rows and columns swapped: the same z ranges."""
    from pipeline.ingest import read_input
    from pipeline.types import Volume

    v = read_input("sample_scans/phantom_ct/dicom")
    want = _ranges(v)
    for axes, f in (((0,), (0,)), ((2,), (2,)), ((0, 2), (0, 2))):
        m = np.eye(4)
        for ax in f:
            m[ax, ax] = -1.0
            m[ax, 3] = v.shape[ax] - 1
        arr = np.flip(v.array, axis=axes)
        assert _ranges(Volume(arr.copy(), v.affine @ m, v.frame_of_reference_uid, dict(v.source))) == want
    perm = np.eye(4)[[0, 2, 1, 3]]  # rows <-> columns
    t = Volume(np.ascontiguousarray(v.array.transpose(0, 2, 1)), v.affine @ perm, v.frame_of_reference_uid, dict(v.source))
    assert _ranges(t) == want


@pytest.mark.real
def test_slice_classes_on_real_ct():
    from conftest import real_data
    from pipeline.ingest import read_input

    assert set(_ranges(read_input(real_data("ct_thorax_abdomen_dicom_j2k", "series")))) == {"abdomen"}
    assert set(_ranges(read_input(real_data("ct_abdomen_3slice_ge")))) == {"abdomen"}  # liver dome level
    assert set(_ranges(read_input(real_data("ct_head_gantry_tilt_ge", "series")))) == {"head"}


# -- the check on label maps ---------------------------------------------------------------------

def test_organ_outside_its_region_is_removed_and_the_reason_stated():
    """A 'liver' painted into a chest and a 'kidney' into the lung bases of the sample scan."""
    from pipeline.ingest import read_input
    from pipeline.segment.registry import resolve_model

    table = resolve_model("abdomen_unet_3mm").label_table()
    chest = negative_ct("chest")
    lab = np.zeros(chest.shape, np.uint8)
    lab[30:50, 60:100, 120:150] = table.by_name("liver").id
    lab[30:50, 60:100, 40:60] = table.by_name("aorta").id  # the aorta runs through the chest: kept
    out, rep = apply_region_check(lab, chest, table)
    assert not (out == table.by_name("liver").id).any() and (out == table.by_name("aorta").id).sum() == 20 * 40 * 20
    assert rep["removed"]["liver"]["reason"].startswith("scan contains no abdomen (thorax z ")
    assert rep["removed"]["liver"]["kept_ml"] == 0 and "aorta" not in rep["removed"]

    # the sample scan: thorax on top (z > -221 mm); the kidney may reach 20 mm into it, not more
    v = read_input("sample_scans/phantom_ct/dicom")
    z = v.affine[2, 0] * np.arange(v.shape[0]) + v.affine[2, 3]
    kid = table.by_name("kidney_left").id
    lab = np.zeros(v.shape, np.uint8)
    lab[:, 90:110, 120:140] = kid  # a column through every slice
    out, rep = apply_region_check(lab, v, table, RegionConfig(tolerance_mm=20))
    kept = np.nonzero((out == kid).any(axis=(1, 2)))[0]
    assert z[kept].max() == pytest.approx(-221.25 + 20, abs=2.6) and z[kept].min() == z[0]
    assert rep["removed"]["kidney_left"]["kept_ml"] > 0 and "outside the abdomen" in rep["removed"]["kidney_left"]["reason"]
    off, rep_off = apply_region_check(lab.copy(), v, table, RegionConfig(enabled=False))
    assert (off == lab).all() and rep_off["removed"] == {} and "off" in rep_off["note"]


def test_region_config_is_validated_with_dotted_keys(tmp_path):
    from pipeline.configuration import load_pipeline_config

    bad = tmp_path / "p.yaml"
    bad.write_text("segment:\n  region: {tolerance_mm: -1, organs: {liver: [belly]}, enabeld: true}\n")
    with pytest.raises(ConfigError) as e:
        load_pipeline_config(bad)
    msg = str(e.value)
    assert "segment.region.tolerance_mm" in msg and "segment.region.enabeld" in msg and "'belly'" in msg
    assert e.value.path == str(bad)


def test_the_check_is_fast_on_a_full_size_ct():
    """Coarse per-slice statistics only: a 512 x 512 x 300 CT is classified from <= 120 samples
    of about 4 mm pixels (the cost is bounded by construction, not timed here)."""
    from pipeline.types import Volume

    arr = np.full((300, 512, 512), -1000, np.int16)
    arr[:, 100:400, 60:450] = 40
    affine = np.array([[0, 0, 0.7, 0], [0, 0.7, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])  # k -> z, j -> y, i -> x
    v = Volume(arr, affine, "1.2", {"modality": "CT"})
    r = classify_slices(v)
    assert len(r.z_mm) <= 120 and set(r.region) == {"abdomen"}


# -- the negatives through the abdominal model ---------------------------------------------------

@pytest.mark.slow
def test_pelvis_negative_gives_no_abdominal_organ():
    """(The chest negative: test_run_states_the_removal_in_scene_qc_and_provenance.)"""
    from pipeline.segment import segment

    seg = segment(negative_ct("pelvis"), _model(), {"device": "cpu"})
    vols = _volumes(seg)
    assert all(vols.get(n, 0.0) <= FLOOR_ML for n in NEGATIVE_ORGANS), vols
    assert all(seg.qc[n]["status"] == "removed" and "scan contains no abdomen" in seg.qc[n]["warning"]
               for n in NEGATIVE_ORGANS if n in seg.qc)
    assert seg.record.inputs["body_region"]["regions"].keys() == {"pelvis"}
    assert vols.get("aorta", 0.0) <= FLOOR_ML  # the aorta ends above the pelvis


@pytest.mark.real
@pytest.mark.slow
def test_real_head_ct_segmented_directly_gives_no_organ():
    """`segment` has no model-fit refusal (`run` has): the region check still leaves no organ."""
    from conftest import real_data
    from pipeline.ingest import read_input
    from pipeline.segment import segment

    seg = segment(read_input(real_data("ct_head_gantry_tilt_ge", "series")), _model(), {"device": "cpu"})
    vols = _volumes(seg)
    assert all(v <= FLOOR_ML for n, v in vols.items() if n in (*NEGATIVE_ORGANS, "aorta")), vols


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize("scan", ["ct_thorax_abdomen_dicom_j2k/series", "ct_abdomen_3slice_ge", "sample"])
def test_real_abdominal_scans_keep_every_label(scan):
    """The real thorax-abdomen slab (lung bases and upper abdomen), the 3-slice abdomen at the liver
    dome and the sample scan: the check removes nothing, label for label."""
    from conftest import real_data
    from pipeline.ingest import read_input
    from pipeline.segment import segment

    path = "sample_scans/phantom_ct/dicom" if scan == "sample" else real_data(*scan.split("/"))
    vol = read_input(path)
    spec = _model()
    seg = segment(vol, spec, {"device": "cpu", "region": {"enabled": False}})
    before = seg.labelmap.array.copy()
    after, rep = apply_region_check(seg.labelmap.array, vol, seg.labelmap.labels)
    assert rep["checked"] and rep["removed"] == {} and np.array_equal(after, before)
    if scan != "ct_abdomen_3slice_ge":
        assert seg.qc["liver"]["volume_ml"] > 500


@pytest.mark.slow
def test_run_states_the_removal_in_scene_qc_and_provenance(tmp_path):
    from pipeline.geometry import write_image_file
    from pipeline.run import run_case

    chest = negative_ct("chest")
    write_image_file(chest, tmp_path / "chest.nii.gz")
    res = run_case(tmp_path / "chest.nii.gz", tmp_path / "out", model="abdomen_unet_3mm", snapshot=False)
    scene = json.loads((tmp_path / "out" / "scene.json").read_text())
    vols = {s["name"]: s["volume_ml"] for s in res.structures}
    assert all(vols.get(n, 0.0) <= FLOOR_ML for n in NEGATIVE_ORGANS), vols
    assert all(scene["qc"][n]["status"] == "removed" for n in NEGATIVE_ORGANS if n in scene["qc"])
    assert scene["qc"]["liver"]["status"] == "removed" and scene["qc"]["liver"]["volume_ml"] == 0.0
    assert "liver" not in [s["name"] for s in scene["structures"]]
    assert any(w.startswith("liver: removed, scan contains no abdomen (thorax z ") for w in res.warnings)
    seg = next(p for p in scene["provenance"] if p["stage"] == "segment")
    assert seg["inputs"]["body_region"]["regions"].keys() == {"thorax"}
    assert any("body regions by slice: thorax" in n for n in seg["notes"])


# -- the order rules and the paths that must end cleanly -----------------------------------------

def _f(area=600.0, lung=0.0, bone=0.04, lateral=(0.0, 0.0)):
    return {"area_cm2": area, "lung": lung, "lung_sides": [lung, lung], "bone": bone, "lateral_bone_cm2": list(lateral)}


def test_the_abdomen_never_lies_above_the_lungs_or_below_a_head_without_a_chest():
    from pipeline.segment.region import _assign

    cfg = RegionConfig()
    z = np.arange(6) * 10.0  # feet to head
    # pelvis, abdomen, two lung slices, then shoulders with little lung: neck, not abdomen
    feats = [_f(lateral=(12, 11)), _f(), _f(lung=0.4), _f(lung=0.35), _f(lung=0.05), _f(area=700)]
    assert _assign(feats, z, cfg) == ["pelvis", "abdomen", "thorax", "thorax", "neck", "neck"]
    # a head scan down to the neck: no abdomen under a head when no chest is in between
    feats = [_f(area=120, bone=0.05), _f(area=150, bone=0.06), _f(area=250, bone=0.2), _f(area=260, bone=0.15),
             None, None]
    assert _assign(feats, z, cfg) == ["neck", "neck", "head", "head", "none", "none"]
    # ribs on one side only, or thin ribs on both, are not a pelvis
    assert _assign([_f(lateral=(12, 2)), _f(lateral=(4.5, 4.6))], z[:2], cfg) == ["abdomen", "abdomen"]


def test_not_checked_on_mr_or_images_not_in_hu():
    from pipeline.segment.registry import resolve_model

    table = resolve_model("abdomen_unet_3mm").label_table()
    chest = negative_ct("chest")
    lab = np.zeros(chest.shape, np.uint8)
    lab[30:50, 60:100, 120:150] = 1
    for vol in (chest.with_array(chest.array, modality="MR"), chest.with_array((chest.array + 1024).astype(np.int16))):
        out, rep = apply_region_check(lab.copy(), vol, table)
        assert (out == lab).all() and not rep["checked"] and "not run" in rep["note"]


@pytest.mark.real
def test_cli_head_ct_and_mr_end_with_exit_1_naming_the_rule(tmp_path, capsys):
    """The abdominal model on the real head CT and on an MR series: exit 1, the rule named, no
    traceback, no scene (the negatives that `run` refuses before segmenting)."""
    import dicom_synth as ds_
    from conftest import real_data
    from pipeline.cli import main

    stored = np.random.default_rng(5).integers(0, 800, (24, 64, 64)).astype(np.int16)
    ds_.write_series(tmp_path / "mr", stored, np.array([[0.0, 0.0, 3.0 * k] for k in range(24)]),
                     modality="MR", spacing=(1.0, 1.0))
    for inp in (real_data("ct_head_gantry_tilt_ge", "series"), tmp_path / "mr"):
        rc = main(["run", str(inp), "--out", str(tmp_path / "out"), "--model", "abdomen_unet_3mm", "--no-snapshot"])
        err = capsys.readouterr().err
        assert rc == 1 and "[rule: the scan's modality and body region match the model's declaration]" in err
        assert "Traceback" not in err and not (tmp_path / "out").exists()
