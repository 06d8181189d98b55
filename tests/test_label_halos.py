"""Issue 14 item 4, the rest: labels that read on any background and never overlap, records
shown whole in the panel, and two saved cuts drawn each in its own colour with its label."""
from __future__ import annotations

import numpy as np
import pytest

from viewer.synthetic import make_demo_scene

# the demo abdomen (viewer.synthetic) with two saved cuts of the liver: C1 a sagittal plane
# through the right lobe (margin to the tumour), C2 an axial plane across the dome
C1_PLANE = {"point": (-80.0, -5.0, 25.0), "normal": (-1.0, 0.0, 0.0)}
C2_PLANE = {"point": (-60.0, -5.0, 50.0), "normal": (0.0, 0.0, 1.0)}


def two_cut_scene(folder):
    from pipeline.planning import Planner

    make_demo_scene(folder)
    pl = Planner(folder)
    pl.add_cut("liver", C1_PLANE, margin_to="liver_tumour")
    pl.add_cut("liver", C2_PLANE)
    pl.measure_distance((-55, -45, 30), (8, 35, 40))
    pl.measure_between("liver_tumour", "aorta")
    pl.save()
    return folder


@pytest.fixture(scope="module")
def two_cuts(tmp_path_factory):
    return two_cut_scene(tmp_path_factory.mktemp("two_cuts") / "scene")


def _text_contrast(img, box):
    """WCAG contrast between the darkest (text) and the typical (box) pixels inside ``box``."""
    from pipeline.render.labels2d import contrast_ratio

    x, y, w, h = box
    a = np.asarray(img.convert("RGB")).astype(float)[y + 3:y + h - 3, x + 3:x + w - 3].reshape(-1, 3)
    lum = a @ [0.2126, 0.7152, 0.0722]
    return contrast_ratio(a[np.argmin(lum)], np.median(a, axis=0))


@pytest.mark.parametrize("background", [(255, 255, 255), (0, 0, 0), (40, 40, 40), (200, 60, 60)])
def test_a_label_reads_on_white_black_and_colour(background):
    """The same label on white, on black, on dark CT grey and on a red organ: its text stands out
    from its box (WCAG >= 7), where bare dark text had contrast 1.1 (black) to 4 (red)."""
    from PIL import Image

    from pipeline.render.labels2d import contrast_ratio, draw_labels

    img = Image.new("RGB", (200, 80), background)
    (box,) = draw_labels(img, [(20, 40)], ["M1: 102.3 mm"], 14)
    assert _text_contrast(img, box) >= 7.0
    assert contrast_ratio((20, 20, 20), background) < 7.0 or background == (255, 255, 255)  # bare text would not do
    # tinted by a cut's colour, the text still reads
    img = Image.new("RGB", (200, 80), background)
    (box,) = draw_labels(img, [(20, 40)], ["C2"], 14, [(230, 30, 200)])
    assert _text_contrast(img, box) >= 7.0


def test_boxes_never_overlap_and_stay_in_the_picture():
    from pipeline.render.labels2d import place_boxes

    rng = np.random.default_rng(3)
    anchors = np.vstack([np.full((6, 2), [150.0, 100.0]), rng.uniform(0, 300, (14, 2))])
    sizes = rng.uniform([30, 16], [110, 22], (20, 2))
    pos = place_boxes(anchors, sizes, bounds=(300, 300))
    boxes = np.hstack([pos, pos + sizes])
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= 300) and np.all(boxes[:, 3] <= 300)
    for i in range(len(boxes)):
        for j in range(i):
            a, b = boxes[i], boxes[j]
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (i, j)
    lone = place_boxes([[50.0, 50.0]], [[40, 20]])
    assert np.allclose(lone, [[50, 40]])  # a label with room sits on its anchor


def test_cut_colours_differ_from_the_structures_and_from_each_other(two_cuts):
    from pipeline.planning.segments import SEGMENT_RGB
    from pipeline.scene import load_scene
    from pipeline.scene.colors import MIN_DELTA_E, cut_colors, delta_e, rgb_to_lab, scene_colors

    sc = load_scene(two_cuts, load_meshes=False)
    cuts = cut_colors(sc.labels, sc.plan)
    assert list(cuts) == ["C1", "C2"]
    lab = {k: rgb_to_lab(np.array(v, float)) for k, v in cuts.items()}
    assert delta_e(lab["C1"], lab["C2"]) >= MIN_DELTA_E
    for rgb in scene_colors(sc.labels).values():
        for c in lab.values():
            assert delta_e(c, rgb_to_lab(np.array(rgb, float))) >= MIN_DELTA_E
    many = cut_colors(sc.labels, {"segments": [{}], "cuts": [{"id": f"C{i}"} for i in range(1, 9)]})
    fixed = list(scene_colors(sc.labels).values()) + list(SEGMENT_RGB.values())
    for k, v in many.items():  # eight cuts and the Couinaud colours: still all apart
        others = fixed + [u for j, u in many.items() if j != k]
        assert delta_e(rgb_to_lab(np.array(v, float))[None], rgb_to_lab(np.array(others, float))).min() >= MIN_DELTA_E


def _hue_mask(a, rgb, tol_deg=10.0):
    """Saturated pixels whose hue is within ``tol_deg`` of ``rgb``'s (lit or unlit, any shade)."""
    from skimage.color import rgb2hsv

    hsv = rgb2hsv(a.astype(np.uint8))
    ref = rgb2hsv(np.array([[rgb]], np.uint8))[0, 0]
    dh = np.abs(hsv[..., 0] - ref[0])
    dh = np.minimum(dh, 1 - dh) * 360
    return (dh < tol_deg) & (hsv[..., 1] > 0.75) & (hsv[..., 2] > 0.3)  # the frames are flat, fully saturated


def test_snapshot_labels_of_the_plan_are_boxed_apart_and_cuts_carry_their_colour(two_cuts):
    """What the snapshot draws over each rendered view (no renderer needed): one label per
    record, a cut's in its colour, laid out apart in every named view."""
    from PIL import Image

    from pipeline.render.offscreen import draw_plan_labels, plan_labels
    from pipeline.render.views import VIEWS, fit_camera
    from pipeline.scene import load_scene
    from pipeline.scene.colors import cut_colors

    sc = load_scene(two_cuts)
    labels = plan_labels(sc)
    assert sorted(t for _, t, _ in labels) == ["C1", "C2", "M1: 102.3 mm", "M2: 65.2 mm"]
    cuts = cut_colors(sc.labels, sc.plan)
    assert {t: c for _, t, c in labels if c is not None} == {cid: tuple(rgb) for cid, rgb in cuts.items()}
    pts = np.concatenate([np.asarray(m.mesh.vertices) for m in sc.meshes if m.name != "body"])
    for view in VIEWS:
        img = Image.new("RGB", (500, 400), (0, 0, 0))
        boxes = draw_plan_labels(img, labels, fit_camera(pts, view, 500 / 400, frame_slab=True), 500 / 400)
        assert len(boxes) == 4, view
        for i, (x, y, w, h) in enumerate(boxes):
            assert 0 <= x and x + w <= 500 and 0 <= y and y + h <= 400
            assert not any(x < u + c and u < x + w and y < v + d and v < y + h for u, v, c, d in boxes[:i]), view
            assert _text_contrast(img, (x, y, w, h)) >= 7.0  # on black


@pytest.mark.slow
def test_two_saved_cuts_are_drawn_each_in_its_colour_with_its_label(two_cuts, tmp_path):
    """Headless snapshot with --plan: the two cuts' frames show in two different colours (each
    the colour cut_colors gives it), where a snapshot of the same scene without the plan has
    neither; each cut has its boxed label (C1, C2) in its colour."""
    from PIL import Image

    from pipeline.render.labels2d import box_colours
    from pipeline.render.offscreen import snapshot_subprocess
    from pipeline.scene import load_scene
    from pipeline.scene.colors import cut_colors

    sc = load_scene(two_cuts, load_meshes=False)
    cuts = cut_colors(sc.labels, sc.plan)
    pics = {}
    for plan in (True, False):
        out = snapshot_subprocess(two_cuts, tmp_path / f"p{plan}.png", views=("anterior", "left"), size=(1000, 500),
                                  legend=False, plan=plan)
        pics[plan] = np.asarray(Image.open(out).convert("RGB")).astype(int)
    changed = np.abs(pics[True] - pics[False]).sum(axis=2) > 40
    where = {}
    for cid, rgb in cuts.items():
        m = _hue_mask(pics[True], rgb) & changed
        assert m.sum() > 150, f"{cid} ({rgb}) is not drawn in its colour"
        assert _hue_mask(pics[False], rgb).sum() < 0.2 * m.sum()
        where[cid] = m
        _, border = box_colours(rgb)  # its label's box border, drawn exactly
        assert (np.abs(pics[True] - border).max(axis=2) == 0).sum() > 20, f"no {cid} label"
    assert (where["C1"] & where["C2"]).sum() == 0


def test_report_slices_draw_each_cut_in_its_colour_with_its_label(two_cuts):
    import io

    from PIL import Image

    from pipeline.render.labels2d import box_colours
    from pipeline.scene import load_scene
    from pipeline.scene.colors import cut_colors
    from pipeline.scene.report_slices import slice_picture

    sc = load_scene(two_cuts)
    cuts = cut_colors(sc.labels, sc.plan)
    v = np.concatenate([np.asarray(m.mesh.vertices) for m in sc.meshes])
    png = slice_picture(sc.load_image(), sc.load_labelmap(), "coronal", np.array([-60.0, -5.0, 40.0]), v.min(0) - 15,
                        v.max(0) + 15, plan=sc.plan)
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    for cid, rgb in cuts.items():
        assert (np.abs(a - rgb).max(axis=2) == 0).sum() > 100, f"{cid}'s line is not in its colour"
        assert (np.abs(a - box_colours(rgb)[1]).max(axis=2) == 0).sum() > 20, f"no {cid} label"
    # C1 (normal -x) is a vertical line on the coronal slice, C2 (normal +z) a horizontal one
    ys, xs = np.nonzero(np.abs(a - cuts["C1"]).max(axis=2) == 0)
    assert np.ptp(xs) < 6 < np.ptp(ys)
    ys, xs = np.nonzero(np.abs(a - cuts["C2"]).max(axis=2) == 0)
    assert np.ptp(ys) < 6 < np.ptp(xs)


def test_long_records_wrap_whole_and_map_back_to_their_record():
    from viewer.panel_text import RecordList, wrap_to_width

    text = "C1 cut liver: resected 204.6 ml (28.4%), remnant 515.5 ml (71.6%); margin to liver_tumour 10.7 mm"
    measure = lambda s: 7.0 * len(s)  # noqa: E731 - a fixed-pitch font
    lines = wrap_to_width(text, 300, measure)
    assert len(lines) == 3 and all(measure(s) <= 300 for s in lines)
    assert " ".join(s.strip() for s in lines) == text  # nothing lost
    assert not any(s.strip().startswith(("mm", "ml", "%")) for s in lines)  # a number keeps its unit
    assert wrap_to_width("short", 300, measure) == ["short"]
    assert all(measure(s) <= 60 for s in wrap_to_width("a_structure_name_longer_than_a_line", 60, measure))

    class FakeList:
        def set_items(self, items):
            self.items = list(items)

    rl = RecordList(FakeList())
    rl.set_records(["L1 landmark 'portal'", text, "T1 trajectory 74.0 mm -> liver_tumour"], ["L1", "C1", "T1"],
                   measure, 300)
    assert rl.listview.items == ["L1 landmark 'portal'", *lines, "T1 trajectory 74.0 mm -> liver_tumour"]
    assert [rl.record_id(i) for i in range(5)] == ["L1", "C1", "C1", "C1", "T1"]
    rl.set_records([], [], measure, 300)
    assert rl.listview.items == ["(no measurements yet)"] and rl.record_id(0) is None


def test_four_up_panes_draw_each_cut_where_it_is_in_its_colour(two_cuts):
    """The slice panes draw where each saved cut meets them, in the cut's colour with its label:
    on the coronal pane C1 (x = -80, the patient's right) is a vertical line in the image's left
    half (radiological), C2 (z = 50) a horizontal line above the crosshair (z = 40)."""
    from pipeline.render.fourup import FourUp
    from pipeline.render.labels2d import box_colours
    from pipeline.scene.colors import cut_colors

    fu = FourUp(two_cuts)
    fu.set_crosshair((-60.0, -5.0, 40.0))
    img, g = fu.pane("coronal", 400, 360)
    a = np.asarray(img.convert("RGB")).astype(int)
    cuts = cut_colors(fu.scene.labels, fu.scene.plan)
    ys, xs = np.nonzero(np.abs(a - cuts["C1"]).max(axis=2) == 0)
    assert len(xs) > 200 and np.ptp(xs) <= 3 and xs.mean() < 200
    assert xs.mean() == pytest.approx(g.to_px((-80.0, -5.0, 0.0))[0], abs=2)
    ys, xs = np.nonzero(np.abs(a - cuts["C2"]).max(axis=2) == 0)
    assert len(ys) > 200 and np.ptp(ys) <= 3 and ys.mean() < g.to_px(fu.crosshair)[1]
    for rgb in cuts.values():
        assert (np.abs(a - box_colours(rgb)[1]).max(axis=2) == 0).sum() > 20  # the labels C1, C2
