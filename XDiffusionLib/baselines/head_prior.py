"""The head prior: a head template with scalp, fitted to this patient's slices, at their contrast.

Used by the ``template`` baseline and by the anchor (``baselines.anchor``), so the baseline stays a
fair, strong one and the model starts from the same prior.

1. Template. ICBM152 2009c T1 with scalp, skull and face, and one tissue class per voxel
   (``TISSUES``: brain CSF/GM/WM and non-brain bone, muscle, fat; built once by
   ``scripts/build_head_template.py``). Skull-stripped inputs get its brain-only variant: both are
   placed, and the brain-only one is kept when its slices correlate clearly better with the inputs.
2. Placement. The axis-aligned scale and shift search (``baselines.template_fit``) with the T1
   template, then the same search again, from there, with the template at the inputs' own contrast
   (step 3's fit at the first placement), so T2, FLAIR and PD slices are placed by their anatomy and
   not by how much they resemble a T1; then a deformable fit: a cubic B-spline transform on a coarse
   mesh (about 50 mm between control points), optimised by SimpleITK with the metric (correlation)
   measured on the input slices only. Control points far from every input get no gradient and stay
   where the placement put them, so the deformation fades smoothly away from the inputs instead of
   extrapolating. A stage is kept only if it raises the correlation on the input slices and moves no
   point more than ``MAX_DEFORMATION_MM``.
3. Contrast. Per tissue class, a robust level (median) and slope (against the template's T1 within
   the class, so partial volume and gyral texture follow the inputs' contrast, T1 or T2 alike) fitted
   on the input-slice voxels, times a smooth multiplicative bias field (a quadratic polynomial in
   log intensity; constant along the slice axis for one input slice). Classes absent from the
   inputs fall back to one robust linear map of the template's T1. No global quantile map.
4. Field of view. Where the template ends (below the neck), ``coverage`` is False and the prior is
   the inputs' background level; the anchor fills those voxels from the input slices.

Only the grid geometry and the input slices are used: never the rest of the volume.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from ..data.samples import sample_path
from ..inputs import SliceInput
from ..io.volume import Volume
from .foreground import foreground_threshold
from .template_fit import AxisFit, SliceSampler, fit_axes

TISSUES: tuple[str, ...] = ("background", "csf", "gm", "wm", "bone", "muscle", "fat")
BRAIN_TISSUES: tuple[str, ...] = ("csf", "gm", "wm")
HEAD_T1_SAMPLE = "icbm152_2009c_t1_head"
TISSUE_SAMPLE = "icbm152_2009c_tissues"

MAX_DEFORMATION_MM = 8.0
_MESH_SPACING_MM = 50.0
_MIN_CLASS_VOXELS = 40
_BIAS_LIMIT = 0.4  # the bias field stays within exp(+-0.4) (about x0.67..x1.5)
_REGISTRATION_ITERATIONS = 15
_METRIC_SAMPLES = 4000.0  # random input-slice voxels per metric evaluation
# The brain-only template is chosen only when it explains the inputs clearly better: scaled up, its
# outline also matches a head with scalp almost as well as the head template does. On synthetic
# validation subjects 0-7 (seed 12; K = 1, 3, 5) brain-minus-head correlation was at most +0.038 on
# heads with scalp and at least +0.051 on skull-stripped ones (with the placement of issue 19's first
# version; after the brain-inside-the-scan rule one T2 head at K = 1 scores +0.059 and one stripped
# FLAIR at K = 1 +0.047, the only two on the wrong side). Scored at the inputs' own contrast (the
# second placement pass) the two templates tie on stripped scans, whose background level the head
# template's scalp then takes, so the choice is made before that pass.
_BRAIN_ONLY_MARGIN = 0.05


def brain_voxels(tissues: np.ndarray) -> np.ndarray:
    """Where a tissue-class map (``TISSUES`` indices) says CSF, grey or white matter."""
    return np.isin(tissues, [TISSUES.index(name) for name in BRAIN_TISSUES])


@dataclass(frozen=True)
class HeadTemplate:
    """Canonical (RAS+) template voxels: T1 intensities, tissue class indices into ``TISSUES``, spacing."""

    t1: np.ndarray
    tissues: np.ndarray
    spacing: np.ndarray
    variant: str = "head"

    def brain_only(self) -> "HeadTemplate":
        """The skull-stripped variant: everything outside the brain classes is background."""
        brain = brain_voxels(self.tissues)
        return replace(self, t1=np.where(brain, self.t1, 0.0).astype(np.float32),
                       tissues=np.where(brain, self.tissues, 0).astype(np.uint8), variant="brain")

    @classmethod
    def from_volume(cls, volume: Volume) -> "HeadTemplate":
        """A user's atlas without tissue labels: foreground split into three intensity classes
        (by terciles, as csf/gm/wm), so the per-class contrast fit still applies."""
        from ..transforms.orientation import to_canonical  # SimpleITK: stays out of this module's import

        canonical, _ = to_canonical(volume)
        t1 = np.asarray(canonical.array, dtype=np.float32)
        foreground = t1 > foreground_threshold(t1)
        tissues = np.zeros(t1.shape, np.uint8)
        if foreground.any():
            edges = np.quantile(t1[foreground], [1 / 3, 2 / 3])
            codes = np.array([TISSUES.index(name) for name in BRAIN_TISSUES], np.uint8)
            tissues[foreground] = codes[np.searchsorted(edges, t1[foreground])]
        return cls(t1, tissues, np.asarray(canonical.spacing, dtype=np.float64), "atlas")


@lru_cache(maxsize=1)
def shipped_head_template() -> HeadTemplate:
    """The shipped ICBM152 2009c head template and its tissue classes (read once per process)."""
    # SimpleITK: the readers and transforms load it, so it stays out of this module's import
    from ..io import read_volume
    from ..transforms.orientation import to_canonical
    from ..transforms.resample import resample_to_grid

    # The T1 ships at 1.5 mm (it only places and textures); the tissue classes at 1 mm.
    tissues, _ = to_canonical(read_volume(sample_path(TISSUE_SAMPLE)))
    t1 = resample_to_grid(read_volume(sample_path(HEAD_T1_SAMPLE)), tissues.grid, order=1, extrapolate=True)
    t1_array = np.asarray(t1.array, dtype=np.float32)
    t1_array.setflags(write=False)
    tissue_array = np.asarray(tissues.array).astype(np.uint8)
    tissue_array.setflags(write=False)
    return HeadTemplate(t1_array, tissue_array, np.asarray(t1.spacing, dtype=np.float64))


# ----------------------------------------------------------------------------- contrast


@dataclass(frozen=True)
class TissueContrast:
    """Intensity per voxel = ``level[c] + slope[c] * (t1 - centre[c])`` for its tissue class c."""

    level: np.ndarray
    slope: np.ndarray
    centre: np.ndarray

    def __call__(self, t1: np.ndarray, tissues: np.ndarray) -> np.ndarray:
        return (self.level[tissues] + self.slope[tissues] * (t1 - self.centre[tissues])).astype(np.float32)


def _robust_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least squares of y on x after dropping the 5% tails of the residual of a first fit."""
    if x.size < 3 or float(np.ptp(x)) == 0.0:
        return float(np.median(y)) if y.size else 0.0, 0.0
    slope, intercept = np.polyfit(x, y, 1)
    residual = np.abs(y - (slope * x + intercept))
    keep = residual <= np.quantile(residual, 0.95)
    if keep.sum() >= 3 and float(np.ptp(x[keep])) > 0.0:
        slope, intercept = np.polyfit(x[keep], y[keep], 1)
    return float(intercept), float(slope)


def fit_contrast(t1: np.ndarray, tissues: np.ndarray, values: np.ndarray,
                 class_centres: np.ndarray) -> TissueContrast:
    """Per-class robust level and slope of ``values`` against the template's ``t1`` at the same voxels
    (the input slices). ``class_centres``: the template's median T1 per class, used for classes the
    inputs do not show, which then follow one robust line through all head voxels."""
    count = len(TISSUES)
    head = tissues > 0
    intercept, global_slope = _robust_line(t1[head], values[head]) if head.sum() >= 3 else (0.0, 0.0)
    level = intercept + global_slope * class_centres
    slope = np.full(count, global_slope)
    centre = class_centres.astype(np.float64).copy()
    background = tissues == 0
    level[0] = float(np.median(values[background])) if background.any() else 0.0
    slope[0] = 0.0
    for c in range(1, count):
        chosen = tissues == c
        if chosen.sum() < _MIN_CLASS_VOXELS:
            continue
        x, y = t1[chosen], values[chosen]
        centre[c] = float(np.median(x))
        level[c] = float(np.median(y))
        _, class_slope = _robust_line(x, y)
        # Within one class the template's T1 only explains partial volume and texture: a slope
        # larger than the inputs' own spread can support would amplify the template's noise.
        spread_x, spread_y = np.subtract(*np.quantile(x, [0.9, 0.1])), np.subtract(*np.quantile(y, [0.9, 0.1]))
        limit = spread_y / spread_x if spread_x > 0 else 0.0
        slope[c] = float(np.clip(class_slope, -limit, limit))
    return TissueContrast(level, slope, centre)


def class_centres(template: HeadTemplate) -> np.ndarray:
    """The template's median T1 per tissue class (0 for classes it lacks)."""
    sample = (slice(None, None, 2),) * 3
    t1, tissues = template.t1[sample], template.tissues[sample]
    return np.array([float(np.median(t1[tissues == c])) if (tissues == c).any() else 0.0
                     for c in range(len(TISSUES))])


# ----------------------------------------------------------------------------- bias field


def bias_degrees(axis: int, input_count: int) -> tuple[tuple[int, int, int], ...]:
    """Exponents of the bias polynomial's terms (total degree <= 2); along the slice axis only as
    many as the inputs can determine (none for one slice, linear for two)."""
    through_degree = min(2, input_count - 1)
    return tuple((i, j, k) for i in range(3) for j in range(3 - i) for k in range(3 - i - j)
                 if (i, j, k)[axis] <= through_degree)


def _normalised_axes(shape) -> list[np.ndarray]:
    return [np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1) for n in shape]


@dataclass(frozen=True)
class BiasField:
    """``exp(sum_t coefficient_t * x^a y^b z^c)`` over the grid, within ``exp(+-_BIAS_LIMIT)``."""

    degrees: tuple[tuple[int, int, int], ...]
    coefficients: np.ndarray

    def on_grid(self, shape) -> np.ndarray:
        axes = _normalised_axes(shape)
        log_field = np.zeros(shape, np.float32)
        for (a, b, c), coefficient in zip(self.degrees, self.coefficients):
            log_field += np.float32(coefficient) * (axes[0][:, None, None] ** a * axes[1][None, :, None] ** b
                                                    * axes[2][None, None, :] ** c).astype(np.float32)
        return np.exp(np.clip(log_field, -_BIAS_LIMIT, _BIAS_LIMIT))


def fit_bias(inputs: SliceInput, ratio: np.ndarray, usable: np.ndarray) -> BiasField:
    """Ridge fit of ``log(ratio)`` at the input slices' voxels (``ratio``/``usable``: (K, H, W))."""
    axis = inputs.axis
    axes = _normalised_axes(inputs.grid.shape)
    in_plane = [a for a in range(3) if a != axis]
    coordinates = [None] * 3
    shape = ratio.shape
    coordinates[axis] = np.broadcast_to(axes[axis][np.asarray(inputs.indices)][:, None, None], shape)
    coordinates[in_plane[0]] = np.broadcast_to(axes[in_plane[0]][None, :, None], shape)
    coordinates[in_plane[1]] = np.broadcast_to(axes[in_plane[1]][None, None, :], shape)
    degrees = bias_degrees(axis, len(inputs.indices))
    if usable.sum() < 10 * len(degrees):
        return BiasField(degrees, np.zeros(len(degrees)))
    target = np.log(np.clip(ratio[usable], np.exp(-1.0), np.exp(1.0)))
    design = np.stack([coordinates[0][usable] ** a * coordinates[1][usable] ** b * coordinates[2][usable] ** c
                       for a, b, c in degrees], axis=1)
    ridge = 1.0 * np.eye(len(degrees))
    ridge[0, 0] = 0.0  # the constant term is the contrast fit's business, not shrunk
    coefficients = np.linalg.solve(design.T @ design / len(target) + ridge * 1e-2, design.T @ target / len(target))
    return BiasField(degrees, coefficients)


# ----------------------------------------------------------------------------- geometry


def _image(array: np.ndarray, spacing, origin=(0.0, 0.0, 0.0)):
    """A SimpleITK image of a canonical (i, j, k) array in a frame with identity direction."""
    import SimpleITK as sitk  # the heavy dependency stays out of this module's import

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    return image


def _array(image) -> np.ndarray:
    import SimpleITK as sitk  # the heavy dependency stays out of this module's import

    return np.ascontiguousarray(np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)))


def _placed_images(template: HeadTemplate, fit: AxisFit):
    """The template's T1, tissues and field of view as images in the target grid's millimetre frame."""
    spacing = fit.scale * template.spacing
    return (_image(template.t1, spacing, fit.shift), _image(template.tissues, spacing, fit.shift),
            _image(np.ones(template.t1.shape, np.uint8), spacing, fit.shift))


def _resample(image, reference, transform, nearest: bool, default: float = 0.0) -> np.ndarray:
    import SimpleITK as sitk  # the heavy dependency stays out of this module's import

    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    return _array(sitk.Resample(image, reference, transform, interpolator, float(default)))


def _slice_correlation(prior: np.ndarray, inputs: SliceInput) -> float:
    at_inputs = np.stack([np.take(prior, i, axis=inputs.axis) for i in inputs.indices]).ravel()
    values = np.asarray(inputs.slices, dtype=np.float64).ravel()
    at_inputs = at_inputs - at_inputs.mean()
    values = values - values.mean()
    denominator = np.sqrt(float(at_inputs @ at_inputs) * float(values @ values))
    return float(at_inputs @ values) / denominator if denominator > 0 else -1.0


def _deformation(inputs: SliceInput, moving: np.ndarray):
    """A B-spline transform (target mm -> target mm) bringing ``moving`` (the prior on the grid) onto
    the input slices, the metric measured on those slices only; None when it does not help."""
    import SimpleITK as sitk  # the heavy dependency stays out of this module's import

    spacing = np.asarray(inputs.grid.spacing, dtype=np.float64)
    fixed_array = np.zeros(inputs.grid.shape, np.float32)
    mask_array = np.zeros(inputs.grid.shape, np.uint8)
    fixed_array = inputs.paste_into(fixed_array)
    for index in inputs.indices:
        np.moveaxis(mask_array, inputs.axis, 0)[index] = 1
    fixed, mask, moving_image = _image(fixed_array, spacing), _image(mask_array, spacing), _image(moving, spacing)
    extent = np.asarray(inputs.grid.shape) * spacing
    mesh = [max(1, int(round(e / _MESH_SPACING_MM))) for e in extent]
    transform = sitk.BSplineTransformInitializer(fixed, mesh, 3)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsCorrelation()
    method.SetMetricFixedMask(mask)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(min(1.0, _METRIC_SAMPLES / max(1, int(mask_array.sum()))), 7)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=_REGISTRATION_ITERATIONS,
                                maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=100,
                                costFunctionConvergenceFactor=1e7, lowerBound=-MAX_DEFORMATION_MM,
                                upperBound=MAX_DEFORMATION_MM)
    method.SetInitialTransform(transform, inPlace=True)
    method.SetNumberOfThreads(1)
    try:
        method.Execute(fixed, moving_image)
    except RuntimeError:
        return None  # a degenerate metric (e.g. blank inputs): keep the placement
    return transform  # optimised in place


def _largest_displacement_mm(transform) -> float:
    """The largest control-point displacement (a B-spline never moves a point further)."""
    parameters = np.asarray(transform.GetParameters())
    return float(np.abs(parameters).max()) if parameters.size else 0.0


@dataclass
class HeadPriorFit:
    """The prior on the input grid (input slices NOT pasted in) and what it was made of."""

    prior: np.ndarray  # float32 intensities at the inputs' contrast
    tissues: np.ndarray  # uint8 class per voxel (TISSUES)
    coverage: np.ndarray  # bool: inside the template's field of view
    variant: str  # "head", "brain" or "atlas"
    correlation: float  # with the input slices, at the input slices
    deformed: bool


def _contrast_on(inputs: SliceInput, t1: np.ndarray, tissues: np.ndarray, centres: np.ndarray,
                 bias: np.ndarray | None = None) -> tuple[TissueContrast, np.ndarray]:
    """Contrast fitted at the input slices (values divided by the bias where one is given)."""
    take = lambda array: np.stack([np.take(array, i, axis=inputs.axis) for i in inputs.indices])  # noqa: E731
    values = np.asarray(inputs.slices, dtype=np.float64)
    if bias is not None:
        values = values / take(bias)
    contrast = fit_contrast(take(t1).astype(np.float64).ravel(), take(tissues).ravel(),
                            values.ravel(), centres)
    return contrast, take(contrast(t1, tissues))


def _synthesise(inputs: SliceInput, t1: np.ndarray, tissues: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Step 3: tissue contrast, bias field, contrast again on the bias-corrected inputs."""
    contrast, at_inputs = _contrast_on(inputs, t1, tissues, centres)
    values = np.asarray(inputs.slices, dtype=np.float64)
    take = lambda array: np.stack([np.take(array, i, axis=inputs.axis) for i in inputs.indices])  # noqa: E731
    usable = (take(tissues) > 0) & (at_inputs > 0) & (values > 0)
    ratio = np.where(usable, values / np.where(at_inputs > 0, at_inputs, 1.0), 1.0)
    bias = fit_bias(inputs, ratio, usable).on_grid(inputs.grid.shape)
    contrast, _ = _contrast_on(inputs, t1, tissues, centres, bias)
    background = tissues == 0
    return np.where(background, contrast.level[0], contrast(t1, tissues) * bias).astype(np.float32)


def _contrast_matched_placement(template: HeadTemplate, fit: AxisFit, inputs: SliceInput,
                                centres: np.ndarray) -> tuple[AxisFit, float]:
    """Step 2's second pass: the template at the inputs' own contrast (fitted at ``fit``), placed again
    from ``fit``. A T2, FLAIR or PD slice resembles a T1 template mostly by its outline; at its own
    contrast the template's ventricles, sulci and skull line up with the slice's."""
    spacing = np.asarray(inputs.grid.spacing, dtype=np.float64)
    sampler = SliceSampler(template.t1, template.spacing, spacing, inputs, 0.0)
    t1, values = sampler(fit), sampler.inputs
    tissues = SliceSampler(template.tissues, template.spacing, spacing, inputs, 0.0, order=0)(fit).astype(np.uint8)
    contrast = fit_contrast(t1.astype(np.float64).ravel(), tissues.ravel(), values.astype(np.float64).ravel(), centres)
    return fit_axes(contrast(template.t1, template.tissues), template.spacing, inputs, start=fit,
                    brain=brain_voxels(template.tissues))


def fit_head_prior(template: HeadTemplate, inputs: SliceInput, deform: bool = True) -> HeadPriorFit:
    """Steps 1-4 of the module docstring."""
    variants = [template, template.brain_only()] if template.variant == "head" else [template]
    placements = [(variant, *fit_axes(variant.t1, variant.spacing, inputs, brain=brain_voxels(variant.tissues)))
                  for variant in variants]
    chosen, fit, best = placements[0]
    if len(placements) > 1 and placements[1][2] > best + _BRAIN_ONLY_MARGIN:
        chosen, fit, best = placements[1]
    centres = class_centres(chosen)
    fit, _ = _contrast_matched_placement(chosen, fit, inputs, centres)
    import SimpleITK as sitk  # the heavy dependency stays out of this module's import

    reference = sitk.Image([int(n) for n in inputs.grid.shape], sitk.sitkFloat32)
    reference.SetSpacing(tuple(float(s) for s in inputs.grid.spacing))
    t1_image, tissue_image, coverage_image = _placed_images(chosen, fit)

    def place(transform) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tissues, field of view and the synthesised prior on the grid under ``transform``."""
        tissues = _resample(tissue_image, reference, transform, nearest=True).astype(np.uint8)
        coverage = _resample(coverage_image, reference, transform, nearest=True).astype(bool)
        t1 = _resample(t1_image, reference, transform, nearest=False)
        return tissues, coverage, _synthesise(inputs, t1, tissues, centres)

    tissues, coverage, prior = place(sitk.Transform(3, sitk.sitkIdentity))
    score = _slice_correlation(prior, inputs)
    deformed = False
    if deform:
        transform = _deformation(inputs, prior)
        if transform is not None and _largest_displacement_mm(transform) <= MAX_DEFORMATION_MM:
            candidate = place(transform)
            candidate_score = _slice_correlation(candidate[2], inputs)
            if candidate_score > score:  # kept only where it explains the input slices better
                tissues, coverage, prior = candidate
                score, deformed = candidate_score, True
    return HeadPriorFit(prior, tissues, coverage, chosen.variant, score, deformed)
