"""Headless snapshots: patient-view conventions, colours where anatomy says, crash handling.

The scene is built through the real pipeline path (label map -> meshes -> scene bundle) on a
grid whose column axis runs to patient RIGHT (-x), so a missing affine direction anywhere
between the voxels and the picture would mirror the result and fail these tests.
"""
from __future__ import annotations

import os
import stat
import sys

import numpy as np
import pytest

from viewer.synthetic import Blob, make_scene
from viewer.views import VIEWS, edge_letters, fit_camera, screen_basis

pytestmark = pytest.mark.slow  # end-to-end: left out by `make test-fast`

RED, BLUE, GREEN = (220, 30, 30), (30, 60, 220), (30, 200, 60)
# red: patient left + anterior; blue: patient right + posterior; green: superior, centred
BLOBS = (
    Blob("left_anterior", (45.0, -30.0, 0.0), (14, 14, 14), RED, hu=200),
    Blob("right_posterior", (-45.0, 30.0, 0.0), (14, 14, 14), BLUE, hu=0),
    Blob("superior", (0.0, 0.0, 45.0), (12, 12, 12), GREEN),
)
VIEW_ORDER = ("anterior", "left", "superior", "posterior")
TILE = 240


def test_edge_letters_follow_radiological_convention():
    assert edge_letters("anterior") == {"left": "R", "right": "L", "top": "S", "bottom": "I"}
    assert edge_letters("posterior") == {"left": "L", "right": "R", "top": "S", "bottom": "I"}
    assert edge_letters("left") == {"left": "A", "right": "P", "top": "S", "bottom": "I"}
    assert edge_letters("right") == {"left": "P", "right": "A", "top": "S", "bottom": "I"}
    assert edge_letters("superior") == {"left": "L", "right": "R", "top": "A", "bottom": "P"}
    assert edge_letters("inferior") == {"left": "R", "right": "L", "top": "A", "bottom": "P"}


@pytest.mark.parametrize("view", list(VIEWS))
def test_screen_basis_is_right_handed_and_camera_frames_points(view):
    right, up, forward = screen_basis(view)
    assert np.allclose(np.cross(right, up), -forward)  # OpenGL: x right, y up, camera looks down -z
    pts = np.array([[-100, -50, -30], [120, 60, 40.0]])
    pose = fit_camera(pts, view, aspect=1.5)
    d = pose.center - pose.eye
    assert np.allclose(d / np.linalg.norm(d), forward)
    # every corner projects inside the frustum
    for c in np.array(np.meshgrid(*pts.T)).reshape(3, -1).T:
        v = c - pose.eye
        depth = v @ forward
        assert abs(v @ up) / depth <= np.tan(np.radians(pose.vfov_deg) / 2) + 1e-9
        assert abs(v @ right) / depth <= np.tan(np.radians(pose.vfov_deg) / 2) * 1.5 + 1e-9
        assert pose.near < depth < pose.far


@pytest.fixture(scope="module")
def sphere_scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spheres")
    make_scene(folder, BLOBS, shape=(40, 48, 48), spacing=3.0, flip_x=True, case_id="three_spheres")
    return folder


def _colour_mask(a, rgb):
    a = a.astype(int)
    ch = int(np.argmax(rgb))
    others = [c for c in range(3) if c != ch]
    return (a[..., ch] > 60) & (a[..., ch] > 1.8 * a[..., others[0]]) & (a[..., ch] > 1.8 * a[..., others[1]])


def _centroid(tile, rgb):
    ys, xs = np.nonzero(_colour_mask(tile, rgb))
    assert len(xs) > 100, f"colour {rgb} not found in the view ({len(xs)} pixels)"
    return xs.mean() / tile.shape[1], ys.mean() / tile.shape[0]  # 0..1, origin top-left


@pytest.fixture(scope="module")
def snapshot_png(sphere_scene, tmp_path_factory):
    from pipeline.cli import main

    out = tmp_path_factory.mktemp("snap") / "views.png"
    argv = ["snapshot", str(sphere_scene), "-o", str(out), "--size", f"{TILE * len(VIEW_ORDER)}x{TILE}", "--no-legend"]
    for v in VIEW_ORDER:
        argv += ["--view", v]
    assert main(argv) == 0
    return out


def _tiles(png):
    from PIL import Image

    a = np.asarray(Image.open(png).convert("RGB"))
    assert a.shape == (TILE, TILE * len(VIEW_ORDER), 3)
    return {v: a[:, n * TILE:(n + 1) * TILE] for n, v in enumerate(VIEW_ORDER)}


def test_anterior_view_shows_patient_left_on_image_right(snapshot_png):
    t = _tiles(snapshot_png)["anterior"]
    red_x, red_y = _centroid(t, RED)
    blue_x, blue_y = _centroid(t, BLUE)
    green_x, green_y = _centroid(t, GREEN)
    assert red_x > 0.6 and blue_x < 0.4  # patient left (+x) on the image's right
    assert green_y < 0.4 and abs(red_y - 0.5) < 0.2  # superior up
    assert abs(green_x - 0.5) < 0.1


def test_left_view_shows_anterior_on_image_left(snapshot_png):
    t = _tiles(snapshot_png)["left"]
    red_x, _ = _centroid(t, RED)  # anterior sphere
    blue_x, _ = _centroid(t, BLUE)  # posterior sphere
    assert red_x < 0.4 and blue_x > 0.6
    assert _centroid(t, GREEN)[1] < 0.4


def test_superior_and_posterior_views(snapshot_png):
    tiles = _tiles(snapshot_png)
    red_x, red_y = _centroid(tiles["superior"], RED)
    blue_x, blue_y = _centroid(tiles["superior"], BLUE)
    assert red_x < 0.4 and blue_x > 0.6  # looking down at the head: patient left on image left
    assert red_y < blue_y  # anterior at the top
    assert _centroid(tiles["posterior"], RED)[0] < 0.4  # from behind, patient left is on the left


def test_view_labels_are_drawn(snapshot_png):
    t = _tiles(snapshot_png)["anterior"]
    dark = (t.astype(int).sum(axis=2) < 200)
    assert dark[: TILE // 8, : TILE // 3].sum() > 20  # the view name, top left
    assert dark[TILE // 2 - 15: TILE // 2 + 15, : TILE // 10].sum() > 5  # 'R' at the left edge
    assert dark[TILE // 2 - 15: TILE // 2 + 15, -TILE // 10:].sum() > 5  # 'L' at the right edge


def test_hidden_structure_and_legend(sphere_scene, tmp_path):
    from PIL import Image

    from viewer.render import snapshot_subprocess

    out = snapshot_subprocess(sphere_scene, tmp_path / "hidden.png", views=("anterior",), size=(480, 240),
                              hide=("left_anterior",))
    a = np.asarray(Image.open(out).convert("RGB"))
    legend_w = min(240, 480 // 4)
    view = a[:, : 480 - legend_w]
    assert _colour_mask(view, RED).sum() == 0
    assert _colour_mask(view, BLUE).sum() > 100
    legend = a[:, 480 - legend_w:]
    assert _colour_mask(legend, BLUE).sum() > 20 and _colour_mask(legend, GREEN).sum() > 20
    assert _colour_mask(legend, RED).sum() == 0  # hidden structures leave the legend


def test_renderer_crash_becomes_clear_error(sphere_scene, tmp_path, monkeypatch):
    from viewer.render import RenderError, snapshot_subprocess

    fake = tmp_path / "crashing-python"
    fake.write_text("#!/bin/sh\nkill -SEGV $$\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(sys, "executable", str(fake))
    with pytest.raises(RenderError, match="crashed.*EGL"):
        snapshot_subprocess(sphere_scene, tmp_path / "x.png", views=("anterior",), size=(200, 200))
    assert not (tmp_path / "x.png").exists()


def test_bad_requests_fail_before_rendering(sphere_scene, tmp_path):
    from pipeline.errors import SurgitwinError
    from viewer.render import parse_size, snapshot_subprocess

    with pytest.raises(SurgitwinError, match="view must be one of"):
        snapshot_subprocess(sphere_scene, tmp_path / "x.png", views=("frontal",))
    with pytest.raises(SurgitwinError, match="WIDTHxHEIGHT"):
        parse_size("1280,720")
    with pytest.raises(SurgitwinError, match="renderer exited with code 2"):
        snapshot_subprocess(tmp_path / "no_scene", tmp_path / "x.png", views=("anterior",))


def test_render_module_imports_no_torch_or_monai():
    import subprocess

    code = ("import sys, viewer.render, viewer.views, pipeline.commands.viewer; "
            "bad=[m for m in ('torch','monai','open3d') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert p.returncode == 0, p.stdout + p.stderr


def test_slice_planes_follow_the_grid_not_the_array_order():
    from pipeline.types import Volume
    from viewer.slices import apply_window, plane_array_axes, slice_quad

    # array axes permuted: k -> x (left), j -> z (superior), i -> -y (anterior)
    aff = np.array([[2.0, 0, 0, -10], [0, 0, -1.5, 20], [0, 3.0, 0, -30], [0, 0, 0, 1]])
    assert plane_array_axes(aff) == {"axial": 1, "coronal": 2, "sagittal": 0}
    vol = Volume(np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7), aff)
    q = slice_quad(vol, "axial", 2)
    assert q.image.shape == (5, 7)  # rows = k, cols = i
    assert np.allclose(q.corners[:, 2], -30 + 3.0 * 2)  # all four corners at z of j = 2
    assert np.allclose(q.corners[0], vol.index_to_lps([[-0.5, 2, -0.5]])[0])
    assert np.allclose(q.corners[2], vol.index_to_lps([[4.5, 2, 6.5]])[0])
    assert list(apply_window(np.array([-1000, 40, 240, 3000]), "soft_tissue")) == [0, 127, 255, 255]
    with pytest.raises(Exception, match="index must be in 0..5"):
        slice_quad(vol, "axial", 6)


def test_ct_slice_planes_render_where_the_voxels_are(sphere_scene, tmp_path):
    """Axial plane through the spheres seen from below: bright (200 HU, patient left, anterior)
    at the top right, darker (0 HU, right, posterior) at the bottom left; a texture flip or a
    mirrored quad moves them."""
    from PIL import Image

    from viewer.render import snapshot_subprocess

    out = snapshot_subprocess(sphere_scene, tmp_path / "slices.png", views=("inferior", "anterior"), size=(480, 240),
                              legend=False, hide=[b.name for b in BLOBS], slices={"axial": 20, "coronal": 23})
    a = np.asarray(Image.open(out).convert("L")).astype(int)
    inferior, anterior = a[:, :240], a[:, 240:]

    def inside_quad(tile):  # the black (air) quad; around it is background and text
        dy, dx = np.nonzero(tile < 20)
        m = np.zeros_like(tile, dtype=bool)
        m[dy.min() + 2:dy.max() - 1, dx.min() + 2:dx.max() - 1] = True
        return m

    quad = inside_quad(inferior)
    ys, xs = np.nonzero(quad & (inferior > 150))
    assert len(xs) > 50 and xs.mean() > 130 and ys.mean() < 110
    ys, xs = np.nonzero(quad & (inferior > 40) & (inferior < 110))
    assert len(xs) > 50 and xs.mean() < 110 and ys.mean() > 130
    ys, xs = np.nonzero(inside_quad(anterior) & (anterior > 50) & (anterior < 170))  # superior sphere, 60 HU
    assert len(xs) > 30 and ys.mean() < 100 and abs(xs.mean() - 120) < 20


@pytest.mark.parametrize("view", list(VIEWS))
def test_pixel_ray_inverts_projection(view):
    from viewer.views import pixel_ray, project

    pts = np.random.default_rng(1).uniform(-60, 60, size=(20, 3))
    pose = fit_camera(pts, view, aspect=1.3)
    forward = (pose.center - pose.eye) / np.linalg.norm(pose.center - pose.eye)
    right = np.cross(forward, pose.up)
    model = np.eye(4)
    model[:3, 0], model[:3, 1], model[:3, 2], model[:3, 3] = right, pose.up, -forward, pose.eye
    for p, (fx, fy) in zip(pts, project(pose, 1.3, pts)):
        assert 0 <= fx <= 1 and 0 <= fy <= 1
        o, d = pixel_ray(model, pose.vfov_deg, 1.3, fx, fy)
        v = p - o
        assert np.linalg.norm(v - (v @ d) * d) < 1e-6  # the point lies on the ray
    # screen x grows towards the view's right: patient left in the anterior view
    if view == "anterior":
        assert project(pose, 1.3, [[50, 0, 0]])[0, 0] > 0.5 > project(pose, 1.3, [[-50, 0, 0]])[0, 0]


def test_plan_is_drawn_in_snapshots(sphere_scene, tmp_path):
    """--plan draws the saved plan as the viewer does: a trajectory where its LPS points are (patient
    left + superior -> image right + top in the anterior view), a cut structure as its halves;
    without --plan the same scene renders without them."""
    import shutil

    from PIL import Image

    from pipeline.cli import main
    from pipeline.planning import Planner

    scene = tmp_path / "scene"
    shutil.copytree(sphere_scene, scene)
    pl = Planner(scene)
    pl.add_trajectory((75.0, -40.0, 80.0), (40.0, -40.0, 55.0), 2.0)
    pl.add_cut("right_posterior", {"point": (-45.0, 30.0, 0.0), "normal": (0.0, 0.0, 1.0)})
    pl.save()
    pics = {}
    for flag in ([], ["--plan"]):
        out = tmp_path / f"snap{len(flag)}.png"
        assert main(["snapshot", str(scene), "-o", str(out), "--view", "anterior", "--size", "360x240"] + flag) == 0
        pics[bool(flag)] = np.asarray(Image.open(out).convert("RGB")).astype(int)
    view = slice(0, 360 - min(240, 360 // 4))
    diff = np.abs(pics[True] - pics[False]).sum(axis=2)[:, view] > 60
    ys, xs = np.nonzero(diff)
    assert len(xs) > 150
    tool = diff[:, diff.shape[1] // 2:][: diff.shape[0] // 2]  # image right + top = patient left + superior
    assert tool.sum() > 50
    # the cut plane (a translucent square through the blue blob, patient right = image left)
    assert diff[:, : diff.shape[1] // 3].sum() > 50
    legend = pics[True][:, 360 - min(240, 360 // 4):]
    assert _colour_mask(legend, BLUE).sum() > 20  # the cut structure stays in the legend


def test_cli_snapshot_takes_planes_opacity_and_window(sphere_scene, tmp_path):
    from PIL import Image

    from pipeline.cli import main

    plain, planes = tmp_path / "plain.png", tmp_path / "planes.png"
    assert main(["snapshot", str(sphere_scene), "-o", str(plain), "--view", "anterior", "--size", "240x240",
                 "--no-legend"]) == 0
    assert main(["snapshot", str(sphere_scene), "-o", str(planes), "--view", "anterior", "--size", "240x240",
                 "--no-legend", "--slice", "coronal=24", "--window", "bone", "--opacity", "left_anterior=0.3"]) == 0
    a, b = (np.asarray(Image.open(p).convert("RGB")).astype(int) for p in (plain, planes))
    assert (np.abs(a - b).sum(axis=2) > 60).mean() > 0.2  # the coronal CT plane fills much of the view
