"""Mesh exports: STL (watertight only), OBJ+MTL, PLY, GLB (names, colours, LPS -> glTF axes)."""
import json

import numpy as np
import pytest
import trimesh

from pipeline.cli import main
from pipeline.export import ExportError
from pipeline.export.meshes import LPS_TO_GLTF, export_meshes
from pipeline.scene import load_scene
from tests.scene_factory import cached_constructed_scene


@pytest.fixture
def scene(tmp_path):
    path, truth = cached_constructed_scene(tmp_path)
    return load_scene(path), truth


def test_glb_keeps_names_colours_and_patient_axes(scene, tmp_path):
    sc, truth = scene
    (out,) = export_meshes(sc, tmp_path / "case.glb", "glb")
    g = trimesh.load(str(out), file_type="glb")
    assert set(g.geometry) == set(sc.structure_names)
    for m in sc.meshes:
        got = g.geometry[m.name].visual.material.baseColorFactor[:3]
        assert tuple(int(c) for c in got) == m.label.rgb
    # node matrices map LPS mm to glTF metres: x = Left, y = Superior, z = Anterior
    for name in sc.structure_names:
        node_tf, geom = g.graph[name]
        np.testing.assert_allclose(node_tf, LPS_TO_GLTF, atol=1e-12)
        np.testing.assert_allclose(g.geometry[geom].vertices, sc.mesh(name).mesh.vertices, atol=1e-3)  # float32
    world = {n: trimesh.transform_points(g.geometry[n].vertices, g.graph[n][0]).mean(0) for n in sc.structure_names}
    assert world["kidney_left"][0] > 0 > world["liver"][0]  # the patient's left is glTF +X
    aorta = sc.mesh("aorta").mesh.vertices
    assert world["aorta"][1] == pytest.approx(aorta[:, 2].mean() / 1000, abs=1e-6)  # superior = +Y
    assert world["aorta"][2] == pytest.approx(-aorta[:, 1].mean() / 1000, abs=1e-6)  # anterior = +Z


def test_stl_obj_ply_per_structure(scene, tmp_path):
    sc, truth = scene
    stl = export_meshes(sc, tmp_path / "stl", "stl")
    assert sorted(p.name for p in stl) == sorted(f"{n}.stl" for n in sc.structure_names)
    for p in stl:
        assert p.read_bytes()[:9] == b"SPACE=LPS"
        m = trimesh.load_mesh(str(p))
        assert m.is_watertight
        ref = sc.mesh(p.stem).mesh
        assert abs(m.volume - ref.volume) / abs(ref.volume) < 1e-4
    obj = export_meshes(sc, tmp_path / "obj", "obj", ["liver", "kidney_left"])
    names = {p.name for p in obj}
    assert {"liver.obj", "liver.mtl", "constructed_scene.obj", "constructed_scene.mtl"} <= names
    text = (tmp_path / "obj" / "constructed_scene.obj").read_text()
    assert text.startswith("# SPACE=LPS") and "o liver" in text and "o kidney_left" in text
    mtl = (tmp_path / "obj" / "constructed_scene.mtl").read_text()
    r, g, b = (c / 255 for c in sc.mesh("kidney_left").label.rgb)
    assert f"newmtl kidney_left\nKd {r:.4f} {g:.4f} {b:.4f}" in mtl
    m = trimesh.load_mesh(str(tmp_path / "obj" / "liver.obj"))
    assert len(m.faces) == len(sc.mesh("liver").mesh.faces)
    ply = export_meshes(sc, tmp_path / "ply", "ply", ["tumour"])
    m = trimesh.load_mesh(str(ply[0]))
    assert tuple(m.visual.vertex_colors[0, :3]) == sc.mesh("tumour").label.rgb


def test_stl_refuses_open_surfaces_and_names_them(scene, tmp_path):
    sc, _ = scene
    m = sc.mesh("aorta").mesh
    sc.mesh("aorta").mesh = trimesh.Trimesh(m.vertices, m.faces[10:], process=False)  # punch a hole
    with pytest.raises(ExportError, match="'aorta' .*open edges"):
        export_meshes(sc, tmp_path / "stl", "stl")
    assert not (tmp_path / "stl").exists()  # nothing half-written
    assert export_meshes(sc, tmp_path / "stl", "stl", ["liver"])  # the closed ones still export


def test_export_command(scene, tmp_path, capsys):
    sc, _ = scene
    assert main(["export", str(sc.root), "--format", "glb", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["files"] == [str(sc.root / "export" / "constructed.glb")]
    assert main(["export", str(sc.root), "--format", "stl", "--structure", "nope"]) == 1
    assert "nope" in capsys.readouterr().err
