"""Which part of the body a scan shows, from its tags and (for CT) from the image itself.

Used before segmenting: a model declares the modality and body regions it was made for
(``modality`` and ``body_region`` in its registry YAML), and a head CT must not run through an
abdominal model to a 684 ml "liver" (issue 12). The evidence, strongest first:

1. the image (CT only): a head has a small cross-section (90th percentile < 400 cm^2) that is
   largely bone (median > 10 % of the cross-section above 300 HU: the skull); a torso has
   500-1000 cm^2 with a few % bone;
2. BodyPartExamined, then words in the series/study description.

Regions: head, neck, chest, abdomen, pelvis, extremity. An empty set means "unknown" (no
refusal on that ground).
"""
from __future__ import annotations

import re

import numpy as np

from ..types import Volume

REGIONS = ("head", "neck", "chest", "abdomen", "pelvis", "extremity")
_WORDS = [  # (regex on BodyPartExamined / descriptions, regions)
    (r"HEAD.?NECK|HEADANDNECK", {"head", "neck"}),
    (r"CHEST.?ABD.?PELV|\bCAP\b|TORSO|WHOLE.?BODY|TRUNK", {"chest", "abdomen", "pelvis"}),
    (r"ABD\w*.?PELV|ABDOMENPELVIS", {"abdomen", "pelvis"}),
    (r"CHEST.?ABD|THORAXABD", {"chest", "abdomen"}),
    (r"HEAD|BRAIN|SKULL|CRANI|ORBIT|SINUS|\bIAC\b|SCHAEDEL|KOPF|CEREBR", {"head"}),
    (r"NECK|CSPINE|C-SPINE|THYROID|HALS", {"neck"}),
    (r"CHEST|THORAX|LUNG|HEART|CARDIAC|CORONARY|TSPINE|THORAX", {"chest"}),
    (r"ABD|LIVER|KIDNEY|RENAL|PANCREAS|LSPINE|ABDOMEN|LEBER", {"abdomen"}),
    (r"PELVIS|HIP|BLADDER|PROSTATE|BECKEN", {"pelvis"}),
    (r"\bLEG\b|\bARM\b|KNEE|ANKLE|FOOT|HAND|WRIST|ELBOW|SHOULDER|EXTREMIT|FEMUR|TIBIA", {"extremity"}),
]
HEAD_MAX_AREA_CM2 = 400.0
HEAD_MIN_BONE_FRACTION = 0.10


def regions_from_text(*texts: str) -> set[str]:
    """Regions named by the first text that names any (BodyPartExamined first)."""
    for t in texts:
        t = (t or "").upper()
        if not t:
            continue
        for pattern, regions in _WORDS:
            if re.search(pattern, t):
                return set(regions)
    return set()


def _looks_like_head(vol: Volume) -> tuple[bool, str]:
    from scipy import ndimage

    a = vol.array
    sp = vol.spacing
    step = max(1, max(a.shape[1:]) // 128)
    zstep = max(1, a.shape[0] // 40)
    cm2 = float(sp[1] * sp[2]) * step * step / 100.0
    areas, bone = [], []
    for sl in a[::zstep, ::step, ::step]:
        body = sl > -300
        lab, n = ndimage.label(body)
        if n == 0:
            continue
        sizes = ndimage.sum(body, lab, range(1, n + 1))
        m = ndimage.binary_fill_holes(lab == int(np.argmax(sizes)) + 1)
        areas.append(m.sum() * cm2)
        bone.append(float((sl[m] > 300).mean()))
    if not areas:
        return False, "no body in the image"
    area90, bone50 = float(np.percentile(areas, 90)), float(np.median(bone))
    why = f"cross-section {area90:.0f} cm^2 (90th percentile), {100 * bone50:.0f} % bone (median)"
    return area90 < HEAD_MAX_AREA_CM2 and bone50 > HEAD_MIN_BONE_FRACTION, why


def scan_regions(vol: Volume) -> tuple[set[str], str]:
    """(regions, evidence) for ``vol`` (its ``source`` tags and, for CT, its image)."""
    src = vol.source or {}
    modality = str(src.get("modality") or "").upper()
    if modality in ("CT", "") and vol.array.min() <= -500:  # HU scale: the image can tell a head
        head, why = _looks_like_head(vol)
        if head:
            return {"head"}, f"the image looks like a head: {why}"
    tags = (str(src.get("body_part_examined") or ""), str(src.get("series_description") or ""),
            str(src.get("study_description") or ""))
    regions = regions_from_text(*tags)
    if regions:
        which = next(n for n, t in zip(("BodyPartExamined", "SeriesDescription", "StudyDescription"), tags)
                     if regions_from_text(t))
        return regions, f"{which} '{tags[('BodyPartExamined', 'SeriesDescription', 'StudyDescription').index(which)]}'"
    return set(), "no body region stated in the tags and none recognised in the image"
