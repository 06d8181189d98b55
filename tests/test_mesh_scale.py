"""Meshing at real scale: every surface closed, within its face budget, within 1 % of its voxels.

Known answers: analytic spheres, the real label maps in ../shared/data/real (TotalSegmentator's
32 organs on a real Siemens CT, an 11-organ torso map), and body and bone of a real chest/abdomen
CT through the pipeline's own HU rules, on the stored grid and on a clinical-size resampling.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.mesh import MeshConfig, labelmap_to_meshes, mask_to_mesh
from pipeline.mesh.surfaces import _repair, is_closed_manifold, scene_budgets, signed_volume
from pipeline.types import Label, LabelMap, LabelTable, Volume
from tests.conftest import real_data

ROOT = Path(__file__).resolve().parents[1]


def _assert_good(meshes, tol=1.0):
    assert meshes
    for m in meshes:
        q = m.qa
        assert q["watertight"] and m.mesh.is_watertight, m.name
        assert q["n_faces"] <= q["face_budget"], (m.name, q["n_faces"], q["face_budget"])
        assert abs(q["deviation_percent"]) <= tol, (m.name, q)


def _ball(shape, centre, r, spacing=(1.0, 1.0, 1.0)):
    k, j, i = np.indices(shape, dtype=np.float32)
    sk, sj, si = spacing
    return ((k - centre[0]) * sk) ** 2 + ((j - centre[1]) * sj) ** 2 + ((i - centre[2]) * si) ** 2 <= r * r


def test_budget_is_always_reached_closed_and_volume_kept():
    a = np.diag([1.1, 0.7, 0.7, 1.0])
    m = _ball((160, 260, 260), (80, 130, 130), 80.0, (1.1, 0.7, 0.7))  # a 2.1 l ball at 0.7 mm
    mesh = mask_to_mesh(m, a, MeshConfig(), budget=2000)
    assert len(mesh.faces) <= 2000 and mesh.is_watertight and mesh.volume > 0
    assert mesh.volume == pytest.approx(m.sum() * np.prod([1.1, 0.7, 0.7]), rel=0.01)


def test_thin_shell_keeps_its_volume_on_a_coarse_grid():
    """A 2-voxel shell (like cortical bone) on a budget that forces block averaging."""
    shape = (120, 120, 120)
    shell = _ball(shape, (60, 60, 60), 50) & ~_ball(shape, (60, 60, 60), 48)
    lm = LabelMap(Volume(shell.astype(np.uint8), np.eye(4)), LabelTable([Label(1, "bone")]))
    cfg = MeshConfig.from_dict({"face_budget": {"bone": 12000}})
    meshes = labelmap_to_meshes(lm, cfg)
    _assert_good(meshes)
    assert meshes[0].qa["block_factor"] != [1, 1, 1]  # it really was coarsened


def test_repair_closes_what_a_decimator_pinches():
    import trimesh

    sphere = trimesh.creation.icosphere(3)
    v, f = np.asarray(sphere.vertices), np.asarray(sphere.faces)
    assert is_closed_manifold(f)
    fin = np.vstack([f, f[:1][:, ::-1], f[:1]])  # a zero-volume fin: the face twice, once reversed
    assert not is_closed_manifold(fin)
    fixed = _repair(v, fin)
    assert fixed is not None and is_closed_manifold(fixed[1])
    assert abs(signed_volume(*fixed)) == pytest.approx(sphere.volume, rel=0.01)
    # two spheres pinched at one edge: 4 faces on that edge
    other = np.asarray(sphere.vertices) + [2.0, 0, 0]
    vv = np.vstack([v, other])
    ff = np.vstack([f, f + len(v)])
    e0 = f[0, :2]  # glue an edge of the second sphere onto the first's
    ff[len(f):][ff[len(f):] == f[0, 0] + len(v)] = e0[0]
    ff[len(f):][ff[len(f):] == f[0, 1] + len(v)] = e0[1]
    assert not is_closed_manifold(ff)
    fixed = _repair(vv, ff)
    assert fixed is not None and is_closed_manifold(fixed[1])


def test_mesh_config_names_the_bad_key():
    with pytest.raises(ConfigError, match=r"mesh\.target_face\b"):
        MeshConfig.from_dict({"target_face": 5000})
    with pytest.raises(ConfigError, match=r"mesh\.face_budget\.bone"):
        MeshConfig.from_dict({"face_budget": {"bone": "many"}})
    cfg = MeshConfig.from_dict({"face_budget": {"organ": 1000}, "total_faces": 2500})
    assert cfg.structure_class("aorta") == "vessel" and cfg.structure_class("body") == "body"
    assert cfg.structure_class("vertebrae_L1") == "bone" and cfg.structure_class("liver") == "organ"
    b = scene_budgets(["liver", "spleen", "kidney_left", "kidney_right"], cfg)
    assert sum(b.values()) <= 2500 and len(set(b.values())) == 1


def _total_labels(path: Path) -> LabelMap:
    from pipeline.geometry import read_image_file

    names = json.loads((path.parent / "class_map_total.json").read_text())
    names = {int(k): v for k, v in names.get("total", names).items()}
    v = read_image_file(path)
    arr = v.array.astype(np.uint16)
    ids = [int(i) for i in np.unique(arr) if i]
    safe = {i: str(names.get(i, f"s{i}")).lower().replace(" ", "_").replace("-", "_") for i in ids}
    return LabelMap(v.with_array(arr), LabelTable(Label(i, safe[i]) for i in ids))


@pytest.mark.real
def test_real_organ_label_maps_mesh_closed_within_budget_and_volume():
    lm = _total_labels(real_data("ct_thorax_abdomen_dicom_j2k", "labels_reference.nii.gz"))
    meshes = {m.name: m for m in labelmap_to_meshes(lm, MeshConfig())}
    _assert_good(meshes.values())
    assert len(meshes) >= 25
    # left/right in patient space (LPS +x = patient left), whatever the file's axis order
    assert meshes["humerus_left"].mesh.centroid[0] > meshes["humerus_right"].mesh.centroid[0] + 200
    assert meshes["autochthon_left"].mesh.centroid[0] > meshes["autochthon_right"].mesh.centroid[0] + 30
    assert meshes["spleen"].mesh.centroid[0] > meshes["liver"].mesh.centroid[0] + 50
    from pipeline.geometry import read_image_file

    v = read_image_file(real_data("abdomen_label_map", "torso_labels.nii.gz"))
    arr = v.array.astype(np.uint8)
    ids = [int(i) for i in np.unique(arr) if i]
    _assert_good(labelmap_to_meshes(LabelMap(v.with_array(arr), LabelTable(Label(i, f"s{i}") for i in ids)),
                                     MeshConfig()))


def _hu_scene_meshes(volume: Volume):
    from pipeline.segment import segment

    seg = segment(volume, "hu_rules", {"uncertainty": False})
    return {m.name: m for m in labelmap_to_meshes(seg.labelmap, MeshConfig())}


@pytest.mark.real
@pytest.mark.slow
def test_body_and_bone_of_a_real_ct_at_clinical_size():
    """Body and bone of the real Siemens CT, on its grid and resampled to a clinical-size grid
    (0.7 mm pixels, 1.1 mm slices, 160 slices): closed, within budget, within 1 %."""
    from pipeline.ingest import read_input

    src = read_input(real_data("ct_thorax_abdomen_dicom_j2k", "series"))
    meshes = _hu_scene_meshes(src)
    assert {"body", "bone"} <= set(meshes)
    _assert_good(meshes.values())
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from clinical_ct import resample_clinical

    big = resample_clinical(src, slices=160)
    meshes = _hu_scene_meshes(big)
    _assert_good(meshes.values())
    for name in ("body", "bone"):
        q = meshes[name].qa
        assert q["voxel_volume_ml"] > (1000 if name == "body" else 50)
        assert q["n_faces"] <= MeshConfig().budget(name)
    assert sum(m.qa["n_faces"] for m in meshes.values()) <= MeshConfig().total_faces
