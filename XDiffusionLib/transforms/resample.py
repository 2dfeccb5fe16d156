"""Resampling between physical grids (SimpleITK): to isotropic spacing and back onto any grid.

Grids are compared in physical space, so source and target may differ in spacing, origin,
extent and direction. ITK counts a point within half a voxel of the edge voxels as inside.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..io.images import image_to_array
from ..io.volume import Grid, Volume
from ..io.writers import volume_to_image

_INTERPOLATORS = {0: sitk.sitkNearestNeighbor, 1: sitk.sitkLinear, 3: sitk.sitkBSpline}


def isotropic_grid(grid: Grid, spacing: float | None = None) -> Grid:
    """A grid with cubic voxels of ``spacing`` mm (default: the finest spacing of ``grid``) that
    covers the same box (same centre and direction; each extent within half a new voxel)."""
    new_spacing = float(min(grid.spacing) if spacing is None else spacing)
    if not new_spacing > 0:
        raise ValueError(f"isotropic spacing must be positive, got {spacing}")
    old_shape = np.asarray(grid.shape, dtype=np.float64)
    old_spacing = np.asarray(grid.spacing, dtype=np.float64)
    new_shape = np.maximum(1, np.rint(old_shape * old_spacing / new_spacing)).astype(int)
    # Keep the centre: the centre voxel position, measured along each axis from voxel 0.
    shift = old_spacing * (old_shape - 1) / 2 - new_spacing * (new_shape - 1) / 2
    origin = np.asarray(grid.origin) + grid.direction @ shift
    return Grid(tuple(int(n) for n in new_shape), (new_spacing,) * 3, tuple(origin), grid.direction)


def resample_to_grid(
    volume: Volume, grid: Grid, order: int = 1, fill: float = 0.0, extrapolate: bool = False
) -> Volume:
    """``volume`` sampled at the voxel centres of ``grid`` (exactly that grid in the result).

    ``order``: 0 nearest (keeps the array's type, for labels), 1 linear (default), 3 B-spline.
    Points outside ``volume`` get ``fill``, or the nearest edge value with ``extrapolate``.
    Linear and B-spline results are float32.
    """
    if order not in _INTERPOLATORS:
        raise ValueError(f"interpolation order {order} is not supported: use 0, 1 or 3")
    dtype = None if order == 0 else np.float32
    image = volume_to_image(volume, dtype)
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(n) for n in grid.shape])
    resampler.SetOutputSpacing(grid.spacing)
    resampler.SetOutputOrigin(grid.origin)
    resampler.SetOutputDirection(tuple(float(v) for v in np.asarray(grid.direction).reshape(-1)))
    resampler.SetTransform(sitk.Transform())
    resampler.SetInterpolator(_INTERPOLATORS[order])
    resampler.SetDefaultPixelValue(float(fill))
    resampler.SetUseNearestNeighborExtrapolator(bool(extrapolate))
    resampler.SetOutputPixelType(image.GetPixelID())
    array = image_to_array(resampler.Execute(image), None)
    return Volume(array, grid)


def resample_isotropic(volume: Volume, spacing: float | None = None, order: int = 1) -> Volume:
    """``volume`` on ``isotropic_grid(volume.grid, spacing)``; edge voxels extend to the box edge.

    Undo with ``resample_to_grid(result, volume.grid, order)``.
    """
    return resample_to_grid(volume, isotropic_grid(volume.grid, spacing), order, extrapolate=True)
