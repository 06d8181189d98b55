"""pipeline.ingest.index / select / scan: what is in a folder, which series is used, and why."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import real_data
from dicom_synth import new_uids, write_series
from pipeline.errors import ConfigError, DicomError
from pipeline.ingest.index import index_folder
from pipeline.ingest.read import load_ingest_options, read_input
from pipeline.ingest.scan import scan_command
from pipeline.ingest.select import (DEFAULT_CONFIG, DEFAULT_RULES, check_condition, load_rules, parse_rules,
                                    select_series, selected)


def _stack(n, rows=8, cols=8):
    return (np.arange(n)[:, None, None] * 10 + np.zeros((1, rows, cols))).astype(np.int16)


def _axial(n, dz=1.0, z0=0.0):
    return np.stack([np.zeros(n), np.zeros(n), z0 + dz * np.arange(n)], axis=1)


@pytest.fixture()
def study_folder(tmp_path):
    """One study: a 25-slice CT, a 30-slice thicker CT, a CT localizer, a 5-slice MR, a SEG-like object."""
    study = new_uids()
    def uids(desc, number):
        return {**new_uids(desc, number), "study": study["study"], "for": study["for"]}
    write_series(tmp_path / "ct_thin", _stack(25), _axial(25, 1.0), uids=uids("CT thin", 2))
    write_series(tmp_path / "ct_thick", _stack(30), _axial(30, 5.0), uids=uids("CT thick", 3),
                 image_type=("DERIVED", "SECONDARY", "AXIAL"))
    write_series(tmp_path / "scout", _stack(1), _axial(1), uids=uids("Topogram", 1),
                 image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    write_series(tmp_path / "mr", _stack(5), _axial(5, 3.0), uids=uids("T1", 4), modality="MR")
    write_series(tmp_path / "seg", _stack(2), _axial(2), uids=uids("labels", 5), modality="SEG")
    (tmp_path / "ct_thin" / "notes.txt").write_text("not DICOM\n")
    (tmp_path / "ct_thin" / "fake.dcm").write_bytes(b"\x00" * 200)
    return tmp_path


# -- index -----------------------------------------------------------------------------------------

def test_index_groups_series_and_skips_non_dicom(study_folder):
    ix = index_folder(study_folder)
    assert len(ix) == 1
    by_desc = {s.description: s for s in ix[0].series}
    assert set(by_desc) == {"CT thin", "CT thick", "Topogram", "T1", "labels"}
    thin = by_desc["CT thin"]
    assert thin.n_instances == 25 and thin.orientation == "axial" and thin.spacing == pytest.approx((1.0, 0.8, 0.7))
    assert thin.is_image and not thin.is_localizer and thin.modality == "CT"
    assert by_desc["Topogram"].is_localizer
    assert not by_desc["labels"].is_image
    skipped = {Path(p).name: why for p, why in ix.skipped}
    assert set(skipped) == {"notes.txt", "fake.dcm"} and all("not DICOM" in w for w in skipped.values())


def test_select_picks_thin_primary_ct_and_explains_every_other_series(study_folder):
    ix = index_folder(study_folder)
    sels = select_series(ix, load_rules(DEFAULT_CONFIG))
    picked = selected(sels)
    assert len(picked) == 1 and picked[0].series.description == "CT thin" and picked[0].rule == "CT axial primary"
    why = {s.series.description: (s.status, " | ".join(s.reasons)) for s in sels}
    assert why["CT thick"][0] == "candidate" and "higher-priority rule 'CT axial primary'" in why["CT thick"][1]
    assert why["Topogram"][0] == "rejected" and "LOCALIZER" in why["Topogram"][1]
    assert why["T1"][0] == "candidate"  # matches 'MR volume', but a CT rule ranks first
    assert why["labels"][0] == "rejected" and "not an image series (Modality SEG" in why["labels"][1]


def test_select_prefers_more_slices_then_thinner_within_a_rule(study_folder):
    rules = [{"name": "any CT", "conditions": {"Modality": "(?i)^CT$", "IsLocalizer": False}}]
    sels = select_series(index_folder(study_folder), rules)
    pick = selected(sels)[0]
    assert pick.series.description == "CT thick"  # 30 slices beat 25
    thin = next(s for s in sels if s.series.description == "CT thin")
    assert "more slices (30 vs 25)" in thin.reasons[0]


def test_rejection_names_the_condition_and_the_value_found(study_folder):
    rules = [{"name": "thin CT", "conditions": {"Modality": "(?i)^CT$", "SliceSpacing": [0.5, 2.0]}}]
    sels = select_series(index_folder(study_folder), rules)
    mr = next(s for s in sels if s.series.description == "T1")
    assert mr.status == "rejected" and mr.reasons == ["rule 'thin CT': Modality = 'MR' does not match '(?i)^CT$' (+1 more)"]
    thick = next(s for s in sels if s.series.description == "CT thick")
    assert thick.reasons == ["rule 'thin CT': SliceSpacing = 5, rule needs 0.5..2"]


def test_condition_matchers():
    from pipeline.ingest.index import Series

    s = Series(study_uid="1", series_uid="2", modality="CT", description="Abdomen 1.0 Br40", series_number=3,
               files=[], n_instances=120, n_frames=120, orientation="axial", obliquity_deg=0.0,
               spacing=(1.0, 0.7, 0.7), slice_thickness=1.0, image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
               sop_class="1.2.840.10008.5.1.4.1.1.2", sop_class_name="CT Image Storage", rows=512, cols=512,
               frame_of_reference_uid="9", is_image=True, is_localizer=False, is_multiframe=False,
               transfer_syntaxes=("1.2.840.10008.1.2.1",), tags={"BodyPartExamined": "ABDOMEN"})
    ok = [("Modality", "(?i)^ct$"), ("SeriesDescription", "(?i)abdomen"), ("ImageType", ["PRIMARY", "!LOCALIZER"]),
          ("Modality", ["CT", "MR"]), ("Modality", ["!MR"]), ("NumberOfSlices", [100, ">="]),
          ("SliceThickness", [0.5, 1.5]), ("IsLocalizer", False), ("Rows", 512), ("BodyPartExamined", "ABD")]
    for key, m in ok:
        assert check_condition(s, key, m) is None, (key, m)
    bad = {("ImageType", ("SECONDARY",)): "lacks ['SECONDARY']", ("ImageType", ("!AXIAL",)): "contains excluded ['AXIAL']",
           ("NumberOfSlices", (200, ">")): "NumberOfSlices = 120, rule needs > 200",
           ("Modality", ("MR", "PT")): "is not one of ['MR', 'PT']", ("ContrastBolusAgent", "."): "ContrastBolusAgent is absent"}
    for (key, m), text in bad.items():
        why = check_condition(s, key, list(m) if isinstance(m, tuple) else m)
        assert why and text in why, (key, m, why)


def test_rules_are_validated_with_the_key_named(tmp_path):
    with pytest.raises(ConfigError, match=r"selection.rules\[0\].conditions.Modality.*does not compile"):
        parse_rules([{"name": "x", "conditions": {"Modality": "(CT"}}])
    with pytest.raises(ConfigError, match=r"conditions.NumberOfSlices: matcher must be"):
        parse_rules([{"name": "x", "conditions": {"NumberOfSlices": [20, "=>"]}}])
    with pytest.raises(ConfigError, match="min <= max"):
        parse_rules([{"name": "x", "conditions": {"SliceThickness": [3, 1]}}])
    with pytest.raises(ConfigError, match="'name'"):
        parse_rules([{"conditions": {"Modality": "CT"}}])
    p = tmp_path / "p.yaml"
    p.write_text("model: {}\n")
    with pytest.raises(ConfigError, match="selection:"):
        load_rules(p)
    assert [r.name for r in load_rules(DEFAULT_CONFIG)] == [r["name"] for r in DEFAULT_RULES]


def test_ingest_options_from_config(tmp_path):
    opts = load_ingest_options(DEFAULT_CONFIG)
    assert opts["on_uneven"] == "resample" and opts["on_missing"] == "error"
    p = tmp_path / "p.yaml"
    p.write_text("ingest:\n  on_uneven: maybe\n")
    with pytest.raises(ConfigError, match="on_uneven: must be one of"):
        load_ingest_options(p)


def test_read_input_on_a_folder_selects_and_records_the_rule(study_folder):
    vol = read_input(study_folder)
    assert vol.shape == (25, 8, 8) and vol.source["series_description"] == "CT thin"
    assert vol.source["selection"]["rule"] == "CT axial primary"


def test_read_input_refuses_to_guess_between_studies(study_folder):
    write_series(study_folder / "other_patient", _stack(30), _axial(30), uids=new_uids("CT other", 7))
    with pytest.raises(DicomError, match="2 studies.*one study per input|one study"):
        read_input(study_folder)
    ix = index_folder(study_folder)
    other = next(s for st in ix for s in st.series if s.description == "CT other")
    assert read_input(study_folder, series_uid=other.series_uid).source["series_description"] == "CT other"


def test_scan_command_text_and_json(study_folder):
    text = scan_command(study_folder)
    assert "SELECTED (rule 'CT axial primary')" in text and "rejected" in text and "notes.txt" in text
    line = next(l for l in text.splitlines() if "CT thin" in l)
    assert "25" in line and "axial" in line and "0.8x0.7x1" in line
    doc = json.loads(scan_command(study_folder, as_json=True))
    series = doc["studies"][0]["series"]
    assert {s["selection"]["status"] for s in series} == {"selected", "candidate", "rejected"}
    assert {Path(s["path"]).name for s in doc["skipped"]} == {"notes.txt", "fake.dcm"}


# -- real data ---------------------------------------------------------------------------------------

def test_index_pydicom_samples_marks_non_images_and_skips_dicomdir_and_text():
    ix = index_folder(real_data("pydicom_samples"))
    allser = ix.all_series()
    assert len(ix) >= 10 and len(allser) >= 20
    for m in ("SEG", "RTSTRUCT", "RTPLAN", "RTDOSE"):
        assert [s.is_image for s in allser if s.modality == m] == [False], m
    assert sum(s.is_image for s in allser if s.modality == "CT") >= 5
    assert sum(s.is_image for s in allser if s.modality == "MR") >= 5
    skipped = {Path(p).name: why for p, why in ix.skipped}
    assert all("DICOMDIR" in why for name, why in skipped.items() if name.startswith("DICOMDIR"))
    assert sum(name.startswith("DICOMDIR") for name in skipped) >= 7
    assert "not DICOM" in skipped["README.txt"] and "not DICOM" in skipped["LICENSE_pydicom-data_MIT.txt"]
    # files the DICOMDIR references are indexed normally
    ct = next(s for s in allser if s.description == "Routine Brain")
    assert ct.n_instances == 4 and ct.orientation == "axial"
    tiny = [s for s in allser if s.n_instances == 50]
    assert tiny and not tiny[0].is_image and any("pixel module" in n for n in tiny[0].notes)


def test_select_on_dicomdir_tree_picks_the_ct_and_explains_the_scouts():
    folder = real_data("pydicom_samples", "pydicom_test_files", "dicomdirtests")
    sels = select_series(index_folder(folder), load_rules(DEFAULT_CONFIG))
    study = [s for s in sels if s.series.tags.get("StudyDescription", "") == "" and s.series.modality == "CT"
             and s.series.description in ("Scout", "SmartScore - Gated 0.5 sec")]
    pick = [s for s in study if s.selected]
    assert [s.series.description for s in pick] == ["SmartScore - Gated 0.5 sec"]
    scouts = [s for s in study if s.series.description == "Scout"]
    assert len(scouts) == 2 and all(s.status == "rejected" for s in scouts)  # split: sagittal + coronal
    assert all("LOCALIZER" in s.reasons[0] for s in scouts)
    cr = [s for s in sels if s.series.modality == "CR"]
    assert cr and all(s.status == "rejected" and "Modality = 'CR'" in s.reasons[0] for s in cr)


def test_index_mr_series_with_manifest_and_ct_without_uids():
    ix = index_folder(real_data("mr_brain_series_siemens"))
    (mr,) = ix.all_series()
    assert mr.n_instances == 120 and mr.orientation == "axial"
    assert mr.spacing == pytest.approx((1.5, 0.41015625, 0.41015625))
    assert any(Path(p).name == "niivue-manifest.txt" for p, _ in ix.skipped)
    ix = index_folder(real_data("ct_thorax_abdomen_dicom_j2k", "series"))
    (ct,) = ix.all_series()  # de-identified: blank SeriesInstanceUID, grouped all the same
    assert ct.n_instances == 20 and ct.series_uid == "" and ct.key.startswith("no-uid-")
    assert any("no SeriesInstanceUID" in n for n in ct.notes)
    (tilt,) = index_folder(real_data("ct_head_gantry_tilt_ge", "series")).all_series()
    assert tilt.orientation == "oblique" and tilt.obliquity_deg == pytest.approx(18.5, abs=0.05)
