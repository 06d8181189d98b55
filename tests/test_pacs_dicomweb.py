"""Against a real Orthanc: pull a study (QIDO/WADO-RS), run it, push the SEG (STOW-RS), read it back."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import batch_helpers as bh
import pacs_helpers as ph
from pipeline.batch.manifest import Manifest


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    o = ph.start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield o
    o.stop()


@pytest.fixture(scope="module")
def pulled(orthanc, tmp_path_factory):
    """Study of patient 30 uploaded to Orthanc, then `surgitwin pull` (which also runs it)."""
    from pipeline.cli import main

    src = tmp_path_factory.mktemp("src")
    files = bh.write_study(src / "ct", 30)
    (study_uid,) = orthanc.upload(files)
    out = tmp_path_factory.mktemp("pull") / "batch"
    rc = main(["pull", "--dicomweb", orthanc.dicomweb, "--study", study_uid, "--out", str(out),
               "--workers", "0", "--model", "hu_rules"])
    return study_uid, out, files, rc


@pytest.mark.slow
def test_pull_downloads_and_runs_the_study(pulled):
    import pydicom

    study_uid, out, files, rc = pulled
    assert rc == 0
    got = sorted((out / "pulled" / study_uid).rglob("*.dcm"))
    assert len(got) == len(files) == 32
    # byte-for-byte identical pixel data and identical geometry to what was uploaded
    orig = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in files}
    for f in got:
        ds = pydicom.dcmread(f)
        o = orig[ds.SOPInstanceUID]
        assert ds.PixelData == o.PixelData
        assert list(ds.ImagePositionPatient) == list(o.ImagePositionPatient)
    (row,) = Manifest(out, readonly=True).rows()
    assert row["status"] == "done" and row["study"] == study_uid and row["study_uid"] == study_uid


@pytest.mark.slow
def test_push_seg_and_read_it_back_from_orthanc(pulled, orthanc, tmp_path):
    import highdicom as hd
    import pydicom

    from pipeline.cli import main
    from pipeline.geometry import read_image_file
    from pipeline.pacs.dicomweb import make_client
    from pipeline.scene import load_scene

    study_uid, out, files, _ = pulled
    scene_dir = Path(Manifest(out, readonly=True).rows()[0]["outputs"]["scene"])
    assert main(["push", str(scene_dir), "--dicomweb", orthanc.dicomweb]) == 0

    client = make_client(orthanc.dicomweb)
    segs = client.search_for_series(study_instance_uid=study_uid, search_filters={"Modality": "SEG"})
    assert len(segs) == 1
    seg_series = segs[0]["0020000E"]["Value"][0]
    (ds,) = client.retrieve_series(study_uid, seg_series)
    seg = hd.seg.Segmentation.from_dataset(ds)
    assert ds.StudyInstanceUID == study_uid

    scene = load_scene(scene_dir, load_meshes=False)
    source_series = scene.source["series_instance_uid"]
    ref = ds.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == source_series
    names = {int(s.SegmentNumber): str(s.SegmentLabel) for s in ds.SegmentSequence}
    assert set(names.values()) <= set(scene.structure_names) and "body" in names.values()

    # expected masks, computed independently: the scene grid is the source grid, so source
    # slice at IPP p is label slice k with affine @ (k, 0, 0, 1) == p
    labels = read_image_file(scene_dir / "labels.nii.gz")
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    sops = [h.SOPInstanceUID for h in headers]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=sops, segment_numbers=sorted(names))
    for n, h in enumerate(headers):
        ipp = np.asarray(h.ImagePositionPatient, float)
        k = int(np.rint(labels.lps_to_index(ipp[None])[0][0]))
        np.testing.assert_allclose(labels.index_to_lps([[k, 0, 0]])[0], ipp, atol=1e-3)
        for j, num in enumerate(sorted(names)):
            lid = scene.labels.by_name(names[num]).id
            expected = labels.array[k] == lid
            np.testing.assert_array_equal(pixels[n, :, :, j] > 0, expected, err_msg=f"{names[num]} slice {k}")
    # the comparison can see a left-right flip: the body mask is not mirror-symmetric
    body = labels.array == scene.labels.by_name("body").id
    assert (body != body[:, :, ::-1]).sum() > 50


@pytest.mark.slow
def test_pull_unknown_study_names_it(orthanc, tmp_path):
    from pipeline.pacs.dicomweb import PacsError, pull_study

    with pytest.raises(PacsError, match="1.2.3.4.5.6.7.8.9 is not on the server"):
        pull_study(orthanc.dicomweb, "1.2.3.4.5.6.7.8.9", tmp_path / "x")
    with pytest.raises(PacsError, match="must be a DICOM UID"):
        pull_study(orthanc.dicomweb, "../../etc", tmp_path / "x")


@pytest.mark.slow
def test_push_fetches_source_headers_by_wado_when_not_local(pulled, orthanc, tmp_path):
    """The scene's source folder is gone: push gets the source series from the server itself."""
    import shutil

    from pipeline.pacs.dicomweb import push_scene

    study_uid, out, _, _ = pulled
    scene_dir = Path(Manifest(out, readonly=True).rows()[0]["outputs"]["scene"])
    moved = Path(shutil.copytree(scene_dir, tmp_path / "scene"))
    sj = json.loads((moved / "scene.json").read_text())
    sj["source"]["input"] = str(tmp_path / "gone")
    sj["source"].pop("dicom_dir", None)
    sj["source"].pop("files", None)
    (moved / "scene.json").write_text(json.dumps(sj))
    rep = push_scene(moved, orthanc.dicomweb, save_to=tmp_path / "seg.dcm")
    assert rep.source == "WADO-RS" and rep.study_uid == study_uid
    assert (tmp_path / "seg.dcm").exists()
    shutil.rmtree(moved)
