"""De-identification (PS3.15 Basic profile): identity gone, UIDs consistent, geometry and pixels
kept, mapping only where asked; batch --deidentify leaves no identity anywhere in its outputs."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

import batch_helpers as bh
from pipeline.deid import Deidentifier, deidentify_tree, load_mapping

EXTRA_PHI = ["DR^STRANGELOVE^X", "STRANGELOVE", "Hospital of Nowhere", "TECH^ONEPERSON", "ALT-991177",
             "12 Quuxbridge Street", "ACC00050", "+44 7700 900123", "SPSID-5511"]


def _patient_strings(n: int) -> list[str]:
    name, pid, dob = bh.patient(n)
    return [name, name.split("^")[0], pid, dob]


def _identified_study(folder: Path, n: int) -> list[Path]:
    """A phantom series plus the attributes real studies carry: physicians, institution,
    other IDs, address, a private block with the name, a request sequence, an overlay, and a
    reference from every slice to slice 0 (to check references are remapped consistently)."""
    files = bh.write_study(folder, n)
    first_sop = pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID
    name = bh.patient(n)[0]
    for f in files:
        ds = pydicom.dcmread(f)
        ds.ReferringPhysicianName = "DR^STRANGELOVE^X"
        ds.InstitutionName = "Hospital of Nowhere"
        ds.OperatorsName = "TECH^ONEPERSON"
        ds.OtherPatientIDs = "ALT-991177"
        ds.PatientAddress = "12 Quuxbridge Street"
        ds.PatientTelephoneNumbers = "+44 7700 900123"
        ds.InstanceCreationDate = "20240506"
        block = ds.private_block(0x0029, "ACME 1.0", create=True)
        block.add_new(0x10, "LO", name)
        req = Dataset()
        req.ScheduledProcedureStepID = "SPSID-5511"
        req.RequestedProcedureID = "RP-1"
        ds.RequestAttributesSequence = Sequence([req])
        ref = Dataset()
        ref.ReferencedSOPClassUID = ds.SOPClassUID
        ref.ReferencedSOPInstanceUID = first_sop
        ds.ReferencedImageSequence = Sequence([ref])
        ds.add_new(0x60003000, "OW", b"\x00" * 8)  # overlay data (burnt-in style graphics)
        ds.save_as(f, enforce_file_format=True)
    return files


@pytest.fixture(scope="module")
def identified(tmp_path_factory):
    root = tmp_path_factory.mktemp("ident")
    files = _identified_study(root / "study", 50)
    return root / "study", files


def test_basic_profile_removes_identity_and_keeps_geometry_and_pixels(identified, tmp_path):
    from pipeline.ingest import read_input

    src, files = identified
    assert bh.grep_tree(src, _patient_strings(50) + EXTRA_PHI)  # the test data really carries them
    out = tmp_path / "deid"
    rep = deidentify_tree(src, out)
    assert len(rep.written) == 32 and not rep.skipped and len(rep.studies) == 1
    assert bh.grep_tree(out, _patient_strings(50) + EXTRA_PHI) == []

    orig = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in files}
    new = [pydicom.dcmread(p) for p in rep.written]
    o0 = next(iter(orig.values()))
    assert len({d.StudyInstanceUID for d in new}) == 1 and new[0].StudyInstanceUID != o0.StudyInstanceUID
    assert len({d.SeriesInstanceUID for d in new}) == 1 and new[0].SeriesInstanceUID != o0.SeriesInstanceUID
    assert len({d.FrameOfReferenceUID for d in new}) == 1 and new[0].FrameOfReferenceUID != o0.FrameOfReferenceUID
    assert len({d.SOPInstanceUID for d in new}) == 32 and not {d.SOPInstanceUID for d in new} & set(orig)
    by_pos = {tuple(d.ImagePositionPatient): d for d in new}
    for o in orig.values():
        d = by_pos[tuple(o.ImagePositionPatient)]
        assert d.PixelData == o.PixelData  # pixels byte for byte
        for kw in ("ImageOrientationPatient", "PixelSpacing", "SliceThickness", "RescaleIntercept", "Rows", "SOPClassUID"):
            assert d.get(kw) == o.get(kw), kw
        assert d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID
        assert d.PatientIdentityRemoved == "YES"
        assert d.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert str(d.PatientName) == d.PatientID and d.PatientID.startswith("ANON-")
        assert d.PatientBirthDate == "" and "OtherPatientIDs" not in d and "InstitutionName" not in d
        assert not any(e.tag.is_private for e in d) and 0x60003000 not in d
        assert "RequestAttributesSequence" not in d and "InstanceCreationDate" not in d
    # references point at the same (remapped) instance: slice 0's new SOP Instance UID
    first_new = by_pos[tuple(pydicom.dcmread(files[0]).ImagePositionPatient)].SOPInstanceUID
    assert {d.ReferencedImageSequence[0].ReferencedSOPInstanceUID for d in new} == {first_new}
    # the volume read back is identical, voxel for voxel and in LPS
    a, b = read_input(src), read_input(out)
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-6)


def test_mapping_is_kept_only_where_asked_and_makes_runs_consistent(identified, tmp_path):
    src, _ = identified
    out1 = tmp_path / "a"
    deidentify_tree(src, out1)
    assert {p.suffix for p in out1.rglob("*") if p.is_file()} == {".dcm"}  # nothing but instances
    mp = tmp_path / "secret" / "map.json"
    r2 = deidentify_tree(src, tmp_path / "b", map_path=mp)
    assert stat.S_IMODE(os.stat(mp).st_mode) == 0o600
    m = load_mapping(mp)
    pid = bh.patient(50)[1]
    assert m["patients"][pid].startswith("ANON-")
    r3 = deidentify_tree(src, tmp_path / "c", map_path=mp)  # same map: same replacements
    assert sorted(Path(p).relative_to(tmp_path / "b") for p in r2.written) == \
        sorted(Path(p).relative_to(tmp_path / "c") for p in r3.written)
    assert sorted(Path(p).relative_to(tmp_path / "b") for p in r2.written) != \
        sorted(Path(p).relative_to(tmp_path / "d") for p in deidentify_tree(src, tmp_path / "d").written)


def test_same_patient_gets_one_pseudonym_and_studies_stay_apart(tmp_path):
    d = Deidentifier()
    a = Dataset()
    a.PatientID, a.PatientName, a.StudyInstanceUID, a.SOPInstanceUID = "P1", "X^Y", "1.2.3", "1.2.3.1"
    b = Dataset()
    b.PatientID, b.PatientName, b.StudyInstanceUID, b.SOPInstanceUID = "P1", "X^Y", "1.2.4", "1.2.4.1"
    d.dataset(a)
    d.dataset(b)
    assert a.PatientID == b.PatientID and a.StudyInstanceUID != b.StudyInstanceUID
    assert d.uid("1.2.3") == a.StudyInstanceUID and a.StudyInstanceUID.startswith("2.25.")


def test_burned_in_refused_non_dicom_skipped(tmp_path):
    src = tmp_path / "in"
    files = bh.write_tiny_series(src, 2, tag="burn", patient_n=51)
    ds = pydicom.dcmread(files[0])
    ds.BurnedInAnnotation = "YES"
    ds.save_as(files[0], enforce_file_format=True)
    (src / "notes.txt").write_text(f"patient {bh.patient(51)[0]}")
    rep = deidentify_tree(src, tmp_path / "out")
    assert len(rep.written) == 1
    reasons = dict(rep.skipped)
    assert "BurnedInAnnotation" in reasons[str(files[0])] and "not a readable DICOM" in reasons[str(src / "notes.txt")]
    assert len(deidentify_tree(src, tmp_path / "out2", allow_burned_in=True).written) == 2
    with pytest.raises(Exception, match="inside the input"):
        deidentify_tree(src, src / "sub")


def test_deid_command(identified, tmp_path, capsys):
    from pipeline.cli import main

    src, _ = identified
    assert main(["deid", str(src), str(tmp_path / "o"), "--json"]) == 0
    assert '"written": 32' in capsys.readouterr().out


@pytest.mark.slow  # test-fast stays under 60 s; runs in make test
def test_batch_deidentify_outputs_carry_no_identity(identified, tmp_path):
    """Real pipeline on the identified study with --deidentify: nothing under the batch folder
    (scenes, logs, manifest) holds the patient's name, ID, birth date or the other identifiers,
    and the scene's source UIDs are the replacements, not the originals."""
    from pipeline.batch.manifest import Manifest
    from pipeline.batch.runner import BatchOptions, run_batch
    from pipeline.scene import load_scene

    src, files = identified
    out = tmp_path / "batch"
    s = run_batch([str(src)], out, BatchOptions(workers=0, model="hu_rules", deidentify=True,
                                                deid_map=str(tmp_path / "keep" / "map.json")))
    assert s.totals["done"] == 1, s.text()
    assert bh.grep_tree(out, _patient_strings(50) + EXTRA_PHI) == []
    (row,) = Manifest(out, readonly=True).rows()
    scene = load_scene(row["outputs"]["scene"], load_meshes=False)
    o = pydicom.dcmread(files[0], stop_before_pixels=True)
    m = load_mapping(tmp_path / "keep" / "map.json")
    assert scene.source["study_instance_uid"] == m["uids"][o.StudyInstanceUID] != o.StudyInstanceUID
    assert scene.source["series_instance_uid"] == m["uids"][o.SeriesInstanceUID]
    assert not bh.grep_tree(out / "cases", [o.StudyInstanceUID, o.SeriesInstanceUID])
    assert row["timings"]["deid"] > 0


@pytest.mark.slow
def test_export_seg_deidentify_references_the_deidentified_source(identified, tmp_path):
    """export --format dicom-seg --deidentify with the map used for the source: the SEG holds no
    identity and references exactly the de-identified source series and instances."""
    from pipeline.cli import main
    from pipeline.run import run_case

    src, _ = identified
    scene = run_case(src, tmp_path / "scene", model="hu_rules", snapshot=False)
    mp = tmp_path / "map.json"
    rep = deidentify_tree(src, tmp_path / "deid", map_path=mp)
    seg_path = tmp_path / "seg.dcm"
    assert main(["export", str(scene.scene_path), "--format", "dicom-seg", "--out", str(seg_path),
                 "--deidentify", "--deid-map", str(mp)]) == 0
    assert bh.grep_tree(tmp_path / "seg.dcm", _patient_strings(50) + EXTRA_PHI) == []
    seg = pydicom.dcmread(seg_path)
    new = [pydicom.dcmread(p, stop_before_pixels=True) for p in rep.written]
    assert seg.PatientIdentityRemoved == "YES" and seg.PatientID == new[0].PatientID
    assert seg.StudyInstanceUID == new[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == new[0].FrameOfReferenceUID
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == new[0].SeriesInstanceUID
    refs = {r.ReferencedSOPInstanceUID for r in ref.ReferencedInstanceSequence}
    assert refs and refs <= {d.SOPInstanceUID for d in new}


def test_profile_table_names_only_real_attributes():
    """A misspelt keyword would silently never match: every table entry must be in the dictionary."""
    from pydicom.datadict import tag_for_keyword

    from pipeline.deid import ACTIONS

    assert len(ACTIONS) > 200
    assert [k for k in ACTIONS if tag_for_keyword(k) is None] == []
    assert ACTIONS["PatientBirthDate"] == "Z" and ACTIONS["StudyInstanceUID"] == "U"
    assert ACTIONS["InstitutionName"] == "X" and ACTIONS["PersonName"] == "D"
