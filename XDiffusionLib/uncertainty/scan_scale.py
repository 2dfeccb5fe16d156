"""Per-scan calibration: leave one input slice out, see how wrong the anchor is there, rescale the interval.

Why. The table (``uncertainty.intervals``) is calibrated on synthetic subjects; a real scan with
rougher texture and more noise than they have gets an interval that is too narrow (issue 24). With
K >= 2 input slices the scan holds evidence of its own: each input slice j can be predicted from
the other K - 1 inputs and compared with the real slice.

What (fold j of a scan with K inputs, ``baselines.leave_one_out`` makes it):
- the estimate of slice j is the anchor of the other inputs: interpolation from them blended with
  the head prior already fitted to all K inputs (reused, not refitted: see below), at the distance
  d_j from slice j to the nearest remaining input;
- on the real slice's head voxels, u = |real - estimate| / s(x), with s(x) the table's scale of
  the scan's K range evaluated on the fold's own features (no model runs: view spread 0);
- the fold statistic m_j is the ``FOLD_LEVEL`` quantile of u over those voxels;
- the reference ``ScanReference`` says what m_j is on synthetic subjects at that K and distance:
  log m = a[K range] + b[K range] log d, least squares on the calibration's *fit* subjects;
- the scan scale is lambda = exp(``SHRINK`` * median_j log(m_j / m_ref(K, d_j))), bounded to
  ``SCALE_LIMITS``: 1 when this scan's held-out slices are as predictable as synthetic ones, and
  sqrt(2) (``SHRINK`` 0.5) when its errors are twice as large. The median over folds keeps one odd
  slice (the top of the head, a motion-hit slice) from setting it. Why half-way: the anchor's
  error at K - 1 inputs is only a proxy of the model's at K, and a few folds are noisy; on the 6
  synthetic calibration subjects of the shipped table (K >= 2, 30 reconstructions) the full ratio
  spread their coverage more (mean |coverage - 90%| 5.6 points) than no rescaling (4.0), half-way
  not (4.0), and half-way still follows a real scan's shift (chosen among 0, 0.5, 1 and a floor at
  1 on those synthetic subjects only, before any real scan was scored with it).

The interval becomes reconstruction +- lambda * q(K, d, a) * s(x).

What is guaranteed. lambda depends on the input slices only, never on the voxels being predicted,
so it is one more feature of the inputs, like s(x). The calibration script computes lambda for
every calibration subject exactly as at inference and takes the conformal quantiles of the score
|truth - reconstruction| / (lambda s(x) g(d)) (``intervals``), with lambda, s and the distance
profile g all fitted on the fit subjects only. Split conformal then gives, for a new subject
exchangeable with the calibration subjects, coverage >= a of its non-input head voxels in
expectation over subjects, per K range (Vovk et al.; a normalised score keeps the guarantee for any
normaliser fixed before the calibration subjects are seen). The guarantee is marginal over the
distances within a K range: the smooth profile g, not a per-bin quantile, carries the dependence on
distance (``intervals`` explains why: no bands at bin edges), so one distance band can be covered a
little more or less than another.

What is assumed (and is not guaranteed). A real scan is not exchangeable with synthetic subjects.
The rescaling assumes that the ratio real/synthetic error of the anchor at the held-out input
slices (distance d_j) carries over to the model's error at the non-input voxels (distances 0 to
d_j / 2 between inputs, more beyond the outermost): one factor for every distance and every voxel
of the scan. Texture and noise that the synthetic subjects lack inflate both alike; an error the
anchor does not make but the model does (or the reverse) is not seen. With K = 1 there is no fold:
lambda = 1 and the interval is the synthetic table's alone, and the metadata say so
(``UncertaintyInfo.scan_folds`` = 0). Coverage on real scans is measured, not promised
(``xdiffusion evaluate``).

Reusing the prior. Refitting the head prior for each fold would cost seconds each; the folds reuse
the one fit to all K inputs, so the prior has seen slice j. It is a low-dimensional fit (a placement,
a B-spline on a 40 mm mesh bounded to 8 mm, a few contrast and bias-field numbers) against tens of
thousands of voxels, so it cannot follow slice j's texture or noise, which is what the scale is
about; its slight optimism at slice j is the same on calibration subjects (the reference and the
conformal quantiles are computed with the same reuse), so it moves lambda on both alike and the
guarantee above is untouched.

Numpy only (layer of ``uncertainty``); the folds are made in ``baselines.leave_one_out``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..errors import XDiffusionError
from .intervals import DEFAULT_LEVEL, K_EDGES, MIN_SCALE, k_range

FOLD_LEVEL = DEFAULT_LEVEL  # the fold statistic aims at the interval's own tail
SCALE_LIMITS = (0.25, 4.0)  # lambda outside this range would mean a broken fold, not a scan
SHRINK = 0.5  # lambda follows the fold ratio half-way in log scale (module docstring)
MIN_FOLD_VOXELS = 50  # a held-out slice with fewer head voxels says nothing (the top of the skull)


@dataclass(frozen=True)
class HeldOutFold:
    """One input slice predicted by the anchor from the other inputs, at its head voxels."""

    index: int  # the held-out slice along the input axis
    distance_mm: float  # from it to the nearest remaining input
    abs_error: np.ndarray  # (n,) |real - estimate| in units of the inputs' range
    design: np.ndarray  # (n, 1 + features) [1, features] of the estimate (``IntervalFeatures.stack``)


def fold_statistic(fold: HeldOutFold, coefficients: np.ndarray) -> float:
    """m_j: the ``FOLD_LEVEL`` quantile of |error| / s(x) over the fold's voxels (NaN if too few)."""
    if fold.abs_error.size < MIN_FOLD_VOXELS:
        return float("nan")
    scale = np.maximum(np.asarray(fold.design, np.float64) @ np.asarray(coefficients, np.float64), MIN_SCALE)
    return float(np.quantile(np.asarray(fold.abs_error, np.float64) / scale, FOLD_LEVEL))


@dataclass(frozen=True)
class ScanReference:
    """The fold statistic on synthetic subjects: log m = intercept[r] + slope[r] log(distance mm),
    per K range r of the scan (the folds themselves have K - 1 inputs); ``folds[r]`` behind it
    (0: borrowed from the nearest K range that has folds)."""

    intercept: np.ndarray  # (n_k,)
    slope: np.ndarray  # (n_k,)
    folds: np.ndarray  # (n_k,)

    def expected(self, k: int, distance_mm: float) -> float:
        r = k_range(k)
        return float(math.exp(self.intercept[r] + self.slope[r] * math.log(max(float(distance_mm), 1e-3))))

    def to_dict(self) -> dict[str, Any]:
        return {"intercept": np.round(self.intercept, 6).tolist(), "slope": np.round(self.slope, 6).tolist(),
                "folds": self.folds.astype(int).tolist(), "level": FOLD_LEVEL}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ScanReference":
        """Raises ValueError/KeyError/TypeError on a malformed entry (the table reader names the file)."""
        intercept = np.asarray(data["intercept"], dtype=np.float64)
        slope = np.asarray(data["slope"], dtype=np.float64)
        folds = np.asarray(data["folds"], dtype=np.int64)
        if not intercept.shape == slope.shape == folds.shape == (len(K_EDGES),):
            raise ValueError("scan reference shapes do not match the K ranges")
        if not (np.all(np.isfinite(intercept)) and np.all(np.isfinite(slope))):
            raise ValueError("scan reference values must be finite")
        if float(data.get("level", FOLD_LEVEL)) != FOLD_LEVEL:
            raise ValueError(f"scan reference made at level {data.get('level')}, this code uses {FOLD_LEVEL}")
        return cls(intercept, slope, folds)


def fit_scan_reference(k: np.ndarray, distance_mm: np.ndarray, statistic: np.ndarray) -> ScanReference:
    """Least squares of log m on [1, log d] per K range of ``k`` (the folds' scan K); a range with
    fewer than 3 folds or one distance only gets slope 0; the slope is kept >= 0 (an error that
    shrinks with distance is noise of few folds)."""
    k, distance, statistic = (np.asarray(v, dtype=np.float64) for v in (k, distance_mm, statistic))
    usable = np.isfinite(statistic) & (statistic > 0) & (k >= 2)
    ranges = np.array([k_range(int(v)) for v in k[usable]], dtype=int)
    log_d, log_m = np.log(np.maximum(distance[usable], 1e-3)), np.log(statistic[usable])
    n_k = len(K_EDGES)
    intercept, slope, folds = np.zeros(n_k), np.zeros(n_k), np.zeros(n_k, dtype=np.int64)
    for r in range(n_k):
        chosen = ranges == r
        if not chosen.any():
            continue
        folds[r] = int(chosen.sum())
        x, y = log_d[chosen], log_m[chosen]
        b = 0.0
        if chosen.sum() >= 3 and np.ptp(x) > 1e-6:
            b = max(0.0, float(np.polyfit(x, y, 1)[0]))
        slope[r], intercept[r] = b, float(np.mean(y - b * x))
    filled = np.flatnonzero(folds)
    if not filled.size:
        raise XDiffusionError("no leave-one-out folds to fit the scan reference (every K was 1?)")
    for r in range(n_k):
        if folds[r] == 0:
            source = filled[np.argmin(np.abs(filled - r))]
            intercept[r], slope[r] = intercept[source], slope[source]
    return ScanReference(intercept, slope, folds)


@dataclass(frozen=True)
class ScanScale:
    """lambda for one scan and how many folds gave it (0: none, lambda = 1, synthetic table only)."""

    value: float = 1.0
    folds: int = 0


SYNTHETIC_ONLY = ScanScale()


def scan_reference_of(data: Mapping[str, Any] | None, source: str = "calibration table") -> ScanReference | None:
    """The reference stored in a table (``IntervalCalibration.scan_reference``); None for a table
    made before issue 24. A malformed entry: XDiffusionError naming ``source``."""
    if data is None:
        return None
    try:
        return ScanReference.from_dict(data)
    except (KeyError, TypeError, ValueError) as error:
        raise XDiffusionError(f"{source}: malformed scan reference ({error}); regenerate it with "
                              f"scripts/calibrate_uncertainty.py") from None


def scan_scale(reference: ScanReference | None, k: int, folds: list[HeldOutFold],
               coefficients: np.ndarray) -> ScanScale:
    """lambda from the scan's folds (module docstring); ``SYNTHETIC_ONLY`` for K = 1, without a
    reference (a table made before issue 24) or without a usable fold. ``coefficients``: the
    table's scale coefficients of the scan's K range."""
    if reference is None or int(k) < 2:
        return SYNTHETIC_ONLY
    logs = []
    for fold in folds:
        m = fold_statistic(fold, coefficients)
        if math.isfinite(m) and m > 0:
            logs.append(math.log(m / reference.expected(k, fold.distance_mm)))
    if not logs:
        return SYNTHETIC_ONLY
    value = float(np.clip(math.exp(SHRINK * float(np.median(logs))), *SCALE_LIMITS))
    value = float(f"{value:.4g}")  # as the file metadata record it, so a reread interval is the same
    return ScanScale(value, len(logs))


__all__ = ["FOLD_LEVEL", "SCALE_LIMITS", "SHRINK", "SYNTHETIC_ONLY", "HeldOutFold", "ScanReference", "ScanScale",
           "fit_scan_reference", "fold_statistic", "scan_reference_of", "scan_scale"]
