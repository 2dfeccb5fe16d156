"""Baseline ``template``: a population template fitted to the input slices.

The template (by default the mean of the shipped training T1 templates, i.e. ICBM152 2009a; a
user atlas file works too) is brought to canonical orientation and placed in the target grid by an
axis-aligned scale + shift per axis, using only what a method may see (grid geometry and input
slices):

1. In-plane (the two axes inside the input slices): scale and shift so the template's foreground
   bounding box matches the inputs' foreground bounding box (union over the input slices).
2. Through-plane: scale = mean of the two in-plane scales (heads scale roughly isotropically);
   shift = the one whose template slices at the input positions correlate best with the input
   slices (normalised cross-correlation), searched over the grid. This tells a slice through the
   eyes from one through the vertex, which centring alone cannot.
3. Step 1 is repeated with the template's bounding box taken at the matched slices only (a slice
   near the vertex is smaller than the whole head), then step 2 once more.
4. Intensities: monotone quantile mapping from the template's values to the inputs' values at the
   same voxels (the input slices), so contrast and scanner scale follow the inputs.
5. The input slices are pasted in unchanged.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.ndimage import affine_transform

from ..errors import XDiffusionError
from ..io.volume import Volume
from ..methods import SliceInput
from .foreground import bounding_box, foreground_mask, foreground_threshold

_QUANTILES = np.linspace(0.0, 1.0, 257)
_SEARCH_STEPS = 81  # through-plane shifts tried per pass


def default_template_paths() -> tuple[str, ...]:
    """The shipped training T1 template(s); held-out samples are never used."""
    from ..data.samples import samples_with_role

    paths = tuple(str(s.path) for s in samples_with_role("training") if s.name.endswith("_t1"))
    if not paths:
        raise XDiffusionError("no training T1 template is shipped: pass an atlas file to the template baseline")
    return paths


def _canonical_array(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    from ..transforms.orientation import to_canonical

    canonical, _ = to_canonical(volume)
    return np.asarray(canonical.array, dtype=np.float32), np.asarray(canonical.spacing, dtype=np.float64)


@lru_cache(maxsize=4)
def load_template(paths: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Canonical template voxels (mean over ``paths``) and spacing; cached, so repeated cases load once."""
    from ..io import read_volume

    arrays, spacing = [], None
    for path in paths:
        array, this_spacing = _canonical_array(read_volume(path))
        if arrays and (array.shape != arrays[0].shape or not np.allclose(this_spacing, spacing)):
            raise XDiffusionError(f"template {path} is not on the same grid as {paths[0]}: templates must share a grid")
        arrays.append(array)
        spacing = this_spacing
    mean = np.mean(arrays, axis=0, dtype=np.float64).astype(np.float32) if len(arrays) > 1 else arrays[0]
    mean.setflags(write=False)
    return mean, spacing


class AxisFit:
    """Axis-aligned map from template millimetres to target millimetres: ``target = scale * template + shift``."""

    def __init__(self, scale: np.ndarray, shift: np.ndarray) -> None:
        self.scale = np.asarray(scale, dtype=np.float64)
        self.shift = np.asarray(shift, dtype=np.float64)

    def template_index(self, target_index: np.ndarray | float, axis: int, target_spacing, template_spacing):
        """Template voxel coordinate along ``axis`` seen by target voxel coordinate(s) along ``axis``."""
        target_mm = np.asarray(target_index, dtype=np.float64) * target_spacing[axis]
        return (target_mm - self.shift[axis]) / (self.scale[axis] * template_spacing[axis])


def _box_mm(mask: np.ndarray, axis: int, spacing: float) -> tuple[float, float] | None:
    """(centre, extent) in mm of the foreground along ``axis``; None without foreground."""
    box = bounding_box(mask, axis)
    if box is None:
        return None
    low, high = box
    return (low + high) / 2.0 * spacing, (high - low + 1) * spacing


def _resample(template: np.ndarray, fit: AxisFit, template_spacing, target_spacing, output_shape,
              axes: tuple[int, ...], background: float) -> np.ndarray:
    """Resample ``template`` along ``axes`` into target coordinates (other axes keep template voxels)."""
    matrix = np.ones(3)
    offset = np.zeros(3)
    for axis in axes:
        matrix[axis] = target_spacing[axis] / (fit.scale[axis] * template_spacing[axis])
        offset[axis] = -fit.shift[axis] / (fit.scale[axis] * template_spacing[axis])
    return affine_transform(template, matrix, offset=offset, output_shape=tuple(output_shape),
                            order=1, mode="constant", cval=background, prefilter=False)


def _slices_at(stack: np.ndarray, coordinates: np.ndarray, background: float) -> np.ndarray:
    """Linear interpolation of a slice stack (slices along axis 0) at fractional coordinates."""
    out = np.full((len(coordinates), *stack.shape[1:]), background, dtype=np.float32)
    for n, t in enumerate(coordinates):
        if not -0.5 < t < stack.shape[0] - 0.5:
            continue
        t = min(max(t, 0.0), stack.shape[0] - 1.0)
        low = int(np.floor(t))
        high = min(low + 1, stack.shape[0] - 1)
        w = t - low
        out[n] = (1.0 - w) * stack[low] + w * stack[high]
    return out


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a.ravel() - a.mean()
    b = b.ravel() - b.mean()
    denominator = np.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / denominator if denominator > 0 else -1.0


def _quantile_map(source: np.ndarray, target: np.ndarray):
    """Monotone map sending the quantiles of ``source`` onto those of ``target`` (same voxels)."""
    source_q = np.quantile(source, _QUANTILES)
    target_q = np.quantile(target, _QUANTILES)
    # Ties in the source (flat background) map to the mean of their target quantiles.
    unique, inverse = np.unique(source_q, return_inverse=True)
    mapped = np.bincount(inverse, weights=target_q) / np.bincount(inverse)
    if unique.size == 1:
        return lambda values: np.full_like(values, mapped[0], dtype=np.float32)
    return lambda values: np.interp(values, unique, mapped).astype(np.float32)


def fit_template(template: np.ndarray, template_spacing, inputs: SliceInput) -> Volume:
    """Place ``template`` (canonical voxels) in ``inputs.grid`` and match it to the input slices."""
    axis = inputs.axis
    in_plane = [a for a in range(3) if a != axis]
    shape = np.asarray(inputs.grid.shape)
    target_spacing = np.asarray(inputs.grid.spacing, dtype=np.float64)
    template_spacing = np.asarray(template_spacing, dtype=np.float64)
    background = float(np.percentile(template[::2, ::2, ::2], 1.0))
    slices = np.asarray(inputs.slices, dtype=np.float32)

    input_mask = foreground_mask(slices)
    template_mask = template > foreground_threshold(template)
    scale, shift = np.ones(3), np.zeros(3)
    for n, a in enumerate(in_plane):
        inside = _box_mm(input_mask, n + 1, target_spacing[a])
        outside = _box_mm(template_mask, a, template_spacing[a])
        if inside is None or outside is None:  # blank input or template: keep physical size, centre both
            shift[a] = (shape[a] - 1) / 2.0 * target_spacing[a] - (template.shape[a] - 1) / 2.0 * template_spacing[a]
        else:
            scale[a] = inside[1] / outside[1]
            shift[a] = inside[0] - scale[a] * outside[0]
    through = _box_mm(template_mask, axis, template_spacing[axis])
    template_centre = through[0] if through else (template.shape[axis] - 1) / 2.0 * template_spacing[axis]

    positions = np.asarray(inputs.indices, dtype=np.float64)
    fit = AxisFit(scale, shift)
    for refine in range(2):
        fit.scale[axis] = float(np.mean(fit.scale[in_plane]))
        # Template resampled in-plane only: its native through-plane slices on the target's in-plane grid.
        stack_shape = shape.copy()
        stack_shape[axis] = template.shape[axis]
        stack = np.moveaxis(_resample(template, fit, template_spacing, target_spacing, stack_shape,
                                      tuple(in_plane), background), axis, 0)
        centred = (shape[axis] - 1) / 2.0 * target_spacing[axis] - fit.scale[axis] * template_centre
        half_range = shape[axis] * target_spacing[axis] / 2.0
        best = (-np.inf, centred)
        # Centred first, so that ties (e.g. blank inputs) keep the centred placement.
        for candidate in [centred, *(centred + np.linspace(-half_range, half_range, _SEARCH_STEPS))]:
            fit.shift[axis] = candidate
            coords = fit.template_index(positions, axis, target_spacing, template_spacing)
            score = _correlation(_slices_at(stack, coords, background), slices)
            if score > best[0]:
                best = (score, candidate)
        fit.shift[axis] = best[1]
        if refine or not input_mask.any():
            break
        # Re-measure the template's in-plane box at the matched slices only.
        coords = fit.template_index(positions, axis, target_spacing, template_spacing)
        matched = _slices_at(stack, coords, background)
        matched_mask = matched > foreground_threshold(template)
        for n, a in enumerate(in_plane):
            inside = _box_mm(input_mask, n + 1, target_spacing[a])
            current = _box_mm(matched_mask, n + 1, target_spacing[a])
            if current is None:
                continue
            template_mm = (current[0] - fit.shift[a]) / fit.scale[a]
            fit.scale[a] *= inside[1] / current[1]
            fit.shift[a] = inside[0] - fit.scale[a] * template_mm

    placed = _resample(template, fit, template_spacing, target_spacing, shape, (0, 1, 2), background)
    at_inputs = np.stack([np.take(placed, i, axis=axis) for i in inputs.indices])
    matched = _quantile_map(at_inputs, slices)(placed)
    return Volume(inputs.paste_into(matched), inputs.grid)


class TemplateBaseline:
    """Baseline ``template``: population template aligned and intensity-matched to the input slices.

    ``atlas``: None (the shipped training T1 template), a file path, or a Volume.
    """

    name = "template"

    def __init__(self, atlas: str | Path | Volume | None = None) -> None:
        self._atlas = atlas
        self._loaded: tuple[np.ndarray, np.ndarray] | None = None

    def _template(self) -> tuple[np.ndarray, np.ndarray]:
        if self._loaded is None:
            if self._atlas is None:
                self._loaded = load_template(default_template_paths())
            elif isinstance(self._atlas, Volume):
                self._loaded = _canonical_array(self._atlas)
            else:
                path = Path(self._atlas)
                if not path.exists():
                    raise XDiffusionError(f"template atlas {path} does not exist")
                self._loaded = load_template((str(path.resolve()),))
        return self._loaded

    def reconstruct(self, inputs: SliceInput) -> Volume:
        template, spacing = self._template()
        return fit_template(template, spacing, inputs)
