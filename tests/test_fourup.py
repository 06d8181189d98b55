"""Four-up review (viewer.fourup): slice panes with outlines in the radiological convention,
a linked crosshair, a brush that calls the edit core, and the composed screenshot."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scene_factory import cached_constructed_scene

ROOT = Path(__file__).resolve().parents[1]
W, H = 360, 300


@pytest.fixture()
def scene(tmp_path):
    return cached_constructed_scene(tmp_path)  # liver x<0 (patient right), kidney_left x>0, aorta


def _pixels(img, rgb, tol=40):
    a = np.asarray(img.convert("RGB")).astype(int)
    return np.argwhere(np.abs(a - np.array(rgb)).sum(axis=2) < tol)  # (row, col)


def test_pane_pixels_map_to_lps_and_back(scene):
    from viewer.fourup import FourUp

    fu = FourUp(scene[0])
    for plane in ("axial", "coronal", "sagittal"):
        g = fu.geometry(plane, W, H)
        for x, y in ((0, 0), (17.5, 40.25), (W - 1, H - 1)):
            assert g.to_px(g.to_lps(x, y)) == pytest.approx((x, y))
        # the fixed coordinate is the crosshair's
        fixed = {"axial": 2, "coronal": 1, "sagittal": 0}[plane]
        assert g.to_lps(5, 5)[fixed] == pytest.approx(fu.crosshair[fixed])
    ax = fu.geometry("axial", W, H)
    # radiological: moving right on the image goes to the patient's Left (+x); down goes Posterior (+y)
    assert (ax.to_lps(10, 0) - ax.to_lps(0, 0))[0] > 0 and (ax.to_lps(0, 10) - ax.to_lps(0, 0))[1] > 0
    sag = fu.geometry("sagittal", W, H)
    assert (sag.to_lps(0, 10) - sag.to_lps(0, 0))[2] < 0  # down goes Inferior


@pytest.mark.parametrize("overlay", ["outline", "fill"])
def test_panes_show_structures_on_the_correct_side(scene, overlay):
    from viewer.fourup import FourUp

    fu = FourUp(scene[0], overlay=overlay)
    fu.set_crosshair((-30.0, 22.0, 0.0))  # through the liver (right), the aorta and the kidney (left)
    liver, kidney = fu.colors["liver"], fu.colors["kidney_left"]
    for plane in ("axial", "coronal"):
        img, g = fu.pane(plane, W, H)
        lv, kd = _pixels(img, liver), _pixels(img, kidney)
        assert len(lv) > 50 and len(kd) > 20, plane
        assert lv[:, 1].mean() < kd[:, 1].mean(), f"{plane}: patient right (liver) must be on the image left"
        # the liver's centre (-45, 0, 0) projects inside the liver's pixels' extent
        x, _ = g.to_px((-45.0, 0.0, 0.0))
        assert lv[:, 1].min() <= x <= lv[:, 1].max()
    img, _ = fu.pane("sagittal", W, H)
    assert len(_pixels(img, liver)) > 50  # x = -30 cuts the liver sphere (centre -45, r 32)
    if overlay == "fill":  # the inside is tinted, not only the outline
        assert len(_pixels(fu.pane("axial", W, H)[0], liver, tol=120)) > 2000


def test_click_moves_the_linked_crosshair_and_scroll_steps_a_slice(scene):
    from viewer.fourup import FourUp

    fu = FourUp(scene[0])
    g = fu.geometry("axial", W, H)
    x, y = g.to_px((55.0, 28.0, 0.0))  # the kidney's centre in the axial pane
    p = fu.click("axial", x, y, W, H)
    assert p[:2] == pytest.approx([55.0, 28.0], abs=1e-6)
    cor = fu.geometry("coronal", W, H)  # the coronal pane now cuts at y = 28
    assert cor.origin[1] == pytest.approx(28.0)
    assert fu.slice_indices() != FourUp(scene[0]).slice_indices()  # the 3-D planes follow too
    z0 = fu.crosshair[2]
    fu.scroll("axial", 3)
    assert fu.crosshair[2] == pytest.approx(z0 + 3 * min(fu.image.spacing))


def test_brush_in_a_pane_erases_through_the_edit_core(scene):
    from pipeline.scene import load_scene
    from viewer.fourup import FourUp

    fu = FourUp(scene[0])
    fu.set_crosshair((-45.0, 0.0, 0.0))
    before = fu.labelmap.array.copy()
    x, y = fu.geometry("axial", W, H).to_px((-70.0, 0.0, 0.0))  # the liver's right edge
    res = fu.brush("axial", x, y, W, H, "liver", 5.0, erase=True, user="pane")
    after = fu.labelmap.array
    gone = np.argwhere((before == 1) & (after != 1))
    assert len(gone) == res.voxels_removed > 0
    assert np.all(fu.image.index_to_lps(gone)[:, 0] < -60)  # only on the patient's right, near x = -70
    assert load_scene(scene[0]).provenance[-1].notes == ("user: pane",)


def test_compose_four_up_lays_out_three_panes_and_the_3d_view(scene):
    from PIL import Image

    from viewer.fourup import FourUp

    fu = FourUp(scene[0])
    fake3d = Image.new("RGB", (10, 10), (0, 255, 255))
    img = fu.compose((900, 600), view3d_image=fake3d)
    a = np.asarray(img)
    pw, ph = (900 - 180) // 2, 300
    assert img.size == (900, 600)
    assert (np.abs(a[ph // 2, pw + pw // 2].astype(int) - (0, 255, 255)).sum()) < 10  # 3-D at the top right
    for (x0, y0) in ((0, 0), (0, ph), (pw, ph)):  # axial, coronal, sagittal panes show CT and outlines
        tile = Image.fromarray(a[y0:y0 + ph, x0:x0 + pw])
        assert np.asarray(tile).std() > 20
        assert len(_pixels(tile, fu.colors["liver"])) > 30


@pytest.mark.slow
def test_cli_view_four_up_screenshot_without_a_display(scene, tmp_path):
    from PIL import Image

    import os

    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["EGL_PLATFORM"] = "surfaceless"
    out = tmp_path / "four.png"
    p = subprocess.run([sys.executable, "-m", "pipeline.cli", "view", str(scene[0]), "--layout", "four-up",
                        "--screenshot", str(out), "--size", "900x600", "--crosshair", "-30", "22", "0"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    a = np.asarray(Image.open(out).convert("RGB")).astype(int)
    pw, ph = (900 - 180) // 2, 300
    v3 = a[:ph, pw:2 * pw]
    from pipeline.scene import load_scene
    from viewer.views import fit_camera, project

    sc = load_scene(scene[0])
    pose = fit_camera(np.concatenate([m.mesh.vertices for m in sc.meshes]), "anterior", pw / ph, 30.0)
    (lx, ly), (kx, ky) = project(pose, pw / ph, [(-45.0, -31.0, 0.0), (55.0, 19.0, -8.0)]) * (pw, ph)
    liver_px, kidney_px = v3[int(ly), int(lx)], v3[int(ky), int(kx)]
    # shaded and tone-mapped, but the hues stay: the liver red-brown, the kidney violet
    assert liver_px[0] > liver_px[1] > liver_px[2] and liver_px[0] - liver_px[2] > 50, liver_px
    assert kidney_px[2] > kidney_px[1] and kidney_px[0] > kidney_px[1], kidney_px
    assert lx < pw / 2 < kx  # anterior view: patient right on the image left
    p = subprocess.run([sys.executable, "-m", "pipeline.cli", "view", str(scene[0]), "--layout", "four-up"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert p.returncode == 1 and "--screenshot" in p.stderr and "Traceback" not in p.stderr


def test_landmarks_show_in_the_pane_that_cuts_them(scene):
    from pipeline.planning.plan import Planner
    from viewer.fourup import FourUp

    Planner(scene[0]).add_landmark("tip", (-45.0, 0.0, 0.0), save=True)
    fu = FourUp(scene[0])
    fu.set_crosshair((-45.0, 0.0, 0.0))
    img, g = fu.pane("axial", W, H)
    x, y = (int(round(v)) for v in g.to_px((-45.0, 0.0, 0.0)))
    a = np.asarray(img).astype(int)
    green = (a[..., 1] > 200) & (a[..., 0] < 80) & (a[..., 2] < 160)
    assert green[y - 6:y + 7, x - 6:x + 7].sum() >= 10  # the cross at the landmark
    fu.set_crosshair((-45.0, 0.0, 20.0))  # 20 mm above: not drawn
    img, g = fu.pane("axial", W, H)
    a = np.asarray(img).astype(int)
    assert ((a[..., 1] > 200) & (a[..., 0] < 80) & (a[..., 2] < 160))[y - 6:y + 7, x - 6:x + 7].sum() == 0
    assert fu.pane_point("axial", x, y, W, H) == pytest.approx([-45.0, 0.0, 20.0], abs=g.px_mm)
