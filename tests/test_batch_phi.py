"""PHI redaction: whole identifiers gone from text and log records, UIDs and ordinary words intact."""
from __future__ import annotations

import io
import logging

import pytest

from pipeline.batch import phi


@pytest.fixture(autouse=True)
def _clean_registry():
    phi.clear()
    yield
    phi.clear()


def test_registered_values_are_redacted_as_whole_tokens():
    phi.register("1001", "DOE^JOHN^^DR", "19470317", "MRN734111X")
    r = phi.redact
    assert r("series 1.2.1001.5 and 1.2.19470317.1") == "series 1.2.1001.5 and 1.2.19470317.1"  # UIDs intact
    assert r("/data/1001/x") == "/data/[PHI]/x"
    assert r("DOE_JOHN folder") == "[PHI]_[PHI] folder"
    assert r("born 1947-03-17 or 19470317") == "born [PHI] or [PHI]"
    assert r("John Doe was here; JOHNSON was not") == "[PHI] was here; JOHNSON was not"
    assert r("id=MRN734111X, other MRN734111XY") == "id=[PHI], other MRN734111XY"
    assert r("unregistered SMITH^ANNA too") == "unregistered [PHI] too"


def test_register_dataset_and_log_filter():
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "QUIXBY^ANNA", "P-778899", "19800101"
    phi.register_dataset(ds)
    stream = io.StringIO()
    h = logging.StreamHandler(stream)
    phi.install_filter([h])
    log = logging.getLogger("test.phi")
    log.addHandler(h)
    log.setLevel(logging.INFO)
    try:
        log.info("reading %s (%s, born %s)", "Anna Quixby", "P-778899", "1980-01-01")
        try:
            raise ValueError("bad value for patient P-778899")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(h)
    text = stream.getvalue()
    assert "778899" not in text and "Quixby" not in text.title() and "1980" not in text
    assert text.count("[PHI]") >= 4 and "ValueError" in text
