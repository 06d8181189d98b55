"""Structure colours: distinct at a glance (CIEDE2000 >= 20 within a scene), the same in the
3-D view, its legend and the report's outlines."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import real_data
from pipeline.scene.colors import MIN_DELTA_E, delta_e, display_colors, min_delta_e, rgb_to_lab, scene_colors

OLD_SLICER = {  # the colours every scene had before: liver, kidneys, aorta, body, lungs all salmon-brown
    "liver": (221, 130, 101), "spleen": (157, 108, 162), "kidney_left": (185, 102, 83),
    "kidney_right": (185, 102, 83), "aorta": (224, 97, 76), "inferior_vena_cava": (0, 151, 206),
    "body": (177, 122, 101), "bone": (241, 214, 145), "lungs": (197, 165, 145), "airway": (182, 228, 255),
}


def test_ciede2000_matches_the_published_reference_pairs():
    # Sharma, Wu, Dalal (2005) test data: (Lab1, Lab2, dE00)
    pairs = [((50, 2.6772, -79.7751), (50, 0, -82.7485), 2.0425), ((50, -1.3802, -84.2814), (50, 0, -82.7485), 1.0),
             ((50, 2.5, 0), (73, 25, -18), 27.1492), ((22.7233, 20.0904, -46.694), (23.0331, 14.973, -42.5619), 2.0373),
             ((90.8027, -2.0831, 1.441), (91.1528, -1.6435, 0.0447), 1.4441)]
    for a, b, want in pairs:
        assert float(delta_e(np.array(a), np.array(b))) == pytest.approx(want, abs=1e-3)


def test_the_old_table_was_indistinct_and_the_display_colours_are_not():
    assert min_delta_e(OLD_SLICER)[0] == 0.0  # the two kidneys; liver-kidney was ~10.5
    assert float(delta_e(rgb_to_lab(OLD_SLICER["liver"]), rgb_to_lab(OLD_SLICER["kidney_right"]))) < 11
    shown = display_colors(OLD_SLICER.items())
    assert min_delta_e(shown)[0] >= MIN_DELTA_E - 0.5, min_delta_e(shown)
    assert shown["inferior_vena_cava"] == OLD_SLICER["inferior_vena_cava"]  # distinct colours are kept


def test_distinct_colours_of_a_scene_are_left_alone():
    cols = {"organ": (200, 60, 60), "tumour": (250, 220, 40), "vessel": (40, 80, 220)}
    assert display_colors(cols.items()) == cols


def _demo_and_phantom_tables():
    import yaml

    from pipeline.phantom import PHANTOM_LABELS
    from pipeline.types import LabelTable

    def table(path):
        return [(d["name"], tuple(d["rgb"])) for d in yaml.safe_load(open(path))["labels"]]

    root = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"
    model = table(root / "models" / "abdomen_unet_3mm.yaml") + table(root / "labels" / "hu_rules.yaml")
    return {"demo (abdomen model + HU rules)": model + [("liver_tumor", (250, 235, 50))],
            "phantom ground truth": [(l.name, l.rgb) for l in PHANTOM_LABELS]}, LabelTable


@pytest.mark.parametrize("which", ["demo (abdomen model + HU rules)", "phantom ground truth"])
def test_shipped_label_tables_are_distinct_as_stored_and_as_shown(which):
    tables, _ = _demo_and_phantom_tables()
    items = tables[which]
    stored = dict(items)
    assert min_delta_e(stored)[0] >= MIN_DELTA_E, min_delta_e(stored)  # the scene.json colours already are
    assert display_colors(items) == stored


def test_real_ct_scene_structures_get_separated_colours():
    folder = real_data("ct_thorax_abdomen_dicom_j2k")
    import SimpleITK as sitk

    names = json.loads((folder / "class_map_total.json").read_text())["total"]
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labels_reference.nii.gz")))
    present = [names[str(int(v))].lower() for v in np.unique(arr) if v]  # vertebrae_T12 -> snake case
    assert len(present) >= 30
    from pipeline.segment.bundle import _label_defaults, _palette
    from pipeline.types import Label, LabelTable

    known = _label_defaults()  # what a bundle's labels get: organ defaults, else a generated colour
    table = LabelTable(Label(i + 1, n, tuple(known.get(n, {}).get("rgb", _palette(i + 1))))
                       for i, n in enumerate(present))
    shown = scene_colors(table)
    # 31 structures, 16 of them ribs and vertebrae: the search keeps every pair >= 15
    # (distinct side by side), where the generated palette alone falls far below
    assert min_delta_e({l.name: l.rgb for l in table})[0] < 10
    assert min_delta_e(shown)[0] >= 15, min_delta_e(shown)
