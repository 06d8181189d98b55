"""Issue 13, section 2: `surgitwin lesion` on the phantom's liver tumour (counted as liver by the
model) and on a real CT with an inserted lesion of known shape and contrast."""
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.errors import PlanningError
from pipeline.geometry import read_image_file, resample_like, write_image_file
from pipeline.mesh import MeshConfig, labelmap_to_meshes
from pipeline.planning import Planner
from pipeline.scene import Scene, load_scene, save_scene
from pipeline.types import Label, LabelMap, LabelTable
from tests.conftest import real_data
from tests.scene_factory import SAMPLE

_CACHE: dict = {}


def _write_scene(folder: Path, image, arr: np.ndarray, table: LabelTable, mesh_names) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lm = LabelMap(image.with_array(arr), table)
    write_image_file(image, folder / "image.nii.gz")
    write_image_file(lm.volume, folder / "labels.nii.gz", arr.astype(np.uint8))
    meshes = labelmap_to_meshes(lm, MeshConfig(), names=set(mesh_names))
    save_scene(Scene("lesion_test", {"modality": "CT"}, table, meshes), folder)
    return folder


def phantom_scene(tmp_path):
    """The sample scan with its ground truth, the tumour counted as liver (as the model does)."""
    import shutil
    import tempfile

    from pipeline.ingest import read_input

    if "phantom" not in _CACHE:
        root = Path(tempfile.mkdtemp(prefix="surgitwin-lesion-"))
        image = read_input(SAMPLE / "dicom")
        gt = np.rint(read_image_file(SAMPLE / "ground_truth_labels.nii.gz").array).astype(np.uint8)
        arr = np.where(np.isin(gt, [1, 7]), 1, np.where(gt == 5, 2, 0)).astype(np.uint8)
        table = LabelTable([Label(1, "liver", (221, 130, 101)), Label(2, "aorta", (224, 97, 76), critical=True)])
        _write_scene(root / "scene", image, arr, table, ["liver", "aorta"])
        _CACHE["phantom"] = (root / "scene", gt == 7, image)
    src, truth, image = _CACHE["phantom"]
    dst = tmp_path / "scene"
    shutil.copytree(src, dst)
    return dst, truth, image


def dice(a, b) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.mark.slow
def test_lesion_on_the_phantom_tumour_is_carved_out_of_the_liver_on_the_right(tmp_path, capsys):
    path, truth, image = phantom_scene(tmp_path)
    liver_before = np.count_nonzero(load_scene(path, load_meshes=False).load_labelmap().array == 1)
    centre = image.index_to_lps(np.argwhere(truth).mean(0)[None])[0]
    assert centre[0] < 0  # the phantom's tumour sits in the right lobe: LPS x < 0
    assert main(["lesion", str(path), "--seed", *map(str, centre), "--name", "liver_tumour", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) == {"name", "label", "volume_ml", "long_axis_mm", "short_axis_mm", "centroid_lps"}
    scene = load_scene(path)
    lab = scene.load_labelmap().array
    found = lab == out["label"]
    assert dice(found, truth) > 0.8
    true_ml = np.count_nonzero(truth) * image.voxel_volume_ml
    assert out["volume_ml"] == pytest.approx(true_ml, rel=0.15)
    # the phantom tumour: an ellipsoid 14 x 12.6 x 15.4 mm (semi-axes), turned 30 deg about z
    assert out["long_axis_mm"] == pytest.approx(28.0, abs=2.5)
    assert out["short_axis_mm"] == pytest.approx(25.2, abs=2.5)
    assert out["centroid_lps"][0] < 0 and np.linalg.norm(np.subtract(out["centroid_lps"], centre)) < 2.0
    # carved: the liver lost exactly the lesion's voxels; a closed mesh, QC, a plan record
    assert np.count_nonzero(lab == 1) == liver_before - np.count_nonzero(found)
    m = scene.mesh("liver_tumour")
    assert m.mesh.is_watertight and m.qa["watertight"]
    assert scene.extra["qc"]["liver_tumour"]["lesion_of"] == "liver"
    assert scene.extra["qc"]["liver"]["volume_ml"] == pytest.approx(np.count_nonzero(lab == 1) * image.voxel_volume_ml, rel=1e-3)
    rec = scene.plan["lesions"][0]
    assert rec["id"] == "LS1" and rec["within"] == "liver" and rec["kind"] == "lesion"
    assert main(["plan", "remove", str(path), "LS1"]) == 1  # a lesion changed the label map
    # planning sees it: a cut of the liver reports its margin and the functional remnant
    c = Planner(path).add_cut("liver", {"point": centre, "normal": (1.0, 0, 0)})
    g = c["lesion_margins"][0]
    assert g["structure"] == "liver_tumour" and g["crossed"] and g["margin_mm"] < -10


@pytest.mark.slow
def test_lesion_errors_name_the_rule(tmp_path):
    path, truth, image = phantom_scene(tmp_path)
    pl = Planner(path)
    with pytest.raises(PlanningError, match="must lie inside the image"):
        pl.add_lesion((0.0, 0.0, 5000.0))
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(pl.labelmap.array == 1, sampling=image.spacing)
    depth[ndimage.distance_transform_edt(~truth, sampling=image.spacing) < 40] = 0  # 40 mm away from the tumour
    far = image.index_to_lps(np.array(np.unravel_index(np.argmax(depth), depth.shape))[None])[0]
    with pytest.raises(PlanningError, match="no contrast"):
        pl.add_lesion(far)  # plain liver: nothing to grow
    with pytest.raises(PlanningError, match="lower_snake_case"):
        pl.add_lesion(image.index_to_lps(np.argwhere(truth).mean(0)[None])[0], name="Bad Name")


def real_ct_with_lesion(tmp_path):
    """The real JPEG 2000 CT with a hypodense ellipsoid (semi-axes 12 x 9 x 7 mm, long axis turned
    30 deg in the axial plane, -45 HU, partial volume at its edge) inserted deep in the liver."""
    from scipy import ndimage

    from pipeline.ingest import read_input

    ref = real_data("ct_thorax_abdomen_dicom_j2k")
    image = read_input(ref / "series")
    labels = resample_like(read_image_file(ref / "labels_reference.nii.gz"), image, order=0)
    names = json.loads((ref / "class_map_total.json").read_text())["total"]
    liver_id = int(next(k for k, v in names.items() if v == "liver"))
    liver = np.rint(labels.array).astype(int) == liver_id
    depth = ndimage.distance_transform_edt(liver, sampling=image.spacing)
    k0 = image.shape[0] // 2
    c_idx = np.array([k0, *np.unravel_index(np.argmax(depth[k0]), depth[k0].shape)])
    centre = image.index_to_lps(c_idx[None])[0]
    kji = np.stack(np.meshgrid(*(np.arange(s) for s in image.shape), indexing="ij"), -1).reshape(-1, 3)
    d = image.index_to_lps(kji) - centre
    t = np.radians(30.0)
    u = d[:, 0] * np.cos(t) + d[:, 1] * np.sin(t)
    v = -d[:, 0] * np.sin(t) + d[:, 1] * np.cos(t)
    r = np.sqrt((u / 12.0) ** 2 + (v / 9.0) ** 2 + (d[:, 2] / 7.0) ** 2).reshape(image.shape)
    inside = r <= 1.0
    weight = np.clip((1.0 - r) / 0.15 + 0.5, 0, 1)  # ~1 mm partial-volume rim
    arr = image.array.astype(np.float32) - 45.0 * weight
    img = image.with_array(np.rint(arr).astype(np.int16))
    table = LabelTable([Label(1, "liver", (221, 130, 101))])
    _write_scene(tmp_path / "scene", img, liver.astype(np.uint8), table, ["liver"])
    return tmp_path / "scene", inside, centre, img


@pytest.mark.slow
def test_lesion_on_real_ct_with_an_inserted_lesion_of_known_shape(tmp_path):
    path, truth, centre, image = real_ct_with_lesion(tmp_path)
    assert centre[0] < 0  # the liver, on the patient's right
    r = Planner(path).add_lesion(centre, name="metastasis")
    found = load_scene(path, load_meshes=False).load_labelmap().array == r["label"]
    assert dice(found, truth) > 0.8, dice(found, truth)
    true_ml = 4 / 3 * np.pi * 12 * 9 * 7 / 1000
    assert r["volume_ml"] == pytest.approx(true_ml, rel=0.2)
    assert r["long_axis_mm"] == pytest.approx(24.0, abs=2.5)
    assert r["short_axis_mm"] == pytest.approx(18.0, abs=2.5)
    assert r["centroid_lps"][0] < 0 and np.linalg.norm(np.subtract(r["centroid_lps"], centre)) < 2.0
    # RECIST is measured in the axial plane: its end points share z
    (p, q) = r["long_axis_points"]
    assert p[2] == q[2]


@pytest.mark.slow
def test_demo_plan_adds_the_documented_lesion_and_resection_and_the_report_shows_them(tmp_path, capsys):
    from pipeline.commands.core import DEMO_LESION_SEED, _demo_plan
    from pipeline.scene.report import build_report

    path, truth, image = phantom_scene(tmp_path)
    _demo_plan(path)
    assert "lesion LS1 liver_tumour" in capsys.readouterr().out
    plan = load_scene(path, load_meshes=False).plan
    les, cut = plan["lesions"][0], plan["cuts"][0]
    assert les["seed_lps"] == list(DEMO_LESION_SEED) and les["within"] == "liver"
    assert cut["lesion_margins"][0]["structure"] == "liver_tumour" and cut["lesion_margins"][0]["margin_mm"] > 0
    html = build_report(path, tmp_path / "r.html", render=False).html.read_text()
    assert "<h2>Lesions</h2>" in html and "<td>LS1</td><td>liver_tumour</td><td>liver</td>" in html
    assert "Future liver remnant against the <b>functional</b> liver" in html


@pytest.mark.slow
def test_keep_plan_segments_the_lesion_again_on_the_new_segmentation(tmp_path):
    """`run --keep-plan`: lesions are grown again from their seeds, then cuts see them."""
    from pipeline.planning.revalidate import revalidate_plan

    old, truth, image = phantom_scene(tmp_path / "old")
    seed = image.index_to_lps(np.argwhere(truth).mean(0)[None])[0]
    pl = Planner(old)
    les = pl.add_lesion(seed, name="liver_tumour")
    cut = pl.add_cut("liver", {"point": (seed[0] + 20, seed[1], seed[2]), "normal": (-1.0, 0, 0)}, save=True)
    plan = load_scene(old, load_meshes=False).plan
    new, _, _ = phantom_scene(tmp_path / "new")  # a fresh segmentation: no lesion in it
    scene = load_scene(new)
    kept, notes = revalidate_plan(scene, plan)
    assert [r["id"] for r in kept["lesions"]] == ["LS1"] and kept["lesions"][0]["revalidation"]["ok"]
    assert kept["lesions"][0]["volume_ml"] == pytest.approx(les["volume_ml"], rel=1e-6)
    c = kept["cuts"][0]
    assert c["id"] == cut["id"] and c["revalidation"]["ok"]
    assert c["lesion_margins"][0]["margin_mm"] == pytest.approx(cut["lesion_margins"][0]["margin_mm"], abs=1e-3)
    assert "liver_tumour" in load_scene(new, load_meshes=False).structure_names
