"""2D SSIM (Wang et al. 2004) per slice along each canonical plane, averaged over slices.

Window: Gaussian, sigma 1.5, 11 x 11 (scipy's gaussian_filter with truncate 3.5 has radius 5),
K1 = 0.01, K2 = 0.03, population (not sample-corrected) local statistics as in the original
paper. The SSIM map is kept only where the whole window lies inside the slice (Wang's "valid"
region): the 5-pixel border is dropped before averaging. Every slice counts, including empty
background slices (SSIM 1 when both are empty), as in the usual 3D-volume reporting.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from ..errors import XDiffusionError
from ..inputs import PLANE_AXIS
from ._checks import as_pair

SIGMA = 1.5
TRUNCATE = 3.5  # radius int(3.5 * 1.5 + 0.5) = 5 -> 11 x 11 window
RADIUS = int(TRUNCATE * SIGMA + 0.5)
K1, K2 = 0.01, 0.03


def _data_range(gt: np.ndarray, data_range: float | None) -> float:
    value = float(gt.max() - gt.min()) if data_range is None else float(data_range)
    if not value > 0.0:
        raise XDiffusionError(
            f"SSIM needs a positive data range, got {value:g}: the ground truth is constant, pass data_range"
        )
    return value


def ssim_slices(gt, pred, axis: int, data_range: float | None = None) -> np.ndarray:
    """Mean SSIM of each slice along ``axis`` (shape (n_slices,)). data_range default: gt.max() - gt.min()."""
    gt_arr, pred_arr = as_pair(gt, pred)
    if gt_arr.ndim != 3:
        raise XDiffusionError(f"SSIM per slice needs 3D volumes, got shape {gt_arr.shape}")
    if axis not in (0, 1, 2):
        raise XDiffusionError(f"slice axis must be 0, 1 or 2, got {axis!r}")
    L = _data_range(gt_arr, data_range)
    x = np.moveaxis(gt_arr, axis, 0)
    y = np.moveaxis(pred_arr, axis, 0)
    if min(x.shape[1:]) < 2 * RADIUS + 1:
        raise XDiffusionError(
            f"slices of shape {x.shape[1:]} are smaller than the {2 * RADIUS + 1}x{2 * RADIUS + 1} SSIM window"
        )
    c1, c2 = (K1 * L) ** 2, (K2 * L) ** 2

    def blur(a: np.ndarray) -> np.ndarray:
        # sigma 0 on the slice axis: scipy filters only the two in-plane axes.
        return gaussian_filter(a, sigma=(0.0, SIGMA, SIGMA), truncate=TRUNCATE, mode="reflect")

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x * mu_x
    var_y = blur(y * y) - mu_y * mu_y
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    valid = ssim_map[:, RADIUS:-RADIUS, RADIUS:-RADIUS]
    return valid.mean(axis=(1, 2))


def ssim_per_plane(gt, pred, data_range: float | None = None) -> dict[str, float]:
    """``{"axial", "coronal", "sagittal"}`` -> mean 2D SSIM over the slices of that canonical plane.

    Canonical axes: sagittal slices are constant axis 0, coronal axis 1, axial axis 2. One data
    range (default gt.max() - gt.min()) for every slice.
    """
    gt_arr, pred_arr = as_pair(gt, pred)
    L = _data_range(gt_arr, data_range)
    return {plane: float(ssim_slices(gt_arr, pred_arr, PLANE_AXIS[plane], L).mean()) for plane in ("axial", "coronal", "sagittal")}
