"""The one foreground rule shared by the template baseline and the evaluation protocol.

Foreground = voxels above 10% of the robust intensity range (1st to 99th percentile). Percentiles
rather than min/max so that a few hot voxels (vessels, artefacts) or an offset background do not
move the threshold; 10% sits well below any tissue in T1/T2/FLAIR and above scanner noise.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

FOREGROUND_FRACTION = 0.1
_LOW_PERCENTILE, _HIGH_PERCENTILE = 1.0, 99.0


def foreground_threshold(values: np.ndarray) -> float:
    """Intensity above which a voxel counts as head/foreground."""
    values = np.asarray(values)
    if values.size > 2_000_000:  # a strided sample gives the same percentiles at a fraction of the cost
        values = values.reshape(-1)[:: values.size // 1_000_000]
    low, high = np.percentile(values, [_LOW_PERCENTILE, _HIGH_PERCENTILE])
    return float(low + FOREGROUND_FRACTION * (high - low))


def foreground_mask(values: np.ndarray) -> np.ndarray:
    """Boolean mask of foreground voxels (all False when the image is constant)."""
    values = np.asarray(values)
    threshold = foreground_threshold(values)
    return values > threshold


def head_mask(values: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """The head: the foreground closed by 2 voxels with its enclosed holes filled (ventricles and
    sulcal CSF are dark but inside the head). Scores of uncertainty intervals count these voxels
    (``metrics.coverage``): on the empty background nearly every method is exact. A 2D slice works
    too; ``threshold``: the foreground threshold of the whole scan (default: of ``values``)."""
    values = np.asarray(values)
    mask = values > (foreground_threshold(values) if threshold is None else float(threshold))
    if not mask.any():
        return mask
    mask = ndimage.binary_closing(mask, structure=ndimage.generate_binary_structure(values.ndim, 1), iterations=2,
                                  border_value=0)
    return ndimage.binary_fill_holes(mask)


def bounding_box(mask: np.ndarray, axis: int) -> tuple[int, int] | None:
    """First and last index along ``axis`` where ``mask`` has any True voxel; None when empty."""
    other = tuple(a for a in range(mask.ndim) if a != axis)
    profile = mask.any(axis=other) if other else mask
    hits = np.flatnonzero(profile)
    if hits.size == 0:
        return None
    return int(hits[0]), int(hits[-1])
