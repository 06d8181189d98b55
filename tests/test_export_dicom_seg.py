"""DICOM SEG over the source series: references, frame-to-slice mapping in patient space, validity."""
import subprocess

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.export import ExportError
from pipeline.export.dicom_seg import write_dicom_seg
from pipeline.scene import load_scene, save_scene
from tests.conftest import require_tool
from tests.scene_factory import FOR_UID, SERIES_UID, STUDY_UID, cached_constructed_scene, write_dicom_series

pytestmark = pytest.mark.slow  # end-to-end: left out by `make test-fast`


@pytest.fixture
def scene_with_dicom(tmp_path):
    path, truth = cached_constructed_scene(tmp_path)
    sc = load_scene(path)
    # the series as a scanner would send it: files in reverse slice order, geometry from the image
    dicom = write_dicom_series(sc.load_image(), tmp_path / "dicom")
    sc.source["dicom_dir"] = str(dicom)
    save_scene(sc, write_meshes=False)
    return load_scene(path), truth, dicom


def _frame_points(seg, frame_index, rows, cols):
    """LPS mm of the pixels (rows, cols) of one SEG frame, from the SEG's own geometry."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    iop = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    dr, dc = (float(x) for x in shared.PixelMeasuresSequence[0].PixelSpacing)
    ipp = np.asarray(seg.PerFrameFunctionalGroupsSequence[frame_index].PlanePositionSequence[0].ImagePositionPatient, float)
    return ipp + rows[:, None] * dr * iop[3:] + cols[:, None] * dc * iop[:3]


def test_seg_references_source_and_maps_frames_to_slices(scene_with_dicom, tmp_path):
    import highdicom as hd
    import pydicom

    sc, truth, dicom = scene_with_dicom
    out = write_dicom_seg(sc, tmp_path / "seg.dcm")
    seg = hd.seg.segread(out)
    assert seg.StudyInstanceUID == STUDY_UID and seg.FrameOfReferenceUID == FOR_UID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == SERIES_UID
    src = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(dicom.iterdir())]
    referenced = {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced <= {d.SOPInstanceUID for d in src}
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert labels == ["liver", "tumour", "aorta", "kidney_left"]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert seg.SegmentSequence[1].SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"

    # every source slice: SEG pixels == the scene's label map on that slice (found by position)
    lm = sc.load_labelmap()
    inv = np.linalg.inv(lm.volume.affine)
    ids = [lm.labels.by_name(n).id for n in labels]
    uids = [d.SOPInstanceUID for d in src]
    px = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2, 3, 4],
                                           assert_missing_frames_are_empty=True)
    for d, frame in zip(src, px):
        k = int(np.rint(inv[:3, :3] @ np.asarray(d.ImagePositionPatient, float) + inv[:3, 3])[0])
        for s, lid in enumerate(ids):
            np.testing.assert_array_equal(frame[..., s].astype(bool), lm.array[k] == lid)

    # in patient space, from the SEG's own per-frame geometry: the left kidney is on the left,
    # and its pixels fall inside the analytic box
    box = truth.shapes["kidney_left"]
    seg_number = labels.index("kidney_left") + 1
    hits, inside = 0, 0
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        if item.SegmentIdentificationSequence[0].ReferencedSegmentNumber != seg_number:
            continue
        r, c = np.nonzero(seg.get_stored_frame(f + 1))
        pts = _frame_points(seg, f, r, c)
        assert np.all(pts[:, 0] > 40)
        hits += len(pts)
        inside += int(np.count_nonzero(box.distance(pts) <= 0.5 * truth.voxel_mm))
    assert hits > 1000 and inside == hits


def test_seg_is_valid_dicom(scene_with_dicom, tmp_path):
    tool = require_tool("dciodvfy", "dicom3tools")
    sc, _, _ = scene_with_dicom
    out = write_dicom_seg(sc, tmp_path / "seg.dcm", structures=["tumour", "aorta"])
    p = subprocess.run([tool, str(out)], capture_output=True, text=True)
    errors = [l for l in (p.stdout + p.stderr).splitlines() if l.startswith("Error")]
    assert errors == []


def test_seg_errors_and_command(scene_with_dicom, tmp_path, capsys):
    sc, _, dicom = scene_with_dicom
    sc.source.pop("dicom_dir")
    sc.source["input"] = str(tmp_path / "nowhere")
    with pytest.raises(ExportError, match="--source-dicom"):
        write_dicom_seg(sc, tmp_path / "x.dcm")
    with pytest.raises(ExportError, match="spleen"):
        write_dicom_seg(sc, tmp_path / "x.dcm", dicom_dir=dicom, structures=["spleen"])
    assert not (tmp_path / "x.dcm").exists()
    assert main(["export", str(sc.root), "--format", "dicom-seg", "--source-dicom", str(dicom),
                 "--structure", "liver", "--out", str(tmp_path / "liver.dcm")]) == 0
    assert (tmp_path / "liver.dcm").stat().st_size > 1000


def test_seg_over_an_enhanced_multiframe_source(tmp_path):
    """One Enhanced CT file (frames stored in shuffled order, geometry only in the functional
    groups): the SEG references that instance frame by frame, and every SEG pixel, placed with the
    SEG's own geometry, lands in the structure it names (left kidney on the patient's left)."""
    import highdicom as hd
    import pydicom

    from dicom_synth import new_uids, write_enhanced_ct

    path, truth = cached_constructed_scene(tmp_path)
    sc = load_scene(path)
    img = sc.load_image()
    a = img.affine
    k = np.random.default_rng(0).permutation(img.shape[0])
    pos = np.round([(a @ [kk, 0, 0, 1])[:3] for kk in k], 6)  # DS values: at most 16 characters
    iop = np.round(np.r_[a[:3, 2] / np.linalg.norm(a[:3, 2]), a[:3, 1] / np.linalg.norm(a[:3, 1])], 10).tolist()
    uids = new_uids("enhanced")
    (tmp_path / "enh").mkdir()
    f = write_enhanced_ct(tmp_path / "enh" / "ct.dcm", img.array[k].astype(np.int16), pos, iop=iop,
                          spacing=(round(float(np.linalg.norm(a[:3, 1])), 8), round(float(np.linalg.norm(a[:3, 2])), 8)),
                          uids=uids)
    ds = pydicom.dcmread(f)  # patient/study attributes a SEG copies from its source
    ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "SYNTH^ENHANCED", "19700101", "O"
    ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "120000", "1", "A1", ""
    ds.save_as(f)
    sc.source.update({"series_instance_uid": uids["series"], "dicom_dir": str(f.parent)})
    save_scene(sc, write_meshes=False)
    sc = load_scene(path)
    seg = hd.seg.segread(write_dicom_seg(sc, tmp_path / "seg.dcm", structures=["kidney_left", "liver"]))
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == uids["series"] and len(ref.ReferencedInstanceSequence) == 1
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    lm = sc.load_labelmap()
    for name in ("kidney_left", "liver"):
        number, lid = labels.index(name) + 1, lm.labels.by_name(name).id
        hits = 0
        for fi, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
            if item.SegmentIdentificationSequence[0].ReferencedSegmentNumber != number:
                continue
            src = item.DerivationImageSequence[0].SourceImageSequence[0]
            assert src.ReferencedSOPInstanceUID == ds.SOPInstanceUID and int(src.ReferencedFrameNumber) >= 1
            r, c = np.nonzero(seg.get_stored_frame(fi + 1))
            pts = _frame_points(seg, fi, r, c)
            idx = np.rint(np.c_[pts, np.ones(len(pts))] @ np.linalg.inv(lm.volume.affine).T)[:, :3].astype(int)
            assert np.all(lm.array[tuple(idx.T)] == lid)
            if name == "kidney_left":
                assert np.all(pts[:, 0] > 40)
            hits += len(pts)
        assert hits == int(np.count_nonzero(lm.array == lid))
    tool = require_tool("dciodvfy", "dicom3tools")
    p = subprocess.run([tool, str(tmp_path / "seg.dcm")], capture_output=True, text=True)
    assert [l for l in (p.stdout + p.stderr).splitlines() if l.startswith("Error")] == []
