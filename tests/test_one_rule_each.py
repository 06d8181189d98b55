"""Logic that had drifted between copies, now in one place each (issue 16, item 5): validation
error formatting, --bundle-set parsing, the label dtype, Dice, and `surgitwin segment --config`
reading its input the way `surgitwin run` does (the file's ingest and selection sections)."""
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.dicom_writer import DicomMeta, write_dicom_series
from pipeline.errors import ConfigError
from pipeline.geometry import read_image_file
from pipeline.phantom import make_phantom
from tests.dicom_synth import write_series

SMALL = dict(shape=(24, 64, 64), spacing=(6.0, 5.0, 5.0))


def _two_series(folder):
    """One study, two CT series: 'short' (24 slices) and 'long' (30 slices, preferred by default)."""
    short, _ = make_phantom(3, **SMALL)
    long_, _ = make_phantom(3, shape=(30, 64, 64), spacing=(4.8, 5.0, 5.0))
    study = "1.2.826.0.1.3680043.8.498.99"
    write_dicom_series(short, folder / "a", DicomMeta(study_instance_uid=study, series_instance_uid=study + ".1",
                                                      series_description="short", series_number=1))
    write_dicom_series(long_, folder / "b", DicomMeta(study_instance_uid=study, series_instance_uid=study + ".2",
                                                      series_description="long", series_number=2))
    return folder


@pytest.mark.slow  # test-fast stays under 60 s; runs in make test
def test_segment_config_selection_section_picks_the_series(tmp_path):
    dcm = _two_series(tmp_path / "dcm")
    cfg = tmp_path / "f.yaml"
    cfg.write_text("selection:\n  rules:\n    - name: the short one\n      conditions:\n"
                   "        SeriesDescription: \"^short$\"\n")
    assert main(["segment", str(dcm), "--model", "hu_rules", "--out", str(tmp_path / "seg"), "--config", str(cfg)]) == 0
    assert read_image_file(tmp_path / "seg" / "labels.nii.gz").shape[0] == 24  # not the default's 30-slice series
    assert main(["segment", str(dcm), "--model", "hu_rules", "--out", str(tmp_path / "seg2")]) == 0
    assert read_image_file(tmp_path / "seg2" / "labels.nii.gz").shape[0] == 30


def test_segment_config_ingest_section_is_applied(tmp_path, capsys):
    z = np.array([0, 2, 4, 7, 10, 13], float)  # uneven gaps: resampled by default, refused on request
    stored = np.full((6, 16, 16), 1024, np.int16)
    pos = np.stack([np.full_like(z, 5.0), np.full_like(z, -5.0), z], axis=1)
    write_series(tmp_path / "dcm", stored, pos)
    cfg = tmp_path / "f.yaml"
    cfg.write_text("ingest:\n  on_uneven: refuse\n")
    assert main(["segment", str(tmp_path / "dcm"), "--model", "hu_rules", "--out", str(tmp_path / "seg"),
                 "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "evenly spaced" in err and "Traceback" not in err
    assert not (tmp_path / "seg").exists()


def test_bundle_set_is_parsed_once_the_same_for_run_and_segment(tmp_path, capsys):
    from pipeline.segment.bundle import Overrides, parse_overrides

    # a bad item fails the same way in both commands, before any input is read
    assert main(["run", str(tmp_path / "absent"), "--out", str(tmp_path / "o"), "--bundle-set", "pixdim"]) == 1
    run_err = capsys.readouterr().err.split("error: ", 1)[1]
    assert main(["segment", str(tmp_path / "absent"), "--out", str(tmp_path / "o"), "--bundle-set", "pixdim"]) == 1
    seg_err = capsys.readouterr().err.split("error: ", 1)[1]
    assert run_err == seg_err and "KEY=VALUE" in run_err and "absent" not in run_err
    # parsed values pass through other hands unparsed again: '"a,b"' is the string a,b, not a list
    once = parse_overrides(['name="a,b"', "pixdim=3,3,3"])
    assert isinstance(once, Overrides) and once == {"name": "a,b", "pixdim": (3, 3, 3)}
    assert parse_overrides(once) is once
    assert parse_overrides({"name": "x,y"}) == {"name": ["x", "y"]}  # text written in a YAML: parsed like the CLI's


def test_validation_errors_are_formatted_one_way(tmp_path):
    """Every pydantic-validated file: its path, the dotted key, the message, what was found."""
    from pipeline.planning.rules import load_rules
    from pipeline.scene.plausibility import load_plausibility_rules
    from pipeline.segment.api import segment_config
    from pipeline.segment.registry import load_model_file
    from pipeline.train.config import validate_config

    planning, plaus, model = tmp_path / "planning.yaml", tmp_path / "plausibility.yaml", tmp_path / "m.yaml"
    planning.write_text("trajectory:\n  classes:\n    - {name: x, patterns: [x], margin_mm: -3}\n")
    plaus.write_text("nonsense_key: 1\n")
    model.write_text("backend: hu_rules\nmodality: 7\n")
    cases = [(lambda: load_rules(planning), "trajectory.classes.0.margin_mm", "(found -3)"),
             (lambda: load_plausibility_rules(plaus), "nonsense_key", "unknown key (misspelt?) (found 1)"),
             (lambda: segment_config({"device": "gpu", "__file__": "p.yaml"}), "segment.device", "(found 'gpu')"),
             (lambda: validate_config({"name": "n", "output_dir": "o", "epochs_typo": 1}, path="t.yaml"),
              "epochs_typo", "unknown key (misspelt?) (found 1)"),
             (lambda: load_model_file(model), "modality", "(found 7)")]
    for call, key, found in cases:
        with pytest.raises(ConfigError) as e:
            call()
        msg = str(e.value)
        assert e.value.path and msg.startswith(f"{e.value.path}: key '{key}': "), msg
        assert msg.endswith(found), msg
        assert e.value.rule


def test_label_dtype_is_one_rule():
    from pipeline.types import Label, LabelMap, LabelTable, Volume, label_dtype

    assert label_dtype(0) is np.uint8 and label_dtype(255) is np.uint8 and label_dtype(256) is np.uint16
    vol = Volume(np.zeros((2, 2, 2), np.int32), np.eye(4))
    small = LabelMap(vol, LabelTable([Label(1, "a", (1, 2, 3))]))
    big = LabelMap(vol, LabelTable([Label(1, "a", (1, 2, 3)), Label(300, "b", (4, 5, 6))]))
    assert small.file_array().dtype == np.uint8 and big.file_array().dtype == np.uint16


def test_dice_is_one_function():
    from pipeline.evaluation import dice

    a = np.zeros((4, 4), bool)
    b = a.copy()
    assert dice(a, b) == 1.0  # both empty: they agree
    a[:2] = True
    b[1:3] = True
    assert dice(a, b) == pytest.approx(2 * 4 / 16)
    assert dice(a, np.zeros_like(a)) == 0.0
    assert dice(a.astype(np.uint8), a.astype(np.int16)) == 1.0


def test_cut_pieces_are_written_by_the_one_atomic_writer(tmp_path):
    """planning/cut.py wrote its PLY files with its own rename: a failed export left its temporary file."""
    from pipeline.planning.cut import _write_ply

    class FailingMesh:
        def export(self, path, **kw):
            open(path, "wb").write(b"ply half written")
            raise OSError("disk full")

    with pytest.raises(OSError):
        _write_ply(FailingMesh(), tmp_path / "meshes" / "liver_resected.ply")
    assert list((tmp_path / "meshes").iterdir()) == []
