"""End to end: DICOM -> Volume -> segment -> meshes -> scene, and left/right on every path."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import SurgitwinError
from pipeline.geometry import read_image_file, resample_like
from pipeline.ingest import read_input
from pipeline.mesh import labelmap_to_meshes
from pipeline.phantom import make_phantom, write_label_nifti
from pipeline.dicom_writer import write_dicom_series
from pipeline.run import run_case
from pipeline.scene import load_scene
from pipeline.types import LabelMap
from tests.conftest import ROOT, real_data

pytestmark = pytest.mark.slow  # end-to-end: left out by `make test-fast`

SAMPLE = ROOT / "sample_scans" / "phantom_ct"
SMALL = dict(shape=(60, 96, 96), spacing=(4.0, 3.6, 3.6))


@pytest.fixture(scope="module")
def demo_scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "scene"
    result = run_case(SAMPLE / "dicom", out, model="hu_rules", snapshot=False)
    return out, result


def test_run_case_writes_a_complete_scene(demo_scene):
    out, result = demo_scene
    assert result.status == "done"
    d = json.loads((out / "scene.json").read_text())
    assert d["source"]["series_instance_uid"].startswith("1.2.826.0.1.3680043.8.498.")
    assert [p["stage"] for p in d["provenance"]] == ["ingest", "segment", "mesh"]
    names = {s["name"] for s in d["structures"]}
    assert {"body", "bone", "lungs"} <= names
    for s in d["structures"]:
        assert s["watertight"], s["name"]
        assert (out / s["mesh"]).exists()
        if s["voxel_volume_ml"] >= 10:
            assert abs(s["volume_ml"] - s["voxel_volume_ml"]) / s["voxel_volume_ml"] < 0.03, s
    assert not list(out.parent.glob(".scene.tmp-*"))


def test_hu_rule_lungs_match_the_phantom_truth_in_patient_space(demo_scene):
    from pipeline.evaluation import compare_to_truth

    out, _ = demo_scene
    rows = {r["name"]: r for r in compare_to_truth(out, SAMPLE / "ground_truth_labels.nii.gz")}
    assert rows["lungs"]["dice"] > 0.95
    assert rows["lungs"]["centroid_error_mm"] < 2.0
    # lungs mesh: one on each side of the midline
    scene = load_scene(out)
    lungs = scene.mesh("lungs").mesh.split(only_watertight=True)
    xs = sorted(float(m.centroid[0]) for m in lungs if abs(m.volume) > 100e3)
    assert len(xs) == 2 and xs[0] < -30 and xs[1] > 30


@pytest.mark.parametrize("variant", ["axial", "reversed_slices", "reversed_files", "oblique"])
def test_left_right_survives_every_dicom_variant(tmp_path, variant):
    """Left kidney at x > 0 (LPS), liver at x < 0, through DICOM writing, reading and meshing."""
    ct, truth = make_phantom(0, orientation="oblique" if variant == "oblique" else "axial",
                             reverse_slices=variant == "reversed_slices", **SMALL)
    write_dicom_series(ct, tmp_path / "dcm", reverse_order=variant == "reversed_files", shuffle_names=True)
    vol = read_input(tmp_path / "dcm")
    # the reader stacks along the slice normal, whatever the file or instance order
    same = resample_like(ct, vol, order=0, dtype=np.int16)
    np.testing.assert_array_equal(same.array, vol.array)
    if variant in ("axial", "oblique", "reversed_files"):
        assert vol.geometry_equal(ct, atol=1e-3)
    # the truth travels through a NIfTI file (RAS on disk) and is resampled in patient space
    write_label_nifti(truth, tmp_path / "truth.nii.gz")
    t = resample_like(read_image_file(tmp_path / "truth.nii.gz"), vol, order=0, dtype=np.uint8)
    meshes = {m.name: m for m in labelmap_to_meshes(LabelMap(t, truth.labels),
                                                     names={"kidney_left", "kidney_right", "liver", "spleen"})}
    assert meshes["kidney_left"].mesh.centroid[0] > 30
    assert meshes["spleen"].mesh.centroid[0] > 30
    assert meshes["kidney_right"].mesh.centroid[0] < -30
    assert meshes["liver"].mesh.centroid[0] < -20
    # and the image intensities line up with the labels (liver ~60 HU, kidneys ~30 HU)
    assert 40 < vol.array[t.array == 1].mean() < 80


def test_bad_input_leaves_nothing_behind(tmp_path):
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "notes.txt").write_text("not a scan")
    out = tmp_path / "out"
    with pytest.raises(SurgitwinError) as e:
        run_case(bad, out, snapshot=False)
    assert str(bad) in str(e.value)
    assert not out.exists()
    assert os.listdir(tmp_path) == ["in"]


def test_existing_scene_is_replaced_atomically(tmp_path, demo_scene):
    src, _ = demo_scene
    out = tmp_path / "scene"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    ct, _ = make_phantom(1, **SMALL)
    write_dicom_series(ct, tmp_path / "dcm")
    run_case(tmp_path / "dcm", out, model="hu_rules", snapshot=False)
    assert (out / "scene.json").exists() and not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dcm", "scene"]


def test_cli_run_and_scan(tmp_path, capsys):
    from pipeline.cli import main

    ct, _ = make_phantom(2, **SMALL)
    write_dicom_series(ct, tmp_path / "dcm")
    assert main(["run", str(tmp_path / "dcm"), "--out", str(tmp_path / "s"), "--no-snapshot", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "done" and Path(out["scene_path"]).name == "s"
    assert main(["scan", str(tmp_path / "dcm"), "--json"]) == 0
    assert "SELECTED" in capsys.readouterr().out.upper()
    assert main(["run", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 1


def test_real_ct_gives_bone_and_lungs_in_the_right_place(tmp_path):
    """JPEG 2000 real CT: bone and lung surfaces sit on bone and lung in the image."""
    series = real_data("ct_thorax_abdomen_dicom_j2k", "series")
    out = tmp_path / "scene"
    run_case(series, out, model="hu_rules", snapshot=False)
    scene = load_scene(out)
    image = scene.load_image()
    assert {"bone", "body"} <= set(scene.structure_names)

    def hu_inside(name, depth_mm):
        m = scene.mesh(name).mesh
        pts = m.vertices - depth_mm * m.vertex_normals  # just inside the surface
        idx = np.rint(image.lps_to_index(pts)).astype(int)
        ok = np.all((idx >= 0) & (idx < np.array(image.shape)), axis=1)
        return image.array[tuple(idx[ok].T)]

    assert np.median(hu_inside("bone", 0.7)) > 150
    spine = scene.mesh("bone").mesh.split(only_watertight=True)
    biggest = max(spine, key=lambda m: abs(m.volume))
    # the vertebra is in the midline (|x| small) and posterior (+y) of the body's centre
    body = scene.mesh("body").mesh
    assert abs(biggest.centroid[0] - body.centroid[0]) < 25
    assert biggest.centroid[1] > body.centroid[1] + 30
    if "lungs" in scene.structure_names:  # this slab holds only a sliver of lung base
        assert np.median(hu_inside("lungs", 1.0)) < -400
