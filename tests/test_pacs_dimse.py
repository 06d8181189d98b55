"""DIMSE against a real Orthanc (issue 12 item 13): C-FIND + C-GET pull, C-STORE push of the
SEG, idempotent (a second push of the same scene duplicates nothing), unknown peers fail fast."""
from __future__ import annotations

import pydicom
import pytest

import batch_helpers as bh
import pacs_helpers as ph
from pipeline.cli import main
from pipeline.pacs.dicomweb import PacsError
from pipeline.pacs.dimse import Peer, find_series, pull_study_dimse

US = "SURGITWIN"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    mods = {"surgitwin": {"AET": US, "Host": "127.0.0.1", "Port": 1, "AllowEcho": True, "AllowFind": True,
                          "AllowGet": True, "AllowMove": False, "AllowStore": True}}
    o = ph.start_orthanc(tmp_path_factory.mktemp("orthanc_dimse"), modalities=mods)
    files = bh.write_study(tmp_path_factory.mktemp("dimse_src"), 71, shape=(12, 64, 64))
    (study,) = o.upload(files)
    yield o, study, files
    o.stop()


def _peer(o, calling=US) -> Peer:
    return Peer.parse(f"127.0.0.1:{o.dicom_port}", o.aet, calling, timeout=10)


@pytest.mark.slow
def test_pull_by_c_find_and_c_get(orthanc, tmp_path):
    o, study, files = orthanc
    rep = pull_study_dimse(_peer(o), study, tmp_path / "pulled")
    assert len(rep.files) == 12 and len(rep.series) == 1
    got = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in rep.files}
    assert got == {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    a = pydicom.dcmread(sorted(rep.files)[0])
    assert a.pixel_array.shape == (64, 64)
    with pytest.raises(PacsError, match="not on"):
        pull_study_dimse(_peer(o), "1.2.3.4.5.6", tmp_path / "none")
    with pytest.raises(PacsError, match="rejected|aborted"):  # a calling AE title Orthanc does not know
        find_series(_peer(o, "STRANGER"), study)


@pytest.mark.slow
def test_push_by_c_store_is_idempotent(orthanc, tmp_path, capsys):
    from pipeline.run import run_case

    o, study, files = orthanc
    src = tmp_path / "src"
    src.mkdir()
    for f in files:
        (src / f.name).write_bytes(f.read_bytes())
    scene = run_case(src, tmp_path / "scene", model="hu_rules", snapshot=False)
    args = ["push", str(scene.scene_path), "--dimse", f"127.0.0.1:{o.dicom_port}", "--called-aet", o.aet,
            "--calling-aet", US]
    assert main(args) == 0
    assert ": stored" in capsys.readouterr().out
    assert main(args) == 0  # the same scene again
    assert "already on the server" in capsys.readouterr().out
    segs = [s for s in find_series(_peer(o), study) if s["modality"] == "SEG"]
    assert len(segs) == 1 and int(segs[0]["n_instances"]) == 1
    r = main(["push", str(scene.scene_path), "--dimse", "127.0.0.1:1", "--called-aet", o.aet])
    assert r == 1 and "association with" in capsys.readouterr().err
