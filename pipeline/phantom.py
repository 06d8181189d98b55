"""Synthetic abdominal CT phantom with exact ground-truth labels, deterministic from a seed.

The anatomy is defined analytically in patient millimetres (ellipsoids, superellipse
cylinders, boxes, capsule chains) in a body-centred frame and painted back-to-front
("painter's algorithm": a later structure overrides an earlier one, so the label map
holds the innermost structure). Each voxel centre of the requested grid is mapped to LPS
through the grid's affine before it is tested, so any orientation, spacing or slice order
samples the same anatomy in patient space.

Body frame -> LPS: ``lps = local + PATIENT_OFFSET_LPS``. Local axes are LPS axes: +x patient
Left, +y Posterior, +z Superior; x = 0 is the midline, y = 0 the middle of the body's
anterior-posterior extent, z = 0 the middle of the default field of view (about the level of
the L1 vertebra; lung bases at the top, lower poles of the kidneys near the bottom).

Label ids are fixed (see :data:`PHANTOM_LABELS`, mirrored in ``configs/labels/phantom.yaml``):
1 liver, 2 spleen, 3 kidney_left, 4 kidney_right, 5 aorta, 6 inferior_vena_cava,
7 liver_tumor, 8 lungs, 9 spine, 10 ribs, 11 body. Tissue that belongs to no named
structure (fat, muscle, bowel, stomach, heart, discs, ...) is labelled ``body``; air and the
table are 0.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Mapping, Union

import numpy as np

from .errors import GeometryError, SurgitwinError
from .geometry import affine_from_dicom, orientation_code
from .phantom_shapes import BIG, Box, Ellipsoid, Prism, Shape, Where, rotation, tube
from .types import Label, LabelMap, LabelTable, Volume

# --- label table (the source of truth; configs/labels/phantom.yaml is generated from it) --

PHANTOM_LABELS = LabelTable([
    Label(1, "liver", (127, 53, 17), "10200004", False, (800.0, 3000.0), 1),
    Label(2, "spleen", (143, 68, 143), "78961009", False, (50.0, 700.0), 1),
    Label(3, "kidney_left", (190, 103, 25), "18639004", False, (60.0, 320.0), 1),
    Label(4, "kidney_right", (215, 160, 29), "9846003", False, (60.0, 320.0), 1),
    Label(5, "aorta", (225, 30, 40), "15825003", True, (30.0, 300.0), 1),
    Label(6, "inferior_vena_cava", (40, 80, 200), "64131007", True, (20.0, 250.0), 1),
    Label(7, "liver_tumor", (250, 235, 50), "4147007", False, (2.0, 200.0), 1),
    Label(8, "lungs", (106, 158, 176), "39607008", False, (50.0, 7000.0), 2),
    Label(9, "spine", (251, 221, 182), "421060004", False, (50.0, 1500.0), 1),
    Label(10, "ribs", (216, 246, 224), "113197003", False, (10.0, 1500.0), 0),
    Label(11, "body", (245, 187, 188), "38266002", False, None, 0),
])
"""Colours: 3D Slicer GenericAnatomyColors (liver, spleen, kidney, aorta, vein, lung, bone,
skin, mass); ribs use a lighter bone colour so they stand apart from the spine. Codes are
SNOMED CT (liver_tumor: 4147007 "Mass"). ``components`` is what post-processing may keep
(the convention of ``configs/labels/*.yaml``: 0 = keep all): 2 lungs, ribs and body 0 (the
phantom has 6 rib pairs, some clipped by the field of view). ``expected_ml`` is the
plausible range of the part inside a typical abdominal field of view."""

LABEL_IDS = {l.name: l.id for l in PHANTOM_LABELS}

#: Default grid: 100 axial slices of 192 x 192, 2.5 mm slices, 1.8 mm pixels (345.6 mm FOV).
DEFAULT_SHAPE = (100, 192, 192)
DEFAULT_SPACING = (2.5, 1.8, 1.8)
#: LPS position of the body frame's origin (a typical table position: z well below 0).
PATIENT_OFFSET_LPS = (0.0, 0.0, -300.0)
AXIAL_IOP = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL_IOP = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SAGITTAL_IOP = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


#: Default oblique orientation (axial tilted 15 degrees about x, then turned 20 about z): ``"oblique"``.
OBLIQUE_IOP = tuple(float(v) for v in np.concatenate(
    [rotation((15, 0, 20))[:, 0], rotation((15, 0, 20))[:, 1]]).round(8))

# --- anatomy parameters (body frame, mm) ------------------------------------------------------

@dataclass(frozen=True)
class Anatomy:
    """Where the main structures are. ``randomise`` perturbs these; everything else follows."""

    body_semi: tuple = (155.0, 112.0)  # skin outline half-width (x), half-depth (y)
    liver_center: tuple = (-62.0, 0.0, 15.0)  # right lobe; the left lobe follows it
    liver_semi: tuple = (72.0, 78.0, 78.0)
    tumor_center: tuple = (-85.0, -20.0, 30.0)
    tumor_radius: float = 14.0
    spleen_center: tuple = (98.0, 32.0, 36.0)
    spleen_semi: tuple = (25.0, 58.0, 45.0)
    kidney_left_center: tuple = (62.0, 46.0, -39.0)
    kidney_right_center: tuple = (-68.0, 45.0, -52.0)
    kidney_semi: tuple = (26.0, 21.0, 55.0)


def _randomised(rng: np.random.Generator, spec: Mapping) -> Anatomy:
    """Anatomy perturbed by ``spec`` (all standard deviations; draws are clipped at 1.5 sd):

    - body_scale: fraction; the body outline scales, and the organs' left-right/front-back
      positions and sizes scale with the abdominal cavity (habitus), so they stay inside it;
    - organ_scale: fraction, per organ and axis (the organ volume is kept within 0.75-1.35x);
    - organ_shift_mm: mm, per organ: head-feet, and half of it left-right and front-back.
    The tumour keeps its place relative to the liver.
    """
    known = {"organ_shift_mm", "organ_scale", "body_scale"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise SurgitwinError(f"randomise: keys must be among {sorted(known)}; found {unknown}")
    shift, scale, body = (abs(float(spec.get(k, 0.0))) for k in ("organ_shift_mm", "organ_scale", "body_scale"))
    a = Anatomy()

    def draw(sd, n):
        return np.clip(rng.normal(0.0, 1.0, n), -1.5, 1.5) * sd

    body_f = 1.0 + draw(body, 2)
    wall = 33.0  # skin + fat + muscle (see _scene): organs scale with the cavity, not the skin
    habitus = np.array([*((np.asarray(a.body_semi) * body_f - wall) / (np.asarray(a.body_semi) - wall)), 1.0])

    def place(c):  # breathing and posture move organs mostly head-feet
        return tuple(float(v) for v in np.asarray(c) * habitus + draw(shift, 3) * (0.5, 0.5, 1.0))

    def size(v):
        f = 1.0 + draw(scale, 3)
        f *= np.clip(np.prod(f), 0.75, 1.35) ** (1 / 3) / np.prod(f) ** (1 / 3)
        return tuple(float(x) for x in np.asarray(v) * habitus * f)

    liver_c, liver_s = place(a.liver_center), size(a.liver_semi)
    rel = (np.asarray(a.tumor_center) - a.liver_center) / a.liver_semi + draw(0.06, 3)
    radius = float(np.clip(a.tumor_radius * (1.0 + draw(2 * scale, 1)[0]), 10.0, 18.0))
    return replace(
        a, body_semi=tuple(float(v) for v in np.asarray(a.body_semi) * body_f),
        liver_center=liver_c, liver_semi=liver_s,
        tumor_center=tuple(float(v) for v in np.asarray(liver_c) + rel * liver_s), tumor_radius=radius,
        spleen_center=place(a.spleen_center), spleen_semi=size(a.spleen_semi),
        kidney_left_center=place(a.kidney_left_center), kidney_right_center=place(a.kidney_right_center),
        kidney_semi=size(a.kidney_semi),
    )


Value = Union[float, Callable[..., np.ndarray]]


def _scene(an: Anatomy) -> list[tuple[Shape, Value, int]]:
    """The paint list ``(shape, HU, label id)`` in paint order (later overrides earlier)."""
    L = LABEL_IDS
    body_id = L["body"]
    bx, by = an.body_semi
    out: list[tuple[Shape, Value, int]] = []

    def add(shape, hu, label=body_id):
        for s in (shape if isinstance(shape, list) else [shape]):
            out.append((s, hu, label))

    # Table under the patient (not body): carbon skins around a foam core.
    add(Box((-165, by + 10, -BIG), (165, by + 24, BIG)), 150.0, 0)
    add(Box((-160, by + 12, -BIG), (160, by + 22, BIG)), -750.0, 0)
    # Body wall: skin, subcutaneous fat, muscle; the cavity is filled with fat by default.
    skin = Prism(0, 0, bx, by, 2.6)
    fat = Prism(0, -1, bx - 2.5, by - 2.5, 2.6)
    muscle = Prism(0, -3, bx - 19, by - 18, 2.6)
    cavity = Prism(0, -5, bx - 33, by - 32, 2.6)
    add(skin, 30.0)
    add(fat, -100.0)
    add(muscle, 50.0)
    add(cavity, -90.0)
    # Paraspinal muscles; psoas muscles from the L1 level down, widening caudally.
    for sx in (-1, 1):
        add(Prism(sx * 38, 78, 26, 20), 52.0)
        add(Where(lambda x, y, z, sx=sx: ((x - sx * (28 - 0.12 * z)) / np.minimum(2.4 * np.sqrt(np.maximum(-z, 0.01)), 24)) ** 2
                  + ((y - 42) / np.minimum(2.0 * np.sqrt(np.maximum(-z, 0.01)), 19)) ** 2 <= 1.0,
                  (-90, 15, -BIG), (90, 65, 0)), 50.0)
    # Diaphragm: a height field z_d(x, y) of two domes (right higher), deepest at the
    # posterior costophrenic recesses. Abdominal organs stay below z_d - 5 mm.
    def dome(x, y, cx, apex):
        dy = y + 5.0
        return apex - 25.0 * ((x - cx) / 70.0) ** 2 - np.where(dy > 0, 50.0 / 80 ** 2, 35.0 / 80 ** 2) * dy ** 2

    def diaphragm(x, y):
        return np.maximum(np.maximum(dome(x, y, -55.0, 95.0), dome(x, y, 55.0, 82.0)), 15.0)

    abdomen = Where(lambda x, y, z: z < diaphragm(x, y) - 5.0, (-BIG, -BIG, -BIG), (BIG, BIG, 95)) & cavity
    # Bowel loops and colon (fixed layout, not seed-dependent): soft tissue with gas pockets.
    brng = np.random.default_rng(20240607)
    for _ in range(14):
        c = (brng.uniform(-70, 70), brng.uniform(-80, -20), brng.uniform(-125, -35))
        r = brng.uniform(12, 18)
        add(Ellipsoid(c, (r, r * 0.8, r * 1.2), (0, 0, brng.uniform(0, 180))), 25.0)
        if brng.random() < 0.4:
            add(Ellipsoid((c[0], c[1] - r * 0.35, c[2]), (r * 0.5, r * 0.3, r * 0.6)), -900.0)
    for side in (-1, 1):  # ascending / descending colon
        add(tube([(side * 92, 5, -140), (side * 95, -5, -60), (side * 88, -25, -5)], 17), 10.0)
        add(tube([(side * 92, -3, -140), (side * 95, -13, -60), (side * 88, -33, -5)], 9), -900.0)
    add(tube([(-88, -25, -5), (0, -62, -20), (70, -40, -2), (88, -25, -5)], 16), 10.0)  # transverse
    # Pancreas: head by the duodenum, body in front of the aorta, tail to the splenic hilum.
    add(tube([(-35, -15, -5), (0, -28, 5), (40, -10, 15), (72, 15, 25)], 11), 40.0)
    # Liver: a large right lobe and a flatter left lobe reaching across the midline in front
    # of the stomach; under the right dome; the bare-area notch is left for the spine, aorta
    # and IVC, and the right kidney makes its impression. Gallbladder painted over it.
    lc, ls = np.asarray(an.liver_center), np.asarray(an.liver_semi)
    size = ls / np.asarray(Anatomy().liver_semi)
    right_lobe = Ellipsoid(lc, ls, (0, 0, -10))
    left_lobe = Ellipsoid(lc + (64, -40, 28) * size, (64, 34, 30) * size, (0, 10, 20))
    notch = Prism(12, 48, 50, 40, 2.6)  # bare area: spine, aorta, crura
    kidney_r = Ellipsoid(an.kidney_right_center, an.kidney_semi, (0, 12, 10))
    liver_shape = Where(lambda x, y, z: right_lobe.contains(x, y, z) | left_lobe.contains(x, y, z),
                        np.minimum(right_lobe.lo, left_lobe.lo), np.maximum(right_lobe.hi, left_lobe.hi))
    add(liver_shape & abdomen - notch - kidney_r.grown(6), 60.0, L["liver"])
    stomach = Ellipsoid((62, -30, 40), (38, 30, 45), (0, -20, -30))
    add(stomach & abdomen, 40.0)
    add(Ellipsoid(stomach.c, stomach.s - 4, (0, -20, -30)) & abdomen, 12.0)
    add(Ellipsoid(stomach.c, stomach.s - 4, (0, -20, -30)) & abdomen
        & Where(lambda x, y, z: y < -47, (-BIG, -BIG, -BIG), (BIG, -47, BIG)), -950.0)
    add(Ellipsoid((-45, -60, -25), (17, 14, 34), (20, 0, 20)), 12.0)  # gallbladder
    add(Ellipsoid(an.tumor_center, (an.tumor_radius, an.tumor_radius * 0.9, an.tumor_radius * 1.1), (0, 0, 30)),
        30.0, L["liver_tumor"])
    add(Ellipsoid(an.spleen_center, an.spleen_semi, (0, 0, 40)) & abdomen, 50.0, L["spleen"])
    # Kidneys: cortex, medulla, and renal sinus fat at the medial hilum (not kidney).
    for name, c, tilt in (("kidney_left", an.kidney_left_center, -1), ("kidney_right", an.kidney_right_center, 1)):
        kid = Ellipsoid(c, an.kidney_semi, (0, tilt * 12, -tilt * 10))
        add(kid, 30.0, L[name])
        add(Ellipsoid(c, np.asarray(an.kidney_semi) * 0.65, (0, tilt * 12, -tilt * 10)), 24.0, L[name])
        add(Ellipsoid((c[0] + tilt * 17, c[1] - 6, c[2]), (9, 8, 16)), -60.0)
    # Thorax above the diaphragm (5 mm of muscle), the lungs, then the heart on the central tendon.
    heart = Ellipsoid((18, -42, 126), (62, 48, 45), (0, 0, -25))
    add(cavity & Where(lambda x, y, z: z >= diaphragm(x, y) - 5.0, (-BIG, -BIG, 10), (BIG, BIG, BIG)), 40.0)

    def lung_hu(x, y, z):
        return -875.0 + 60.0 * np.clip((y + 90.0) / 170.0, 0.0, 1.0)

    posterior_mediastinum = Prism(4, 22, 36, 48, 2.2)  # spine, aorta, oesophagus

    def lung_fn(x, y, z):
        return ((z > diaphragm(x, y)) & (np.abs(x - 4.0) > 16.0) & ~heart.grown(6).contains(x, y, z)
                & ~posterior_mediastinum.contains(x, y, z))

    lungs = Where(lung_fn, (-BIG, -BIG, 15), (BIG, BIG, BIG))
    add(Prism(0, -5, bx - 36, by - 35, 2.6) & lungs, lung_hu, L["lungs"])
    add(heart, 40.0)
    # Great vessels (contrast enhanced): aorta left-anterior of the spine, IVC right-anterior,
    # the IVC running up through the liver's bare area into the right atrium.
    add(tube([(28, 8, 160), (22, 0, 60), (16, -4, 0), (12, -6, -160)], 11.0), 200.0, L["aorta"])
    add(tube([(-24, 2, -160), (-23, 0, 0), (-22, -4, 60), (-16, -18, 110), (-8, -30, 130)], 11.0),
        150.0, L["inferior_vena_cava"])
    # Spine: vertebrae every 32 mm (24 mm body + 8 mm disc); arches overlap like facet joints.
    spine = L["spine"]
    for zc in np.arange(-184.0, 190.0, 32.0):
        add(Prism(0, 28, 24, 19, 2.0, zc + 12, zc + 20), 80.0)  # disc above this vertebra
        add(Prism(0, 28, 22, 17, 2.0, zc - 12, zc + 12), 750.0, spine)
        add(Prism(0, 28, 19, 14, 2.0, zc - 9.5, zc + 9.5), 230.0, spine)
        arch = Where(lambda x, y, z: ((x ** 2 + (y - 60) ** 2) <= 17 ** 2) & ((x ** 2 + (y - 60) ** 2) >= 9 ** 2)
                     & (y > 44), (-17, 43, zc - 12), (17, 77, zc + 12))
        add(arch, 650.0, spine)
        for sx in (-1, 1):  # facet joints bridge to the next arch; the foramina stay open
            add(Box((sx * 15 - 3, 66, zc + 8), (sx * 15 + 3, 73, zc + 24)), 650.0, spine)
        add(Box((-4, 70, zc - 12), (4, 96, zc + 6)), 650.0, spine)  # spinous process
        add(Box((-40, 52, zc - 5), (40, 64, zc + 5)), 650.0, spine)  # transverse processes
        add(Prism(0, 60, 9, 9, 2.0, zc - 16, zc + 16), 15.0)  # spinal canal (CSF)
    # Ribs: from the costovertebral joints around the body wall, sloping down anteriorly.
    path = Prism(0, -4, bx - 26, by - 25, 2.6)
    for zc, phi_end in ((-24, 40), (8, 5), (40, -30), (72, -50), (104, -60), (136, -65)):
        for side in (-1, 1):
            pts = [np.array([side * 52.0, 62.0])]
            pts += [path.point(phi) * (side, 1) for phi in np.linspace(65, phi_end, 16)]
            xyz, s = [], 0.0
            for n, p in enumerate(pts):
                s += 0.0 if n == 0 else float(np.linalg.norm(p - pts[n - 1]))
                xyz.append((p[0], p[1], zc - 0.3 * s))
            add(tube(xyz, 5.0), 600.0, L["ribs"])
            add(tube(xyz, 2.6), 250.0, L["ribs"])
    return out


# --- grid and sampling ---------------------------------------------------------------------

def _iop(orientation) -> np.ndarray:
    if isinstance(orientation, str):
        presets = {"axial": AXIAL_IOP, "coronal": CORONAL_IOP, "sagittal": SAGITTAL_IOP, "oblique": OBLIQUE_IOP}
        if orientation not in presets:
            raise GeometryError(f"orientation must be one of {sorted(presets)} or 6 direction cosines; found {orientation!r}")
        orientation = presets[orientation]
    o = np.asarray(orientation, dtype=np.float64).ravel()
    if o.shape != (6,):
        raise GeometryError(f"orientation must have 6 direction cosines (row, column); found {o.size}")
    row, col = o[:3], o[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise GeometryError(f"orientation must be two orthogonal unit vectors; found {o.tolist()}")
    row = row / np.linalg.norm(row)
    col = col - (col @ row) * row
    return np.concatenate([row, col / np.linalg.norm(col)])


def phantom_grid(shape=DEFAULT_SHAPE, spacing=DEFAULT_SPACING, orientation="axial", *,
                 reverse_slices: bool = False, center_lps=None) -> np.ndarray:
    """Affine (index ``(k, j, i)`` -> LPS mm) of a grid centred on ``center_lps``.

    spacing = (slice step, row spacing, column spacing) mm; orientation = 'axial',
    'coronal', 'sagittal', 'oblique' or 6 direction cosines (DICOM IOP). Slices advance
    along row x column (feet -> head for axial) unless ``reverse_slices``.
    """
    if len(shape) != 3 or len(spacing) != 3 or min(spacing) <= 0 or min(shape) < 1:
        raise GeometryError(f"grid needs 3 positive sizes and spacings; found shape {shape}, spacing {spacing}")
    iop = _iop(orientation)
    normal = np.cross(iop[:3], iop[3:])
    step = normal * float(spacing[0]) * (-1.0 if reverse_slices else 1.0)
    a = affine_from_dicom((0, 0, 0), iop, float(spacing[1]), float(spacing[2]), step)
    center = np.asarray(PATIENT_OFFSET_LPS if center_lps is None else center_lps, dtype=np.float64)
    a[:3, 3] = center - a[:3, :3] @ ((np.asarray(shape, float) - 1.0) / 2.0)
    return a


def _block(affine_local: np.ndarray, shape, lo, hi):
    """Index-space box of the grid that can touch the body-frame box (lo, hi), and its coords."""
    corners = np.array([[(lo, hi)[a][0], (lo, hi)[b][1], (lo, hi)[c][2]]
                        for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=np.float64)
    inv = np.linalg.inv(affine_local)
    idx = corners @ inv[:3, :3].T + inv[:3, 3]
    a = np.maximum(np.floor(idx.min(axis=0)).astype(np.int64), 0)
    b = np.minimum(np.ceil(idx.max(axis=0)).astype(np.int64) + 1, shape)
    if np.any(b <= a):
        return None
    k, j, i = (np.arange(a[n], b[n], dtype=np.float64) for n in range(3))
    m, t = affine_local[:3, :3], affine_local[:3, 3]
    xyz = [(m[r, 0] * k[:, None, None] + m[r, 1] * j[None, :, None] + m[r, 2] * i[None, None, :] + t[r])
           .astype(np.float32) for r in range(3)]
    xyz = [np.broadcast_to(c, tuple(b - a)) for c in xyz]
    return (slice(a[0], b[0]), slice(a[1], b[1]), slice(a[2], b[2])), xyz


def sample_phantom(affine: np.ndarray, shape, anatomy: Anatomy | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free, unblurred HU (float32) and label ids (uint8) on the grid ``(shape, affine)``."""
    shape = tuple(int(s) for s in shape)
    local = np.array(affine, dtype=np.float64)
    local[:3, 3] -= np.asarray(PATIENT_OFFSET_LPS)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    lab = np.zeros(shape, dtype=np.uint8)
    for shp, value, label in _scene(anatomy or Anatomy()):
        blk = _block(local, shape, shp.lo, shp.hi)
        if blk is None:
            continue
        sl, (x, y, z) = blk
        inside = shp.contains(x, y, z)
        if not inside.any():
            continue
        h = hu[sl]
        h[inside] = value(x, y, z)[inside] if callable(value) else value
        lab[sl][inside] = label
    _keep_largest_components(lab)
    return hu, lab


def _keep_largest_components(lab: np.ndarray) -> None:
    """Relabel as body the slivers that carving can leave, so every organ has at most the number
    of connected components (26-connectivity) its Label states (0 = any number)."""
    from scipy import ndimage

    for label in PHANTOM_LABELS:
        if label.components == 0:
            continue
        mask = lab == label.id
        comps, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
        if n <= label.components:
            continue
        sizes = np.bincount(comps.ravel())[1:]
        keep = np.argsort(sizes)[::-1][: label.components] + 1
        lab[mask & ~np.isin(comps, keep)] = LABEL_IDS["body"]


def make_phantom(seed: int = 0, shape=DEFAULT_SHAPE, spacing=DEFAULT_SPACING, orientation="axial", *,
                 reverse_slices: bool = False, center_lps=None, blur_sigma_vox: float = 0.7,
                 noise_sd: float = 12.0, randomise: Mapping | None = None) -> tuple[Volume, LabelMap]:
    """A CT phantom and its ground truth, identical for identical arguments.

    Parameters
    ----------
    seed : int, drives the noise, the UIDs and (with ``randomise``) the anatomy.
    shape : (nk, nj, ni) slices, rows, columns. spacing : (slice, row, column) mm.
    orientation : 'axial' | 'coronal' | 'sagittal' | 'oblique' | 6 direction cosines.
    reverse_slices : slice k=0 at the head end instead of the feet end.
    center_lps : grid centre in LPS mm (default: the body frame's origin).
    blur_sigma_vox : Gaussian partial-volume blur (voxels) before the noise.
    noise_sd : white noise HU standard deviation.
    randomise : None (the reference anatomy) or {organ_shift_mm, organ_scale, body_scale}.

    Returns
    -------
    ct : Volume of int16 HU in [-1024, 3071]; labels : LabelMap (uint8) on the same grid.
    """
    from pydicom.uid import generate_uid
    from scipy import ndimage

    anatomy = Anatomy() if not randomise else _randomised(np.random.default_rng([int(seed), 1]), randomise)
    affine = phantom_grid(shape, spacing, orientation, reverse_slices=reverse_slices, center_lps=center_lps)
    hu, lab = sample_phantom(affine, shape, anatomy)
    if blur_sigma_vox > 0:
        hu = ndimage.gaussian_filter(hu, float(blur_sigma_vox), mode="nearest")
    if noise_sd > 0:
        hu += np.random.default_rng([int(seed), 2]).normal(0.0, float(noise_sd), hu.shape).astype(np.float32)
    ct_arr = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    for_uid = generate_uid(entropy_srcs=["surgitwin-phantom", "frame-of-reference", str(int(seed))])
    source = {
        "generator": "pipeline.phantom", "seed": int(seed), "modality": "CT",
        "orientation": _iop(orientation).round(8).tolist(), "reverse_slices": bool(reverse_slices),
        "randomise": dict(randomise or {}), "anatomy": asdict(anatomy), "noise_sd": float(noise_sd),
        "blur_sigma_vox": float(blur_sigma_vox),
    }
    ct = Volume(ct_arr, affine, for_uid, source)
    labels = LabelMap(Volume(lab, affine, for_uid, {**source, "kind": "ground_truth_labels"}), PHANTOM_LABELS)
    return ct, labels


# --- label table files, sample bundle, CLI-facing function ---------------------------------

def label_table_yaml(table: LabelTable = PHANTOM_LABELS) -> str:
    """The label table as YAML text: what ``configs/labels/phantom.yaml`` holds (a test checks)."""
    def item(l: Label) -> str:
        ml = "null" if l.expected_ml is None else f"[{l.expected_ml[0]:g}, {l.expected_ml[1]:g}]"
        code = "null" if l.code is None else f'"{l.code}"'
        return (f"  - {{id: {l.id}, name: {l.name}, rgb: [{', '.join(str(c) for c in l.rgb)}], code: {code}, "
                f"critical: {str(l.critical).lower()}, expected_ml: {ml}, components: {l.components}}}")

    head = [
        "# Label table of the synthetic CT phantom (pipeline/phantom.py, ground truth of sample_scans/phantom_ct).",
        "# Generated from pipeline.phantom.PHANTOM_LABELS by pipeline.phantom.label_table_yaml(); edit the",
        "# Python table and regenerate (tests/test_phantom.py checks that the two agree).",
        "#",
        "# Tissue that belongs to no named structure (fat, muscle, bowel, stomach, heart, discs) is 'body';",
        "# 0 is air and the table. components: connected components kept by post-processing (0 = keep all).",
        "# expected_ml: plausible volume of the part inside an abdominal field of view (QC).",
        "name: phantom",
        "labels:",
    ]
    return "\n".join(head + [item(l) for l in table]) + "\n"


def label_volumes_ml(labels: LabelMap) -> dict[str, float]:
    counts = np.bincount(labels.array.ravel(), minlength=max(labels.labels.ids) + 1)
    return {l.name: round(float(counts[l.id]) * labels.volume.voxel_volume_ml, 1) for l in labels.labels}


def write_label_nifti(labels: LabelMap, path) -> Path:
    """Write a label map as NIfTI (or NRRD/MHA by extension), atomically."""
    from .geometry import write_image_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image_file(labels.volume, path)
    return path


def _atomic_text(path: Path, text: str) -> None:
    from .fileio import atomic_write_text

    atomic_write_text(path, text)


def generate_sample(out_dir, seed: int = 0, *, orientation="axial", reverse: bool = False,
                    shape=DEFAULT_SHAPE, spacing=DEFAULT_SPACING) -> dict:
    """Write a complete sample under ``out_dir``: ``dicom/*.dcm``, ``ground_truth_labels.nii.gz``,
    ``labels.json`` (the label table as a list, :meth:`LabelTable.from_list` reads it),
    ``phantom.json`` (seed, grid, volumes) and ``README.md``. Returns a summary dict.

    Existing ``*.dcm`` files in ``out_dir/dicom`` are replaced (the folder is this function's).
    """
    from .dicom_writer import write_dicom_series

    out = Path(out_dir)
    dicom_dir = out / "dicom"
    dicom_dir.mkdir(parents=True, exist_ok=True)
    for old in dicom_dir.glob("*.dcm"):
        old.unlink()
    ct, labels = make_phantom(seed, shape, spacing, orientation)
    files = write_dicom_series(ct, dicom_dir, reverse_order=reverse)
    write_label_nifti(labels, out / "ground_truth_labels.nii.gz")
    vols = label_volumes_ml(labels)
    _atomic_text(out / "labels.json", json.dumps(PHANTOM_LABELS.to_list(), indent=1) + "\n")
    info = {"generator": "pipeline.phantom.generate_sample", "seed": int(seed), "shape": list(ct.shape),
            "spacing_mm": ct.spacing.round(6).tolist(), "affine_lps": np.round(ct.affine, 6).tolist(),
            "orientation": orientation_code(ct.affine), "reverse_instance_order": bool(reverse),
            "frame_of_reference_uid": ct.frame_of_reference_uid, "volumes_ml": vols}
    _atomic_text(out / "phantom.json", json.dumps(info, indent=1) + "\n")
    _atomic_text(out / "README.md", _sample_readme(ct, seed, orientation, reverse, vols, len(files)))
    return {"out": str(out), "files": len(files), "seed": int(seed), "shape": list(ct.shape),
            "spacing_mm": ct.spacing.round(4).tolist(), "orientation": orientation_code(ct.affine),
            "volumes_ml": vols}


def _sample_readme(ct: Volume, seed, orientation, reverse, vols, n_files) -> str:
    sp = ct.spacing
    rows = "\n".join(f"| {l.id} | {l.name} | {tuple(l.rgb)} | {l.code or ''} | {vols[l.name]} |" for l in PHANTOM_LABELS)
    orient = orientation if isinstance(orientation, str) else "custom IOP " + str(list(orientation))
    return f"""# Synthetic abdominal CT phantom (seed {seed})

Not a patient. Generated by `pipeline.phantom.generate_sample(out_dir, seed={seed})`
(`surgitwin phantom <dir> --seed {seed}`): analytic anatomy in patient (LPS) mm sampled onto
the grid below, Gaussian partial-volume blur (0.7 voxel) and white noise (12 HU sd).
Designed HU: liver 60, tumour 30 (hypodense, ~28 mm), spleen 50, kidneys 30 (cortex) / 24,
aorta 200 and IVC 150 (contrast), lungs about -850, fat -100, muscle 50, vertebral cortex 750 /
cancellous 230, ribs 600 / 250, air -1000. Unlabelled soft tissue (bowel, stomach with an
air-fluid level, pancreas, gallbladder, heart, muscle, fat) is `body`; the table is 0.

- `dicom/`: {n_files} files, one CT Image Storage instance per slice, explicit VR little endian,
  uncompressed; HU = stored value - 1024 (RescaleIntercept -1024, slope 1). Patient
  `PHANTOM^SURGITWIN`, ID `SW-0001`; UIDs are derived from the seed, so regeneration is
  byte-identical.{" Instance numbers run head -> feet." if reverse else ""}
- `ground_truth_labels.nii.gz`: the exact label map on the same grid (NIfTI, RAS on disk as
  NIfTI requires; read it with SimpleITK or `pipeline.geometry.read_image_file` to get LPS).
- `labels.json`: the label table (id, name, colour, SNOMED CT code, expected volume range);
  `phantom.json`: seed, grid, affine and the volume of each structure in this sample.

Geometry: {ct.shape[0]} slices x {ct.shape[1]} rows x {ct.shape[2]} columns, slice step
{sp[0]:.2f} mm, pixels {sp[1]:.2f} x {sp[2]:.2f} mm, orientation {orient}
({orientation_code(ct.affine)}: array axes k, j, i point to these patient directions),
first voxel at LPS {np.round(ct.origin, 2).tolist()} mm.

| id | name | colour | SNOMED CT | volume (ml) |
|---|---|---|---|---|
{rows}
"""


def phantom_command(out, seed: int = 0, oblique: bool = False, reverse: bool = False) -> dict:
    """CLI entry (``surgitwin phantom``): write a sample under ``out``; returns its summary."""
    return generate_sample(out, seed, orientation="oblique" if oblique else "axial", reverse=reverse)
