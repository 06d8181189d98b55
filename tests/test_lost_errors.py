"""Issue 16 item 8: no error is lost (the viewer's background thread, PHI registration)."""
from __future__ import annotations

import logging
import threading

import pytest

from pipeline.batch import phi


@pytest.fixture(autouse=True)
def _clean_registry():
    phi.clear()
    yield
    phi.clear()


class _StubViewer:
    """Just what ViewerApp._background touches: _on_main and _set_status (no window needed)."""

    def __init__(self):
        self.status = ""
        self.done = threading.Event()

    def _on_main(self, fn, *args, wait=True):
        fn(*args)

    def _set_status(self, text):
        self.status = text
        self.done.set()


@pytest.mark.parametrize("exc, shown", [(ZeroDivisionError("division by zero"), "internal error ZeroDivisionError"),
                                        (None, "error: no cutting plane")])
def test_viewer_background_errors_reach_the_status_line_and_the_log(exc, shown, caplog):
    pytest.importorskip("open3d")
    from pipeline.errors import SurgitwinError
    from viewer.app import ViewerApp

    def click(x, y):
        raise exc if exc is not None else SurgitwinError("no cutting plane: start_cut(structure) first")

    v = _StubViewer()
    with caplog.at_level(logging.ERROR, logger="viewer.app"):
        ViewerApp._background(v, click, 10, 20)
        assert v.done.wait(10), "the background thread died without a word"
    assert shown in v.status
    if exc is not None:  # an unexpected error also leaves its traceback in the log
        rec = [r for r in caplog.records if r.name == "viewer.app"]
        assert rec and rec[0].exc_info and "click" in rec[0].getMessage()


def _raw_dataset(patient_id: bytes):
    """A dataset as read from an explicit-VR file whose PatientID was written with VR US (odd length)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.dataset import Dataset
    from pydicom.tag import Tag

    ds = Dataset()
    ds[0x00100010] = RawDataElement(Tag(0x00100010), "PN", 12, b"QUIXBY^ANNA ", 0, True, True)
    ds[0x00100020] = RawDataElement(Tag(0x00100020), "US", len(patient_id), patient_id, 0, True, True)
    return ds


def test_a_value_pydicom_cannot_convert_is_still_redacted():
    ds = _raw_dataset(b"MRN7731")  # 7 bytes as US: pydicom raises on conversion
    with pytest.raises(Exception):
        ds.get("PatientID")
    phi.register_dataset(ds)
    assert phi.redact("study of MRN7731 (Anna Quixby)") == "study of [PHI] ([PHI])"


def test_a_value_that_cannot_be_read_at_all_fails_loudly():
    class Broken:
        def get(self, kw):
            if kw == "PatientID":
                raise ValueError("corrupt element")
            return None

        def get_item(self, kw):
            raise KeyError(kw)

    with pytest.raises(phi.PhiError) as ei:
        phi.register_dataset(Broken())
    assert "PatientID" in str(ei.value) and ei.value.rule


def test_a_study_whose_phi_cannot_be_registered_fails_instead_of_running(tmp_path, monkeypatch):
    from batch_helpers import write_study
    from pipeline.batch import run_case

    write_study(tmp_path / "in", 3, shape=(8, 16, 16))
    called = []

    def boom(ds):
        raise phi.PhiError("the patient identity attribute PatientID can be neither read nor taken as raw bytes",
                           rule="every patient identity value is registered before the study is processed")

    monkeypatch.setattr(phi, "register_dataset", boom)
    task = {"key": "s3", "input": str(tmp_path / "in"), "cases_dir": str(tmp_path / "cases"),
            "logs_dir": str(tmp_path / "logs"), "work_dir": str(tmp_path / "work"),
            "case_fn": lambda i, o, **kw: called.append(i) or {"status": "done"}, "case_kwargs": {}}
    (tmp_path / "cases").mkdir()
    out = run_case.execute(task)
    assert out["status"] == "failed" and "PhiError" in out["reason"] and not called
