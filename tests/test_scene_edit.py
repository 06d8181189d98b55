"""Corrections of a structure (pipeline.scene.edit and `surgitwin edit`) on a constructed scene
with analytic truth: a sphere 'liver' crossing the midline, a box 'kidney_left' beside it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scene_factory import Box, Sphere, cached_constructed_scene

ROOT = Path(__file__).resolve().parents[1]
LIVER = Sphere((-5.0, 0.0, 0.0), 25.0)  # x -30 .. 20: both sides of the midline
KIDNEY = Box((40.0, 10.0, 0.0), (10.0, 8.0, 15.0))  # x 30 .. 50: 10 mm from the liver


@pytest.fixture()
def scene(tmp_path):
    path, truth = cached_constructed_scene(tmp_path, shapes={"liver": LIVER, "kidney_left": KIDNEY}, case_id="edit")
    return path


def _labels(path):
    from pipeline.scene import load_scene

    s = load_scene(path, load_meshes=False)
    return s.load_labelmap()


def _centres_within(lm, lid, center, r):
    kji = np.argwhere(lm.array == lid)
    lps = lm.volume.index_to_lps(kji)
    return lps[np.linalg.norm(lps - center, axis=1) <= r]


def test_erase_sphere_on_the_right_removes_voxels_only_on_the_right(scene):
    from pipeline.scene import load_scene
    from pipeline.scene.edit import edit_structure

    before = _labels(scene)
    expect = _centres_within(before, 1, (-15.0, 0.0, 0.0), 8.0)
    res = edit_structure(scene, "liver", "erase_sphere", center=(-15, 0, 0), radius_mm=8, user="dr_test")
    after = _labels(scene)
    gone = np.argwhere((before.array == 1) & (after.array != 1))
    gone_lps = after.volume.index_to_lps(gone)
    assert len(gone) == len(expect) == res.voxels_removed > 0 and res.voxels_added == 0
    assert np.all(gone_lps[:, 0] < 0), "erasing on the patient's right (x < 0) must remove only right-side voxels"
    assert np.all(after.array[tuple(gone.T)] == 0)
    assert np.array_equal(after.array[before.array != 1], before.array[before.array != 1])  # nothing else changed
    vml = before.volume.voxel_volume_ml
    assert res.volume_ml_before - res.volume_ml_after == pytest.approx(len(expect) * vml, abs=1e-3)
    assert abs(len(expect) * vml - 4 / 3 * np.pi * 8 ** 3 / 1000) < 0.25  # the sphere's volume, within voxels
    s = load_scene(scene)
    liver = s.mesh("liver")
    assert liver.mesh.is_watertight and liver.qa["voxel_volume_ml"] == pytest.approx(res.volume_ml_after, abs=1e-3)
    assert s.extra["qc"]["liver"]["edited"] and s.extra["qc"]["liver"]["voxels"] == int((after.array == 1).sum())
    rec = s.provenance[-1]
    assert rec.stage == "edit" and rec.outputs["voxels_removed"] == len(expect) and "user: dr_test" in rec.notes
    assert rec.inputs["op"] == "erase_sphere" and rec.inputs["center"] == [-15.0, 0.0, 0.0]


def test_erasing_where_the_structure_is_not_changes_nothing(scene):
    from pipeline.scene.edit import EditError, edit_structure

    with pytest.raises(EditError, match="changes no voxel"):
        edit_structure(scene, "liver", "erase_sphere", center=(40, 10, 0), radius_mm=4)  # inside the kidney
    with pytest.raises(EditError, match="outside the scan"):
        edit_structure(scene, "liver", "erase_sphere", center=(900, 0, 0), radius_mm=4)
    with pytest.raises(EditError, match="not in scene"):
        edit_structure(scene, "lung", "keep_largest")


@pytest.mark.slow  # test-fast stays under 60 s; runs in make test
def test_islands_keep_largest_remove_island_and_undo(scene):
    from pipeline.scene.edit import edit_structure, read_history, undo_last

    orig = _labels(scene).array.copy()
    paint = edit_structure(scene, "liver", "paint_sphere", center=(-5, 0, 33), radius_mm=4)  # a separate island
    assert paint.voxels_added == len(_centres_within(_labels(scene), 1, (-5, 0, 33), 4.0)) > 0
    assert paint.voxels_removed == 0
    rm = edit_structure(scene, "liver", "remove_island", point=(-5, 0, 33))
    assert rm.voxels_removed == paint.voxels_added and np.array_equal(_labels(scene).array, orig)
    edit_structure(scene, "liver", "paint_sphere", center=(-5, 0, 33), radius_mm=4)
    keep = edit_structure(scene, "liver", "keep_largest")
    assert keep.voxels_removed == paint.voxels_added and np.array_equal(_labels(scene).array, orig)
    undo = undo_last(scene)  # undoes keep_largest: the island is back
    assert undo.voxels_added == paint.voxels_added
    assert [h["op"] for h in read_history(scene)][-1] == "undo"
    undo_last(scene)  # undoes the second paint
    assert np.array_equal(_labels(scene).array, orig)


def test_grow_and_shrink_by_mm_and_dependent_plan_numbers_recomputed(scene):
    from pipeline.planning.plan import Planner
    from pipeline.scene import load_scene
    from pipeline.scene.edit import edit_structure

    pl = Planner(scene)
    d0 = pl.measure_between("liver", "kidney_left", save=True)["value"]
    pl.measure_structure("liver", save=True)
    assert d0 == pytest.approx(10.0, abs=1.7)
    res = edit_structure(scene, "liver", "grow", mm=3.0)
    radius = lambda ml: (3 * ml * 1000 / (4 * np.pi)) ** (1 / 3)  # noqa: E731 - equivalent sphere radius, mm
    # the surface moves by 3 mm to within half a voxel (the coarsest spacing is 1.6 mm)
    assert radius(res.volume_ml_after) - radius(res.volume_ml_before) == pytest.approx(3.0, abs=0.5)
    assert res.voxels_removed == 0 and res.mesh["watertight"]
    plan = load_scene(scene).plan
    dist = next(r for r in plan["measurements"] if r["kind"] == "structure_distance")
    vol = next(r for r in plan["measurements"] if r["kind"] == "volume")
    assert dist["changed_by_edit"]["recomputed"] and dist["changed_by_edit"]["previous_value"] == d0
    assert dist["value"] == pytest.approx(d0 - 3.0, abs=0.6)
    assert vol["changed_by_edit"]["edit"] == res.id and vol["value"] == pytest.approx(res.volume_ml_after, rel=0.02)
    res2 = edit_structure(scene, "liver", "shrink", mm=3.0)
    assert res2.voxels_added == 0
    assert radius(res2.volume_ml_after) - radius(res2.volume_ml_before) == pytest.approx(-3.0, abs=0.5)
    assert radius(res2.volume_ml_after) == pytest.approx(25.0, abs=0.5)


@pytest.mark.slow
def test_cli_edit_and_undo(scene):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "pipeline.cli", "edit", str(scene), *args],
                              capture_output=True, text=True, cwd=ROOT)

    p = cli("--structure", "liver", "--erase-sphere", "-15", "0", "0", "8", "--json", "--user", "cli_user")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["voxels_removed"] > 0 and out["mesh"]["watertight"] is True
    p = cli("--undo")
    assert p.returncode == 0 and "undo on liver" in p.stdout
    p = cli("--structure", "spleen", "--keep-largest")
    assert p.returncode == 1 and "spleen" in p.stderr and "Traceback" not in p.stderr
    p = cli("--structure", "liver", "--grow", "-2")
    assert p.returncode == 1 and "mm" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
def test_a_leak_into_the_chest_is_erased_on_the_sample_scan(tmp_path):
    """The demo's failure in miniature: the sample scan's true liver plus a 'tentacle' painted up
    into the chest (as the model's leak), a resection planned on it; erasing the tentacle brings
    the liver back to the truth voxel for voxel, and the resection is recomputed."""
    from pipeline.planning.plan import Planner
    from pipeline.scene import load_scene
    from pipeline.scene.edit import edit_structure
    from scene_factory import sample_scan_scene

    path, phantom = sample_scan_scene(tmp_path, names=("liver", "liver_tumor", "aorta"))
    truth = _labels(path).array.copy()
    vox = _labels(path).volume.voxel_volume_ml
    liver = np.argwhere(truth == 1)
    top = _labels(path).volume.index_to_lps(liver)
    top = top[np.argmax(top[:, 2])]  # the dome
    tip = top + np.array([0.0, 0.0, 30.0])  # 30 mm above it: the chest
    for t in np.linspace(0, 1, 7):  # a tube of spheres from the dome up into the lung, as a model leaks
        edit_structure(path, "liver", "paint_sphere", center=top + t * (tip - top), radius_mm=6, overwrite=True)
    leaked = _labels(path).array.copy()
    added = int(((leaked == 1) & (truth != 1)).sum())
    assert added > 100
    pl = Planner(path)
    cut = pl.add_cut("liver", {"point": (top[0], top[1], top[2] - 60), "normal": (0, 0, 1)}, save=True)
    # the surgeon's way: cut the leak's neck at the dome (a sphere), then remove the piece as an island
    res1 = edit_structure(path, "liver", "erase_sphere", center=top + [0, 0, 2], radius_mm=8)
    res2 = edit_structure(path, "liver", "remove_island", point=tip)
    fixed = _labels(path).array
    removed = res1.voxels_removed + res2.voxels_removed
    assert res2.volume_ml_after == pytest.approx(res1.volume_ml_before - removed * vox, abs=1e-3)
    extra = int(((fixed == 1) & (truth != 1)).sum())
    lost = int(((fixed != 1) & (truth == 1)).sum())
    assert extra == 0 and lost < 0.002 * (truth == 1).sum(), (extra, lost)  # the leak is gone, the liver kept
    assert removed >= added
    s = load_scene(path)
    assert s.mesh("liver").mesh.is_watertight
    c = next(r for r in s.plan["cuts"] if r["id"] == cut["id"])
    assert c["changed_by_edit"]["recomputed"] and c["changed_by_edit"]["edit"] == res2.id
    fresh = Planner(path).add_cut("liver", cut["planes"], save_meshes=False)  # computed anew on the fixed scene
    assert c["value"] == fresh["value"] != cut["value"]
    stages = [p for p in s.provenance if p.stage == "edit"]
    assert len(stages) == 7 + 2 and stages[-1].outputs["voxels_removed"] == res2.voxels_removed


def test_qc_plausibility_is_checked_again_after_an_edit(tmp_path):
    """A kidney_right painted far onto the patient's left is flagged by the edit's QC (the same
    side rule the pipeline applies), and undoing the paint clears the flag."""
    from pipeline.scene import load_scene
    from pipeline.scene.edit import edit_structure, undo_last
    from pipeline.types import Label

    labels = (Label(1, "liver", (127, 53, 17)), Label(2, "aorta", (225, 30, 40)),
              Label(3, "kidney_right", (215, 160, 29)))
    shapes = {"aorta": __import__("scene_factory").Cylinder((0.0, 20.0, -40.0), (0.0, 20.0, 40.0), 6.0),
              "kidney_right": Box((-50.0, 25.0, 0.0), (6.0, 6.0, 10.0)), "liver": Sphere((-40.0, -10.0, 0.0), 15.0)}
    path, _ = cached_constructed_scene(tmp_path, shapes=shapes, labels=labels, case_id="side")
    edit_structure(path, "kidney_right", "paint_sphere", center=(60.0, 25.0, 0.0), radius_mm=18.0)
    q = load_scene(path, load_meshes=False).extra["qc"]["kidney_right"]
    assert q["edited"] and q["plausible"] is False and q["status"] == "fail"
    assert any("lies on the right" in f for f in q["flags"])
    undo_last(path)
    q = load_scene(path, load_meshes=False).extra["qc"]["kidney_right"]
    assert q["plausible"] is True and "status" not in q and not q["flags"]
