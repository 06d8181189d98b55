"""The planning report: numbers, pictures, provenance, opened in a real browser (headless Chromium)."""
import base64
import io
import re
import shutil

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.planning import Planner
from pipeline.scene import load_scene
from pipeline.scene.report import build_report, run_chromium
from pipeline.scene.report_slices import slice_picture
from tests.conftest import require_tool
from tests.scene_factory import SERIES_UID, cached_constructed_scene

pytestmark = pytest.mark.slow  # end-to-end: left out by `make test-fast`


@pytest.fixture
def planned(tmp_path):
    path, truth = cached_constructed_scene(tmp_path)
    pl = Planner(path)
    pl.measure_between("tumour", "aorta")
    pl.measure_structure("tumour")
    pl.add_landmark("tumour top", (-60, 4, 30), snap_to="tumour")
    pl.add_cut("liver", {"point": (-45, 0, 0), "normal": (-1, 0, 0)}, margin_to="tumour")
    pl.add_trajectory((40, -60, 0), (-60, 4, 6), 1.0, safety_margin_mm=50)  # aorta ~44 mm: a warning
    pl.save()
    return path, truth, pl.scene.plan


def _images(html: str) -> list[bytes]:
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs), "pictures must be embedded"
    return [base64.b64decode(s.split(",", 1)[1]) for s in srcs]


def test_report_numbers_pictures_provenance_and_browser(planned, tmp_path):
    from PIL import Image

    path, truth, plan = planned
    chromium = shutil.which("chromium")
    res = build_report(path, closeups=1, pdf=chromium is not None)
    html = res.html.read_text()
    # self-contained: every picture decodes; no external resources
    pics = [Image.open(io.BytesIO(b)) for b in _images(html)]
    assert all(p.size[0] > 100 and p.size[1] > 100 for p in pics)
    assert not re.search(r'(src|href)="(https?:|file:)', html)
    rendered = [c for c in res.pictures if c.startswith(("Overview", "Close-up"))]
    if rendered:
        assert rendered == ["Overview: anterior and left views", "Close-up: tumour"]
    else:  # no OpenGL here: the report says so and still has the slice pictures
        assert "3D pictures unavailable" in html
    assert len(pics) == len(res.pictures) >= 3
    # the numbers a surgeon reads are the plan's numbers
    cut, traj = plan["cuts"][0], plan["trajectories"][0]
    assert f"{cut['voxel']['remnant_percent']:.1f}" in html and f"{cut['margin']['margin_mm']:.1f} mm" in html
    assert "CRITICAL: aorta" in html and "Warnings (1)" in html
    aorta = next(c for c in traj["clearance"] if c["structure"] == "aorta")
    assert f"{aorta['distance_mm']:.1f}" in html
    for name in ("liver", "tumour", "aorta", "kidney_left"):
        assert f"{name}" in html
    assert f"{truth.volume_ml('liver'):.0f}" in html or f"{plan['cuts'][0]['voxel']['total_ml']:.2f}" in html
    # provenance chain: the series UID, the stages, and the hash of each file a number came from
    assert SERIES_UID in html and "constructed" in html
    tumour_hash = plan["measurements"][0]["provenance"]["inputs"]["meshes/tumour.ply"]
    assert html.count(tumour_hash) >= 2  # in the files table and against the measurement
    if chromium is None:
        require_tool("chromium")  # skips, or fails under SURGITWIN_REQUIRE_SYSTEM=1
    assert res.pdf is not None and res.pdf.read_bytes()[:5] == b"%PDF-"
    # a real browser: all pictures decoded (the page's own check) and a non-blank rendering
    dom = run_chromium(["--dump-dom", res.html.resolve().as_uri()]).stdout
    assert 'data-broken-images="0"' in dom
    assert f'data-images="{len(pics)}"' in dom
    shot = tmp_path / "report.png"
    run_chromium([f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars", res.html.resolve().as_uri()])
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (2400, 1280)
    assert img.std() > 20  # text, tables and pictures, not a blank or error page
    red = (img[..., 0] > 150) & (img[..., 1] < 80) & (img[..., 2] < 80)
    assert red[:400].sum() > 100  # the warning box is at the top, in red


def test_report_marks_stale_numbers_and_works_without_rendering(planned, tmp_path, capsys):
    import trimesh

    path, _, _ = planned
    m = trimesh.load_mesh(str(path / "meshes" / "tumour.ply"), process=False)
    m.apply_translation([0.5, 0, 0])  # the segmentation changed after the plan was made
    m.export(str(path / "meshes" / "tumour.ply"))
    assert main(["report", str(path), "--no-render", "--out", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    assert "3D pictures were not rendered" in capsys.readouterr().out
    assert "computed from an earlier version of meshes/tumour.ply" in html
    assert len(_images(html)) == 3  # axial, coronal, sagittal


def test_axial_slice_is_radiological_and_lps(planned):
    from PIL import Image

    path, truth, plan = planned
    sc = load_scene(path)
    img, lm = sc.load_image(), sc.load_labelmap()
    png = slice_picture(img, lm, "axial", np.array([0.0, 10.0, 0.0]), np.array([-90.0, -40, -50]),
                        np.array([80.0, 50, 50]), px_mm=1.0)
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    h, w, _ = a.shape
    near = lambda rgb: (np.abs(a - np.array(rgb)).sum(axis=2) < 60)  # noqa: E731 (outline pixels)
    from pipeline.scene.colors import scene_colors

    shown = scene_colors(lm.labels)  # outlines use the viewer's display colours
    kidney = np.nonzero(near(shown["kidney_left"]))
    liver = np.nonzero(near(shown["liver"]))
    # patient Right on the image left: the liver (x < 0) left of the left kidney (x > 0)
    assert liver[1].mean() < w / 2 < kidney[1].mean()
    # anterior at the top: the kidney (y 19..37, posterior) lower than the liver centre (y = 0)
    assert kidney[0].mean() > liver[0].mean()


def test_report_and_seg_on_the_sample_scan(tmp_path):
    """The shipped sample scan (real DICOM reader, ground-truth labels as the segmentation):
    plan a right-sided liver resection and a needle path to the tumour, then report it."""
    import highdicom as hd

    from pipeline.export.dicom_seg import write_dicom_seg
    from tests.scene_factory import sample_scan_scene

    path, phantom = sample_scan_scene(tmp_path)
    pl = Planner(path)
    tumour = pl.mesh("liver_tumor").vertices.mean(0)
    assert tumour[0] < -50  # the tumour is in the right liver: patient right is -x in LPS
    vol = pl.measure_structure("liver")[0]
    assert vol["voxel_volume_ml"] == pytest.approx(phantom["volumes_ml"]["liver"], abs=0.1)
    assert vol["mesh_volume_ml"] == pytest.approx(phantom["volumes_ml"]["liver"], rel=0.01)
    ivc = pl.measure_between("liver_tumor", "inferior_vena_cava")
    assert ivc["distance_mm"] > 5 and ivc["point_b"][0] > ivc["point_a"][0]  # the IVC is medial (to the left)
    cut = pl.add_cut("liver", {"point": (tumour[0] + 20, tumour[1], tumour[2]), "normal": (-1, 0, 0)},
                     margin_to="liver_tumor")
    assert cut["agreement"]["agree"] and cut["margin"]["side"] == "resected" and cut["margin"]["margin_mm"] > 0
    traj = pl.add_trajectory((-160, tumour[1], tumour[2]), tumour, 1.0)
    assert traj["target_structure"] == "liver_tumor" and traj["crossed"] == ["liver", "liver_tumor"]
    pl.save()
    res = build_report(path, render=False)
    html = res.html.read_text()
    assert "Phantom CT abdomen" in html and f"{cut['voxel']['remnant_percent']:.1f}" in html
    assert f"{phantom['volumes_ml']['liver']:.1f}" in html  # 1504.7 ml: the table shows the true volume
    # the SEG finds the source series through the scene's recorded input folder
    seg = hd.seg.segread(write_dicom_seg(pl.scene, tmp_path / "seg.dcm", structures=["liver", "liver_tumor"]))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pl.scene.source["series_instance_uid"]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "liver_tumor"]


def test_demo_command_writes_scene_report_and_truth_table(tmp_path, capsys):
    """`surgitwin demo` (what `make demo` runs): scene, meshes, picture, and a report whose
    ground-truth table holds the same numbers the command printed."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--model", "hu_rules"]) == 0
    printed = capsys.readouterr().out
    assert (out / "scene.json").exists() and list((out / "meshes").glob("*.ply"))
    assert _image_ok(out / "snapshots" / "overview.png")
    html = (out / "report" / "report.html").read_text()
    assert "Against the ground truth" in html
    m = re.search(r"^lungs\s+(\d\.\d{3})\s+(\d+\.\d)\s+(\d+\.\d)", printed, re.M)
    assert m and float(m.group(1)) > 0.99
    assert re.search(rf"<td>lungs</td><td class=\"n\">{m.group(1)}</td><td class=\"n\">{m.group(2)}</td>", html)


def _image_ok(path) -> bool:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im.size[0] > 100
