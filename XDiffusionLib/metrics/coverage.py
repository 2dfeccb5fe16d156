"""Does an uncertainty interval hold what it says? Coverage and width-error correlation.

The voxels scored are the *non-input voxels inside the head* (``scored_mask``): the ground truth's
head (``baselines.foreground.head_mask``: the foreground by the protocol's one rule, above 10% of
the 1st..99th percentile range, closed by 2 voxels and with its enclosed holes filled: ventricles
and sulcal CSF are dark but inside the head), minus the input slices (known exactly: a zero-width interval
trivially holds there). Background voxels are left out because nearly every method is exact on an
empty background and would inflate coverage towards 100%.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def scored_mask(head: np.ndarray, axis: int, indices: Sequence[int]) -> np.ndarray:
    """Non-input voxels inside ``head`` (``baselines.foreground.head_mask`` of the ground truth)."""
    mask = np.array(head, dtype=bool, copy=True)
    index = [slice(None)] * 3
    index[axis] = [int(i) for i in indices]
    mask[tuple(index)] = False
    return mask


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (ties get average ranks); nan when either is constant."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.size < 2:
        return float("nan")
    from scipy.stats import rankdata  # scipy.stats is slow to import: only where a rank correlation is asked for

    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def interval_coverage(truth: np.ndarray, prediction: np.ndarray, halfwidth: Callable[[float], np.ndarray],
                      mask: np.ndarray, levels: Sequence[float], level: float, max_corr_voxels: int = 200_000,
                      seed: int = 0) -> dict[str, float]:
    """Coverage of prediction +- halfwidth(a) over ``mask`` at each of ``levels`` (keys
    ``coverage_<a>``), and at the stated ``level``: ``coverage``, ``mean_halfwidth``,
    ``median_abs_error`` and ``width_error_spearman`` (rank correlation of the half-width with the
    absolute error, on a seeded random subset of at most ``max_corr_voxels`` voxels)."""
    mask = np.asarray(mask, dtype=bool)
    error = np.abs(np.asarray(truth, np.float64)[mask] - np.asarray(prediction, np.float64)[mask])
    out: dict[str, float] = {"voxels": float(error.size)}
    for a in levels:
        width = np.asarray(halfwidth(a))[mask]
        out[f"coverage_{a:g}"] = float(np.mean(error <= width)) if error.size else float("nan")
    width = np.asarray(halfwidth(level))[mask].astype(np.float64)
    out["coverage"] = out[f"coverage_{level:g}"] if f"coverage_{level:g}" in out else float(np.mean(error <= width))
    out["mean_halfwidth"] = float(width.mean()) if width.size else float("nan")
    out["median_abs_error"] = float(np.median(error)) if error.size else float("nan")
    if error.size > max_corr_voxels:
        pick = np.random.default_rng(seed).choice(error.size, max_corr_voxels, replace=False)
        out["width_error_spearman"] = rank_correlation(width[pick], error[pick])
    else:
        out["width_error_spearman"] = rank_correlation(width, error)
    return out


def result_coverage(truth: np.ndarray, prediction: np.ndarray, interval, mask: np.ndarray,
                    level: float) -> dict[str, float]:
    """``interval_coverage`` over ``mask`` (``scored_mask``) for an interval object with
    ``halfwidth(level)`` and ``levels`` (``uncertainty.intervals.IntervalEstimate``), with ``level``."""
    scores = interval_coverage(truth, prediction, interval.halfwidth, mask, interval.levels, level)
    # The scan's own rescaling (issue 24; 1: the synthetic table alone), reported beside its coverage.
    return {"level": float(level), **scores, "scan_scale": float(getattr(interval, "scan_scale", 1.0))}


__all__ = ["interval_coverage", "rank_correlation", "result_coverage", "scored_mask"]
