"""3D PSNR in the two conventions this project reports, under their own names.

- ``psnr_paper``: the X-Diffusion paper's eq. 4, ``10 log10(max(gt)^2 / MSE)`` over all voxels of
  the volume (or over the masked voxels, where max(gt) is then also taken), in the data's own
  intensity units. Depends on the ground truth's peak, so volumes with bright outliers score higher.
- ``psnr_unit``: TPDM's convention: both volumes clipped to [0, 1], data range 1,
  ``10 log10(1 / MSE)``. The caller maps intensities to [0, 1] first with ONE mapping fixed by the
  ground truth (never a per-volume min-max of the prediction, which hides intensity errors).

Both return dB as a float; identical volumes give ``inf``.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import XDiffusionError
from ._checks import as_mask, as_pair

PSNR_CONVENTIONS = ("psnr_paper", "psnr_unit")


def mse(gt, pred, mask=None) -> float:
    """Mean squared error over all voxels, or over the voxels where ``mask`` is true."""
    gt, pred = as_pair(gt, pred)
    mask = as_mask(mask, gt.shape)
    diff = (gt - pred) if mask is None else (gt[mask] - pred[mask])
    return float(np.mean(diff * diff))


def psnr_from_mse(mse_value: float, peak: float) -> float:
    """``10 log10(peak^2 / mse)``; ``inf`` for a zero error."""
    if mse_value <= 0.0:
        return math.inf
    return 10.0 * math.log10(peak * peak / mse_value)


def psnr_paper(gt, pred, mask=None) -> float:
    """Paper eq. 4: ``10 log10(max(gt)^2 / MSE)`` over the volume (or the masked voxels)."""
    gt_arr, pred_arr = as_pair(gt, pred)
    mask_arr = as_mask(mask, gt_arr.shape)
    peak = float(gt_arr.max() if mask_arr is None else gt_arr[mask_arr].max())
    if peak <= 0.0:
        raise XDiffusionError(f"psnr_paper needs a positive ground-truth maximum, got {peak:g}")
    return psnr_from_mse(mse(gt_arr, pred_arr, mask_arr), peak)


def psnr_unit(gt01, pred01, mask=None) -> float:
    """TPDM convention: both clipped to [0, 1], data range 1: ``10 log10(1 / MSE)``."""
    gt_arr, pred_arr = as_pair(gt01, pred01)
    return psnr_from_mse(mse(np.clip(gt_arr, 0.0, 1.0), np.clip(pred_arr, 0.0, 1.0), mask), 1.0)


def to_unit_range(volume, low: float, high: float) -> np.ndarray:
    """Map intensities linearly so that ``low`` -> 0 and ``high`` -> 1 (no clipping here)."""
    if not high > low:
        raise XDiffusionError(f"unit range needs high > low, got low={low:g}, high={high:g}")
    return (np.asarray(volume, dtype=np.float64) - low) / (high - low)


def psnr_all(gt, pred, mask=None, unit_range: tuple[float, float] | None = None) -> dict[str, float]:
    """Both conventions in one dict: ``{"psnr_paper": ..., "psnr_unit": ...}``.

    ``unit_range`` = (low, high) intensities mapped to 0 and 1 for ``psnr_unit`` (the same for both
    volumes); default: the ground truth's min and max.
    """
    gt_arr, pred_arr = as_pair(gt, pred)
    low, high = unit_range if unit_range is not None else (float(gt_arr.min()), float(gt_arr.max()))
    return {
        "psnr_paper": psnr_paper(gt_arr, pred_arr, mask),
        "psnr_unit": psnr_unit(to_unit_range(gt_arr, low, high), to_unit_range(pred_arr, low, high), mask),
    }


def random_pair_psnr(volumes, n_pairs: int | None = None, seed: int = 0) -> tuple[float, float]:
    """Reference floor (paper A.2): ``psnr_paper`` between two DIFFERENT volumes, (mean, std) in dB.

    Every ordered pair (i, j), i != j, is scored with volume i as ground truth (PSNR is not
    symmetric: it uses max of the ground truth); with ``n_pairs`` that many ordered pairs are
    drawn at random instead (seeded). std is the population standard deviation over the pairs.
    A reconstruction near this number has learnt nothing about the particular subject.
    """
    arrays = [np.asarray(v, dtype=np.float64) for v in volumes]
    if len(arrays) < 2:
        raise XDiffusionError(f"random_pair_psnr needs at least 2 volumes, got {len(arrays)}")
    for index, array in enumerate(arrays[1:], start=1):
        if array.shape != arrays[0].shape:
            raise XDiffusionError(f"volume {index} has shape {array.shape}, volume 0 has {arrays[0].shape}: resample to one grid first")
    n = len(arrays)
    if n_pairs is None:
        pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    else:
        if int(n_pairs) < 1:
            raise XDiffusionError(f"n_pairs must be positive, got {n_pairs}")
        rng = np.random.default_rng(seed)
        pairs = []
        for _ in range(int(n_pairs)):
            i, j = rng.choice(n, size=2, replace=False)
            pairs.append((int(i), int(j)))
    scores = np.array([psnr_paper(arrays[i], arrays[j]) for i, j in pairs])
    return float(scores.mean()), float(scores.std())
