"""Leave-one-slice-out folds of a scan: each input slice predicted by the anchor from the other inputs.

The evidence behind the per-scan interval scale (``uncertainty.scan_scale``, which says what is
assumed and guaranteed). Fold j is the anchor (``baselines.anchor``) of the inputs without slice j,
evaluated at slice j only (and its two neighbours, for the edge-strength feature), compared with the
real slice j over its head voxels (``foreground.head_mask`` of the slice at the scan's threshold).

The head prior is not refitted per fold: the fit to all K inputs (``AnchorEstimate.prior``) is
blended with each fold's own interpolation and weights. Refitting would cost seconds per fold; the
prior is a low-dimensional fit that cannot follow one slice's texture or noise, and the calibration
subjects' folds are made the same way, so the reuse biases the synthetic reference exactly as it
biases the scan (``uncertainty.scan_scale`` module docstring).
"""

from __future__ import annotations

import numpy as np

from ..inputs import SliceInput
from ..uncertainty.intervals import interval_features
from ..uncertainty.scan_scale import HeldOutFold
from .anchor import DEFAULT_WEIGHT_RULE, AnchorEstimate, inside_inputs, interpolation_weight, slice_distance_mm
from .foreground import foreground_threshold, head_mask
from .interpolation import cubic_at


def _stack(array: np.ndarray, axis: int, positions: np.ndarray) -> np.ndarray:
    """Slices ``positions`` of a volume along ``axis``, stacked along axis 0."""
    return np.moveaxis(np.take(array, positions, axis=axis), axis, 0)


def held_out_folds(inputs: SliceInput, estimate: AnchorEstimate, value_range: float,
                   decay_inside_mm: float, decay_outside_mm: float,
                   max_voxels: int | None = None, seed: int = 0,
                   weight_rule: str = DEFAULT_WEIGHT_RULE) -> list[HeldOutFold]:
    """One fold per input slice (none for K = 1 or an estimate without its prior fit), with the
    anchor's decays and weight rule of the reconstruction. ``value_range``: the intensity range the features are
    in units of (the reconstructor's normaliser ``high - low``). ``max_voxels``: keep a seeded
    random subset of each fold's head voxels (the calibration script's samples)."""
    prior = estimate.prior
    count = len(inputs.indices)
    if prior is None or count < 2:
        return []
    axis, depth = inputs.axis, inputs.grid.shape[inputs.axis]
    threshold = foreground_threshold(inputs.slices)
    rng = np.random.default_rng(seed)
    folds = []
    for held, index in enumerate(inputs.indices):
        keep = [q for q in range(count) if q != held]
        others = SliceInput(inputs.grid, inputs.plane, tuple(inputs.indices[q] for q in keep), inputs.slices[keep])
        positions = np.unique(np.clip([index - 1, index, index + 1], 0, depth - 1))
        interpolated = cubic_at(others, positions)
        fitted = _stack(prior.prior, axis, positions).astype(np.float32)
        # The anchor's blend at these slices (as anchor.voxel_weight and anchor.blend do on the whole
        # grid): 1 between the remaining inputs where the template has no field of view.
        weight = interpolation_weight(others, decay_inside_mm, decay_outside_mm, weight_rule)[positions][:, None, None]
        outside_template = ~_stack(prior.coverage, axis, positions) & inside_inputs(others)[positions][:, None, None]
        weight = np.where(outside_template, np.float32(1.0), weight).astype(np.float32)
        interpolated_known = interpolated.copy()
        for q in keep:  # a neighbour that is itself an input is reproduced exactly, as in the anchor
            at = np.flatnonzero(positions == inputs.indices[q])
            if at.size:
                interpolated_known[at[0]] = inputs.slices[q]
                fitted[at[0]] = inputs.slices[q]
        anchor = weight * interpolated_known + (1.0 - weight) * fitted
        features = interval_features(count - 1, 0, np.zeros(len(positions)), np.zeros(len(positions), bool),
                                     np.zeros_like(anchor), interpolated_known, fitted, anchor, value_range)
        centre = int(np.flatnonzero(positions == index)[0])
        truth = np.asarray(inputs.slices[held], dtype=np.float32)
        mask = head_mask(truth, threshold)
        flat = np.flatnonzero(mask.reshape(-1))
        if max_voxels is not None and flat.size > max_voxels:
            flat = np.sort(rng.choice(flat, max_voxels, replace=False))
        offset = centre * truth.size  # the fold's slice inside the (positions, ...) stack
        design = features.stack(flat + offset)
        error = np.abs(truth.reshape(-1)[flat] - anchor[centre].reshape(-1)[flat]) / np.float32(value_range)
        folds.append(HeldOutFold(int(index), float(slice_distance_mm(others)[index]), error.astype(np.float32),
                                 design.astype(np.float32)))
    return folds


__all__ = ["held_out_folds"]
