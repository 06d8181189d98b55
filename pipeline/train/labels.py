"""Label tables for training: the shipped model's output labels and the generation labels.

*Target* labels are what a model predicts (channel c -> label id c). *Generation* labels are
the richer set a SynthSeg-style synthesiser paints intensities into: every target organ plus
auxiliary structures (stomach, bone, muscle, fat, gas, ...) that must look like *something*
in a synthetic image but are background for the model. Each source label map (a real label
file with its own numbering) is translated to generation labels by name; nothing here trusts
a file's left/right names blindly -- :func:`pipeline.train.synth.check_sidedness` verifies
them by physical position.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ModelError, SurgitwinError
from ..types import Label, LabelTable, Volume

#: Output labels of the shipped abdominal model (channel c == id c; 0 = background).
TARGET_LABELS = LabelTable([
    Label(1, "liver", (127, 53, 17), "10200004", expected_ml=(600.0, 3500.0)),
    Label(2, "spleen", (143, 68, 143), "78961009", expected_ml=(40.0, 1200.0)),
    Label(3, "kidney_left", (190, 103, 25), "18639004", expected_ml=(60.0, 400.0)),
    Label(4, "kidney_right", (215, 160, 29), "9846003", expected_ml=(60.0, 400.0)),
    Label(5, "aorta", (225, 30, 40), "15825003", critical=True, expected_ml=(20.0, 400.0)),
    Label(6, "inferior_vena_cava", (40, 80, 200), "64131007", critical=True, expected_ml=(10.0, 300.0)),
])

# Generation labels: id -> (name, target id, (low, high) prior HU range of the label mean).
# The ranges span unenhanced to arterial/portal-venous contrast so the model cannot rely
# on one protocol; a fraction of samples ignores them entirely (fully random, SynthSeg).
GEN_LABELS: dict[int, tuple[str, int, tuple[float, float]]] = {
    1: ("liver", 1, (40, 170)),
    2: ("spleen", 2, (35, 190)),
    3: ("kidney_left", 3, (25, 260)),
    4: ("kidney_right", 4, (25, 260)),
    5: ("aorta", 5, (30, 400)),
    6: ("inferior_vena_cava", 6, (25, 230)),
    7: ("stomach", 0, (-60, 80)),
    8: ("gallbladder", 0, (-10, 45)),
    9: ("pancreas", 0, (25, 150)),
    10: ("esophagus", 0, (10, 80)),
    11: ("urinary_bladder", 0, (-10, 40)),
    12: ("bowel", 0, (-90, 110)),
    13: ("bone", 0, (180, 900)),
    14: ("muscle", 0, (25, 80)),
    15: ("heart", 0, (25, 300)),
    16: ("lung", 0, (-950, -700)),
    17: ("adrenal_gland", 0, (10, 90)),
    18: ("other_vessel", 0, (30, 260)),
    19: ("spinal_cord", 0, (15, 50)),
    20: ("cyst", 0, (-10, 25)),
    # Painted by the synthesiser itself where the source map has no label (see synth.py).
    21: ("soft_tissue", 0, (0, 70)),
    22: ("subcutaneous_fat", 0, (-140, -70)),
    23: ("synthetic_bone", 0, (180, 800)),
    24: ("visceral_fat", 0, (-140, -50)),
    25: ("gas", 0, (-1000, -500)),
    26: ("body_wall_muscle", 0, (25, 80)),
    27: ("table", 0, (0, 500)),
}
GEN_BY_NAME = {v[0]: k for k, v in GEN_LABELS.items()}
#: First generation id painted by the synthesiser (ids below come from source maps).
FIRST_SYNTHETIC_GEN = 21

# Source label maps -> generation labels, by the source's own names.
TORSO_NAMES = {  # ../shared/data/real/abdomen_label_map/torso_labels.nii.gz (niivue demo)
    1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "esophagus",
    6: "liver", 7: "stomach", 8: "aorta", 9: "inferior_vena_cava", 10: "pancreas",
    11: "urinary_bladder",
}


def totalseg_to_gen(name: str) -> str | None:
    """TotalSegmentator 'total' class name -> generation label name (None = unlabelled)."""
    direct = {"spleen", "kidney_left", "kidney_right", "gallbladder", "liver", "stomach",
              "pancreas", "esophagus", "urinary_bladder", "aorta", "inferior_vena_cava", "heart",
              "spinal_cord"}
    if name in direct:
        return name
    if name.startswith(("adrenal_gland",)):
        return "adrenal_gland"
    if name.startswith("lung"):
        return "lung"
    if name.startswith(("kidney_cyst",)):
        return "cyst"
    if name in ("small_bowel", "duodenum", "colon"):
        return "bowel"
    if name.startswith(("vertebrae", "rib_", "sacrum", "humerus", "scapula", "clavicula",
                        "femur", "hip", "sternum", "costal_cartilages", "skull")):
        return "bone"
    if name.startswith(("autochthon", "iliopsoas", "gluteus")):
        return "muscle"
    if name.startswith(("portal_vein", "pulmonary", "brachiocephalic", "subclavian",
                        "common_carotid", "iliac_", "superior_vena_cava", "atrial_appendage")):
        return "other_vessel"
    if name in ("trachea",):
        return "gas"
    return None


#: other spellings of generation names (after lower_snake_case and moving left/right to the end)
SYNONYMS = {"ivc": "inferior_vena_cava", "vena_cava_inferior": "inferior_vena_cava", "bladder": "urinary_bladder",
            "gall_bladder": "gallbladder", "oesophagus": "esophagus", "bones": "bone", "lungs": "lung",
            "intestine": "bowel", "small_intestine": "bowel", "large_intestine": "bowel",
            "kidney_l": "kidney_left", "kidney_r": "kidney_right", "left_kidney": "kidney_left",
            "right_kidney": "kidney_right"}


def gen_name(name: str) -> str | None:
    """A source label's name -> generation label name, or None when it is not known.

    Case, spaces and hyphens do not matter and a leading side moves to the end, so the
    names a README spells ("right kidney", "Inferior vena cava") match ``kidney_right`` and
    ``inferior_vena_cava``; TotalSegmentator class names are mapped by :func:`totalseg_to_gen`.
    """
    import re

    snake = re.sub(r"[^a-z0-9]+", "_", str(name).strip().lower()).strip("_")
    m = re.match(r"^(left|right)_(.+)$", snake)
    if m:
        snake = f"{m.group(2)}_{m.group(1)}"
    snake = SYNONYMS.get(snake, snake)
    if snake in GEN_BY_NAME and snake not in {GEN_LABELS[i][0] for i in range(FIRST_SYNTHETIC_GEN, max(GEN_LABELS) + 1)}:
        return snake
    return totalseg_to_gen(snake)


def source_to_gen(names: dict[int, str], ignore_unknown: bool = False, path=None) -> dict[int, str]:
    """{source id: name} -> {source id: generation name}; unknown names are an error listing the
    known ones, or background with ``ignore_unknown``."""
    out, unknown = {}, []
    for sid, n in names.items():
        g = gen_name(n)
        if g is None:
            unknown.append(f"{sid}: {n!r}")
        else:
            out[sid] = g
    if unknown and not ignore_unknown:
        known = sorted(GEN_LABELS[i][0] for i in GEN_LABELS if i < FIRST_SYNTHETIC_GEN)
        raise SurgitwinError(f"label names not known to the synthesiser: {', '.join(unknown)}. Known names "
                             f"(any case/spacing, 'right kidney' = kidney_right): {', '.join(known)}, and "
                             "TotalSegmentator 'total' class names. Rename them in the names file, or pass "
                             "--ignore-unknown to make them background", path=None if path is None else str(path),
                             rule="label-names")
    return out


def parse_label_names(raw, path=None) -> dict[int, str]:
    """An id -> name table from any form the project writes or reads.

    - ``{"1": "liver", ...}`` (id -> name);
    - ``[{"id": 1, "name": "liver", ...}, ...]`` (a label table, e.g. a phantom's labels.json);
    - ``{"labels": {"background": 0, "liver": 1}}`` (an nnU-Net dataset.json) or
      ``{"labels": [{"id": .., "name": ..}]}``;
    - TotalSegmentator's ``{"total": {"1": "spleen", ...}, ...}`` (the CT task first).
    """
    def bad(why):
        return SurgitwinError(f"label names: {why} (accepted: {{\"1\": \"liver\"}}, [{{\"id\": 1, \"name\": "
                              f"\"liver\"}}], a dataset.json with 'labels', or TotalSegmentator's {{\"total\": ...}})",
                              path=None if path is None else str(path), rule="label-names")

    try:
        if isinstance(raw, dict) and "labels" in raw:
            raw = raw["labels"]
            if isinstance(raw, dict):
                return {int(v): str(k) for k, v in raw.items() if int(v) != 0}
        if isinstance(raw, list):
            if not all(isinstance(d, dict) and "id" in d and "name" in d for d in raw):
                raise bad("a list must hold {id, name} entries")
            return {int(d["id"]): str(d["name"]) for d in raw if int(d["id"]) != 0}
        if isinstance(raw, dict):
            if raw and all(isinstance(v, dict) for v in raw.values()):
                raw = raw.get("total") or next(iter(raw.values()))
            return {int(k): str(v) for k, v in raw.items() if int(k) != 0}
    except (TypeError, ValueError) as e:
        raise bad(f"ids must be integers ({e})") from None
    raise bad(f"found a {type(raw).__name__}")


def read_reference(labels_file, names_file=None) -> tuple[Volume, dict[int, str]]:
    """A reference label file + its id -> name table.

    ``names_file``: JSON ``{"1": "spleen", ...}`` or TotalSegmentator's ``{"total": {...}}``, or
    a nnU-Net ``dataset.json`` (``labels``: name -> id). Default: ``labels.json`` next to it.
    """
    from ..geometry import read_image_file

    labels_file = Path(labels_file)
    vol = read_image_file(labels_file)
    nf = Path(names_file) if names_file else labels_file.with_name("labels.json")
    if not nf.exists():
        raise ModelError("reference label names not found (give a JSON id -> name table)", path=str(nf))
    try:
        raw = json.loads(nf.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"label names file is not valid JSON: {e}", path=str(nf)) from None
    return vol, parse_label_names(raw, nf)
