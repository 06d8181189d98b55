"""synth --labels MAP:NAMES: names as a README spells them are matched, unknown names are an
error listing the known ones unless --ignore-unknown (issue 15, item 1)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.errors import SurgitwinError
from tests.test_dataset import _vol


def _map(tmp_path, names):
    from pipeline.geometry import write_image_file

    lab = np.zeros((20, 20, 24), np.uint8)   # [k, j, i]; i -> +x = patient left
    lab[4:16, 4:16, 1:8] = 1      # liver: right
    lab[6:10, 12:16, 8:11] = 2    # right kidney
    lab[6:10, 12:16, 14:17] = 3   # left kidney
    lab[4:16, 8:10, 11:12] = 4    # IVC
    lab[5:12, 4:10, 17:23] = 5    # spleen: left
    write_image_file(_vol(lab), tmp_path / "map.nii.gz", lab)
    (tmp_path / "names.json").write_text(json.dumps(names))
    return tmp_path / "map.nii.gz", tmp_path / "names.json"


README_NAMES = {"1": "liver", "2": "right kidney", "3": "left kidney", "4": "inferior vena cava", "5": "Spleen"}


def test_readme_spelling_reaches_the_right_generation_labels(tmp_path):
    from pipeline.train.labels import GEN_BY_NAME
    from pipeline.train.synth import load_label_map_file

    m, n = _map(tmp_path, README_NAMES)
    g = load_label_map_file(m, n, spacing=3.0)
    counts = {name: int((g.array == GEN_BY_NAME[name]).sum())
              for name in ("liver", "kidney_right", "kidney_left", "inferior_vena_cava", "spleen")}
    assert all(v > 0 for v in counts.values()), counts


def test_unknown_names_are_an_error_listing_known_ones(tmp_path, capsys):
    from pipeline.cli import main
    from pipeline.train.synth import load_label_map_file

    m, n = _map(tmp_path, {**README_NAMES, "4": "inferior vena kava"})
    with pytest.raises(SurgitwinError) as e:
        load_label_map_file(m, n)
    msg = str(e.value)
    assert "'inferior vena kava'" in msg and "inferior_vena_cava" in msg and "--ignore-unknown" in msg
    assert str(n) in msg
    rc = main(["synth", str(tmp_path / "ds"), "--labels", f"{m}:{n}", "--cases", "1"])
    assert rc == 1 and "inferior vena kava" in capsys.readouterr().err
    # explicit: the unknown label becomes background, and that is said
    g = load_label_map_file(m, n, ignore_unknown=True)
    from pipeline.train.labels import GEN_BY_NAME
    assert not (g.array == GEN_BY_NAME["inferior_vena_cava"]).any() and (g.array == GEN_BY_NAME["kidney_right"]).any()
    assert "inferior vena kava" in capsys.readouterr().err
