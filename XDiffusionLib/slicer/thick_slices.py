"""A thick-slice scan as the input: all its acquired slices, reconstructed on a finer isotropic grid.

A clinical series of, say, 1x1x5 mm axial voxels holds every slice that was acquired; what is
missing lies between them. ``plan_all_slices`` takes the acquisition plane (the canonical axis with
the coarsest spacing), builds a grid of the chosen spacing on which every acquired slice is exactly
one grid slice, and lists those slices as the input slices; ``acquired_slices_volume`` puts the
volume on that grid. The reconstruction (``sampling.reconstructor.reconstruct_volume``, unchanged)
then fills the slices in between and pastes the acquired ones in as they are.

The grid is in the canonical RAS+ orientation (``transforms.orientation``): along the slice axis it
runs from the first acquired slice to the last in steps of slice spacing / n, so the spacing must
divide the slice spacing (5 mm: 2.5, 1.667, 1.25, 1, ... mm); in-plane it covers the same field of
view as ``transforms.resample.isotropic_grid`` does. Only numpy, SimpleITK and ``Volume``: the
Slicer module and the command line share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import XDiffusionError
from ..io.volume import Grid, Volume
from ..inputs import PLANE_AXIS, plane_axis
from ..transforms.orientation import Reorientation

# Keeps a typo (0.01 mm) from asking for a grid that cannot fit in memory: 512^3 float32 voxels.
MAX_VOXELS = 512**3
_TOLERANCE = 1e-3  # relative: a spacing within 0.1% of slice spacing / n counts as that


@dataclass(frozen=True)
class AllSlicesPlan:
    """The grid to reconstruct on and which of its slices are the acquired ones."""

    plane: str
    grid: Grid  # canonical orientation
    indices: tuple[int, ...]
    factor: int  # grid slices per acquired slice spacing
    slice_spacing: float  # mm between acquired slices

    @property
    def spacing(self) -> float:
        return float(self.grid.spacing[plane_axis(self.plane)])

    def describe(self) -> str:
        shape = "x".join(str(n) for n in self.grid.shape)
        return (f"all {len(self.indices)} acquired {self.plane} slices ({self.slice_spacing:g} mm apart) "
                f"onto a {self.spacing:g} mm grid ({shape} voxels)")


def acquisition_plane(grid: Grid) -> str:
    """The plane of the canonical axis with the coarsest spacing (axial first on a tie)."""
    spacing = Reorientation.for_grid(grid).canonical.spacing
    coarsest = max(spacing)
    for plane in ("axial", "coronal", "sagittal"):
        if spacing[PLANE_AXIS[plane]] >= coarsest * (1 - _TOLERANCE):
            return plane
    raise AssertionError("unreachable")


def plan_all_slices(grid: Grid, spacing: float, plane: str | None = None, max_slices: int | None = None) -> AllSlicesPlan:
    """All acquired slices of ``plane`` (None: ``acquisition_plane``) on an isotropic ``spacing`` mm grid.

    ``max_slices``: the model's limit on input slices, checked here so the user hears it first.
    """
    if isinstance(spacing, bool) or not isinstance(spacing, (int, float)) or not math.isfinite(spacing) or spacing <= 0:
        raise XDiffusionError(f"grid spacing must be a positive number of millimetres, got {spacing!r}")
    spacing = float(spacing)
    plane = acquisition_plane(grid) if plane is None else plane
    axis = plane_axis(plane)
    canonical = Reorientation.for_grid(grid).canonical
    slice_spacing = float(canonical.spacing[axis])
    depth = int(canonical.shape[axis])
    factor = int(round(slice_spacing / spacing))
    if factor < 2:
        raise XDiffusionError(f"grid spacing {spacing:g} mm is not finer than the {slice_spacing:g} mm between the "
                              f"acquired {plane} slices: choose at most {slice_spacing / 2:.4g} mm")
    if abs(slice_spacing / factor - spacing) > _TOLERANCE * spacing:
        below, above = math.floor(slice_spacing / spacing), math.ceil(slice_spacing / spacing)
        choices = " or ".join(f"{slice_spacing / n:.4g}" for n in sorted({above, below}) if n >= 2)
        raise XDiffusionError(f"grid spacing {spacing:g} mm does not divide the {slice_spacing:g} mm between the "
                              f"acquired {plane} slices: choose {choices} mm")
    if max_slices is not None and depth > max_slices:
        raise XDiffusionError(f"the volume has {depth} acquired {plane} slices but the model takes at most "
                              f"{max_slices}: crop the volume or pick the input slices")
    step = slice_spacing / factor
    old_shape = np.asarray(canonical.shape, dtype=np.float64)
    old_spacing = np.asarray(canonical.spacing, dtype=np.float64)
    new_shape = np.maximum(1, np.rint(old_shape * old_spacing / spacing)).astype(int)
    new_shape[axis] = (depth - 1) * factor + 1
    new_spacing = np.full(3, spacing)
    new_spacing[axis] = step
    # In-plane: keep the field of view's centre; along the slice axis: start on the first slice.
    shift = old_spacing * (old_shape - 1) / 2 - new_spacing * (new_shape - 1) / 2
    shift[axis] = 0.0
    origin = np.asarray(canonical.origin) + np.asarray(canonical.direction) @ shift
    fine = Grid(tuple(int(n) for n in new_shape), tuple(float(s) for s in new_spacing), tuple(origin),
                canonical.direction)
    voxels = int(np.prod(new_shape))
    if voxels > MAX_VOXELS:
        raise XDiffusionError(f"a {spacing:g} mm grid would have {'x'.join(str(n) for n in new_shape)} voxels "
                              f"(over {MAX_VOXELS // 2**20} million): choose a larger spacing")
    return AllSlicesPlan(plane, fine, tuple(range(0, depth * factor, factor)), factor, slice_spacing)


def acquired_slices_volume(volume: Volume, plan: AllSlicesPlan) -> Volume:
    """``volume`` on ``plan.grid``: the acquired slices in place, linearly resampled in-plane."""
    from ..transforms.resample import resample_to_grid

    return resample_to_grid(volume, plan.grid, order=1, extrapolate=True)


__all__ = ["AllSlicesPlan", "MAX_VOXELS", "acquired_slices_volume", "acquisition_plane", "plan_all_slices"]
