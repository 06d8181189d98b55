"""SynthSeg-style synthetic CT from label maps (and from the project's phantoms).

A *generation map* is a label map in generation labels (:mod:`pipeline.train.labels`) on a
canonical grid: isotropic spacing, array axes ordered R, A, S (MONAI's ``RAS`` axcodes, the
orientation the networks are trained in). From one generation map the synthesiser draws an
unlimited number of training images:

1. paint what the source map leaves unlabelled inside a random body outline: subcutaneous
   fat, an abdominal-wall muscle ring, a spine and back muscles when the map has no bone,
   rib cross-sections, and a mixture of visceral fat, soft tissue and gas;
2. deform it (random rotation, anisotropic scale, smooth elastic field) -- never mirrored, so
   left and right organs keep their sides;
3. give every generation label a random mean (from a wide CT prior, or fully random in a
   fraction of samples), texture, partial-volume blur, noise, a smooth bias field, and
   sometimes a thick-slice resolution loss and a truncated field of view.

Images are in HU; the model's window normalisation is applied by the training loop.
All arrays here are ``(n_r, n_a, n_s)`` = RAS-ordered (not the ``[k, j, i]`` of
:class:`pipeline.types.Volume`); the accompanying affine maps this index to LPS mm, so the
result is still an ordinary :class:`Volume`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import SurgitwinError
from ..types import Volume
from .canonical import canonical_grid, to_canonical  # noqa: F401 - canonical_grid: this module's API
from .labels import GEN_BY_NAME, GEN_LABELS, TORSO_NAMES, totalseg_to_gen

AIR_HU = -1000.0
N_GEN = max(GEN_LABELS) + 1
OUTSIDE_FOV = 255  # marker in warped generation maps: no data (padding, truncated field of view)

#: generation id -> target id lookup, (256,) uint8
GEN_TO_TARGET = np.zeros(256, np.uint8)
for _gid, (_n, _tid, _r) in GEN_LABELS.items():
    GEN_TO_TARGET[_gid] = _tid


def relabel(vol: Volume, id_to_name: dict[int, str], name_to_gen=None) -> Volume:
    """Translate a source label map to generation labels by name; unknown names become 0."""
    lut = np.zeros(int(max(max(id_to_name), vol.array.max())) + 1, np.uint8)
    for sid, name in id_to_name.items():
        gname = name_to_gen(name) if name_to_gen else name
        if gname is not None and gname in GEN_BY_NAME:
            lut[sid] = GEN_BY_NAME[gname]
    return vol.with_array(lut[vol.array.astype(np.int64)], relabelled="generation labels")


def check_sidedness(gen: Volume) -> dict:
    """Verify left/right organs by physical position (LPS x > 0 is patient left).

    Raises if kidney_left lies to the right of kidney_right, or the spleen (left) lies to the
    right of the liver (right): a source map with swapped names would teach a mirrored model.
    """
    out = {}
    for name in ("kidney_left", "kidney_right", "spleen", "liver"):
        idx = np.argwhere(gen.array == GEN_BY_NAME[name])
        if len(idx):
            out[name] = float(gen.index_to_lps(idx.mean(0)[None])[0, 0])
    for left, right in (("kidney_left", "kidney_right"), ("spleen", "liver")):
        if left in out and right in out and not out[left] > out[right]:
            raise SurgitwinError(f"label map sidedness: '{left}' (LPS x={out[left]:.0f} mm) must lie "
                                 f"left of '{right}' (x={out[right]:.0f} mm); names look swapped",
                                 path=str(gen.source.get("file", "")))
    return out


def load_real_generation_maps(real_dir, spacing: float = 3.0) -> list[Volume]:
    """The real label maps of ../shared/data/real as generation maps on canonical grids."""
    from ..geometry import read_image_file

    real_dir = Path(real_dir)
    maps = []
    torso = real_dir / "abdomen_label_map" / "torso_labels.nii.gz"
    if torso.exists():
        v = relabel(read_image_file(torso), TORSO_NAMES)
        maps.append(to_canonical(v, spacing).with_array(to_canonical(v, spacing).array, name="torso_labels"))
    ref = real_dir / "ct_thorax_abdomen_dicom_j2k" / "labels_reference.nii.gz"
    cmap = ref.with_name("class_map_total.json")
    if ref.exists() and cmap.exists():
        names = {int(k): v for k, v in json.loads(cmap.read_text())["total"].items()}
        v = relabel(read_image_file(ref), names, totalseg_to_gen)
        maps.append(to_canonical(v, spacing).with_array(to_canonical(v, spacing).array, name="ct_thorax_abdomen_reference"))
    for m in maps:
        check_sidedness(m)
    if not maps:
        raise SurgitwinError("no real label maps found (abdomen_label_map/, ct_thorax_abdomen_dicom_j2k/)",
                             path=str(real_dir))
    return maps


# --- painting the unlabelled body --------------------------------------------------------------

def _smooth_noise(shape, rng, coarse: int = 6, order: int = 1) -> np.ndarray:
    """Smooth random field in [0, 1]-ish: coarse Gaussian noise upsampled (cheap)."""
    cs = [max(2, s // coarse) for s in shape]
    z = rng.standard_normal(cs).astype(np.float32)
    up = ndimage.zoom(z, [s / c for s, c in zip(shape, cs)], order=order, mode="nearest")
    up = up[:shape[0], :shape[1], :shape[2]]
    if up.shape != tuple(shape):
        up = np.pad(up, [(0, s - u) for s, u in zip(shape, up.shape)], mode="edge")
    return up


def paint_body(gen: np.ndarray, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Fill the unlabelled inside of a random body outline with plausible tissues.

    Parameters
    ----------
    gen : (n_r, n_a, n_s) uint8 generation labels, RAS-ordered, isotropic ``spacing`` mm.

    Returns
    -------
    (n_r, n_a, n_s) uint8, labels >= FIRST_SYNTHETIC_GEN added where ``gen == 0`` inside the
    body; outside the body stays 0 (air).
    """
    g = gen.copy()
    lab = g > 0
    if not lab.any():
        return g
    nr, na, ns = g.shape
    # the outline hugs the organs, not the bones: arms (humerus) lie outside the trunk
    trunk = lab & (g != GEN_BY_NAME["bone"])
    idx = np.nonzero((trunk if trunk.any() else lab).any(axis=2))
    pr, pa = idx[0] * spacing, idx[1] * spacing
    r0, r1, a0, a1 = pr.min(), pr.max(), pa.min(), pa.max()
    cr0, ca0 = 0.5 * (r0 + r1), 0.5 * (a0 + a1)
    hx, hy = max(0.5 * (r1 - r0), spacing), max(0.5 * (a1 - a0), spacing)
    k = float(np.sqrt(((pr - cr0) / hx) ** 2 + ((pa - ca0) / hy) ** 2).max())  # ellipse through the farthest organ
    m_lat, m_post, m_ant = rng.uniform(10, 40), rng.uniform(20, 55), rng.uniform(10, 40)
    cr = cr0 + rng.uniform(-5, 5)
    rx = k * hx + m_lat
    ca = ca0 + 0.5 * (m_ant - m_post)
    ry = k * hy + 0.5 * (m_ant + m_post)
    post, ant = ca - ry, ca + ry
    R = (np.arange(nr) * spacing)[:, None]
    A = (np.arange(na) * spacing)[None, :]
    zz = np.arange(ns) * spacing
    wobble = 1.0 + 0.05 * np.sin(zz / rng.uniform(60, 200) + rng.uniform(0, 6.28))  # (ns,)
    # normalised elliptic radius per slice: (nr, na, ns)
    rho = np.sqrt(((R - cr) / rx) ** 2 + ((A - ca) / ry) ** 2)[:, :, None] / wobble[None, None, :]
    depth = (1.0 - rho) * min(rx, ry)  # ~ mm below the skin
    inside = rho <= 1.0
    body = inside | lab
    stray = lab & ~inside
    if stray.any():  # labelled bone outside the trunk (arms): wrap it in soft tissue
        arm = ndimage.binary_dilation(stray, np.ones((3, 3, 1), bool), iterations=int(rng.integers(4, 9)))
        g[arm & ~inside & (g == 0)] = GEN_BY_NAME["muscle"]
        body |= arm
    if rng.random() < 0.6:  # the scanner table: thin curved bright lines below the back
        y0 = post - rng.uniform(8, 40)
        curv = rng.uniform(0, 0.002)
        half = rng.uniform(150, 260)
        for k in range(int(rng.integers(1, 4))):
            yk = y0 - k * rng.uniform(10, 25)
            line = (np.abs(A - (yk + curv * (R - cr) ** 2)) < spacing * 0.6) & (np.abs(R - cr) < half)
            g[line[:, :, None] & (g == 0) & ~body] = GEN_BY_NAME["table"]
    free = body & (g == 0)
    fat_t = rng.uniform(5, 35)
    wall_t = rng.uniform(4, 15)
    g[free & (depth < fat_t)] = GEN_BY_NAME["subcutaneous_fat"]
    g[free & (depth >= fat_t) & (depth < fat_t + wall_t)] = GEN_BY_NAME["body_wall_muscle"]

    has_bone = (gen == GEN_BY_NAME["bone"]).any()
    aorta = np.argwhere(gen == GEN_BY_NAME["aorta"])
    if not has_bone:
        # spine and back muscles posterior to the aorta (or the body's midline)
        if len(aorta):
            ar, aa = aorta[:, 0].mean() * spacing, aorta[:, 1].mean() * spacing
        else:
            ar, aa = cr, post + 0.3 * (ant - post)
        vr = rng.uniform(14, 22)
        vc_r, vc_a = ar + rng.uniform(5, 25), aa - rng.uniform(20, 32) - vr  # spine lies right of the aorta
        d_body = np.sqrt((R - vc_r) ** 2 + (A - vc_a) ** 2)
        d_canal = np.sqrt((R - vc_r) ** 2 + (A - (vc_a - vr - 8)) ** 2)
        d_arch = np.sqrt((R - vc_r) ** 2 + (A - (vc_a - vr - 10)) ** 2)
        spine2d = (d_body <= vr) | ((d_arch <= 16) & (d_canal > 7))
        mr = rng.uniform(20, 32)
        musc2d = ((np.sqrt((R - vc_r - 38) ** 2 + (A - vc_a + vr + 12) ** 2) <= mr)
                  | (np.sqrt((R - vc_r + 38) ** 2 + (A - vc_a + vr + 12) ** 2) <= mr))
        g[free & (d_canal <= 7)[:, :, None] & (g == 0)] = GEN_BY_NAME["spinal_cord"]
        g[free & spine2d[:, :, None] & (g == 0)] = GEN_BY_NAME["synthetic_bone"]
        g[free & musc2d[:, :, None] & (g == 0)] = GEN_BY_NAME["muscle"]
        # ribs: oblique tubes just inside the body wall, where liver or spleen is present
        organ_z = np.nonzero(np.isin(gen, [GEN_BY_NAME["liver"], GEN_BY_NAME["spleen"]]).any(axis=(0, 1)))[0]
        if len(organ_z):
            zmin, zmax = organ_z.min(), organ_z.max()
            n_ribs = rng.integers(6, 14)
            for _ in range(n_ribs):
                ang0 = rng.uniform(-np.pi, np.pi)
                slope = rng.uniform(-0.025, 0.025)
                rib_r = rng.uniform(3, 6)
                frac = 1.0 - (fat_t + wall_t + rng.uniform(2, 10)) / min(rx, ry)
                for s in range(zmin, zmax + 1):
                    th = ang0 + slope * (s - zmin) * spacing
                    pr, pa = cr + frac * rx * np.cos(th) * wobble[s], ca + frac * ry * np.sin(th) * wobble[s]
                    ir, ia = int(round(pr / spacing)), int(round(pa / spacing))
                    rr = int(np.ceil(rib_r / spacing))
                    sl_r = slice(max(ir - rr, 0), max(min(ir + rr + 1, nr), 0))
                    sl_a = slice(max(ia - rr, 0), max(min(ia + rr + 1, na), 0))
                    if sl_r.start >= sl_r.stop or sl_a.start >= sl_a.stop:
                        continue  # this rib section falls outside the grid
                    sub = g[sl_r, sl_a, s]
                    dsq = ((np.arange(sl_r.start, sl_r.stop)[:, None] - pr / spacing) ** 2
                           + (np.arange(sl_a.start, sl_a.stop)[None, :] - pa / spacing) ** 2)
                    sub[(dsq * spacing ** 2 <= rib_r ** 2) & (sub == 0) & free[sl_r, sl_a, s]] = GEN_BY_NAME["synthetic_bone"]

    rest = free & (g == 0)
    n = _smooth_noise(g.shape, rng, coarse=int(rng.integers(4, 10)))
    fat_q = np.quantile(n, rng.uniform(0.15, 0.6))
    g[rest & (n < fat_q)] = GEN_BY_NAME["visceral_fat"]
    g[rest & (n >= fat_q)] = GEN_BY_NAME["soft_tissue"]
    if rng.random() < 0.6:
        n2 = _smooth_noise(g.shape, rng, coarse=3)
        gas_q = np.quantile(n2, 1.0 - rng.uniform(0.005, 0.04))
        g[rest & (n2 > gas_q)] = GEN_BY_NAME["gas"]
    return g


# --- deformation ---------------------------------------------------------------------------------

def _rotation(rng, max_deg) -> np.ndarray:
    """Random rotation: angles uniform in +-max_deg (R, A, S axes)."""
    ax, ay, az = np.deg2rad([rng.uniform(-m, m) for m in max_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def warp_labels(gen: np.ndarray, out_shape, center, rng: np.random.Generator, spacing: float,
                rot_deg=(10.0, 10.0, 15.0), scale=(0.8, 1.25), aniso: float = 0.1,
                elastic_mm: float = 6.0) -> np.ndarray:
    """Nearest-neighbour sample ``gen`` on a randomly rotated, scaled, elastically deformed patch.

    The linear part is a rotation times a *positive* diagonal scale: no mirroring, so left
    stays left. Voxels sampled outside ``gen`` become :data:`OUTSIDE_FOV`.

    Parameters
    ----------
    gen : (n_r, n_a, n_s) uint8
    out_shape : (3,) patch shape
    center : (3,) float voxel of ``gen`` mapped to the patch centre
    """
    out_shape = tuple(int(s) for s in out_shape)
    s_iso = np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1])))
    sc = s_iso * np.exp(rng.uniform(-aniso, aniso, 3))
    lin = _rotation(rng, rot_deg) @ np.diag(sc)  # patch voxel offset -> source voxel offset
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) - (s - 1) / 2 for s in out_shape],
                                indexing="ij"))  # (3, *out)
    coords = np.tensordot(lin.astype(np.float32), grid, axes=1) + np.asarray(center, np.float32)[:, None, None, None]
    if elastic_mm > 0:
        for d in range(3):
            coords[d] += _smooth_noise(out_shape, rng, coarse=int(rng.integers(12, 24)), order=3) \
                * rng.uniform(0, elastic_mm) / spacing
    return ndimage.map_coordinates(gen, coords, order=0, mode="constant", cval=OUTSIDE_FOV)


# --- intensities -------------------------------------------------------------------------------

@dataclass
class IntensityParams:
    """Ranges of the random intensity model (HU)."""

    p_fully_random: float = 0.05   # SynthSeg: ignore the CT prior, any mean in random_range
    random_range: tuple[float, float] = (-200.0, 350.0)
    texture_std: tuple[float, float] = (2.0, 15.0)
    noise_std: tuple[float, float] = (2.0, 22.0)
    blur_sigma: tuple[float, float] = (0.2, 1.0)       # voxels
    p_thick_slices: float = 0.25                        # extra blur along S
    bias_hu: float = 25.0
    p_truncate_fov: float = 0.4


def paint_intensities(gen: np.ndarray, rng: np.random.Generator, p: IntensityParams | None = None) -> np.ndarray:
    """HU image (float32, same shape) from a generation-label patch (see module doc, step 3)."""
    p = p or IntensityParams()
    means = np.full(256, AIR_HU, np.float32)
    stds = np.zeros(256, np.float32)
    fully = rng.random() < p.p_fully_random
    for gid, (_name, _tid, (lo, hi)) in GEN_LABELS.items():
        if fully and gid not in (GEN_BY_NAME["gas"], GEN_BY_NAME["lung"]):
            means[gid] = rng.uniform(*p.random_range)
        else:
            means[gid] = rng.uniform(lo, hi)
        stds[gid] = rng.uniform(*p.texture_std)
    # a shared contrast phase couples vessels and enhancing organs in most samples, as in real scans
    if not fully and rng.random() < 0.85:
        phase = rng.random()
        for name, (base, gain) in {"aorta": (40, 330), "inferior_vena_cava": (35, 170), "other_vessel": (35, 190),
                                   "kidney_left": (30, 200), "kidney_right": (30, 200), "liver": (50, 90),
                                   "spleen": (45, 120)}.items():
            means[GEN_BY_NAME[name]] = base + gain * phase + rng.normal(0, 15)
        if rng.random() < 0.8:  # the two kidneys enhance alike
            means[GEN_BY_NAME["kidney_right"]] = means[GEN_BY_NAME["kidney_left"]] + rng.normal(0, 8)
        if rng.random() < 0.3:  # intrahepatic IVC isodense to liver (portal phase): only shape tells them apart
            means[GEN_BY_NAME["inferior_vena_cava"]] = means[GEN_BY_NAME["liver"]] + rng.normal(0, 8)
    means[0] = AIR_HU
    means[OUTSIDE_FOV] = AIR_HU
    img = means[gen]
    if not fully:
        _hollow_contents(img, gen, rng)
        _liver_vessels(img, gen, rng, means)
    tex = rng.standard_normal(gen.shape).astype(np.float32)
    tex = ndimage.gaussian_filter(tex, rng.uniform(0.5, 1.2))
    tex /= max(float(tex.std()), 1e-6)
    img += tex * stds[gen]
    sig = [rng.uniform(*p.blur_sigma)] * 3
    if rng.random() < p.p_thick_slices:
        sig[2] = rng.uniform(1.0, 2.0)
    img = ndimage.gaussian_filter(img, sig)
    img += _smooth_noise(gen.shape, rng, coarse=16) * rng.uniform(0, p.bias_hu)
    img += rng.standard_normal(gen.shape).astype(np.float32) * rng.uniform(*p.noise_std)
    img[gen == OUTSIDE_FOV] = AIR_HU
    return img.astype(np.float32)


def _hollow_contents(img: np.ndarray, gen: np.ndarray, rng: np.random.Generator) -> None:
    """Stomach and bowel hold food, fluid and gas, not one uniform tissue (in place).

    Real stomachs are mottled (food at liver-like HU next to fluid), often with gas on the
    non-dependent, anterior side of a supine patient (+A, axis 1 here), sometimes with positive
    oral contrast. Without this the network learns "uniform = stomach" and takes a food-filled
    stomach for liver, and the gastro-oesophageal junction for aorta.
    """
    hollow = np.isin(gen, [GEN_BY_NAME["stomach"], GEN_BY_NAME["bowel"]])
    if not hollow.any():
        return
    if rng.random() < 0.7:
        n = _smooth_noise(gen.shape, rng, coarse=int(rng.integers(2, 6)))
        img[hollow] += n[hollow] * rng.uniform(10.0, 60.0)
    if rng.random() < 0.12:
        n = _smooth_noise(gen.shape, rng, coarse=3)
        q = np.quantile(n[hollow], rng.uniform(0.3, 0.9))
        img[hollow & (n > q)] = rng.uniform(150.0, 500.0)
    if rng.random() < 0.5:
        ant = (np.arange(gen.shape[1], dtype=np.float32) / max(gen.shape[1] - 1, 1))[None, :, None]
        n = _smooth_noise(gen.shape, rng, coarse=3) + rng.uniform(1.0, 4.0) * ant
        q = np.quantile(n[hollow], 1.0 - rng.uniform(0.05, 0.4))
        img[hollow & (n > q)] = rng.uniform(-1000.0, -600.0)


def _liver_vessels(img: np.ndarray, gen: np.ndarray, rng: np.random.Generator, means: np.ndarray) -> None:
    """Portal and hepatic veins inside the liver (in place): tubes where two smooth random
    fields are both near zero, painted at a vessel's HU (bright with contrast, dark without)."""
    liver = gen == GEN_BY_NAME["liver"]
    if not liver.any() or rng.random() >= 0.6:
        return
    c = int(rng.integers(4, 9))
    n1, n2 = _smooth_noise(gen.shape, rng, coarse=c), _smooth_noise(gen.shape, rng, coarse=c)
    w = rng.uniform(0.1, 0.3)
    ves = liver & (np.abs(n1) < w) & (np.abs(n2) < w)
    src = GEN_BY_NAME["other_vessel"] if rng.random() < 0.6 else GEN_BY_NAME["inferior_vena_cava"]
    img[ves] = means[src] + rng.normal(0.0, 10.0)


def truncate_fov(gen: np.ndarray, rng: np.random.Generator, spacing: float) -> np.ndarray:
    """Randomly cut the patch to a slab along S and/or a reconstruction circle (in place)."""
    if rng.random() < 0.5:
        ns = gen.shape[2]
        thick = int(rng.uniform(24, 150) / spacing)
        s0 = int(rng.integers(0, max(ns - thick, 1)))
        gen[:, :, :s0] = OUTSIDE_FOV
        gen[:, :, s0 + thick:] = OUTSIDE_FOV
    if rng.random() < 0.5:
        nr, na = gen.shape[:2]
        rad = rng.uniform(0.35, 0.7) * max(nr, na)
        cr, ca = rng.uniform(0.3, 0.7) * nr, rng.uniform(0.3, 0.7) * na
        out = ((np.arange(nr)[:, None] - cr) ** 2 + (np.arange(na)[None, :] - ca) ** 2) > rad ** 2
        gen[out] = OUTSIDE_FOV
    return gen


# --- sampling training pairs ----------------------------------------------------------------------

@dataclass
class SynthSampler:
    """Draws (image HU, target labels) patches from generation maps, balanced over target labels.

    Parameters
    ----------
    maps : list of generation-map Volumes on canonical grids of the same spacing
    patch : (3,) patch shape (RAS order)
    weights : sampling weight per map (default: equal)
    """

    maps: list
    patch: tuple = (80, 80, 80)
    weights: list | None = None
    spacing: float = 3.0
    intensity: IntensityParams = field(default_factory=IntensityParams)
    n_targets: int = 6
    rot_deg: tuple = (10.0, 10.0, 15.0)
    scale: tuple = (0.8, 1.25)

    def __post_init__(self):
        self._gen = [np.ascontiguousarray(m.array.astype(np.uint8)) for m in self.maps]
        tgt = [GEN_TO_TARGET[g] for g in self._gen]
        self._where = []
        for g, t in zip(self._gen, tgt):
            where = {c: np.argwhere(t == c) for c in range(1, self.n_targets + 1) if (t == c).any()}
            # background centres: inside the labelled bounding box (not the air around the body)
            nz = np.argwhere(g > 0)
            lo, hi = nz.min(0), nz.max(0) + 1
            box = np.zeros(g.shape, bool)
            box[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
            where[0] = np.argwhere(box & (t == 0))[::20]
            self._where.append(where)
        w = np.asarray(self.weights if self.weights else [1.0] * len(self.maps), float)
        self._w = w / w.sum()

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One pair: (patch,) float32 HU image and (patch,) uint8 target labels."""
        m = int(rng.choice(len(self._gen), p=self._w))
        classes = sorted(self._where[m])
        c = classes[int(rng.integers(len(classes)))]
        pts = self._where[m][c]
        center = pts[int(rng.integers(len(pts)))] + rng.uniform(-8, 8, 3)
        body = paint_body(self._gen[m], self.spacing, rng)
        g = warp_labels(body, self.patch, center, rng, self.spacing, rot_deg=tuple(self.rot_deg), scale=tuple(self.scale))
        if rng.random() < self.intensity.p_truncate_fov:
            truncate_fov(g, rng, self.spacing)
        img = paint_intensities(g, rng, self.intensity)
        tgt = GEN_TO_TARGET[g]
        return img, tgt

    def whole_case(self, m: int, rng: np.random.Generator, deform: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """A full-size synthetic case from map ``m`` (mild deformation), for validation / datasets."""
        gen = self._gen[m]
        body = paint_body(gen, self.spacing, rng)
        if deform:
            g = warp_labels(body, gen.shape, (np.array(gen.shape) - 1) / 2.0, rng, self.spacing,
                            rot_deg=(5, 5, 8), scale=(0.9, 1.1), aniso=0.05, elastic_mm=4.0)
        else:
            g = body
        img = paint_intensities(g, rng, IntensityParams(p_fully_random=0.0, p_truncate_fov=0.0))
        return img, GEN_TO_TARGET[g]


def phantom_generation_maps(n: int, spacing: float = 3.0, seed: int = 0) -> list[Volume]:
    """``n`` randomised phantoms (pipeline.phantom) as generation maps.

    The phantom's catch-all ``body`` label becomes 0 so :func:`paint_body` fills it like the
    real maps; its tumour counts as liver (reference segmentations include lesions).
    """
    from ..phantom import make_phantom

    names = {"liver": "liver", "spleen": "spleen", "kidney_left": "kidney_left", "kidney_right": "kidney_right",
             "aorta": "aorta", "inferior_vena_cava": "inferior_vena_cava", "liver_tumor": "liver",
             "lungs": "lung", "spine": "bone", "ribs": "bone"}
    out = []
    for s in range(n):
        _ct, lm = make_phantom(seed=10_000 + seed * 1000 + s, shape=(60, 110, 110), spacing=(5.0, 3.2, 3.2),
                               noise_sd=0.0, blur_sigma_vox=0.0,
                               randomise={"organ_shift_mm": 12.0, "organ_scale": 0.15, "body_scale": 0.1})
        id_to_name = {l.id: names.get(l.name, "__none__") for l in lm.labels}
        v = relabel(lm.volume, id_to_name)
        g = to_canonical(v, spacing)
        check_sidedness(g)
        out.append(g.with_array(g.array, name=f"phantom_{s}"))
    return out


def write_synth_dataset(out_dir, maps: list[Volume], n_cases: int, seed: int = 0, dataset_name: str | None = None,
                        intensity: IntensityParams | None = None) -> Path:
    """Write ``n_cases`` whole synthetic cases (cycling over ``maps``) as an nnU-Net dataset.

    Besides ``imagesTr``/``labelsTr`` the dataset keeps each source's generation map in
    ``labelsGen/`` so ``surgitwin train`` (data.kind: synth) can draw fresh images on the fly.
    """
    from .dataset import write_case, write_dataset_json, write_generation_map
    from .labels import TARGET_LABELS

    out_dir = Path(out_dir)
    sampler = SynthSampler(maps, spacing=float(abs(maps[0].affine[0, 0])))
    if intensity:
        sampler.intensity = intensity
    rng = np.random.default_rng([seed, 4242])
    for c in range(n_cases):
        m = c % len(maps)
        img, tgt = sampler.whole_case(m, rng)
        ref = maps[m]
        write_case(out_dir, f"synth_{c:03d}", ref.with_array(img.astype(np.float32)), ref.with_array(tgt.astype(np.uint8)))
    for m, ref in enumerate(maps):
        write_generation_map(out_dir, ref.source.get("name", f"map_{m}"), ref)
    write_dataset_json(out_dir, {n: l.id for n, l in ((l.name, l) for l in TARGET_LABELS)}, n_cases,
                       name=dataset_name or out_dir.name, channel="CT",
                       extra={"surgitwin": {"generator": "pipeline.train.synth", "seed": seed,
                                            "generation_labels": {str(k): v[0] for k, v in GEN_LABELS.items()}}})
    return out_dir


def load_label_map_file(path, names_file=None, spacing: float = 3.0, ignore_unknown: bool = False) -> Volume:
    """Any real label map + its id -> name JSON as a generation map.

    Names may be spelt as a README does ("right kidney", "inferior vena cava") or as
    TotalSegmentator's classes; a name the synthesiser does not know is an error listing the
    known ones (``ignore_unknown``: it becomes background, and is reported on stderr).
    """
    import sys

    from .labels import read_reference, source_to_gen

    vol, names = read_reference(path, names_file)
    gen = source_to_gen(names, ignore_unknown, names_file or Path(path).with_name("labels.json"))
    ignored = sorted(set(names) - set(gen))
    if ignored:
        print(f"{path}: labels {[names[i] for i in ignored]} are not known to the synthesiser: background "
              "(--ignore-unknown)", file=sys.stderr)
    g = to_canonical(relabel(vol, gen), spacing)
    check_sidedness(g)
    return g.with_array(g.array, name=Path(path).name.split(".")[0])
