"""Scans with a known answer "no abdominal organ here": the negatives of the model card and tests.

* ``chest``: the analytic phantom (:mod:`pipeline.phantom`) with its field of view moved above
  the diaphragm domes (lungs, heart, thoracic aorta; no liver, spleen or kidney);
* ``pelvis``: the phantom's field of view moved below the kidneys and the colon, with a bony
  pelvis painted in (sacrum, iliac wings, acetabula and femoral heads, pubic and ischial rami),
  a bladder and a rectum: no liver, spleen or kidney;
* the real head CT of ``../shared/data/real/ct_head_gantry_tilt_ge`` (read by the caller).

Each is deterministic from its seed (noise only). ``NEGATIVE_ORGANS`` are the structures that
must come out empty.
"""
from __future__ import annotations

import numpy as np

from ..phantom import PATIENT_OFFSET_LPS, phantom_grid, sample_phantom
from ..phantom_shapes import Ellipsoid, Where, tube
from ..types import Volume

NEGATIVE_ORGANS = ("liver", "spleen", "kidney_left", "kidney_right", "inferior_vena_cava")
#: field-of-view centres (body frame z, mm) and grid of the synthetic negatives
_CENTRE_Z = {"chest": 200.0, "pelvis": -300.0}
SHAPE, SPACING = (80, 192, 192), (2.5, 1.8, 1.8)


def _pelvis(x, y, z) -> list[tuple[np.ndarray, float]]:
    """(mask, HU) pairs of the bony pelvis and pelvic organs, painted in order (body frame mm)."""
    out = []

    def add(shape, hu):
        out.append((shape.contains(x, y, z) if not isinstance(shape, list)
                    else np.logical_or.reduce([s.contains(x, y, z) for s in shape]), hu))

    add(Ellipsoid((0, -35, -285), (48, 38, 38)), 8.0)  # bladder (urine)
    add(tube([(0, 40, -230), (0, 50, -290), (0, 20, -330)], 16), 25.0)  # rectum
    for sx in (-1, 1):
        # iliac wing: a curved plate from the crest (z -200) to the acetabulum, 9 mm thick
        def wing(x, y, z, sx=sx):
            r = np.sqrt(((x - sx * 20) / 95.0) ** 2 + ((y - 25) / 62.0) ** 2)
            return (r > 0.9) & (r < 1.0) & (sx * x > 35) & (y > -25)
        add(Where(wing, (-130, -40, -262), (130, 95, -198)), 480.0)
        add(Ellipsoid((sx * 92, 5, -282), (27, 27, 27)), 650.0)  # acetabulum
        add(Ellipsoid((sx * 95, 8, -285), (23, 23, 23)), 330.0)  # femoral head (cancellous)
        add(tube([(sx * 95, 8, -285), (sx * 125, 14, -305), (sx * 128, 14, -400)], 14), 700.0)  # neck, shaft
        add(tube([(sx * 92, 5, -282), (sx * 10, -70, -300)], 10), 600.0)  # pubic ramus
        add(tube([(sx * 88, 15, -290), (sx * 60, 35, -330)], 13), 600.0)  # ischium
    add(Where(lambda x, y, z: (np.abs(x) < 52 - 0.35 * (-200 - z)) & (y > 45) & (y < 75 + 0.1 * (z + 200)),
              (-52, 30, -300), (52, 80, -196)), 420.0)  # sacrum, narrowing downwards
    return out


def negative_ct(kind: str, seed: int = 0, noise_sd: float = 12.0, blur_sigma_vox: float = 0.7) -> Volume:
    """A synthetic ``chest`` or ``pelvis`` CT (int16 HU) on a 192 x 192 x 80 grid, 1.8/2.5 mm."""
    from scipy import ndimage

    if kind not in _CENTRE_Z:
        raise ValueError(f"negative kind must be one of {sorted(_CENTRE_Z)}; found {kind!r}")
    centre = np.asarray(PATIENT_OFFSET_LPS, float) + (0.0, 0.0, _CENTRE_Z[kind])
    affine = phantom_grid(SHAPE, SPACING, "axial", center_lps=centre)
    hu, _lab = sample_phantom(affine, SHAPE)
    if kind == "pelvis":
        k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing="ij")
        xyz = [affine[r, 0] * k + affine[r, 1] * j + affine[r, 2] * i + affine[r, 3] - PATIENT_OFFSET_LPS[r]
               for r in range(3)]
        for mask, value in _pelvis(*xyz):
            hu[mask] = value
    if blur_sigma_vox > 0:
        hu = ndimage.gaussian_filter(hu, float(blur_sigma_vox), mode="nearest")
    if noise_sd > 0:
        hu += np.random.default_rng([int(seed), 2]).normal(0.0, float(noise_sd), hu.shape).astype(np.float32)
    arr = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return Volume(arr, affine, f"2.25.{1000 + seed}", {"generator": "pipeline.train.negatives", "kind": kind,
                                                       "modality": "CT", "seed": int(seed)})
