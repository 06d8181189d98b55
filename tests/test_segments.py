"""Issue 13, section 3: Couinaud segments from landmarks (plane model), segment resections,
functional FLR and tumour margins with known answers on the phantom."""
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.errors import PlanningError
from pipeline.planning import Planner
from pipeline.planning.segments import parse_segments
from tests.scene_factory import sample_scan_scene

# Landmarks on the sample phantom (LPS mm): the IVC at the hepatic veins' confluence, points on
# the right, middle and left hepatic veins (running anteriorly and laterally from it), and the
# portal bifurcation 40 mm below, anterior to the IVC.
LANDMARKS = {"ivc": (-22.0, -3.0, -235.0), "rhv": (-90.0, -15.0, -235.0), "mhv": (-45.0, -55.0, -235.0),
             "lhv": (15.0, -55.0, -230.0), "portal": (-35.0, -25.0, -275.0)}
_CACHE: dict = {}


@pytest.fixture
def phantom(tmp_path):
    import shutil
    import tempfile
    from pathlib import Path

    if "scene" not in _CACHE:
        _CACHE["scene"] = sample_scan_scene(Path(tempfile.mkdtemp(prefix="surgitwin-seg-")),
                                            names=("liver", "liver_tumor", "inferior_vena_cava", "aorta"))
    src, truth = _CACHE["scene"]
    shutil.copytree(src, tmp_path / "s")
    return tmp_path / "s", truth


def test_parse_segments():
    assert parse_segments(["VI-VII"]) == ["VI", "VII"]
    assert parse_segments(["6", "vii", "IV"]) == ["VI", "VII", "IVa", "IVb"]
    assert parse_segments(["II-III"]) == ["II", "III"]
    with pytest.raises(PlanningError, match="I-VIII"):
        parse_segments(["IX"])


@pytest.mark.slow
def test_couinaud_volumes_sum_to_the_liver_and_each_segment_is_on_its_side(phantom):
    path, truth = phantom
    r = Planner(path).add_segments("liver", LANDMARKS)
    seg = r["segments"]
    liver_ml = truth["volumes_ml"]["liver"]
    assert sum(v["volume_ml"] for v in seg.values()) == pytest.approx(r["total_ml"], abs=1e-3)
    assert r["total_ml"] == pytest.approx(liver_ml, abs=0.1)
    assert all(v["volume_ml"] > 10 for v in seg.values()), seg
    c = {k: np.array(v["centroid_lps"]) for k, v in seg.items()}
    ivc_x = LANDMARKS["ivc"][0]
    # LPS: x grows to the patient's left. Right liver (V-VIII) right of the IVC, left lateral (II, III) left of it
    for s in ("V", "VI", "VII", "VIII"):
        assert c[s][0] < ivc_x, s
    for s in ("II", "III"):
        assert c[s][0] > ivc_x, s
    # from right to left: right posterior section, right anterior section, IV, left lateral section
    assert c["VI"][0] < c["V"][0] < c["IVb"][0] < c["III"][0]
    assert c["VII"][0] < c["VIII"][0] < c["IVa"][0] < c["II"][0]
    # the right posterior section lies behind the right anterior one (y grows posterior)
    assert c["VI"][1] > c["V"][1] and c["VII"][1] > c["VIII"][1]
    # superior segments above the portal plane, inferior below (z grows superior)
    for hi, lo in (("VII", "VI"), ("VIII", "V"), ("IVa", "IVb"), ("II", "III")):
        assert c[hi][2] > LANDMARKS["portal"][2] > c[lo][2], (hi, lo)
    # the caudate lobe: beside and in front of the IVC, behind the portal bifurcation
    assert LANDMARKS["portal"][1] < c["I"][1] and abs(c["I"][0] - ivc_x) < 30
    assert set(r["lesion_segments"]["liver_tumor"]) <= {"V", "VI", "VII", "VIII"}  # the tumour: right liver


@pytest.mark.slow
def test_segment_resection_gives_remnant_flr_and_margin(phantom, capsys):
    path, truth = phantom
    assert main(["plan", "segments", str(path), *sum((["--" + k, *map(str, v)] for k, v in LANDMARKS.items()), []),
                 "--json"]) == 0
    capsys.readouterr()
    pl = Planner(path)
    seg = pl.scene.plan["segments"][0]["segments"]
    r = pl.add_segment_resection(["VI-VII"], save=True)
    expected = seg["VI"]["volume_ml"] + seg["VII"]["volume_ml"]
    assert r["resected_ml"] == pytest.approx(expected, abs=1e-3)
    assert r["remnant_ml"] + r["resected_ml"] == pytest.approx(truth["volumes_ml"]["liver"], abs=0.1)
    assert r["flr"]["flr_percent"] == pytest.approx(100 * r["remnant_ml"] / r["voxel"]["total_ml"], abs=1e-2)
    g = r["lesion_margins"][0]
    assert g["structure"] == "liver_tumor"
    assert (g["margin_mm"] < 0) == g["crossed"]
    # resecting the whole right liver (V-VIII) takes the tumour with a positive margin
    right = pl.add_segment_resection(["V-VIII"])
    g = right["lesion_margins"][0]
    assert g["side"] == "resected" and not g["crossed"] and g["margin_mm"] > 0
    assert right["flr"]["flr_percent"] < 25 and any("below the 25% threshold" in w for w in right["warnings"])
    assert main(["plan", "list", str(path)]) == 0
    assert "segments VI, VII" in capsys.readouterr().out


@pytest.mark.slow
def test_functional_flr_and_tumour_margin_per_cut_match_the_label_map(phantom):
    """Known answers from the phantom's own ground-truth voxels (centres on either side)."""
    path, truth = phantom
    pl = Planner(path)
    lm = pl.labelmap
    liver = lm.array == lm.labels.by_name("liver").id
    tumour = lm.array == lm.labels.by_name("liver_tumor").id
    xyz = lambda m: lm.volume.index_to_lps(np.argwhere(m))  # noqa: E731
    t = xyz(tumour)
    for x_plane, normal in ((t[:, 0].max() + 8.0, -1.0), (t[:, 0].mean(), -1.0)):
        r = pl.add_cut("liver", {"point": (x_plane, 0, 0), "normal": (normal, 0, 0)})
        lx = xyz(liver)[:, 0]
        expect_flr = 100 * np.count_nonzero(lx > x_plane) / len(lx)  # remnant: the patient-left side
        # voxels the plane passes through count their partial volume: at most one voxel layer apart
        layer = 100 * np.count_nonzero(np.abs(lx - x_plane) <= max(lm.volume.spacing) / 2) / len(lx)
        assert r["flr"]["flr_percent"] == pytest.approx(expect_flr, abs=layer / 2 + 0.05)
        whole = np.concatenate([lx, t[:, 0]])
        assert r["flr"]["whole_remnant_percent"] == pytest.approx(100 * np.count_nonzero(whole > x_plane) / len(whole),
                                                                  abs=layer / 2 + 0.05)
        g = r["lesion_margins"][0]
        assert g["structure"] == "liver_tumor"
        if x_plane > t[:, 0].max():  # the whole tumour resected, 8 mm from its nearest voxel centre
            assert g["side"] == "resected" and g["margin_mm"] == pytest.approx(8.0, abs=1.5)
        else:  # through its centre: negative, about its half-width
            half = (t[:, 0].max() - t[:, 0].min()) / 2
            assert g["crossed"] and g["margin_mm"] == pytest.approx(-half, abs=2.0)
    with pytest.raises(PlanningError, match="landmark 'rhv' is required"):
        pl.add_segments("liver", {k: v for k, v in LANDMARKS.items() if k != "rhv"})


@pytest.mark.slow
def test_report_draws_the_segments(phantom, tmp_path):
    from pipeline.scene.report import build_report

    path, _ = phantom
    Planner(path).add_segments("liver", LANDMARKS, save=True)
    html = build_report(path, tmp_path / "r.html", render=False).html.read_text()
    assert "<h2>Couinaud segments</h2>" in html
    assert html.count('alt="Couinaud segments (S1): ') == 3  # two axial slices and a coronal one
    assert "<td>VIII</td>" in html


@pytest.mark.slow
def test_segments_have_meshes_the_viewer_draws(phantom, tmp_path):
    from viewer.tools import record_primitives, record_text

    path, _ = phantom
    rec = Planner(path).add_segments("liver", LANDMARKS, save=True)
    assert set(rec["meshes"]) == set(rec["segments"])  # one closed piece per segment
    import trimesh

    vols = {k: trimesh.load_mesh(str(path / rel), process=False).volume / 1000 for k, rel in rec["meshes"].items()}
    for k, v in vols.items():
        assert v == pytest.approx(rec["segments"][k]["volume_ml"], rel=0.1), k
    prims = record_primitives(rec, 2.0)
    assert {p.label for p in prims} == set(rec["segments"]) and all(p.kind == "mesh" for p in prims)
    assert record_text(rec).startswith("S1 Couinaud segments of liver")


def test_only_the_latest_pieces_of_a_structure_are_drawn():
    from viewer.tools import superseded_pieces

    plan = {"segments": [{"id": "S1", "structure": "liver", "created": "2026-01-01T10:00:00", "meshes": {"I": "a"}}],
            "cuts": [{"id": "C1", "structure": "liver", "created": "2026-01-01T10:00:05", "meshes": {"remnant": "b"}},
                     {"id": "C2", "structure": "spleen", "created": "2026-01-01T09:00:00", "meshes": {"remnant": "c"}}]}
    assert superseded_pieces(plan) == {"S1"}
    plan["segments"][0]["created"] = "2026-01-01T11:00:00"
    assert superseded_pieces(plan) == {"C1"}
