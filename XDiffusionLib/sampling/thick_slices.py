"""The thick-slice workflow: every acquired slice of a thick-slice scan in, a finer grid out.

``reconstruct_thick_slices`` is the one home of it; the command line (``reconstruct --all-slices``,
``reconstruct-batch --all-slices``), the worker (so the Slicer module and the web app) and
``evaluate --thick-slice`` all call it:

1. ``transforms.thick_slices.plan_thick_slices``: the finer grid (the input's grid refined N times
   along its slice axis; acquired slice i is fine slice i*N) and the slice profile (thickness);
2. the usual reconstruction (``reconstructor.reconstruct_volume``) on that grid with the acquired
   slices as its input slices at their centres: the anchor interpolates between them, the model
   adds its residual;
3. the scan's own check (``model_weight``): closely spaced slices are often better interpolated than
   generated (the anchor mixes in its head template between inputs, and a population template is
   far from this head at 1-2 mm). So every other acquired slice is left out, the rest are put
   through steps 1-2 at twice the spacing, and the weight w of the generated volume against PCHIP
   along the slice axis that best predicts the left-out slabs (least squares, within [0, 1]) is
   the weight used for the result: w * generated + (1 - w) * PCHIP. This is model selection by
   cross-validation on the scan itself, no other data involved; it costs one more reconstruction
   on half the slices (its volume alone: no interval is computed for it). The weight is chosen at
   twice the spacing, where interpolation is worse, so it leans towards the model;
4. data consistency: the acquired slices' centres (where the reconstructor pasted the slabs in as
   thin slices) are taken from the fine slices beside them (``from_neighbours_at_slab_centres``),
   then a smooth correction (``enforce_slab_averages``) makes the output averaged over each acquired
   slab equal the acquired slice, so a thick slice is treated as the slab average it is, not pasted
   in as one thin slice.

The uncertainty is the reconstructor's on the same fine grid. The reconstructor takes the acquired
slices as known thin slices (0 there); a thick slice only fixes its slab's average, so at each
acquired slice's centre the uncertainty is that of the fine slices beside it
(``uncertainty_at_slab_centres``). Its calibration was made with thin input slices and for the
generated volume, not for its blend with interpolation: between thick slices it is a guide, not a
calibrated interval.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import PchipInterpolator

from ..inputs import check_intensity_volume
from ..io.volume import Grid, Volume
from ..transforms.thick_slices import (ThickSlicePlan, enforce_slab_averages, place_acquired, plan_thick_slices,
                                       slab_average)
from .result import ModelShare, ReconstructionResult

_MIN_FOR_CHECK = 5  # acquired slices needed to leave every other one out (3 kept, 2 left out)
_WINDOW_OVERLAP = 4  # acquired slices shared by neighbouring windows of a scan longer than the model takes


@dataclass(frozen=True)
class ThickSliceResult(ReconstructionResult):
    """The fine-grid reconstruction and its uncertainty (same grid, ``info`` its meaning), and the
    plan that made them."""

    plan: ThickSlicePlan | None = None

    @property
    def model_weight(self) -> float:
        """w of step 3: the generated volume's share, the rest PCHIP (``share``, which the worker's
        files carry to the Slicer module and the web app)."""
        return 1.0 if self.share is None else self.share.weight


def plan_for(volume: Volume, slice_factor: int | None = None, spacing: float | None = None,
             thickness: float | None = None) -> ThickSlicePlan:
    """The finer grid for ``volume`` (``plan_thick_slices``), for any number of acquired slices: more
    than the model takes are reconstructed in overlapping windows (``slab_windows``)."""
    return plan_thick_slices(volume.grid, slice_factor, spacing, thickness)


def reconstruct_thick_slices(
    volume: Volume,
    slice_factor: int | None = None,
    spacing: float | None = None,
    thickness: float | None = None,
    model_dir: str | os.PathLike | None = None,
    progress=None,
    reconstructor=None,
    cross_validate: bool = True,
    **settings,
) -> ThickSliceResult:
    """All acquired slices of the thick-slice scan ``volume`` onto a finer grid, in one call.

    What a front end calls after opening an anisotropic volume (``transforms.thick_slices.
    is_thick_slice`` says whether to offer it): ``slice_factor`` N (acquired slice i lands on fine
    slice i*N, same in-plane grid and origin) or ``spacing`` mm (must divide the slice spacing);
    neither: the in-plane spacing, rounded to a divisor. ``thickness``: mm each acquired slice
    averages over (the header's DICOM SliceThickness, ``io.readers.header_slice_thickness``; None:
    the slice spacing). ``model_dir`` and ``settings`` build the reconstructor, or ``reconstructor``
    is one built before (not both); ``progress`` (fraction, message) follows this run.
    ``cross_validate``: step 3 (False: the generated volume alone, w = 1).
    A scan with more acquired slices than the model takes goes through steps 2-3 in windows of at
    most that many slices, neighbours sharing ``_WINDOW_OVERLAP`` slices and cross-faded over them;
    step 4 then runs once on the whole. ``result.model_weight`` is the mean of the windows' weights;
    ``result.share`` holds it, whether it was checked on the scan's slices, and the line to show.
    Every bad value raises one-line XDiffusionError before any model work; ``result.plan.describe()``
    is a line to show the user.
    """
    from .reconstructor import reconstructor_for  # torch: loaded when a run starts, not with this module

    reconstructor = reconstructor_for(reconstructor, model_dir, settings)
    check_intensity_volume(volume)  # before the plan, as reconstruct_volume does
    plan = plan_for(volume, slice_factor, spacing, thickness)
    limit = reconstructor.config.max_slices
    windows = slab_windows(plan.acquired, limit)
    ramp = (min(_WINDOW_OVERLAP, limit // 2) - 1) * plan.factor + 1  # the fine slices two windows share
    depth = plan.grid.shape[plan.axis]
    total, spread, coverage = np.zeros(plan.grid.shape), np.zeros(plan.grid.shape), np.zeros(depth)
    profile = [1, 1, 1]  # a (depth,) profile broadcast along the slice axis
    profile[plan.axis] = -1
    weights, info = [], None
    for number, (start, stop) in enumerate(windows):
        part = _window(volume, plan, start, stop)
        part_plan = plan_for(part, plan.factor, thickness=plan.thickness)
        blended, uncertainty, info, weight = _reconstruct_part(
            part, part_plan, reconstructor, cross_validate, _part_progress(progress, number, len(windows)))
        fade = _fade(part_plan.grid.shape[plan.axis], start > 0, stop < plan.acquired, ramp)
        along = [slice(None)] * 3
        along[plan.axis] = slice(start * plan.factor, start * plan.factor + fade.size)
        total[tuple(along)] += blended * fade.reshape(profile)
        spread[tuple(along)] += uncertainty * fade.reshape(profile)
        coverage[along[plan.axis]] += fade
        weights.append(weight)
    blended = (total / coverage.reshape(profile)).astype(np.float32)
    uncertainty = Volume((spread / coverage.reshape(profile)).astype(np.float32), plan.grid)
    consistent = enforce_slab_averages(blended, volume.array, plan)
    # Said to be checked only when every window's weight was chosen on its own slices.
    checked = cross_validate and all(_can_check(stop - start) for start, stop in windows)
    return ThickSliceResult(Volume(consistent, plan.grid), uncertainty, info=info, plan=plan,
                            share=ModelShare(float(np.mean(weights)), checked))


def _can_check(acquired: int) -> bool:
    """Whether step 3 can leave every other one of ``acquired`` slices out (one rule for the weight
    and for saying that it was checked)."""
    return acquired >= _MIN_FOR_CHECK


def slab_windows(acquired: int, limit: int, overlap: int | None = None) -> list[tuple[int, int]]:
    """[start, stop) ranges of acquired slices, each at most ``limit`` long, covering all of them,
    neighbours sharing ``overlap`` slices (default ``_WINDOW_OVERLAP``, at most half a window)."""
    if acquired <= limit:
        return [(0, acquired)]
    overlap = min(_WINDOW_OVERLAP if overlap is None else overlap, limit // 2)
    starts = list(range(0, acquired - limit, limit - overlap)) + [acquired - limit]
    return [(start, start + limit) for start in starts]


def _window(volume: Volume, plan: ThickSlicePlan, start: int, stop: int) -> Volume:
    """Acquired slices [start, stop) of ``volume`` on their own grid (the same frame, origin moved)."""
    array = np.take(np.asarray(volume.array), np.arange(start, stop), axis=plan.axis)
    grid = plan.source
    origin = np.asarray(grid.origin) + grid.direction[:, plan.axis] * grid.spacing[plan.axis] * start
    return Volume(array, Grid(array.shape, grid.spacing, tuple(origin), grid.direction))


def _fade(depth: int, before: bool, after: bool, ramp: int) -> np.ndarray:
    """(depth,) weights of one window's fine slices: 1, ramping down over the ``ramp`` slices it
    shares with the window before and the one after (linear cross-fade, never 0)."""
    position = np.arange(depth, dtype=np.float64)
    fade = np.ones(depth)
    if before:
        fade = np.minimum(fade, (position + 1) / (ramp + 1))
    if after:
        fade = np.minimum(fade, (depth - position) / (ramp + 1))
    return fade


def _part_progress(progress, number: int, parts: int):
    """``progress`` for one window: its share of the run, and which part it is when there are several."""
    if progress is None:
        return None
    if parts == 1:
        return progress
    return lambda fraction, message: progress((number + fraction) / parts, f"part {number + 1} of {parts}: {message}")


def _reconstruct_part(volume: Volume, plan: ThickSlicePlan, reconstructor, cross_validate: bool, progress):
    """Steps 2-3 (and the slab centres of step 4) for acquired slices the model takes at once:
    (blended fine array, uncertainty, its info, the weight w)."""
    from .reconstructor import reconstruct_volume  # torch: loaded when a run starts, not with this module

    if cross_validate and progress is not None:
        progress(0.0, "checking the model on this scan's own slices (every other one left out)")
    weight = model_weight(volume, plan, reconstructor) if cross_validate else 1.0
    result = reconstruct_volume(place_acquired(volume, plan), plan.plane, plan.indices, progress=progress,
                                reconstructor=reconstructor)
    # A thick slice is its slab's average, not the thin slice at its centre: pasted in there it was
    # blurrier than the generated slices beside it, a stripe every slice spacing in coronal and
    # sagittal views. Its centre is taken from its neighbours; step 4 then restores every slab's average.
    generated = from_neighbours_at_slab_centres(result.volume.array, plan)
    blended = weight * generated + (1.0 - weight) * interpolate_along(volume.array, plan)
    return blended, uncertainty_at_slab_centres(result.uncertainty.array, plan), result.info, weight


def interpolate_along(acquired: np.ndarray, plan: ThickSlicePlan) -> np.ndarray:
    """PCHIP along the slice axis from the acquired slices' centres onto every fine slice of ``plan``."""
    positions = np.arange(plan.acquired, dtype=np.float64) * plan.factor
    targets = np.arange(plan.grid.shape[plan.axis], dtype=np.float64)
    moved = np.moveaxis(np.asarray(acquired, dtype=np.float32), plan.axis, 0)
    return np.moveaxis(PchipInterpolator(positions, moved, axis=0)(targets), 0, plan.axis).astype(np.float32)


def model_weight(volume: Volume, plan: ThickSlicePlan, reconstructor) -> float:
    """Step 3: the generated volume's weight against PCHIP, from this scan's slices left out (module
    docstring); 1 when the scan has too few slices to leave any out (fewer than ``_MIN_FOR_CHECK``)."""
    from .reconstructor import reconstruct_volume  # torch: loaded when a run starts, not with this module

    if not _can_check(plan.acquired):
        return 1.0
    pairs = (plan.acquired - 1) // 2  # the first 2 * pairs + 1 slices: kept ones at both ends
    used = np.take(np.asarray(volume.array, dtype=np.float32), np.arange(2 * pairs + 1), axis=plan.axis)
    shape = list(used.shape)
    full_grid = Grid(tuple(shape), plan.source.spacing, plan.source.origin, plan.source.direction)
    full = plan_thick_slices(full_grid, slice_factor=plan.factor, thickness=plan.thickness)
    kept = np.take(used, np.arange(0, used.shape[plan.axis], 2), axis=plan.axis)
    kept_spacing = list(plan.source.spacing)
    kept_spacing[plan.axis] = 2 * plan.slice_spacing
    kept_grid = Grid(kept.shape, tuple(kept_spacing), plan.source.origin, plan.source.direction)
    half = plan_thick_slices(kept_grid, slice_factor=2 * plan.factor, thickness=plan.thickness)
    # Only the volume is scored: its calibrated interval (interval features, left-out folds) is not computed.
    generated = reconstruct_volume(place_acquired(Volume(kept, kept_grid), half), half.plane, half.indices,
                                   reconstructor=reconstructor, interval=False).volume.array
    left_out = np.arange(1, used.shape[plan.axis], 2)
    at_slabs = lambda array: np.take(slab_average(array, full), left_out, axis=plan.axis).astype(np.float64)  # noqa: E731
    truth = np.take(used, left_out, axis=plan.axis).astype(np.float64)
    model, pchip = at_slabs(generated), at_slabs(interpolate_along(kept, half))
    step = (model - pchip).ravel()
    power = float(step @ step)
    return 1.0 if power == 0.0 else float(np.clip(step @ (truth - pchip).ravel() / power, 0.0, 1.0))


def uncertainty_at_slab_centres(uncertainty: np.ndarray, plan: ThickSlicePlan) -> np.ndarray:
    """``uncertainty`` (on ``plan.grid``) with each acquired slice's centre given the mean of the
    fine slices on either side of it along the slice axis. The reconstructor sets 0 there, as on any
    input slice, but a thick slice is the average of its slab: the value at its centre is not known
    exactly, and a band of zeros every slice spacing is not what the scan holds."""
    return from_neighbours_at_slab_centres(uncertainty, plan)


def from_neighbours_at_slab_centres(array: np.ndarray, plan: ThickSlicePlan) -> np.ndarray:
    """``array`` (on ``plan.grid``) with each acquired slice's centre replaced by the mean of the fine
    slices on either side of it along the slice axis (those that are not centres themselves)."""
    filled = np.array(array, dtype=np.float32, copy=True)
    depth, centres = filled.shape[plan.axis], set(plan.fine_indices)
    for centre in sorted(centres):
        beside = [i for i in (centre - 1, centre + 1) if 0 <= i < depth and i not in centres]
        if beside:
            value = np.mean([np.take(filled, i, axis=plan.axis) for i in beside], axis=0)
            index = [slice(None)] * filled.ndim
            index[plan.axis] = centre
            filled[tuple(index)] = value
    return filled


__all__ = ["ThickSliceResult", "interpolate_along", "model_weight", "plan_for", "reconstruct_thick_slices",
           "slab_windows", "uncertainty_at_slab_centres"]
