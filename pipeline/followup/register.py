"""Register a follow-up image to the scene's image: rigid (multi-resolution), then B-spline.

Convention (ITK's, stated once): the registration's *fixed* image is the earlier time point
(the scene's image), the *moving* image is the follow-up. The transform it finds maps a point
of the fixed (earlier) patient space to the matching point of the moving (follow-up) space,
LPS mm both sides. So

- ``forward`` = earlier -> follow-up: carries landmarks, cuts and trajectories forward and
  resamples the follow-up onto the earlier grid (ITK resampling uses exactly this direction);
- ``inverse`` = follow-up -> earlier: maps follow-up meshes back for the change report.

The rigid part is a 4x4 LPS matrix both ways (exact inverse). The B-spline part (coarse:
one control point per ``bspline_spacing_mm``, so it follows organs that slid or breathing,
not a lesion that grew) is composed after it; its inverse is a displacement field on a
coarse grid (ITK's iterative inversion).

Images are resampled once to an isotropic working grid (``rigid_spacing_mm``) after a
Gaussian of half that width, and the metric (Mattes mutual information) sees only voxels of
the body mask (all labelled voxels, dilated by ``mask_margin_mm`` so the skin edge counts).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import GeometryError
from ..types import Volume


@dataclass(frozen=True)
class RegistrationConfig:
    rigid_spacing_mm: float = 3.0
    rigid_shrink: tuple = (4, 2, 1)
    rigid_iterations: int = 200
    deformable: bool = True
    bspline_spacing_mm: float = 6.0  # working grid of the B-spline stage
    bspline_control_mm: float = 80.0  # control point spacing
    bspline_iterations: int = 30
    bspline_metric: str = "mean_squares"  # CT to CT (HU are absolute); "mattes" for other pairs
    bspline_sampling: float = 0.1
    sampling: float = 0.25  # fraction of mask voxels the rigid metric samples per iteration
    mask_margin_mm: float = 6.0
    seed: int = 17
    threads: int = 2


@dataclass(eq=False)
class Registration:
    """The result: ``rigid`` (4x4, earlier -> follow-up, LPS mm), optional ``bspline`` (sitk)."""

    rigid: np.ndarray
    bspline: object | None = None
    inverse_field: object | None = None  # sitk DisplacementFieldTransform, follow-up -> after-rigid
    metric: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    @property
    def rigid_inverse(self) -> np.ndarray:
        return np.linalg.inv(self.rigid)

    def forward_sitk(self):
        """sitk transform earlier -> follow-up (rigid, then B-spline composed)."""
        import SimpleITK as sitk

        rigid = affine_to_sitk(self.rigid)
        if self.bspline is None:
            return rigid
        # ITK composite: the last transform added acts first; fixed point -> bspline -> rigid
        return sitk.CompositeTransform([rigid, self.bspline])

    def forward_resampling_sitk(self, reference):
        """Like :meth:`forward_sitk`, with the B-spline sampled once as a displacement field on
        ``reference``'s grid at half resolution: resampling a whole volume 3-4x faster (B-spline
        weights per voxel are the cost); differs from the exact transform by interpolation only."""
        import SimpleITK as sitk

        rigid = affine_to_sitk(self.rigid)
        if self.bspline is None:
            return rigid
        size = [max(int(n) // 2, 2) for n in reference.GetSize()]
        sp = [float(s) * n / m for s, n, m in zip(reference.GetSpacing(), reference.GetSize(), size)]
        field = sitk.TransformToDisplacementField(self.bspline, sitk.sitkVectorFloat64, size, reference.GetOrigin(), sp,
                                                  reference.GetDirection())
        return sitk.CompositeTransform([rigid, sitk.DisplacementFieldTransform(field)])

    def map_forward(self, points, deformable: bool = True) -> np.ndarray:
        """(n, 3) earlier LPS mm -> follow-up LPS mm."""
        pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
        if not deformable or self.bspline is None:
            return pts @ self.rigid[:3, :3].T + self.rigid[:3, 3]
        t = self.forward_sitk()
        return np.array([t.TransformPoint(tuple(float(c) for c in p)) for p in pts]).reshape(-1, 3)

    def map_inverse(self, points, deformable: bool = False) -> np.ndarray:
        """(n, 3) follow-up LPS mm -> earlier LPS mm (rigid unless ``deformable`` and a field exists)."""
        pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
        back = pts @ self.rigid_inverse[:3, :3].T + self.rigid_inverse[:3, 3]
        if deformable and self.inverse_field is not None:
            back = np.array([self.inverse_field.TransformPoint(tuple(float(c) for c in p)) for p in back]).reshape(-1, 3)
        return back

    def rotation_deg(self) -> float:
        """Angle of the rigid rotation (degrees)."""
        r = self.rigid[:3, :3]
        return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))


def affine_to_sitk(m: np.ndarray):
    import SimpleITK as sitk

    t = sitk.AffineTransform(3)
    t.SetMatrix(tuple(float(x) for x in np.asarray(m)[:3, :3].ravel()))
    t.SetTranslation(tuple(float(x) for x in np.asarray(m)[:3, 3]))
    return t


def sitk_rigid_to_affine(t) -> np.ndarray:
    """A sitk Euler/affine transform (centre, matrix, translation) -> 4x4 LPS matrix."""
    m = np.eye(4)
    a = np.array(t.GetMatrix()).reshape(3, 3)
    c = np.array(t.GetCenter())
    m[:3, :3] = a
    m[:3, 3] = np.array(t.GetTranslation()) + c - a @ c
    return m


def _working_image(vol: Volume, spacing_mm: float):
    """Float32 sitk image, Gaussian-smoothed to the working spacing, resampled isotropic."""
    import SimpleITK as sitk

    from ..geometry import volume_to_sitk

    img = volume_to_sitk(vol, vol.array.astype(np.float32))
    img = sitk.SmoothingRecursiveGaussian(img, spacing_mm / 2.0)
    return _resample_iso(img, spacing_mm, sitk.sitkLinear, -1024.0)


def _working_mask(labels: np.ndarray, vol: Volume, spacing_mm: float, margin_mm: float):
    import SimpleITK as sitk
    from scipy import ndimage

    from ..geometry import volume_to_sitk

    m = labels > 0
    r = np.maximum(np.rint(margin_mm / vol.spacing).astype(int), 1)
    m = ndimage.binary_dilation(m, structure=np.ones(tuple(2 * r + 1), bool))
    img = volume_to_sitk(vol, m.astype(np.uint8))
    return _resample_iso(img, spacing_mm, sitk.sitkNearestNeighbor, 0)


def _resample_iso(img, spacing_mm: float, interp, default):
    import SimpleITK as sitk

    sp = np.array(img.GetSpacing())
    size = np.array(img.GetSize())
    new_size = [max(int(round(n * s / spacing_mm)), 1) for n, s in zip(size, sp)]
    # keep the physical centre of the first voxel's half-voxel corner: the same box
    d = np.array(img.GetDirection()).reshape(3, 3)
    corner = np.array(img.GetOrigin()) - d @ (sp / 2)
    origin = corner + d @ (np.full(3, spacing_mm) / 2)
    return sitk.Resample(img, [int(x) for x in new_size], sitk.Transform(), interp, tuple(origin.tolist()),
                         (spacing_mm,) * 3, img.GetDirection(), float(default), img.GetPixelID())


def _centroid(mask: np.ndarray, vol: Volume) -> np.ndarray:
    idx = np.argwhere(mask)
    if len(idx) == 0:
        raise GeometryError("registration needs a body mask; found no labelled voxel")
    return vol.index_to_lps(idx.mean(axis=0))


def _method(cfg: RegistrationConfig, fixed_mask, moving_mask, shrink, *, metric: str = "mattes",
            sampling: float | None = None):
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    if metric == "mean_squares":
        reg.SetMetricAsMeanSquares()
    else:
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=48)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(cfg.sampling if sampling is None else sampling, cfg.seed)
    reg.SetMetricFixedMask(fixed_mask)
    reg.SetMetricMovingMask(moving_mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel([max(s - 1, 0) * 0.5 for s in shrink])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetNumberOfThreads(int(cfg.threads))
    return reg


def register(fixed: Volume, fixed_labels: np.ndarray, moving: Volume, moving_labels: np.ndarray,
             cfg: RegistrationConfig = RegistrationConfig()) -> Registration:
    """Register ``moving`` (follow-up) to ``fixed`` (earlier). Label arrays give the body masks."""
    import SimpleITK as sitk

    timings = {}
    t0 = time.perf_counter()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(cfg.threads))
    f_img = _working_image(fixed, cfg.rigid_spacing_mm)
    m_img = _working_image(moving, cfg.rigid_spacing_mm)
    f_mask = _working_mask(fixed_labels, fixed, cfg.rigid_spacing_mm, cfg.mask_margin_mm)
    m_mask = _working_mask(moving_labels, moving, cfg.rigid_spacing_mm, cfg.mask_margin_mm)
    timings["prepare"] = time.perf_counter() - t0

    # rigid: centre of rotation at the fixed body's centroid, translation from the masks' centroids
    t0 = time.perf_counter()
    c_fixed = _centroid(fixed_labels > 0, fixed)
    c_moving = _centroid(moving_labels > 0, moving)
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(tuple(float(x) for x in c_fixed))
    rigid.SetTranslation(tuple(float(x) for x in c_moving - c_fixed))
    reg = _method(cfg, f_mask, m_mask, cfg.rigid_shrink)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=cfg.rigid_iterations,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(rigid, inPlace=True)
    reg.Execute(f_img, m_img)
    rigid_m = sitk_rigid_to_affine(rigid)
    metric = {"rigid_metric": round(float(reg.GetMetricValue()), 5), "rigid_iterations": int(reg.GetOptimizerIteration()),
              "rigid_stop": reg.GetOptimizerStopConditionDescription()}
    timings["rigid"] = time.perf_counter() - t0

    bspline = inv_field = None
    if cfg.deformable:
        t0 = time.perf_counter()
        fb = _working_image(fixed, cfg.bspline_spacing_mm)
        mb = _working_image(moving, cfg.bspline_spacing_mm)
        fbm = _working_mask(fixed_labels, fixed, cfg.bspline_spacing_mm, cfg.mask_margin_mm)
        mbm = _working_mask(moving_labels, moving, cfg.bspline_spacing_mm, cfg.mask_margin_mm)
        extent = np.array(fb.GetSize()) * cfg.bspline_spacing_mm
        mesh = [max(int(round(e / cfg.bspline_control_mm)), 1) for e in extent]
        bspline = sitk.BSplineTransformInitializer(fb, mesh, order=3)
        reg = _method(cfg, fbm, mbm, (1,), metric=cfg.bspline_metric, sampling=cfg.bspline_sampling)
        reg.SetMovingInitialTransform(affine_to_sitk(rigid_m))
        reg.SetInitialTransform(bspline, inPlace=True)
        reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=cfg.bspline_iterations,
                                 maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=4 * cfg.bspline_iterations,
                                 costFunctionConvergenceFactor=1e7)
        reg.Execute(fb, mb)
        metric.update(bspline_metric=round(float(reg.GetMetricValue()), 5), bspline_mesh=mesh,
                      bspline_iterations=int(reg.GetOptimizerIteration()))
        timings["bspline"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        inv_field = _invert_bspline(bspline, fb)
        timings["invert"] = time.perf_counter() - t0
    return Registration(rigid_m, bspline, inv_field, metric, {k: round(v, 3) for k, v in timings.items()})


def _invert_bspline(bspline, reference):
    """The B-spline's inverse as a displacement field transform on ``reference``'s grid."""
    import SimpleITK as sitk

    field = sitk.TransformToDisplacementField(bspline, sitk.sitkVectorFloat64, reference.GetSize(),
                                              reference.GetOrigin(), reference.GetSpacing(), reference.GetDirection())
    inv = sitk.InvertDisplacementField(field, maximumNumberOfIterations=20, maxErrorToleranceThreshold=0.01,
                                       meanErrorToleranceThreshold=0.0001, enforceBoundaryCondition=True)
    return sitk.DisplacementFieldTransform(inv)


def max_displacement_mm(reg: Registration) -> float:
    """Largest displacement the B-spline adds on its control grid (0 without one)."""
    if reg.bspline is None:
        return 0.0
    params = np.array(reg.bspline.GetParameters()).reshape(3, -1)
    return float(np.max(np.linalg.norm(params, axis=0))) if params.size else 0.0
