"""dataset validate: nnU-Net v2's consecutive labels, files named as they are on disk; from-dicom
reads both label-name forms the project writes (issue 15, items 6 and 8)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.test_dataset import _case, _vol


def _one_case(root, labels=None, case="case_001"):
    from pipeline.train.dataset import write_case, write_dataset_json

    img, lab = _case()
    v = _vol(img)
    write_case(root, case, v, v.with_array(lab))
    write_dataset_json(root, labels or {"liver": 1, "spleen": 2}, 1)
    return v, lab


def test_validate_refuses_non_consecutive_label_values(tmp_path):
    from pipeline.geometry import write_image_file
    from pipeline.train.dataset import validate_dataset, write_dataset_json

    v, lab = _one_case(tmp_path)
    lab = np.where(lab == 2, 3, lab).astype(np.uint8)
    write_image_file(v.with_array(lab), tmp_path / "labelsTr" / "case_001.nii.gz", lab)
    write_dataset_json(tmp_path, {"liver": 1, "spleen": 3}, 1)
    rep = validate_dataset(tmp_path)
    assert not rep.ok and any("consecutive" in e and "[0, 1, 3]" in e for e in rep.errors), rep.errors


def test_validate_names_missing_and_stray_channel_files_as_on_disk(tmp_path):
    from pipeline.train.dataset import validate_dataset

    v, lab = _one_case(tmp_path)
    d = json.loads((tmp_path / "dataset.json").read_text())
    d["channel_names"] = {"0": "CT", "1": "CT_late"}
    (tmp_path / "dataset.json").write_text(json.dumps(d))
    img = tmp_path / "imagesTr" / "case_001_0000.nii.gz"
    (tmp_path / "imagesTr" / "lonely_case_0001.nii.gz").write_bytes(img.read_bytes())   # no label, channel 1 only
    (tmp_path / "imagesTr" / "case_002.nii.gz").write_bytes(img.read_bytes())           # no channel suffix
    rep = validate_dataset(tmp_path)
    errs = "\n".join(rep.errors)
    assert "case_001_0001.nii.gz: missing; channel 1 ('CT_late')" in errs, errs
    assert "lonely_case_0001.nii.gz: image without a label file" in errs, errs
    assert "lonely_case_0000" not in errs and "case_002_0000" not in errs
    assert "case_002.nii.gz: image file names must be <case>_<4-digit channel>" in errs, errs


@pytest.mark.parametrize("form", ["list", "dict", "dataset_json"])
def test_label_file_with_either_labels_json_form(tmp_path, form):
    from pipeline.geometry import write_image_file
    from pipeline.train.dataset import read_label_source

    img, lab = _case()
    v = _vol(img)
    write_image_file(v.with_array(lab), tmp_path / "seg.nii.gz", lab)
    raw = {"list": [{"id": 1, "name": "Liver", "rgb": [1, 2, 3]}, {"id": 2, "name": "spleen"}],
           "dict": {"1": "Liver", "2": "spleen"},
           "dataset_json": {"labels": {"background": 0, "liver": 1, "spleen": 2}}}[form]
    (tmp_path / "labels.json").write_text(json.dumps(raw))
    arr, names = read_label_source(tmp_path / "seg.nii.gz", v)
    assert names == {"liver": 1, "spleen": 2}
    assert (arr == lab).all()


def test_from_dicom_with_the_phantoms_own_labels_json(tmp_path, capsys):
    """The phantom writes labels.json as a list (its label table); from-dicom reads it."""
    from pipeline.cli import main
    from pipeline.phantom import generate_sample

    generate_sample(tmp_path / "ph", seed=1, shape=(24, 48, 48), spacing=(4.0, 4.0, 4.0))
    assert isinstance(json.loads((tmp_path / "ph" / "labels.json").read_text()), list)
    rc = main(["dataset", "from-dicom", str(tmp_path / "ds"), "--case", str(tmp_path / "ph" / "dicom"),
               str(tmp_path / "ph" / "ground_truth_labels.nii.gz"), "--labels", "liver,spleen"])
    out = capsys.readouterr().out
    assert rc == 0, out
    d = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert d["labels"] == {"background": 0, "liver": 1, "spleen": 2}


def test_label_names_refuse_other_shapes(tmp_path):
    from pipeline.errors import SurgitwinError
    from pipeline.train.labels import parse_label_names

    with pytest.raises(SurgitwinError, match="labels.json.*list must hold"):
        parse_label_names(["liver", "spleen"], tmp_path / "labels.json")
