"""Batch recognition of a returning patient (pipeline.followup.batch, the --case-fn rule)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from followup_helpers import FOLLOWUP_DATE, write_follow_up
from pipeline.followup.batch import find_patient_scene, patient_key, study_or_follow_up, tag_scene
from scene_factory import SAMPLE

pytestmark = pytest.mark.slow  # end-to-end: left out by `make test-fast`


def _write(tmp_path, name, patient_id):
    from pipeline.dicom_writer import DicomMeta, write_dicom_series
    from pipeline.phantom import make_phantom

    ct, _ = make_phantom(0, shape=(4, 16, 16), spacing=(5.0, 20.0, 20.0), noise_sd=0)
    folder = tmp_path / name
    write_dicom_series(ct, folder, DicomMeta(patient_id=patient_id, uid_seed=name))
    return folder


def test_patient_key_is_a_stable_pseudonym_of_the_patient_id(tmp_path):
    a1, a2, b = _write(tmp_path, "a1", "PAT-1"), _write(tmp_path, "a2", "PAT-1"), _write(tmp_path, "b", "PAT-2")
    (k1, s1), (k2, s2), (kb, _) = patient_key(a1), patient_key(a2), patient_key(b)
    assert k1 == k2 and k1 != kb and s1 != s2
    assert len(k1) == 16 and "PAT" not in k1
    assert patient_key(_write(tmp_path, "none", ""))[0] is None  # no PatientID: never matches


def test_find_patient_scene_uses_the_key_and_the_earliest_study(tmp_path):
    cases = tmp_path / "cases"
    for name, date, key in (("z_late", "20250301", "k1"), ("a_early", "20240101", "k1"), ("other", "20200101", "k2"),
                            (".staging", "20000101", "k1")):
        (cases / name).mkdir(parents=True)
        (cases / name / "scene.json").write_text(json.dumps({"source": {"study_date": date}}))
        tag_scene(cases / name, key)
    assert find_patient_scene(cases, "k1").name == "a_early"
    assert find_patient_scene(cases, "k2").name == "other"
    assert find_patient_scene(cases, "k3") is None and find_patient_scene(cases, None) is None


@pytest.mark.slow
def test_a_returning_patient_becomes_a_time_point_of_their_scene(tmp_path):
    cases = tmp_path / "cases"
    first = study_or_follow_up(SAMPLE / "dicom", cases / "study1", model="hu_rules")
    assert first["status"] == "done" and first["followup"] is None
    key = json.loads((cases / "study1" / "scene.json").read_text())["source"]["patient_key"]
    assert key == patient_key(SAMPLE / "dicom")[0]
    folder, _, truth = write_follow_up(tmp_path, seed=1, tumor_growth_mm=0.0)  # same PatientID, new study
    second = study_or_follow_up(folder, cases / "study2", model="hu_rules", rigid_only=True)
    assert second["status"] == "done" and second["followup"]["timepoint"] == FOLLOWUP_DATE
    assert json.loads((cases / "study2" / "followup.json").read_text())["scene"] == str(cases / "study1")
    assert (cases / "study1" / "timepoints" / FOLLOWUP_DATE / "scene.json").is_file()
    assert np.allclose(second["followup"]["registration"]["translation_mm"], truth.motion[:3, 3], atol=1.0)
    again = study_or_follow_up(folder, cases / "study3", model="hu_rules", rigid_only=True)
    assert again["status"] == "skipped" and "already in scene study1" in again["reason"]


def test_batch_follow_up_flag_selects_the_follow_up_case_function(tmp_path, monkeypatch):
    """`surgitwin batch --follow-up` runs each study through the returning-patient rule with the
    pipeline's options; combined with --case-fn it is refused with a clear message."""
    from pipeline import cli
    from pipeline.batch import runner

    seen = {}

    def fake_run_batch(inputs, out, opts, reporter=None):
        seen["opts"] = opts

        class S:
            def text(self):
                return "ok"

            def to_dict(self):
                return {}

            interrupted = False
            ok = True

        return S()

    monkeypatch.setattr(runner, "run_batch", fake_run_batch)
    cli.main(["batch", str(tmp_path), "--out", str(tmp_path / "b"), "--follow-up", "--model", "hu_rules"])
    assert seen["opts"].case_fn == runner.FOLLOW_UP_CASE_FN and seen["opts"].model == "hu_rules"
    rc = cli.main(["batch", str(tmp_path), "--out", str(tmp_path / "c"), "--follow-up", "--case-fn", "x:y"])
    assert rc == 1
