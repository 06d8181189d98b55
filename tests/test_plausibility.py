"""Issue 13: anatomical plausibility in QC (side, position, inside the body, size), flagged in
scene.json, the report, the viewer and planning; and `run --out` never drops a plan silently."""
import json

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.scene.plausibility import merge_into_qc, plausibility
from pipeline.types import Label, LabelMap, LabelTable, Volume
from tests.conftest import real_data

LABELS = LabelTable([
    Label(1, "liver", expected_ml=(50, 3500)), Label(2, "spleen", expected_ml=(10, 1200)),
    Label(3, "kidney_right", expected_ml=(30, 400)), Label(4, "aorta", expected_ml=(10, 400)),
    Label(5, "body"),
])


def torso(liver_x=-60.0, kidney=(-45.0, 30.0, 0.0), kidney_r=25.0, outside=False):
    """A 2 mm axial torso (LPS: x left, y posterior, z superior) with known organ positions."""
    n = 100
    affine = np.diag([2.0, 2.0, 2.0, 1.0])  # [k, j, i] -> (x = 2i, y = 2j, z = 2k): the index->LPS map
    affine[:3, :3] = [[0, 0, 2.0], [0, 2.0, 0], [2.0, 0, 0]]
    affine[:3, 3] = [-100.0, -100.0, -40.0]
    k, j, i = np.meshgrid(np.arange(40), np.arange(n), np.arange(n), indexing="ij")
    x, y, z = -100 + 2.0 * i, -100 + 2.0 * j, -40 + 2.0 * k
    lab = np.zeros((40, n, n), np.uint8)
    lab[(x / 90) ** 2 + (y / 70) ** 2 <= 1] = 5
    lab[(x - liver_x) ** 2 + (y + 20) ** 2 + z ** 2 <= 30 ** 2] = 1
    lab[(x - 60) ** 2 + (y - 20) ** 2 + z ** 2 <= 16 ** 2] = 2
    kx, ky, kz = kidney
    lab[(x - kx) ** 2 + (y - ky) ** 2 + (z - kz) ** 2 <= kidney_r ** 2] = 3
    lab[((x - 5) ** 2 + (y - 20) ** 2 <= 8 ** 2)] = 4
    if outside:
        lab[(lab == 2)] = 0
        lab[(x - 60) ** 2 + (y + 90) ** 2 + z ** 2 <= 9 ** 2] = 2  # in front of the body wall
    return LabelMap(Volume(lab, affine, "1.2.3", {}), LABELS)


def test_plausible_torso_has_no_flags():
    r = plausibility(torso())
    assert all(v["plausible"] for v in r.values()), r
    assert r["liver"]["centroid_lps"][0] < 0  # LPS: the patient's right is x < 0


def test_liver_on_the_patients_left_is_flagged():
    r = plausibility(torso(liver_x=50.0))
    assert not r["liver"]["plausible"] and "on the patient's left of aorta" in r["liver"]["flags"][0]
    assert r["spleen"]["plausible"]


def test_anterior_kidney_is_flagged_and_too_small_even_at_the_scan_edge():
    r = plausibility(torso(kidney=(-45.0, -35.0, 0.0), kidney_r=20.0))
    assert any(f.startswith("not posterior") for f in r["kidney_right"]["flags"])
    # a 2.5 ml "kidney" touching the scan's edge (truncated) is still too small
    lm = torso(kidney=(-45.0, 30.0, -38.0), kidney_r=6.0)
    r = plausibility(lm, qc={"kidney_right": {"truncated": True}})
    assert any(f.startswith("too small") and "edge" in f for f in r["kidney_right"]["flags"]), r["kidney_right"]


def test_organ_outside_the_body_is_flagged_and_merged_into_qc():
    r = plausibility(torso(outside=True))
    assert any(f.startswith("outside the body") for f in r["spleen"]["flags"])
    qc = merge_into_qc({"spleen": {"warning": None}}, r)
    assert qc["spleen"]["status"] == "fail" and not qc["spleen"]["plausible"] and "implausible" in qc["spleen"]["warning"]
    from viewer.render import qc_flag

    flagged, note = qc_flag({"qc": qc["spleen"]})
    assert flagged and "outside the body" in note


def _reference_labelmap(flip: bool):
    from pipeline.geometry import read_image_file

    ref = real_data("ct_thorax_abdomen_dicom_j2k")
    vol = read_image_file(ref / "labels_reference.nii.gz")
    names = json.loads((ref / "class_map_total.json").read_text())["total"]
    arr = np.rint(vol.array).astype(np.uint8)
    present = [int(v) for v in np.unique(arr) if v]
    table = LabelTable([Label(i, names[str(i)].lower()) for i in present])
    if flip:  # mirror the patient left-right in patient space: x -> -x
        m = np.diag([-1.0, 1.0, 1.0, 1.0])
        vol = Volume(vol.array, m @ vol.affine, vol.frame_of_reference_uid, vol.source)
    return LabelMap(vol.with_array(arr), table)


def test_real_reference_labels_are_plausible_and_their_mirror_is_not():
    ok = plausibility(_reference_labelmap(flip=False))
    bad = [n for n, v in ok.items() if not v["plausible"]]
    assert bad == [], {n: ok[n]["flags"] for n in bad}
    assert ok["liver"]["centroid_lps"][0] < ok["aorta"]["centroid_lps"][0] < ok["spleen"]["centroid_lps"][0]
    mirrored = plausibility(_reference_labelmap(flip=True))
    for name in ("liver", "spleen", "inferior_vena_cava", "kidney_left"):
        if name in mirrored:
            assert not mirrored[name]["plausible"], name


# -- run --out on a scene with a plan ---------------------------------------------------------
@pytest.fixture
def planned(tmp_path):
    from pipeline.planning import Planner
    from tests.scene_factory import cached_constructed_scene

    path, _ = cached_constructed_scene(tmp_path)
    Planner(path).add_trajectory((-110.0, -20.0, 6.0), (-60.0, 4.0, 6.0), 1.5, save=True)
    return path


def test_rerun_on_a_scene_with_a_plan_refuses_before_any_work(planned, capsys):
    before = (planned / "scene.json").read_text()
    assert main(["run", str(planned / "image.nii.gz"), "--out", str(planned), "--model", "hu_rules",
                 "--no-snapshot"]) == 1
    err = capsys.readouterr().err
    assert "scene.json" in err and "never drops a plan" in err and "--keep-plan" in err and "Traceback" not in err
    assert (planned / "scene.json").read_text() == before


@pytest.mark.slow
def test_rerun_discards_the_plan_only_when_asked(planned, tmp_path):
    from pipeline.run import run_case
    from pipeline.scene import load_scene

    out = tmp_path / "copy"
    import shutil

    shutil.copytree(planned, out)
    run_case(planned / "image.nii.gz", out, model="hu_rules", snapshot=False, existing_plan="discard")
    assert load_scene(out, load_meshes=False).plan["trajectories"] == []


@pytest.mark.slow
def test_rerun_keeps_the_plan_recomputed_on_the_new_structures(tmp_path):
    from pipeline.planning import Planner
    from pipeline.run import run_case
    from pipeline.scene import load_scene
    from tests.scene_factory import cached_constructed_scene

    path, _ = cached_constructed_scene(tmp_path)
    out = tmp_path / "scene_hu"
    run_case(path / "image.nii.gz", out, model="hu_rules", snapshot=False)
    qc = load_scene(out, load_meshes=False).extra["qc"]
    assert all("plausible" in e for e in qc.values())  # plausibility is part of QC in scene.json
    pl = Planner(out)
    lo, hi = pl.index(pl.scene.structure_names[0]).bounds
    centre = (lo + hi) / 2
    t = pl.add_trajectory(centre + [0, -200, 0], centre, 1.0, save=True)
    res = run_case(path / "image.nii.gz", out, model="hu_rules", snapshot=False, existing_plan="keep")
    kept = load_scene(out).plan["trajectories"]
    assert [r["id"] for r in kept] == [t["id"]] and kept[0]["revalidation"]["ok"]
    assert kept[0]["length_mm"] == pytest.approx(t["length_mm"]) and kept[0]["crossed"] == t["crossed"]
    assert any(w.startswith("plan: plan T1") for w in res.warnings)
