"""Structure colours that read at a glance: an anatomical table and a perceptual separation.

3D Slicer's GenericAnatomyColors (which TotalSegmentator's Slicer colours follow) gives liver,
kidney, aorta, body, lung, heart and stomach nearly the same salmon-brown (CIEDE2000 under 10
between liver (221, 130, 101) and kidney (185, 102, 83)): a surgeon cannot tell the right kidney's
outline from the liver's. :data:`ANATOMY_RGB` keeps Slicer's colour families where they are
already distinct (veins blue, bone ivory, gallbladder green, spleen violet, airway pale blue)
and moves the rest apart the way surgical planning software draws them: liver red-brown,
arteries bright red, kidneys amber, tumours yellow, lungs pale blue-grey, body a light skin tone
(drawn translucent).

:func:`display_colors` is what the viewer, the legend and the report use: a scene's colour is
its label table's colour, except that when two structures of the scene are closer than
``MIN_DELTA_E`` (CIEDE2000) the ones with an anatomical name take :data:`ANATOMY_RGB`'s colour,
and any pair still too close is separated by moving the later structure to the nearest colour
(in CIE LCh) that is at least ``MIN_DELTA_E`` from every colour already placed.

Why 20: CIEDE2000 ~2 is a just-noticeable difference side by side; ~10 is "clearly a different
shade"; 20 is where two small patches (a thin outline on CT, a legend swatch, a shaded surface
whose lightness varies by +-15 with the light) are still named as different colours at a
glance. With more structures than fit at 20 (a 100-label whole-body scene) the search keeps the
largest distance it can find; :func:`min_delta_e` reports what was reached.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable, Mapping

import numpy as np

MIN_DELTA_E = 20.0

# name -> sRGB 0..255 (exact names first, then the patterns below)
ANATOMY_RGB: dict[str, tuple[int, int, int]] = {
    "liver": (127, 53, 17),
    "spleen": (143, 68, 143),
    "kidney_right": (215, 160, 29),
    "kidney_left": (190, 103, 25),
    "kidney": (205, 130, 28),
    "gallbladder": (70, 150, 70),
    "stomach": (230, 150, 170),
    "pancreas": (250, 200, 140),
    "aorta": (225, 30, 40),
    "inferior_vena_cava": (40, 80, 200),
    "portal_vein_and_splenic_vein": (110, 90, 220),
    "portal_vein": (110, 90, 220),
    "hepatic_vein": (60, 150, 230),
    "hepatic_veins": (60, 150, 230),
    "liver_tumor": (250, 235, 50),
    "liver_tumour": (250, 235, 50),
    "tumour": (250, 235, 50),
    "tumor": (250, 235, 50),
    "lesion": (250, 235, 50),
    "lungs": (106, 158, 176),
    "lung": (106, 158, 176),
    "airway": (208, 226, 249),
    "trachea": (208, 226, 249),
    "body": (245, 187, 188),
    "skin": (245, 187, 188),
    "bone": (235, 228, 200),
    "spine": (251, 221, 182),
    "ribs": (216, 246, 224),
    "heart": (190, 40, 90),
    "esophagus": (200, 150, 110),
    "small_bowel": (220, 180, 130),
    "duodenum": (245, 220, 170),
    "colon": (170, 130, 90),
    "urinary_bladder": (230, 220, 110),
    "adrenal_gland_right": (250, 140, 110),
    "adrenal_gland_left": (250, 140, 110),
    "spinal_cord": (255, 240, 120),
    "brain": (250, 250, 225),
    "thyroid_gland": (200, 110, 150),
    "prostate": (200, 160, 200),
}
_FAMILIES = (  # (pattern, colour) for names the table does not hold exactly
    (r"(tumou?r|lesion|nodule|metasta)", (250, 235, 50)),
    (r"cyst", (180, 230, 240)),
    (r"^lung", (106, 158, 176)),
    (r"^kidney", (205, 130, 28)),
    (r"(aorta|arter)", (225, 30, 40)),
    (r"(vena_cava|vein)", (40, 80, 200)),
    (r"(vertebra|sacrum|rib_|femur|hip|skull|humerus|scapula|clavicula|sternum|bone)", (235, 228, 200)),
    (r"(bowel|colon|duoden)", (220, 180, 130)),
    (r"(body|skin)", (245, 187, 188)),
)


def anatomy_rgb(name: str) -> tuple[int, int, int] | None:
    """The anatomical table's colour for a structure name, or None."""
    if name in ANATOMY_RGB:
        return ANATOMY_RGB[name]
    for pat, rgb in _FAMILIES:
        if re.search(pat, name):
            return rgb
    return None


# -- colour maths (sRGB D65 <-> CIELAB by hand: the way back must not clip, for the gamut test; CIEDE2000 from scikit-image) --------------------------------------------------
def rgb_to_lab(rgb) -> np.ndarray:
    """(..., 3) sRGB 0..255 -> (..., 3) CIELAB (D65)."""
    c = np.asarray(rgb, float) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = c @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def lab_to_rgb(lab) -> np.ndarray:
    """(..., 3) CIELAB -> (..., 3) sRGB 0..255 floats (out-of-gamut values fall outside 0..255)."""
    lab = np.asarray(lab, float)
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], -1)
    xyz = np.where(f > 6 / 29, f ** 3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * np.array([0.95047, 1.0, 1.08883])
    m = np.array([[3.2404542, -1.5371385, -0.4985314], [-0.9692660, 1.8760108, 0.0415560],
                  [0.0556434, -0.2040259, 1.0572252]])
    c = xyz @ m.T
    c = np.where(c > 0.0031308, 1.055 * np.abs(c) ** (1 / 2.4) * np.sign(c) - 0.055, 12.92 * c)
    return c * 255.0


def delta_e(lab1, lab2) -> np.ndarray:
    """CIEDE2000 between CIELAB colours (broadcasting): scikit-image's implementation."""
    from skimage.color import deltaE_ciede2000

    return deltaE_ciede2000(np.asarray(lab1, float), np.asarray(lab2, float))


def min_delta_e(colors: Mapping[str, tuple]) -> tuple[float, tuple[str, str] | None]:
    """(smallest pairwise CIEDE2000, the pair) of a name -> rgb mapping."""
    names = list(colors)
    if len(names) < 2:
        return float("inf"), None
    lab = rgb_to_lab(np.array([colors[n] for n in names]))
    d = delta_e(lab[:, None], lab[None])
    d[np.diag_indices(len(names))] = np.inf
    i, j = np.unravel_index(np.argmin(d), d.shape)
    return float(d[i, j]), (names[i], names[j])


def _candidates() -> np.ndarray:
    """In-gamut CIELAB candidates on an LCh grid (L 30..88, C 15..80, every 10 degrees)."""
    L, C, h = np.meshgrid(np.arange(30, 92, 6.0), np.arange(15, 85, 8.0), np.radians(np.arange(0, 360, 10.0)),
                          indexing="ij")
    lab = np.stack([L, C * np.cos(h), C * np.sin(h)], -1).reshape(-1, 3)
    rgb = lab_to_rgb(lab)
    ok = np.all((rgb >= 0) & (rgb <= 255), axis=1)
    return lab[ok]


_CAND: np.ndarray | None = None


def display_colors(items: Iterable[tuple[str, tuple]], min_de: float = MIN_DELTA_E) -> dict[str, tuple[int, int, int]]:
    """name -> display sRGB for a scene's structures, given as (name, label rgb) in priority order.

    A colour is kept unless it is within ``min_de`` of another structure's; see the module doc.
    Remembered per input (the search takes seconds for 40 structures, and the window, the
    snapshots and the cut colours ask for the same table).
    """
    key = tuple((str(n), tuple(int(c) for c in rgb)) for n, rgb in items)
    return dict(_display_colors(key, float(min_de)))


@lru_cache(maxsize=64)
def _display_colors(items: tuple, min_de: float) -> dict[str, tuple[int, int, int]]:
    global _CAND
    cols = {n: rgb for n, rgb in items}
    names = list(cols)
    if len(names) < 2:
        return cols
    lab = rgb_to_lab(np.array([cols[n] for n in names]))
    d = delta_e(lab[:, None], lab[None])
    d[np.diag_indices(len(names))] = np.inf
    for i in np.nonzero(d.min(1) < min_de)[0]:  # colliding: the anatomical colour when known
        cols[names[i]] = anatomy_rgb(names[i]) or cols[names[i]]
    if _CAND is None:
        _CAND = _candidates()
    placed: list[np.ndarray] = []
    for n in names:
        base = rgb_to_lab(np.array(cols[n], float))
        if placed:
            P = np.array(placed)
            if delta_e(base[None], P).min() < min_de:
                dist = delta_e(_CAND[:, None], P[None]).min(1)
                move = delta_e(_CAND, base[None])
                good = dist >= min_de
                k = int(np.argmin(np.where(good, move, np.inf))) if good.any() else int(np.argmax(dist - 1e-3 * move))
                base = _CAND[k]
                cols[n] = tuple(int(v) for v in np.clip(np.rint(lab_to_rgb(base)), 0, 255))
        placed.append(base)
    return cols


def scene_colors(labels, names: Iterable[str] | None = None, min_de: float = MIN_DELTA_E) -> dict[str, tuple[int, int, int]]:
    """Display colours of a :class:`~pipeline.types.LabelTable` (only ``names`` when given: the
    structures the scene shows), in table order (lower ids keep their colours first)."""
    want = None if names is None else set(names)
    return display_colors([(l.name, l.rgb) for l in labels if want is None or l.name in want], min_de)


# Cutting planes: saturated colours that no organ table uses, tried in this order (C1 cyan as
# the report always drew its planes, C2 magenta, C3 lime, C4 orange, ...).
CUT_PALETTE = ((0, 200, 240), (230, 30, 200), (120, 220, 20), (255, 130, 0), (120, 60, 255), (0, 170, 120))


def _place(base_lab: np.ndarray, placed: np.ndarray, min_de: float) -> np.ndarray:
    """``base_lab`` if it is ``min_de`` from every colour in ``placed``, else the nearest LCh
    candidate that is (or the farthest one when none is)."""
    global _CAND
    if not len(placed) or delta_e(base_lab[None], placed).min() >= min_de:
        return base_lab
    if _CAND is None:
        _CAND = _candidates()
    dist = delta_e(_CAND[:, None], placed[None]).min(1)
    move = delta_e(_CAND, base_lab[None])
    good = dist >= min_de
    return _CAND[int(np.argmin(np.where(good, move, np.inf))) if good.any() else int(np.argmax(dist - 1e-3 * move))]


def cut_colors(labels, plan: Mapping, min_de: float = MIN_DELTA_E) -> dict[str, tuple[int, int, int]]:
    """cut id -> display sRGB for the cuts of ``plan``: each at least ``min_de`` (CIEDE2000) from
    every structure's display colour (:func:`scene_colors`), from the Couinaud segment colours when
    the plan has segments, and from the other cuts, so two saved cuts never look alike."""
    if not plan.get("cuts"):
        return {}
    fixed = list(scene_colors(labels).values())
    if plan.get("segments"):
        from pipeline.planning.segments import SEGMENT_RGB

        fixed += list(SEGMENT_RGB.values())
    placed = rgb_to_lab(np.array(fixed, float)).reshape(-1, 3)
    out = {}
    for n, rec in enumerate(plan.get("cuts", [])):
        lab = _place(rgb_to_lab(np.array(CUT_PALETTE[n % len(CUT_PALETTE)], float)), placed, min_de)
        rgb = tuple(int(v) for v in np.clip(np.rint(lab_to_rgb(lab)), 0, 255))
        out[str(rec.get("id", f"C{n + 1}"))] = rgb
        placed = np.vstack([placed, rgb_to_lab(np.array(rgb, float))[None]])
    return out
