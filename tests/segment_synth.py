"""Analytic test volumes for the segmentation tests: shapes defined in LPS mm, sampled on any grid.

Because every shape is tested at the LPS position of each voxel centre, an oblique or
reversed grid samples the same anatomy, and the truth is known exactly for any geometry.
"""
from __future__ import annotations

import numpy as np

from pipeline.types import Volume


def grid_affine(shape, spacing, rot_deg=(0.0, 0.0, 0.0), center=(0.0, 0.0, 0.0), flip_k=False) -> np.ndarray:
    """Affine for ``array[k, j, i]`` with axes (S, P, L) rotated by ``rot_deg`` about x, y, z."""
    from scipy.spatial.transform import Rotation

    base = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]).T  # columns: k->S, j->P, i->L
    if flip_k:
        base[:, 0] *= -1
    rot = Rotation.from_euler("xyz", rot_deg, degrees=True).as_matrix()
    a = np.eye(4)
    a[:3, :3] = rot @ base * np.asarray(spacing, float)
    centre_idx = (np.asarray(shape, float) - 1) / 2.0
    a[:3, 3] = np.asarray(center, float) - a[:3, :3] @ centre_idx
    return a


def lps_grid(shape, affine) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    a = affine.astype(np.float32)
    x = a[0, 0] * k + a[0, 1] * j + a[0, 2] * i + a[0, 3]
    y = a[1, 0] * k + a[1, 1] * j + a[1, 2] * i + a[1, 3]
    z = a[2, 0] * k + a[2, 1] * j + a[2, 2] * i + a[2, 3]
    return x, y, z


def _ell(x, y, z, c, s):
    return ((x - c[0]) / s[0]) ** 2 + ((y - c[1]) / s[1]) ** 2 + ((z - c[2]) / s[2]) ** 2 <= 1.0


def _segment_tube(x, y, z, p0, p1, r):
    p0, p1 = np.asarray(p0, np.float32), np.asarray(p1, np.float32)
    d = p1 - p0
    t = np.clip(((x - p0[0]) * d[0] + (y - p0[1]) * d[1] + (z - p0[2]) * d[2]) / float(d @ d), 0, 1)
    return (x - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (z - p0[2] - t * d[2]) ** 2 <= r * r


def synthetic_chest(shape=(94, 150, 200), spacing=(3.0, 2.0, 2.0), rot_deg=(0.0, 0.0, 0.0), flip_k=False,
                    noise_sd: float = 10.0, seed: int = 0) -> tuple[Volume, dict[str, np.ndarray]]:
    """Chest/abdomen CT in HU (int16) and its truth masks.

    Body: elliptic cylinder 150 x 110 mm (LPS x, y) lying on a 8 mm table (y 110..118, not
    body). Lungs: two ellipsoids at x = +-70 mm (patient left is +x) with vessels inside.
    Airway: trachea (r 9 mm) from the top of the field down to z = 95 mm, bronchi into each
    lung. A gas pocket (pure air) in the abdomen and a spine with marrow (cortex 700 HU,
    marrow 100 HU).
    """
    affine = grid_affine(shape, spacing, rot_deg, flip_k=flip_k)
    x, y, z = lps_grid(shape, affine)
    hu = np.full(shape, -1000.0, np.float32)
    table = (y >= 110) & (y <= 118) & (np.abs(x) <= 190)
    hu[table] = 250.0
    body = ((x / 150.0) ** 2 + (y / 110.0) ** 2 <= 1.0)
    hu[body] = -90.0  # fat
    hu[body & ((x / 140.0) ** 2 + (y / 100.0) ** 2 <= 1.0)] = 40.0  # soft tissue
    lungs = np.zeros(shape, bool)
    for sx in (-1, 1):
        lungs |= _ell(x, y, z, (sx * 72, 0, 75), (50, 65, 95))
    lungs &= z > -10
    vessels = np.zeros(shape, bool)
    for sx in (-1, 1):
        for dz in (40, 80, 120):
            vessels |= _ell(x, y, z, (sx * 72, -10, dz), (6, 6, 6))
    hu[lungs] = -850.0
    hu[lungs & vessels] = 40.0
    airway = _segment_tube(x, y, z, (0, -30, 400), (0, -30, 95), 9.0)
    for sx in (-1, 1):
        airway |= _segment_tube(x, y, z, (0, -30, 95), (sx * 55, -15, 70), 6.0)
    airway &= body
    hu[airway] = -1000.0
    gas = _ell(x, y, z, (35, -45, -70), (30, 22, 22))
    hu[gas] = -1000.0
    spine_out = ((x / 16.0) ** 2 + ((y - 75) / 16.0) ** 2 <= 1.0) & body
    spine_in = ((x / 10.0) ** 2 + ((y - 75) / 10.0) ** 2 <= 1.0)
    hu[spine_out] = 700.0
    hu[spine_out & spine_in] = 100.0
    if noise_sd:
        hu += np.random.default_rng(seed).normal(0, noise_sd, shape).astype(np.float32)
    truth = {
        "body": body, "lungs": lungs & ~airway, "airway": airway, "bone": spine_out, "gas": gas,
        "table": table, "vessels": lungs & vessels,
    }
    vol = Volume(np.clip(np.rint(hu), -1024, 3071).astype(np.int16), affine, None, {"modality": "CT"})
    return vol, truth


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s
