"""2D SSIM (Wang et al. 2004) per slice along each canonical plane, averaged over slices.

Window: Gaussian, sigma 1.5, 11 x 11 (scipy's gaussian_filter with truncate 3.5 has radius 5),
K1 = 0.01, K2 = 0.03, population (not sample-corrected) local statistics as in the original
paper. The SSIM map is kept only where the whole window lies inside the slice (Wang's "valid"
region): the 5-pixel border is dropped before averaging. Every slice counts, including empty
background slices (SSIM 1 when both are empty), as in the usual 3D-volume reporting.

Head SSIM (``mask``): the same SSIM map, averaged over the masked voxels of each slice only (the
ground truth's head, from the caller: the metrics layer does not own the head rule), so that an
easy, exact background does not hide errors inside the head. A slice with no masked voxel in the
valid region has no score (NaN per slice) and is left out of the mean over slices.
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


def _ssim_map(gt_arr: np.ndarray, pred_arr: np.ndarray, axis: int, L: float) -> np.ndarray:
    """SSIM map over the valid region of every slice along ``axis``, slices first."""
    if gt_arr.ndim != 3:
        raise XDiffusionError(f"SSIM per slice needs 3D volumes, got shape {gt_arr.shape}")
    if axis not in (0, 1, 2):
        raise XDiffusionError(f"slice axis must be 0, 1 or 2, got {axis!r}")
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
    return ssim_map[:, RADIUS:-RADIUS, RADIUS:-RADIUS]


def _valid_mask(mask: np.ndarray, axis: int) -> np.ndarray:
    """``mask`` cut to the same valid region as ``_ssim_map``, slices first."""
    return np.moveaxis(mask, axis, 0)[:, RADIUS:-RADIUS, RADIUS:-RADIUS]


def _slice_means(ssim_map: np.ndarray, valid_mask: np.ndarray | None) -> np.ndarray:
    if valid_mask is None:
        return ssim_map.mean(axis=(1, 2))
    counts = valid_mask.sum(axis=(1, 2))
    sums = np.where(valid_mask, ssim_map, 0.0).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _checked_mask(mask, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise XDiffusionError(f"mask shape {mask.shape} differs from volume shape {shape}")
    return mask.astype(bool, copy=False)


def ssim_slices(gt, pred, axis: int, data_range: float | None = None, mask=None) -> np.ndarray:
    """Mean SSIM of each slice along ``axis`` (shape (n_slices,)). data_range default: gt.max() - gt.min().

    With ``mask`` (same shape as the volumes), each slice's mean is over its masked voxels only,
    NaN for a slice with none in the valid region.
    """
    gt_arr, pred_arr = as_pair(gt, pred)
    ssim_map = _ssim_map(gt_arr, pred_arr, axis, _data_range(gt_arr, data_range))
    return _slice_means(ssim_map, None if mask is None else _valid_mask(_checked_mask(mask, gt_arr.shape), axis))


def ssim_per_plane(gt, pred, data_range: float | None = None, mask=None) -> dict[str, float]:
    """``{"axial", "coronal", "sagittal"}`` -> mean 2D SSIM over the slices of that canonical plane.

    Canonical axes: sagittal slices are constant axis 0, coronal axis 1, axial axis 2. One data
    range (default gt.max() - gt.min()) for every slice. With ``mask`` (the ground truth's head),
    the result also holds ``"head_axial"``, ``"head_coronal"`` and ``"head_sagittal"``: the head
    SSIM (module docstring), the mean over the slices with masked voxels (NaN when none has any),
    from the same SSIM maps (each map is computed once: it is the expensive part).
    """
    gt_arr, pred_arr = as_pair(gt, pred)
    L = _data_range(gt_arr, data_range)
    head = None if mask is None else _checked_mask(mask, gt_arr.shape)
    result: dict[str, float] = {}
    for plane in ("axial", "coronal", "sagittal"):
        axis = PLANE_AXIS[plane]
        ssim_map = _ssim_map(gt_arr, pred_arr, axis, L)
        result[plane] = float(ssim_map.mean())  # every slice has the same number of voxels
        if head is not None:
            per_slice = _slice_means(ssim_map, _valid_mask(head, axis))
            scored = per_slice[np.isfinite(per_slice)]
            result[f"head_{plane}"] = float(scored.mean()) if scored.size else float("nan")
    return result
