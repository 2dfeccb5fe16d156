"""The thick-slice workflow: every acquired slice of a thick-slice scan in, a finer grid out.

``reconstruct_thick_slices`` is the one home of it; the command line (``reconstruct --all-slices``,
``reconstruct-batch --all-slices``), the worker (so the Slicer module and the web app) and
``evaluate --thick-slice`` all call it:

1. ``transforms.thick_slices.plan_thick_slices``: the finer grid (the input's grid refined N times
   along its slice axis; acquired slice i is fine slice i*N) and the slice profile (thickness);
2. the usual reconstruction (``reconstructor.reconstruct_volume``) on that grid with the acquired
   slices as its input slices at their centres: the anchor interpolates between them, the model
   adds its residual;
3. data consistency (``enforce_slab_averages``): a smooth correction after which the output averaged
   over each acquired slab equals the acquired slice, so a thick slice is treated as the slab
   average it is, not pasted in as one thin slice.

The uncertainty is the reconstructor's on the same fine grid. The reconstructor takes the acquired
slices as known thin slices (0 there); a thick slice only fixes its slab's average, so at each
acquired slice's centre the uncertainty is that of the fine slices beside it
(``uncertainty_at_slab_centres``). Its calibration was made with thin input slices: between thick
slices it is a guide, not a calibrated interval.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..inputs import check_intensity_volume
from ..io.volume import Volume
from ..transforms.thick_slices import ThickSlicePlan, enforce_slab_averages, place_acquired, plan_thick_slices
from .result import ReconstructionResult


@dataclass(frozen=True)
class ThickSliceResult(ReconstructionResult):
    """The fine-grid reconstruction and its uncertainty (same grid, ``info`` its meaning), and the
    plan that made them."""

    plan: ThickSlicePlan | None = None


def plan_for(volume: Volume, slice_factor: int | None = None, spacing: float | None = None,
             thickness: float | None = None, reconstructor=None) -> ThickSlicePlan:
    """``plan_thick_slices`` with the reconstructor's model limit (config.json only, no weights loaded)."""
    max_slices = None if reconstructor is None else reconstructor.config.max_slices
    return plan_thick_slices(volume.grid, slice_factor, spacing, thickness, max_slices)


def reconstruct_thick_slices(
    volume: Volume,
    slice_factor: int | None = None,
    spacing: float | None = None,
    thickness: float | None = None,
    model_dir: str | os.PathLike | None = None,
    progress=None,
    reconstructor=None,
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
    Every bad value raises one-line XDiffusionError before any model work; ``result.plan.describe()``
    is a line to show the user.
    """
    from .reconstructor import reconstruct_volume, reconstructor_for

    reconstructor = reconstructor_for(reconstructor, model_dir, settings)
    check_intensity_volume(volume)  # before the plan, as reconstruct_volume does
    plan = plan_for(volume, slice_factor, spacing, thickness, reconstructor)
    fine = place_acquired(volume, plan)
    result = reconstruct_volume(fine, plan.plane, plan.indices, progress=progress, reconstructor=reconstructor)
    consistent = enforce_slab_averages(result.volume.array, volume.array, plan)
    uncertainty = Volume(uncertainty_at_slab_centres(result.uncertainty.array, plan), plan.grid)
    return ThickSliceResult(Volume(consistent, plan.grid), uncertainty, info=result.info, plan=plan)


def uncertainty_at_slab_centres(uncertainty: np.ndarray, plan: ThickSlicePlan) -> np.ndarray:
    """``uncertainty`` (on ``plan.grid``) with each acquired slice's centre given the mean of the
    fine slices on either side of it along the slice axis. The reconstructor sets 0 there, as on any
    input slice, but a thick slice is the average of its slab: the value at its centre is not known
    exactly, and a band of zeros every slice spacing is not what the scan holds."""
    filled = np.array(uncertainty, dtype=np.float32, copy=True)
    depth = filled.shape[plan.axis]
    for centre in plan.fine_indices:
        beside = [i for i in (centre - 1, centre + 1) if 0 <= i < depth and i not in plan.fine_indices]
        if beside:
            value = np.mean([np.take(filled, i, axis=plan.axis) for i in beside], axis=0)
            index = [slice(None)] * filled.ndim
            index[plan.axis] = centre
            filled[tuple(index)] = value
    return filled


__all__ = ["ThickSliceResult", "plan_for", "reconstruct_thick_slices", "uncertainty_at_slab_centres"]
