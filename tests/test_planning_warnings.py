"""Issue 13, section 1: warnings that never stay silent (trajectories, cuts, plan list, measure)."""
import json

import pytest

from pipeline.cli import main
from pipeline.errors import ConfigError
from pipeline.planning import Planner
from pipeline.planning.rules import load_rules
from pipeline.scene import load_scene, save_scene
from pipeline.types import Label
from tests.scene_factory import DEFAULT_LABELS, Box, cached_constructed_scene, default_shapes

BONE = Label(5, "bone", (241, 214, 145), code="272673000")  # not critical in the label table


def bone_shapes():
    s = default_shapes()
    s["bone"] = Box((-95.0, 4.0, 0.0), (3.0, 10.0, 3.0))  # a rib-like plate lateral to the liver, z -3..3
    return s


@pytest.fixture
def scene(tmp_path):
    return cached_constructed_scene(tmp_path, shapes=bone_shapes(), labels=DEFAULT_LABELS + (BONE,))


def test_rules_classes_and_thresholds_come_from_the_config(tmp_path):
    rules = load_rules()
    assert rules.structure_class("bone")["critical"] and rules.structure_class("rib_left_3")["class"] == "bone"
    assert rules.structure_class("lungs")["critical"] and rules.structure_class("airway")["class"] == "lung_airway"
    assert rules.structure_class("body") == {"class": "envelope", "critical": False, "margin_mm": 0.0,
                                             "warn_on_cross": False}
    assert rules.structure_class("kidney_left")["class"] == "organ"
    assert not rules.structure_class("kidney_left")["critical"]
    assert rules.structure_class("kidney_left", label_critical=True)["critical"]  # the label table can promote
    assert rules.remnant_threshold("liver") == 25 and rules.remnant_threshold("liver", "compromised") == 40
    assert rules.remnant_threshold("spleen") is None
    bad = tmp_path / "planning.yaml"
    bad.write_text("trajectory:\n  classes:\n    - {name: x, patterns: ['*'], margin_mm: -1}\n")
    with pytest.raises(ConfigError, match=r"planning.yaml.*trajectory\.classes\.0\.margin_mm"):
        load_rules(bad)


@pytest.mark.slow
def test_trajectory_crossing_bone_warns(scene):
    path, truth = scene
    # straight through the plate (6 mm of bone) into the tumour
    r = Planner(path).add_trajectory((-120.0, 4.0, 0.0), (-60.0, 4.0, 0.0), 1.0)
    assert r["crossed"] == ["bone", "liver", "tumour"]
    assert r["target_structure"] == "tumour" and r["hosts"] == ["liver"]  # the liver around the tumour is the way in
    bone = next(c for c in r["clearance"] if c["structure"] == "bone")
    assert bone["class"] == "bone" and bone["critical"] and bone["margin_mm"] == 5.0
    assert bone["inside_length_mm"] == pytest.approx(6.0, abs=truth.voxel_mm)
    assert len(r["warnings"]) == 1 and "crosses bone" in r["warnings"][0]


def test_trajectory_nearing_bone_inside_its_margin_warns(scene):
    path, truth = scene
    # 3.9 mm from the plate (axis at z = 3 + 1 + 3.9), under the bone class's 5 mm margin
    r = Planner(path).add_trajectory((-120.0, 4.0, 7.9), (-60.0, 4.0, 7.9), 1.0)
    bone = next(c for c in r["clearance"] if c["structure"] == "bone")
    assert bone["distance_mm"] == pytest.approx(3.9, abs=0.5 * truth.voxel_mm) and not bone["crossed"]
    assert bone["near"] and r["near"] == ["bone"]
    assert len(r["warnings"]) == 1 and "bone" in r["warnings"][0] and "5.0 mm safety margin" in r["warnings"][0]
    # the same path 8 mm away is silent
    far = Planner(path).add_trajectory((-120.0, 4.0, 12.0), (-60.0, 4.0, 6.0), 1.0)
    assert far["warnings"] == [] and far["near"] == []


def test_trajectory_crossing_an_organ_that_is_not_its_target_warns(scene):
    path, _ = scene
    # posterior to anterior through the kidney, ending in front of it
    r = Planner(path).add_trajectory((55.0, 50.0, -8.0), (55.0, 5.0, -8.0), 1.0)
    assert r["crossed"] == ["kidney_left"] and r["target_structure"] is None
    assert len(r["warnings"]) == 1 and "crosses kidney_left (organ)" in r["warnings"][0]
    assert not r["warnings"][0].startswith("CRITICAL")


def test_plan_list_shows_every_structure_crossed_or_neared(scene, capsys):
    path, _ = scene
    pl = Planner(path)
    pl.add_trajectory((-120.0, 4.0, 0.0), (-60.0, 4.0, 0.0), 1.0)
    pl.add_trajectory((-120.0, 4.0, 7.9), (-60.0, 4.0, 7.9), 1.0, save=True)
    assert main(["plan", "list", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    t1 = next(l for l in lines if l.startswith("T1"))
    t2 = next(l for l in lines if l.startswith("T2"))
    assert "crosses bone, liver, tumour" in t1 and "1 warning" in t1
    assert "crosses liver, tumour; near bone" in t2
    assert "aorta" not in t1 + t2  # the old list printed the first three structures checked


def test_measure_saves_only_with_save(scene, capsys):
    path, _ = scene
    assert main(["measure", str(path), "between", "liver", "kidney_left"]) == 0
    assert "not saved" in capsys.readouterr().out
    assert load_scene(path).plan["measurements"] == []
    assert main(["measure", str(path), "distance", "0", "0", "0", "3", "4", "0", "--json"]) == 0
    assert load_scene(path).plan["measurements"] == []
    assert main(["measure", str(path), "between", "liver", "kidney_left", "--save", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["id"] == "M1"
    assert [m["id"] for m in load_scene(path).plan["measurements"]] == ["M1"]


# -- cuts ------------------------------------------------------------------------------------
def _flr_truth(truth, x, normal_x):
    """Remnant of the functional liver (tumour carved out) for the plane x = x, resected side normal_x."""
    liver = truth.shapes["liver"]
    remnant = liver.cap_mm3((x, 0, 0), (-normal_x, 0, 0))
    return 100 * remnant / liver.volume_mm3


def test_cut_remnant_below_threshold_warns_and_the_lesion_margin_is_negative(scene):
    path, truth = scene
    pl = Planner(path)
    r = pl.add_cut("liver", {"point": (-57.0, 0, 0), "normal": (1.0, 0, 0)})  # keep the lateral right 22 %
    expected = _flr_truth(truth, -57.0, 1.0)
    assert 20 < expected < 25
    assert r["flr"]["flr_percent"] == pytest.approx(expected, abs=1.0)
    assert r["flr"]["lesions"] == ["tumour"]
    whole = 100 * truth.shapes["liver"].outer.cap_mm3((-57.0, 0, 0), (-1, 0, 0)) / truth.shapes["liver"].outer.volume_mm3
    assert r["flr"]["whole_remnant_percent"] == pytest.approx(whole, abs=1.0)
    g = r["lesion_margins"][0]
    assert g["structure"] == "tumour" and g["crossed"] and g["side"] == "remnant"
    assert g["margin_mm"] == pytest.approx(-(9 - 3), abs=truth.voxel_mm)  # 6 mm of it lies beyond the plane
    assert any("below the 25% threshold for a normal liver" in w for w in r["warnings"])
    assert any("crosses the lesion tumour" in w for w in r["warnings"])
    assert r["remnant_threshold"]["percent"] == 25


@pytest.mark.slow
def test_cut_remnant_threshold_depends_on_the_liver_state(scene):
    path, truth = scene
    pl = Planner(path)
    plane = {"point": (-52.5, 0, 0), "normal": (1.0, 0, 0)}
    assert 25 < _flr_truth(truth, -52.5, 1.0) < 40
    normal = pl.add_cut("liver", plane)
    assert not any("threshold" in w for w in normal["warnings"])
    compromised = pl.add_cut("liver", plane, liver_state="compromised")
    assert any("below the 40% threshold for a compromised liver" in w for w in compromised["warnings"])


@pytest.mark.slow
def test_a_plane_missing_the_structure_warns(scene):
    path, _ = scene
    pl = Planner(path)
    nothing = pl.add_cut("liver", {"point": (50.0, 0, 0), "normal": (1.0, 0, 0)})
    assert nothing["resected_percent"] == 0 and any("misses liver" in w for w in nothing["warnings"])
    everything = pl.add_cut("liver", {"point": (50.0, 0, 0), "normal": (-1.0, 0, 0)})
    assert everything["remnant_percent"] == 0 and any("misses liver" in w for w in everything["warnings"])


@pytest.mark.slow
def test_cut_of_a_truncated_structure_marks_the_remnant_invalid(scene, capsys):
    path, _ = scene
    s = load_scene(path)
    s.extra["qc"] = {"liver": {"truncated": True, "volume_ml": 130.0}}
    save_scene(s, write_meshes=False)
    r = Planner(path).add_cut("liver", {"point": (-57.0, 0, 0), "normal": (1.0, 0, 0)})
    assert r["remnant_valid"] is False and "edge of the scan" in r["invalid_reason"]
    assert any(w.startswith("remnant percentage invalid") for w in r["warnings"])
    assert not any("threshold" in w for w in r["warnings"])  # no verdict from an invalid number
    assert main(["plan", "cut", str(path), "--structure", "liver", "--point", "-57", "0", "0",
                 "--normal", "1", "0", "0", "--no-save"]) == 0
    assert "remnant percentage INVALID" in capsys.readouterr().out


# -- the report's banner ----------------------------------------------------------------------
@pytest.mark.slow
def test_report_banner_lists_every_warning_and_the_rules(scene, tmp_path):
    from pipeline.scene.report import build_report, header_fields

    path, _ = scene
    quiet = build_report(path, tmp_path / "quiet.html", render=False)
    html = quiet.html.read_text()
    assert "No plan warnings" in html and "Planning rules" in html
    assert "lung_airway" not in html and ">bone</td><td>bone</td><td>yes</td><td class=\"n\">5.0" in html
    s = load_scene(path)
    s.extra["qc"] = {"kidney_left": {"plausible": False, "flags": ["not posterior: anterior to the body's centre"],
                                     "warning": "implausible: not posterior: anterior to the body's centre"}}
    save_scene(s, write_meshes=False)
    pl = Planner(path)
    pl.add_cut("liver", {"point": (50.0, 0, 0), "normal": (1.0, 0, 0)})  # misses the liver
    pl.add_trajectory((55.0, 50.0, -8.0), (55.0, 5.0, -8.0), 1.0)  # crosses the kidney: organ + QC flag
    pl.save()
    html = build_report(path, tmp_path / "loud.html", render=False).html.read_text()
    assert "No plan warnings" not in html
    banner = html[html.index('<div class="alert">'):html.index("</div>", html.index('<div class="alert">'))]
    assert "[kidney_left] QC: implausible: not posterior" in banner
    assert "[C1] the plane misses liver" in banner
    assert "[T1] the tool crosses kidney_left (organ)" in banner
    assert "[T1] kidney_left is flagged by QC" in banner
    # the header: no duplicated words, identity only when identified
    h = header_fields({"modality": "CT", "series_description": "CT Body", "patient_id": "P123", "study_date": "20240102"})
    assert h["series"] == "CT Body" and h["patient_id"] == "P123" and h["study_date"] == "2024-01-02"
    h = header_fields({"modality": "CT", "series_description": "Abdomen", "patient_id": "P123", "deidentified": True})
    assert h["series"] == "CT Abdomen" and h["patient_id"] is None


def test_report_identity_comes_from_the_dicom_only_when_identified(tmp_path):
    import pydicom

    from pipeline.run import _identity
    from pipeline.scene.report import header_fields
    from tests.scene_factory import make_constructed_scene

    _, truth = make_constructed_scene(tmp_path, dicom=True, spacing=(4.0, 4.0, 4.0))
    files = sorted(truth.dicom_dir.glob("*.dcm"))
    ident = _identity({"files": [str(files[0])]})
    assert ident == {"patient_id": "CONSTRUCTED01", "study_date": "20240101"}
    h = header_fields({"modality": "CT", "series_description": "CT Abdomen", **ident})
    assert (h["series"], h["patient_id"], h["study_date"]) == ("CT Abdomen", "CONSTRUCTED01", "2024-01-01")
    ds = pydicom.dcmread(files[0])
    ds.PatientIdentityRemoved = "YES"
    ds.save_as(files[0])
    ident = _identity({"files": [str(files[0])]})
    assert ident == {"deidentified": True}
    assert header_fields({"patient_id": "X", **ident})["patient_id"] is None
