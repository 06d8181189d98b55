"""The viewer's time points, headless: which time point, the other one overlaid, change colours.

A baseline and a follow-up of the phantom on a coarse grid (seconds): the follow-up is moved by a
known rigid motion (10 degrees about the head-feet axis, 17 mm) with the liver tumour (patient
right) grown by 6 mm, and the true motion is stored as the time point's transforms. So the
compared surfaces must land on the viewed ones where nothing changed, the tumour's change
colours must read +6 mm (red) and the unchanged liver ~0 (white), on the screen side the
orientation letters name.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from followup_helpers import FOLLOWUP_DATE, write_timepoint_pair
from pipeline.errors import SceneError
from pipeline.followup.change import sample, signed_distance
from pipeline.phantom import PATIENT_OFFSET_LPS
from pipeline.followup.view import (CHANGE_THRESHOLD_MM, change_colormap, screenshot_subprocess, signed_change,
                                    timepoint_label, timepoint_view)
from pipeline.render.views import edge_letters
from pipeline.scene import load_scene

ROOT = Path(__file__).resolve().parents[1]
GROWTH_MM = 6.0
OTHERS = ("liver", "spleen", "kidney_left", "kidney_right")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return write_timepoint_pair(tmp_path_factory.mktemp("tp_pair"), growth_mm=GROWTH_MM)


def _distance_to(scene_dir, structure, pts):
    """Signed distance (mm) of LPS points to ``structure``'s voxel surface in ``scene_dir``."""
    lm = load_scene(scene_dir, load_meshes=False).load_labelmap()
    return sample(signed_distance(lm.array == lm.labels.by_name(structure).id, lm.volume), pts)


def test_timepoints_are_listed_in_order_with_the_current_one(pair):
    root, _ = pair
    tv = timepoint_view(root)
    assert [t["id"] for t in tv.state()["timepoints"]] == ["20250101", FOLLOWUP_DATE]
    assert tv.viewed["id"] == FOLLOWUP_DATE and timepoint_label(tv.viewed).endswith("(current)")
    assert tv.scene.root.resolve() == (root / "timepoints" / FOLLOWUP_DATE).resolve()
    assert timepoint_view(root, timepoint="baseline").scene.root.resolve() == root.resolve()
    # a time point folder opened directly still knows its scene's time points
    assert timepoint_view(root / "timepoints" / FOLLOWUP_DATE, timepoint="20250101").viewed["path"] == "."
    with pytest.raises(SceneError, match="not in the scene"):
        timepoint_view(root, timepoint="20990101")
    with pytest.raises(SceneError, match="viewed time point"):
        timepoint_view(root, compare=FOLLOWUP_DATE)


@pytest.mark.slow  # test-fast stays under 60 s; runs in make test
def test_compared_surfaces_land_on_unchanged_anatomy_and_keep_left_and_right(pair):
    root, truth = pair
    tv = timepoint_view(root, compare="baseline")  # baseline surfaces in the follow-up's space
    follow = root / "timepoints" / FOLLOWUP_DATE
    base = load_scene(root)
    for name in OTHERS:
        mapped = np.asarray(tv.compare_meshes[name].vertices)
        d = _distance_to(follow, name, mapped)
        raw = _distance_to(follow, name, np.asarray(base.mesh(name).mesh.vertices))  # not mapped
        assert np.nanmean(np.abs(d)) < 1.0, f"{name}: mapped surface {np.nanmean(np.abs(d)):.2f} mm off"
        assert np.nanmean(np.abs(raw)) > 4.0  # the motion is large enough that mapping matters
    # the tumour: same centre, on the patient's right (LPS -x) in both; the kidneys stay on their sides
    c_mapped = np.asarray(tv.compare_meshes["liver_tumor"].vertices).mean(0)
    c_follow = np.asarray(tv.scene.mesh("liver_tumor").mesh.vertices).mean(0)
    assert np.linalg.norm(c_mapped - c_follow) < 1.5
    centre = np.asarray(truth.anatomy.tumor_center) + np.asarray(PATIENT_OFFSET_LPS)  # body frame -> LPS
    assert np.linalg.norm(c_follow - (truth.motion[:3, :3] @ centre + truth.motion[:3, 3])) < 2.0
    assert c_mapped[0] < 0 and c_follow[0] < 0
    assert np.asarray(tv.compare_meshes["kidney_left"].vertices).mean(0)[0] > 0
    assert np.asarray(tv.compare_meshes["kidney_right"].vertices).mean(0)[0] < 0


def test_change_colours_have_the_known_signed_distances(pair):
    root, _ = pair
    later = timepoint_view(root, compare="baseline", color_by_change="liver_tumor").change
    earlier = timepoint_view(root, timepoint="baseline", color_by_change="liver_tumor").change
    assert (later.viewed, later.other, earlier.other) == (FOLLOWUP_DATE, "20250101", FOLLOWUP_DATE)
    # semi-axes grew 6.0, 5.4, 6.6 mm; growth reads positive from either side (time order)
    for ch in (later, earlier):
        assert np.median(ch.signed_mm) == pytest.approx(GROWTH_MM, rel=0.25)
        assert (ch.signed_mm > CHANGE_THRESHOLD_MM).mean() > 0.97
        rgb = ch.rgb
        assert (rgb[:, 0] > 0.99).all() and np.median(rgb[:, 1]) < 0.2  # red
    liver = timepoint_view(root, compare="baseline", color_by_change="liver").change
    assert abs(np.median(liver.signed_mm)) < 0.5
    assert (np.abs(liver.signed_mm) < 1.5).mean() > 0.9
    assert (np.abs(liver.signed_mm) < CHANGE_THRESHOLD_MM).mean() > 0.7
    white = np.all(liver.rgb > 0.99, axis=1).mean()
    assert white > 0.7
    s = liver.summary()
    assert s["threshold_mm"] == CHANGE_THRESHOLD_MM and s["limit_mm"] == 5.0 and not s["new"]


def test_change_colour_scale():
    rgb = change_colormap(np.array([-9.0, -5.0, -2.5, -0.5, 0.0, 0.9, 2.5, 5.0, np.nan, np.inf]))
    assert np.allclose(rgb[1], [0, 0, 1]) and np.allclose(rgb[0], rgb[1])  # saturated blue: shrinkage
    assert np.allclose(rgb[7], [1, 0, 0]) and np.allclose(rgb[9], rgb[7])  # red: growth; a new structure too
    assert np.allclose(rgb[3:6], 1.0) and np.allclose(rgb[8], 1.0)  # white: below the threshold, unknown
    assert rgb[6][0] == 1.0 and 0.4 < rgb[6][1] < 0.6 and rgb[2][2] == 1.0 and 0.4 < rgb[2][0] < 0.6


def test_shrinkage_is_blue(tmp_path):
    root, _ = write_timepoint_pair(tmp_path, growth_mm=-5.0)
    ch = timepoint_view(root, color_by_change="liver_tumor").change
    assert np.median(ch.signed_mm) == pytest.approx(-5.0, abs=1.5)
    assert np.median(ch.rgb[:, 2]) > 0.99 and np.median(ch.rgb[:, 0]) < 0.3
    assert signed_change(root, ch_tp(root, "baseline"), ch_tp(root, FOLLOWUP_DATE), "liver_tumor").mean() < -3.0


def ch_tp(root, tp_id):
    from pipeline.followup.timepoints import find_timepoint, list_timepoints

    return find_timepoint(list_timepoints(root), tp_id, root)


# -- pictures (child processes, EGL) --------------------------------------------------------------
def _rgb(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB")).astype(int)


SIZE = (700, 500)


def _picture(root, out, **kw):
    return _rgb(screenshot_subprocess(root, out, ["anterior"], SIZE, **kw))


@pytest.mark.slow  # two renders, ~10 s each on the shared cores
def test_compare_overlay_shows_the_growth_as_a_shell_on_the_patients_side(pair, tmp_path):
    root, _ = pair
    view_w = SIZE[0] - min(260, SIZE[0] // 4)
    letters = edge_letters("anterior")
    assert letters["left"] == "R" and letters["right"] == "L"
    # the liver hidden (the tumour is inside it): baseline alone, then the follow-up over it
    plain = _picture(root, tmp_path / "plain.png", timepoint="baseline", hide=["liver"])
    over = _picture(root, tmp_path / "over.png", timepoint="baseline", compare=FOLLOWUP_DATE, hide=["liver"])
    yellow = (plain[..., 0] > 120) & (plain[..., 1] > 0.93 * plain[..., 0]) & (plain[..., 2] < 0.6 * plain[..., 1])
    yellow[:, view_w:] = False  # the tumour (not the orange-yellow right kidney)
    assert yellow.sum() > 500
    ys, xs = np.nonzero(yellow)
    # the tumour is in the patient's right: the screen side the orientation letters call R
    assert xs.mean() / view_w < 0.45
    pad = int(0.6 * (xs.max() - xs.min()))
    box = np.zeros_like(yellow)
    box[max(ys.min() - pad, 0):ys.max() + pad, max(xs.min() - pad, 0):xs.max() + pad] = True
    teal = (over[..., 2] - over[..., 0] > 10) & (over[..., 1] - over[..., 0] > 10)  # blue-green over grey
    shell = teal & box & ~yellow
    # the baseline tumour (radius 14 mm) inside the grown one (20 mm): a teal shell of about its
    # area ((20/14)^2 - 1 = 1.04) around it, on the same side
    assert 0.4 < shell.sum() / yellow.sum() < 1.6, (shell.sum(), yellow.sum())
    assert np.nonzero(shell)[1].mean() / view_w < 0.5
    # both colours where it grew: the tumour's yellow through the teal, bluer than without it
    inner, before = over[yellow], plain[yellow]
    assert np.median(inner[:, 1] - inner[:, 2]) > 15
    assert np.median(inner[:, 2] - before[:, 2]) > 10


@pytest.mark.slow  # two renders, ~10 s each on the shared cores
def test_colour_by_change_paints_the_grown_tumour_red_and_the_rest_neutral(pair, tmp_path):
    root, _ = pair
    state = tmp_path / "state.json"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-m", "pipeline.cli", "view", str(root), "--color-by-change", "liver_tumor",
                        "--screenshot", str(tmp_path / "red.png"), "--size", f"{SIZE[0]}x{SIZE[1]}",
                        "--result", str(state)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    a = _rgb(tmp_path / "red.png")
    view_w = SIZE[0] - min(260, SIZE[0] // 4)
    red = (a[..., 0] > 150) & (a[..., 1] < 0.6 * a[..., 0]) & (a[..., 2] < 0.6 * a[..., 0])
    blue = (a[..., 2] > 150) & (a[..., 0] < 0.6 * a[..., 2]) & (a[..., 1] < 0.6 * a[..., 2])
    assert red[:, :view_w].sum() > 1500 and blue[:, :view_w].sum() < 50
    assert np.nonzero(red[:, :view_w])[1].mean() / view_w < 0.5  # patient right = screen left (R)
    assert red[:, view_w:].sum() > 50  # the colour bar in the legend strip
    st = json.loads(state.read_text())
    assert st["viewed"] == FOLLOWUP_DATE and st["change"]["other"] == "20250101"
    assert st["change"]["growth_fraction"] > 0.97 and st["change"]["threshold_mm"] == 1.0
    # an unchanged structure is neutral: no red or blue
    b = _picture(root, tmp_path / "kidney.png", color_by_change="kidney_left", hide=["liver", "liver_tumor"])
    red = (b[..., 0] > 150) & (b[..., 1] < 0.6 * b[..., 0]) & (b[..., 2] < 0.6 * b[..., 0])
    blue = (b[..., 2] > 150) & (b[..., 0] < 0.6 * b[..., 2]) & (b[..., 1] < 0.6 * b[..., 2])
    assert red[:, :view_w].sum() < 150 and blue[:, :view_w].sum() < 150


@pytest.mark.slow  # test-fast stays under 60 s; runs in make test
def test_view_timepoint_errors_name_the_scene_and_exit_1(pair, tmp_path):
    root, _ = pair
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    single = tmp_path / "single"
    shutil.copytree(root, single, ignore=shutil.ignore_patterns("timepoints"))
    data = json.loads((single / "scene.json").read_text())
    data.pop("timepoints"), data.pop("current_timepoint")
    (single / "scene.json").write_text(json.dumps(data))
    for scene, args, words in ((root, ["--compare", "20990101"], "not in the scene"),
                               (root, ["--color-by-change", "aorta"], "structure 'aorta'"),
                               (single, ["--color-by-change", "liver_tumor"], "needs a second time point"),
                               (root, ["--color-by-change", "liver_tumor", "--change-threshold", "-1"], "0 to 5 mm")):
        p = subprocess.run([sys.executable, "-m", "pipeline.cli", "view", str(scene), *args, "--screenshot",
                            str(tmp_path / "x.png")], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
        assert p.returncode == 1 and words in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert str(scene) in p.stderr or "--change-threshold" in p.stderr
        assert not (tmp_path / "x.png").exists()
