"""A thick-slice scan's finer grid and its slice profile: where the acquired slices lie, what they average.

A clinical series of, say, 0.8x0.8x6.5 mm axial voxels holds every slice that was acquired; each
is the average of the head over a slab ``thickness`` mm thick (the slice profile, a box here),
``slice spacing`` mm apart (the gap is spacing - thickness; negative: overlapping slabs).

``plan_thick_slices`` builds the finer grid: the input's own voxel grid (same in-plane grid, same
origin, same direction), refined along the slice axis by an integer factor N, so acquired slice i
is fine slice i*N (in the file's voxel order) and nothing in-plane is resampled. Every way of asking
(a factor, a spacing that divides the slice spacing, the default: the in-plane spacing rounded to
the nearest divisor) comes down to that factor.

``slab_matrix`` is the slice profile on that grid: row i holds the share of each fine slice in the
slab of acquired slice i. ``enforce_slab_averages`` makes a fine volume data-consistent: it adds
the smallest smooth correction (piecewise linear between the acquired slices' centres, so no
staircase along the slice axis) after which every slab's average equals its acquired slice.

numpy only: the Slicer panel plans a run with it before torch exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import XDiffusionError
from ..inputs import PLANE_AXIS
from ..io.volume import Grid, Volume
from .orientation import Reorientation

# Keeps a typo (a factor of 500) from asking for a grid that cannot fit in memory: 512^3 float32 voxels.
MAX_VOXELS = 512**3
_TOLERANCE = 1e-3  # relative: a spacing within 0.1% of slice spacing / n counts as that


@dataclass(frozen=True)
class ThickSlicePlan:
    """The finer grid (the input's orientation) and how the acquired slices sit in it."""

    source: Grid  # the acquired grid
    grid: Grid  # the finer grid: ``source`` with ``axis`` refined ``factor`` times
    axis: int  # the voxel axis across the acquired slices (in the file's order)
    plane: str  # the acquisition plane (canonical RAS+ name)
    factor: int  # fine slices per slice spacing: acquired slice i is fine slice i * factor
    slice_spacing: float  # mm between acquired slices
    thickness: float  # mm each acquired slice averages over (the slab)

    @property
    def spacing(self) -> float:
        """The fine grid's spacing along the slice axis (mm)."""
        return self.slice_spacing / self.factor

    @property
    def gap(self) -> float:
        return self.slice_spacing - self.thickness

    @property
    def acquired(self) -> int:
        return self.source.shape[self.axis]

    @property
    def fine_indices(self) -> tuple[int, ...]:
        """The acquired slices' indices along ``axis`` of ``grid`` (the file's voxel order)."""
        return tuple(i * self.factor for i in range(self.acquired))

    @property
    def indices(self) -> tuple[int, ...]:
        """The same slices as canonical RAS+ indices of ``plane`` (what the reconstructor takes)."""
        reorientation = Reorientation.for_grid(self.grid)
        return tuple(sorted(reorientation.canonical_index(self.axis, i)[1] for i in self.fine_indices))

    def describe(self) -> str:
        shape = "x".join(str(n) for n in self.grid.shape)
        return (f"all {self.acquired} acquired {self.plane} slices ({self.slice_spacing:g} mm apart, "
                f"{self.thickness:g} mm thick) onto {self.spacing:.4g} mm slices ({shape} voxels)")


def slice_axis(grid: Grid) -> int:
    """The voxel axis with the coarsest spacing; an isotropic grid has none (one line)."""
    spacing = np.asarray(grid.spacing, dtype=np.float64)
    axis = int(np.argmax(spacing))
    in_plane = float(np.max(np.delete(spacing, axis)))
    if spacing[axis] <= in_plane * 1.01:  # within 1%: not a thick-slice scan
        raise XDiffusionError(f"the volume's voxels are isotropic ({'x'.join(f'{s:g}' for s in spacing)} mm): "
                              "there are no thick slices to refine; pick input slices instead")
    return axis


def is_thick_slice(grid: Grid) -> bool:
    """Whether ``grid`` has one axis coarser than the others (what a front end offers the workflow for)."""
    try:
        slice_axis(grid)
    except XDiffusionError:
        return False
    return grid.shape[int(np.argmax(grid.spacing))] >= 2


def acquisition_plane(grid: Grid) -> str:
    """The canonical plane of the acquired slices (``slice_axis``)."""
    canonical_axis = Reorientation.for_grid(grid).permutation.index(slice_axis(grid))
    return next(plane for plane, axis in PLANE_AXIS.items() if axis == canonical_axis)


def _positive(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise XDiffusionError(f"{what} must be a positive number of millimetres, got {value!r}")
    return float(value)


def _factor(slice_spacing: float, in_plane: float, plane: str, factor, spacing) -> int:
    if factor is not None and spacing is not None:
        raise XDiffusionError("give a slice factor or a spacing, not both")
    if factor is not None:
        if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 2:
            raise XDiffusionError(f"slice factor must be a whole number of at least 2, got {factor!r}")
        return int(factor)
    if spacing is None:  # the default: as close to the in-plane spacing as a divisor allows
        return max(2, int(round(slice_spacing / in_plane)))
    spacing = _positive(spacing, "the spacing")
    n = int(round(slice_spacing / spacing))
    if n < 2:
        raise XDiffusionError(f"spacing {spacing:g} mm is not finer than the {slice_spacing:g} mm between the "
                              f"acquired {plane} slices: choose at most {slice_spacing / 2:.4g} mm")
    if abs(slice_spacing / n - spacing) > _TOLERANCE * spacing:
        below, above = math.floor(slice_spacing / spacing), math.ceil(slice_spacing / spacing)
        choices = " or ".join(f"{slice_spacing / k:.4g}" for k in sorted({below, above}) if k >= 2)
        raise XDiffusionError(f"spacing {spacing:g} mm does not divide the {slice_spacing:g} mm between the "
                              f"acquired {plane} slices: choose {choices} mm")
    return n


def plan_thick_slices(grid: Grid, slice_factor: int | None = None, spacing: float | None = None,
                      thickness: float | None = None) -> ThickSlicePlan:
    """The finer grid for the scan on ``grid`` (module docstring); every bad value is one line.

    ``slice_factor`` N or ``spacing`` mm (dividing the slice spacing; default: the in-plane
    spacing, rounded to the nearest divisor); ``thickness``: the slab each acquired slice averages
    (default: the slice spacing, no gap). Any number of acquired slices: a scan longer than the model
    takes goes through in windows (``sampling.thick_slices``).
    """
    axis = slice_axis(grid)
    plane = acquisition_plane(grid)
    slice_spacing = float(grid.spacing[axis])
    in_plane = float(min(s for a, s in enumerate(grid.spacing) if a != axis))
    depth = int(grid.shape[axis])
    if depth < 2:
        raise XDiffusionError(f"the volume has a single {plane} slice: nothing lies between acquired slices")
    factor = _factor(slice_spacing, in_plane, plane, slice_factor, spacing)
    thickness = slice_spacing if thickness is None else _positive(thickness, "the slice thickness")
    if thickness > 2 * slice_spacing:  # slabs overlapping more than half: the averages barely constrain slices
        raise XDiffusionError(f"slice thickness {thickness:g} mm is more than twice the {slice_spacing:g} mm "
                              "between the slices: check the value")
    shape = list(grid.shape)
    shape[axis] = (depth - 1) * factor + 1
    voxels = int(np.prod(shape, dtype=np.int64))
    if voxels > MAX_VOXELS:
        raise XDiffusionError(f"slice factor {factor} would give {'x'.join(str(n) for n in shape)} voxels "
                              f"(over {MAX_VOXELS // 2**20} million): choose a smaller factor or a larger spacing")
    fine_spacing = list(grid.spacing)
    fine_spacing[axis] = slice_spacing / factor
    fine = Grid(tuple(shape), tuple(fine_spacing), grid.origin, grid.direction)
    return ThickSlicePlan(grid, fine, axis, plane, factor, slice_spacing, thickness)


def place_acquired(volume: Volume, plan: ThickSlicePlan) -> Volume:
    """A volume on ``plan.grid`` with acquired slice i at fine slice i * factor (the rest 0: never read)."""
    if not volume.grid.same_geometry(plan.source, tol=1e-4):
        raise ValueError("the volume is not on the plan's acquired grid")
    fine = np.zeros(plan.grid.shape, dtype=np.float32)
    target = [slice(None)] * 3
    target[plan.axis] = slice(0, None, plan.factor)
    fine[tuple(target)] = volume.array
    return Volume(fine, plan.grid)


def as_acquired(volume: Volume, plan: ThickSlicePlan) -> Volume:
    """The acquired ``volume`` on ``plan.grid`` as it was acquired: every fine slice shows the acquired
    slice whose centre is nearest (halfway: the later one), nothing interpolated between slices. What a
    viewer shows beside a fine-grid result, on the same slices (a staircase along the slice axis)."""
    if not volume.grid.same_geometry(plan.source, tol=1e-4):
        raise ValueError("the volume is not on the plan's acquired grid")
    nearest = np.floor(np.arange(plan.grid.shape[plan.axis]) / plan.factor + 0.5).astype(np.intp)
    nearest = np.clip(nearest, 0, plan.acquired - 1)
    return Volume(np.take(np.asarray(volume.array, dtype=np.float32), nearest, axis=plan.axis), plan.grid)


def slab_matrix(plan: ThickSlicePlan) -> np.ndarray:
    """(acquired, fine) float64: row i = each fine slice's share of acquired slice i's slab (sums to 1).

    A box profile ``thickness`` wide centred on fine slice i * factor; each fine slice covers half a
    fine step either side. The part of an end slab beyond the grid counts as the end slice (the
    grid stops at the outermost acquired slices' centres).
    """
    depth = plan.grid.shape[plan.axis]
    half = plan.thickness / plan.spacing / 2  # half the slab, in fine steps
    lower = np.arange(depth) - 0.5
    upper = np.arange(depth) + 0.5
    lower[0], upper[-1] = -np.inf, np.inf  # the end slices stand in for what lies beyond
    matrix = np.zeros((plan.acquired, depth))
    for i, centre in enumerate(plan.fine_indices):
        a, b = centre - half, centre + half
        matrix[i] = np.clip(np.minimum(upper, b) - np.maximum(lower, a), 0.0, None)
        if matrix[i].sum() <= 0:  # a vanishing thickness: the thin slice itself
            matrix[i, centre] = 1.0
    return matrix / matrix.sum(axis=1, keepdims=True)


def hat_matrix(plan: ThickSlicePlan) -> np.ndarray:
    """(fine, acquired): linear interpolation from values at the acquired slices' centres to every fine slice."""
    depth = plan.grid.shape[plan.axis]
    position = np.arange(depth) / plan.factor  # in acquired-slice units
    centres = np.arange(plan.acquired)
    return np.clip(1.0 - np.abs(position[:, None] - centres[None, :]), 0.0, None)


def slab_average(array: np.ndarray, plan: ThickSlicePlan) -> np.ndarray:
    """A fine-grid array averaged over each acquired slab: an array on ``plan.source``'s grid."""
    weights = slab_matrix(plan).astype(np.float32)
    moved = np.moveaxis(np.asarray(array, dtype=np.float32), plan.axis, -1)
    return np.moveaxis(moved @ weights.T, -1, plan.axis)


def enforce_slab_averages(array: np.ndarray, acquired: np.ndarray, plan: ThickSlicePlan) -> np.ndarray:
    """``array`` (fine grid) plus the smooth correction after which each slab averages to ``acquired``.

    The correction is piecewise linear between the acquired slices' centres (``hat_matrix``), with
    knot values c solving (slab_matrix @ hat_matrix) c = acquired - slab average: one small
    (acquired x acquired) system for every in-plane pixel at once. A constant offset per slab would
    put back the staircase the fine grid is meant to remove.
    """
    slabs, hats = slab_matrix(plan), hat_matrix(plan)
    # Well conditioned for slabs up to twice the spacing (plan_thick_slices' limit): a plain inverse.
    spread = (hats @ np.linalg.inv(slabs @ hats)).astype(np.float32)  # (fine, acquired)
    moved = np.moveaxis(np.asarray(array, dtype=np.float32), plan.axis, -1)
    target = np.moveaxis(np.asarray(acquired, dtype=np.float32), plan.axis, -1)
    residual = target - moved @ slabs.astype(np.float32).T
    return np.moveaxis(moved + residual @ spread.T, -1, plan.axis)


__all__ = ["MAX_VOXELS", "ThickSlicePlan", "acquisition_plane", "as_acquired", "enforce_slab_averages",
           "hat_matrix", "is_thick_slice", "place_acquired", "plan_thick_slices", "slab_average", "slab_matrix", "slice_axis"]
