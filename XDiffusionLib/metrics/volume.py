"""Brain (foreground) volume in cubic millimetres."""

from __future__ import annotations

import numpy as np

from ..errors import XDiffusionError


def brain_volume_mm3(volume_array, spacing, threshold: float = 0.0) -> float:
    """Voxels strictly above ``threshold`` times the voxel volume (product of the 3 spacings, mm).

    threshold 0 counts the non-zero voxels of a skull-stripped (non-negative) volume, the paper's
    measure. ``spacing`` is the (i, j, k) voxel size of the array, e.g. ``Volume.spacing``.
    """
    array = np.asarray(volume_array)
    if array.ndim != 3:
        raise XDiffusionError(f"brain volume needs a 3D array, got shape {array.shape}")
    spacing = tuple(float(s) for s in np.ravel(spacing))
    if len(spacing) != 3 or not all(s > 0 for s in spacing):
        raise XDiffusionError(f"spacing must be three positive millimetre values, got {spacing}")
    return float(np.count_nonzero(array > threshold)) * float(np.prod(spacing))
