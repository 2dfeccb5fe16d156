"""Slice-axis interpolation baselines: ``nearest``, ``linear`` and ``cubic``.

This is the paper's adaptation of ScoreMRI to slices-to-volume (Appendix D.3): take the input
slices and interpolate the missing ones along the slice axis. Every baseline here:

- returns a volume on exactly ``inputs.grid`` that reproduces the input slices bit for bit;
- extrapolates with a constant (the outermost input slice) beyond the first and last inputs,
  because any slope guessed from two head slices runs off to nonsense far from them;
- degenerates gracefully: one input slice gives ``nearest`` for every method.

``cubic`` uses PCHIP (piecewise cubic Hermite, monotone) rather than a natural cubic spline: MRI
intensity along a line jumps at tissue borders (scalp, skull, CSF), and a natural spline rings
and overshoots there (negative intensities, bright halos), PCHIP never leaves the range of its
two neighbouring samples. On smooth profiles it is still third-order accurate away from extrema.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import PchipInterpolator

from ..io.volume import Volume
from ..inputs import SliceInput

# Output positions interpolated per block: bounds the float64 temporaries of PCHIP.
_BLOCK = 16


def _sorted_inputs(inputs: SliceInput) -> tuple[np.ndarray, np.ndarray]:
    """Input indices ascending and their slices in the same order (float32)."""
    order = np.argsort(inputs.indices)
    return np.asarray(inputs.indices)[order], np.asarray(inputs.slices, dtype=np.float32)[order]


def _to_volume(inputs: SliceInput, stack: np.ndarray) -> Volume:
    """Slices stacked along axis 0 -> volume on the input grid with the inputs pasted back exactly."""
    array = np.moveaxis(stack, 0, inputs.axis)
    return Volume(inputs.paste_into(array), inputs.grid)


def _nearest_at(indices: np.ndarray, slices: np.ndarray, positions: np.ndarray) -> np.ndarray:
    nearest = np.abs(positions[:, None] - indices[None, :]).argmin(axis=1)  # argmin keeps the first tie
    return slices[nearest]


def _linear_at(indices: np.ndarray, slices: np.ndarray, positions: np.ndarray) -> np.ndarray:
    if len(indices) == 1:
        return _nearest_at(indices, slices, positions)
    positions = np.clip(np.asarray(positions, dtype=np.float64), indices[0], indices[-1])
    upper = np.clip(np.searchsorted(indices, positions, side="right"), 1, len(indices) - 1)
    lower = upper - 1
    weight = ((positions - indices[lower]) / (indices[upper] - indices[lower])).astype(np.float32)
    weight = weight[:, None, None]
    return ((1.0 - weight) * slices[lower] + weight * slices[upper]).astype(np.float32)


def _pchip_at(indices: np.ndarray, slices: np.ndarray, positions: np.ndarray) -> np.ndarray:
    if len(indices) < 3:
        return _linear_at(indices, slices, positions)
    positions = np.clip(np.asarray(positions, dtype=np.float64), indices[0], indices[-1])
    # Only nodes near the positions shape PCHIP there (a node's slope uses its two neighbours): a
    # window of them makes a few positions cheap (leave-one-out folds) and changes no value.
    n = len(indices)
    low = int(np.searchsorted(indices, positions.min(), side="right")) - 2
    high = int(np.searchsorted(indices, positions.max(), side="right")) + 2
    low, high = max(0, low), min(n, high)
    low, high = max(0, min(low, high - 4)), min(n, max(high, low + 4))  # at least 4 nodes where there are
    indices, slices = indices[low:high], slices[low:high]
    interpolator = PchipInterpolator(indices.astype(np.float64), slices, axis=0, extrapolate=False)
    stack = np.empty((len(positions), *slices.shape[1:]), dtype=np.float32)
    for start in range(0, len(positions), _BLOCK):
        stack[start:start + _BLOCK] = interpolator(positions[start:start + _BLOCK])
    return stack


def cubic_at(inputs: SliceInput, positions) -> np.ndarray:
    """``pchip_fill`` at some slice positions only (stacked along axis 0, input slices not pasted):
    cheap when few slices are needed (``baselines.leave_one_out``)."""
    indices, slices = _sorted_inputs(inputs)
    return _pchip_at(indices, slices, np.asarray(positions, dtype=np.float64))


def nearest_fill(inputs: SliceInput) -> Volume:
    """Every slice is a copy of the nearest input slice (ties go to the lower index)."""
    indices, slices = _sorted_inputs(inputs)
    return _to_volume(inputs, _nearest_at(indices, slices, np.arange(inputs.grid.shape[inputs.axis])))


def linear_fill(inputs: SliceInput) -> Volume:
    """Linear interpolation between neighbouring input slices, constant beyond the outermost ones."""
    indices, slices = _sorted_inputs(inputs)
    return _to_volume(inputs, _linear_at(indices, slices, np.arange(inputs.grid.shape[inputs.axis])))


def pchip_fill(inputs: SliceInput) -> Volume:
    """Monotone cubic (PCHIP) interpolation between input slices; linear for 2 inputs, nearest for 1."""
    indices, slices = _sorted_inputs(inputs)
    return _to_volume(inputs, _pchip_at(indices, slices, np.arange(inputs.grid.shape[inputs.axis])))


class NearestSlice:
    """Baseline ``nearest``: copy the nearest input slice."""

    name = "nearest"

    def reconstruct(self, inputs: SliceInput) -> Volume:
        return nearest_fill(inputs)


class LinearInterpolation:
    """Baseline ``linear``: linear interpolation along the slice axis (ScoreMRI adaptation, D.3)."""

    name = "linear"

    def reconstruct(self, inputs: SliceInput) -> Volume:
        return linear_fill(inputs)


class CubicInterpolation:
    """Baseline ``cubic``: monotone cubic (PCHIP) interpolation along the slice axis."""

    name = "cubic"

    def reconstruct(self, inputs: SliceInput) -> Volume:
        return pchip_fill(inputs)
