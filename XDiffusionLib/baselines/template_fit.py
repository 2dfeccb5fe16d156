"""Placing a template in the target grid: an axis-aligned fit to the input slices.

The template (canonical voxels) is placed by ``target_mm = scale * template_mm + shift``, using
only what a method may see (grid geometry and input slices):

1. Start at physical size (scale 1: both grids are in millimetres and adult heads differ by about
   10%), with the template's foreground box centred on the inputs' foreground box in the two
   in-plane axes and on the grid through-plane.
2. Through-plane shift: the one whose template slices at the input positions correlate best with
   the input slices (normalised cross-correlation), searched over the grid, among the shifts that
   keep the template's brain mostly (80%) inside the grid along the slice axis. This tells a slice
   through the eyes from one through the vertex, which centring alone cannot; the brain rule keeps
   one slice through the ventricles from matching the template's neck.
3. Refinement: joint isotropic rescale (within ~16%) and 3D shift (within 40 mm) maximising the
   same correlation (Powell). Only K thin slices are sampled per try, so this costs well under a
   second even at 256^3.

``baselines.head_prior`` starts from this fit and adds a deformable stage and the tissue contrast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import map_coordinates
from scipy.optimize import minimize

from ..inputs import SliceInput
from .foreground import bounding_box, foreground_mask, foreground_threshold

_SEARCH_STEPS = 81  # through-plane shifts tried
_SAMPLED_SIDE = 64  # in-plane samples per side when scoring a fit
_MAX_SHIFT_MM = 40.0  # refinement moves the template at most this far
_MAX_EVALUATIONS = 400
_SCALE_BOUND = 0.15  # log scale: the refinement may resize the template by at most ~16%
_MIN_OVERLAP = 0.8  # of the placed template's brain with the grid, along the slice axis


@dataclass
class AxisFit:
    """Axis-aligned map from template millimetres to target millimetres: ``target = scale * template + shift``."""

    scale: np.ndarray
    shift: np.ndarray


def _centre_mm(mask: np.ndarray, axis: int, spacing: float) -> float | None:
    """Centre in mm of the foreground bounding box along ``axis``; None without foreground."""
    box = bounding_box(mask, axis)
    return None if box is None else (box[0] + box[1]) / 2.0 * spacing


class SliceSampler:
    """Template values at the input slices' voxels (strided in-plane) for a candidate fit: cheap enough
    to evaluate hundreds of fits, because only K thin slices are sampled, never the whole volume."""

    def __init__(self, template, template_spacing, target_spacing, inputs: SliceInput, background: float,
                 order: int = 1) -> None:
        self.template, self.background, self.order = template, background, order
        self.template_spacing, self.target_spacing = template_spacing, target_spacing
        axis = inputs.axis
        in_plane = [a for a in range(3) if a != axis]
        stride = [max(1, int(np.ceil(inputs.grid.shape[a] / _SAMPLED_SIDE))) for a in in_plane]
        grids = [np.asarray(inputs.indices, dtype=np.float64)[:, None, None],
                 np.arange(0, inputs.grid.shape[in_plane[0]], stride[0], dtype=np.float64)[None, :, None],
                 np.arange(0, inputs.grid.shape[in_plane[1]], stride[1], dtype=np.float64)[None, None, :]]
        shape = np.broadcast_shapes(*(g.shape for g in grids))
        # target_mm[a] for every sampled voxel, indexed by array axis a.
        self.target_mm = [None] * 3
        for a, g in zip([axis, *in_plane], grids):
            self.target_mm[a] = np.broadcast_to(g * target_spacing[a], shape)
        self.inputs = np.asarray(inputs.slices, dtype=np.float32)[:, ::stride[0], ::stride[1]]

    def __call__(self, fit: AxisFit) -> np.ndarray:
        coordinates = np.stack([(self.target_mm[a] - fit.shift[a]) / (fit.scale[a] * self.template_spacing[a])
                                for a in range(3)])
        return map_coordinates(self.template, coordinates, order=self.order, mode="constant", cval=self.background,
                               prefilter=False)

    def score(self, fit: AxisFit) -> float:
        return _correlation(self(fit), self.inputs)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a.ravel() - a.mean()
    b = b.ravel() - b.mean()
    denominator = np.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / denominator if denominator > 0 else -1.0


def _initial_fit(template, template_spacing, target_spacing, inputs: SliceInput) -> AxisFit:
    """Step 1: physical size (scale 1), in-plane foreground boxes centred on each other,
    through-plane template centred on the grid."""
    axis = inputs.axis
    in_plane = [a for a in range(3) if a != axis]
    shape = inputs.grid.shape
    input_mask = foreground_mask(inputs.slices)
    template_mask = template > foreground_threshold(template)
    shift = np.zeros(3)
    for a in range(3):
        template_centre = _centre_mm(template_mask, a, template_spacing[a])
        if template_centre is None:
            template_centre = (template.shape[a] - 1) / 2.0 * template_spacing[a]
        # Slice arrays keep the two in-plane axes in order after the stacking axis.
        target_centre = None if a == axis else _centre_mm(input_mask, in_plane.index(a) + 1, target_spacing[a])
        if target_centre is None:
            target_centre = (shape[a] - 1) / 2.0 * target_spacing[a]
        shift[a] = target_centre - template_centre
    return AxisFit(np.ones(3), shift)


def _overlap_fraction(fit: AxisFit, axis: int, brain_mm: tuple[float, float], grid_mm: float) -> float:
    """How much of the placed template brain and the grid [0, grid_mm] overlap along ``axis``, as a
    fraction of the shorter of the two (a thin slab through a brain counts as fully overlapping)."""
    low, high = (fit.shift[axis] + fit.scale[axis] * value for value in brain_mm)
    overlap = min(high, grid_mm) - max(low, 0.0)
    return max(0.0, overlap) / max(min(high - low, grid_mm), 1e-6)


def _search_through_plane(fit: AxisFit, sampler: SliceSampler, inputs: SliceInput,
                          brain_mm: tuple[float, float] | None = None) -> AxisFit:
    """Step 2: the through-plane shift whose template slices correlate best with the inputs, among the
    shifts that keep the template's brain (``brain_mm``, its box along the slice axis in template mm)
    mostly inside the grid. A brain scan's field of view holds the brain: one slice through the
    ventricles otherwise correlates about as well with the template's neck, which puts the whole
    template above the scan."""
    axis = inputs.axis
    grid_mm = (inputs.grid.shape[axis] - 1) * inputs.grid.spacing[axis]
    half_range = inputs.grid.shape[axis] * inputs.grid.spacing[axis] / 2.0
    centred = fit.shift[axis]
    best = (sampler.score(fit), centred)  # centred first, so ties (blank inputs) keep it
    for candidate in centred + np.linspace(-half_range, half_range, _SEARCH_STEPS):
        fit.shift[axis] = candidate
        if brain_mm is not None and _overlap_fraction(fit, axis, brain_mm, grid_mm) < _MIN_OVERLAP:
            continue
        score = sampler.score(fit)
        if score > best[0]:
            best = (score, candidate)
    fit.shift[axis] = best[1]
    return fit


def _refine(fit: AxisFit, sampler: SliceSampler, centre_mm: np.ndarray) -> AxisFit:
    """Step 3: joint isotropic rescale (about ``centre_mm``) and 3D shift maximising the correlation."""

    def candidate(params: np.ndarray) -> AxisFit:
        factor = np.exp(params[0])
        return AxisFit(fit.scale * factor, centre_mm + factor * (fit.shift - centre_mm) + params[1:])

    result = minimize(lambda p: -sampler.score(candidate(p)), np.zeros(4), method="Powell",
                      bounds=[(-_SCALE_BOUND, _SCALE_BOUND)] + [(-_MAX_SHIFT_MM, _MAX_SHIFT_MM)] * 3,
                      options={"xtol": 1e-3, "ftol": 1e-5, "maxfev": _MAX_EVALUATIONS,
                               "direc": np.diag([0.05, 4.0, 4.0, 4.0])})
    refined = candidate(result.x)
    return refined if sampler.score(refined) >= sampler.score(fit) else fit


def fit_axes(template: np.ndarray, template_spacing, inputs: SliceInput, start: AxisFit | None = None,
             brain: np.ndarray | None = None) -> tuple[AxisFit, float]:
    """Steps 1-3 (module docstring): the axis-aligned placement of ``template`` and its correlation
    with the input slices (the higher, the better the template explains them). ``start``: a placement
    to begin steps 2-3 from instead of step 1 (they only move away from it to a higher correlation).
    ``brain``: the template's brain voxels, kept mostly inside the grid by step 2 (default: its foreground)."""
    target_spacing = np.asarray(inputs.grid.spacing, dtype=np.float64)
    template_spacing = np.asarray(template_spacing, dtype=np.float64)
    background = float(np.percentile(template[::2, ::2, ::2], 1.0))
    sampler = SliceSampler(template, template_spacing, target_spacing, inputs, background)
    if start is not None:
        fit = AxisFit(np.array(start.scale, dtype=np.float64), np.array(start.shift, dtype=np.float64))
    else:
        fit = _initial_fit(template, template_spacing, target_spacing, inputs)
    box = bounding_box(template > foreground_threshold(template) if brain is None else brain, inputs.axis)
    brain_mm = None if box is None else (box[0] * template_spacing[inputs.axis], box[1] * template_spacing[inputs.axis])
    fit = _search_through_plane(fit, sampler, inputs, brain_mm)
    centre_mm = (np.asarray(inputs.grid.shape) - 1) / 2.0 * target_spacing
    fit = _refine(fit, sampler, centre_mm)
    return fit, sampler.score(fit)
