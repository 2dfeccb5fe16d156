"""Calibrated per-voxel intervals: reconstruction +- half-width covers the truth with a stated probability.

The spread across views (``sampling.pipeline``) mostly measures sampler noise: with a residual model
started near the anchor it is small everywhere and says little about the error. The interval here
is split conformal prediction (Vovk et al.; Angelopoulos & Bates 2021, "A gentle introduction to
conformal prediction") with a normalised score:

    score(x) = |truth(x) - prediction(x)| / s(x),   s(x) = c . [1, spread, disagreement, gradient, intensity]

where every feature is cheap at inference and in units of the inputs' intensity range (the
normaliser's ``high - low``, so one table serves any scanner scale):

- ``spread``: std across views x samples of the model's residual;
- ``disagreement``: |interpolation - fitted template|, the two parts the anchor blends;
- ``gradient``: magnitude of the anchor's 3D gradient (per voxel step): edges move, flat tissue not;
- ``intensity``: the anchor itself (bright tissue errs more than background).

The coefficients ``c`` are fitted per K range (least squares with c >= 0) on some calibration
subjects; the quantiles of the score are then taken on the others, per K range and per bin of
distance to the nearest input slice (mm), at several levels. The half-width at level a is
``q[K range, distance bin, a] * s(x) * range``. On exchangeable subjects a bin's interval covers
at least a of the voxels (the conformal guarantee); on real scans, which the synthetic calibration
subjects only imitate, coverage is measured by ``xdiffusion evaluate`` (``metrics.coverage``).

Torch-free (numpy only), so the Slicer module, the web app and the worker can read the labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..errors import XDiffusionError

DEFAULT_LEVEL = 0.9
LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)  # levels a table holds (the calibration plot's x axis)
# K ranges by their first K: [1], [2, 4], [5, 9], [10, 19], [20, ...).
K_EDGES = (1, 2, 5, 10, 20)
# Distance to the nearest input slice (mm), bins by their upper edge; the last is open.
DISTANCE_EDGES_MM = (2.5, 5.0, 10.0, 20.0, 40.0)
FEATURES = ("spread", "disagreement", "gradient", "intensity")
MIN_SCALE = 1e-3  # floor of s(x) in range units: a zero-width interval is never calibrated
FORMAT = "xdiffusion-interval-calibration"
FORMAT_VERSION = 1
UNITS = "intensity units of the input volume"


@dataclass(frozen=True)
class UncertaintyInfo:
    """What the uncertainty output of a reconstruction means: the one place the web app, the Slicer
    module, the demo figure and the file metadata take its label from."""

    calibrated: bool
    level: float | None  # coverage level of the interval (0.9 = 90%), None when uncalibrated
    label: str  # short, for a colour bar or a panel title
    description: str  # one sentence, for file metadata and tooltips
    units: str = UNITS

    def metadata(self) -> dict[str, str]:
        """Key-value pairs for exported files (NRRD/MetaImage keys; ``descrip`` for NIfTI's one field;
        the Slicer module stores the same on the node, ``XDiffusion_`` -> ``XDiffusion.``)."""
        return {
            "descrip": self.short,
            "XDiffusion_uncertainty": "calibrated interval half-width" if self.calibrated else "view spread (std)",
            "XDiffusion_uncertainty_level": "" if self.level is None else f"{self.level:g}",
            "XDiffusion_uncertainty_units": self.units,
            "XDiffusion_uncertainty_description": self.description,
        }

    @classmethod
    def from_metadata(cls, get) -> "UncertaintyInfo":
        """Back from ``metadata()`` keys (``get(key)`` -> str or None, e.g. a node's GetAttribute
        with the ``XDiffusion.`` spelling handled by the caller); uncalibrated when no level is recorded."""
        level = get("XDiffusion_uncertainty_level") or ""
        try:
            return calibrated_info(float(level)) if level else UNCALIBRATED
        except ValueError:
            return UNCALIBRATED

    @property
    def short(self) -> str:
        """At most 80 characters (the NIfTI ``descrip`` field)."""
        if self.calibrated:
            return f"XDiffusion {self.level:.0%} interval half-width (+-, intensity units)"[:80]
        return "XDiffusion view spread (std, intensity units; not calibrated)"[:80]


def calibrated_info(level: float) -> UncertaintyInfo:
    percent = f"{level:.0%}"
    return UncertaintyInfo(
        calibrated=True, level=float(level),
        label=f"{percent} interval half-width (±, intensity units)",
        description=(f"per-voxel half-width h: on synthetic calibration subjects the truth lay within "
                     f"reconstruction ± h for {percent} of non-input voxels inside the head (0 on input slices)"),
    )


UNCALIBRATED = UncertaintyInfo(
    calibrated=False, level=None, label="view spread (std, not calibrated)",
    description="standard deviation across views x samples; not an interval (this model has no calibration table)",
)


def k_range(k: int) -> int:
    """Index of the K range holding ``k`` (``K_EDGES``)."""
    if int(k) < 1:
        raise XDiffusionError(f"K = {k}: the number of input slices must be at least 1")
    return int(np.searchsorted(np.asarray(K_EDGES), int(k), side="right") - 1)


def k_range_names() -> list[str]:
    names = []
    for i, low in enumerate(K_EDGES):
        high = K_EDGES[i + 1] - 1 if i + 1 < len(K_EDGES) else None
        names.append(f"K={low}" if high == low else (f"K={low}-{high}" if high else f"K>={low}"))
    return names


def distance_bins(distance_mm: np.ndarray) -> np.ndarray:
    """Bin index (uint8) of each distance to the nearest input slice (``DISTANCE_EDGES_MM``)."""
    return np.searchsorted(np.asarray(DISTANCE_EDGES_MM), np.asarray(distance_mm), side="left").astype(np.uint8)


@dataclass
class IntervalFeatures:
    """The error predictors of one reconstruction, on its grid (float32, range units)."""

    k: int
    distance_mm: np.ndarray  # (depth,) along ``axis``
    axis: int
    spread: np.ndarray
    disagreement: np.ndarray
    gradient: np.ndarray
    intensity: np.ndarray
    range: float  # intensity units per range unit
    known: np.ndarray  # (depth,) bool: the input slices

    def stack(self, index: np.ndarray | None = None) -> np.ndarray:
        """(n, 1 + len(FEATURES)) design matrix [1, features] at flat ``index`` (all voxels if None)."""
        columns = [getattr(self, name).reshape(-1) for name in FEATURES]
        if index is not None:
            columns = [c[index] for c in columns]
        return np.column_stack([np.ones_like(columns[0])] + columns).astype(np.float64)

    def distance_volume(self) -> np.ndarray:
        return np.broadcast_to(_along(self.distance_mm, self.axis), self.spread.shape)

    def known_volume(self) -> np.ndarray:
        return np.broadcast_to(_along(self.known, self.axis), self.spread.shape)


def _along(profile: np.ndarray, axis: int) -> np.ndarray:
    shape = [1, 1, 1]
    shape[axis] = -1
    return np.asarray(profile).reshape(shape)


def interval_features(k: int, axis: int, distance_mm: np.ndarray, known: np.ndarray, spread: np.ndarray,
                      interpolation: np.ndarray, template: np.ndarray, anchor: np.ndarray,
                      value_range: float) -> IntervalFeatures:
    """Features from a reconstruction's parts (all on one grid, intensity units; see the module docstring)."""
    value_range = float(value_range)
    if not value_range > 0 or not math.isfinite(value_range):
        raise XDiffusionError(f"intensity range {value_range} of the inputs must be positive")
    inv = np.float32(1.0 / value_range)
    anchor = np.asarray(anchor, dtype=np.float32)
    gradient = np.sqrt(sum(g * g for g in np.gradient(anchor))).astype(np.float32) * inv
    return IntervalFeatures(
        k=int(k), distance_mm=np.asarray(distance_mm, dtype=np.float64), axis=int(axis),
        spread=np.asarray(spread, dtype=np.float32) * inv,
        disagreement=np.abs(np.asarray(interpolation, np.float32) - np.asarray(template, np.float32)) * inv,
        gradient=gradient, intensity=np.clip(anchor, 0.0, None) * inv, range=value_range,
        known=np.asarray(known, dtype=bool),
    )


@dataclass(frozen=True)
class IntervalCalibration:
    """A calibration table (see the module docstring): per K range the scale coefficients, per
    (K range, distance bin) the score quantiles at ``levels``."""

    coefficients: np.ndarray  # (n_k, 1 + n_features)
    quantiles: np.ndarray  # (n_k, n_distance, n_levels)
    counts: np.ndarray  # (n_k, n_distance) calibration voxels behind each quantile (0: borrowed)
    levels: tuple[float, ...] = LEVELS
    k_edges: tuple[int, ...] = K_EDGES
    distance_edges_mm: tuple[float, ...] = DISTANCE_EDGES_MM
    features: tuple[str, ...] = FEATURES
    info: dict[str, Any] = field(default_factory=dict)  # provenance: data, settings, weights checksum

    def level_index(self, level: float) -> int:
        for i, value in enumerate(self.levels):
            if abs(value - float(level)) < 1e-9:
                return i
        raise XDiffusionError(f"interval level {level}: the calibration table holds only "
                              f"{', '.join(f'{v:g}' for v in self.levels)}")

    def scale(self, features: IntervalFeatures) -> np.ndarray:
        """s(x) in range units, float32, on the features' grid."""
        c = self.coefficients[k_range(features.k)].astype(np.float32)
        s = np.full(features.spread.shape, c[0], dtype=np.float32)
        for weight, name in zip(c[1:], self.features):
            s += np.float32(weight) * getattr(features, name)
        return np.maximum(s, np.float32(MIN_SCALE))

    def estimate(self, features: IntervalFeatures) -> "IntervalEstimate":
        bins = np.ascontiguousarray(np.broadcast_to(_along(distance_bins(features.distance_mm), features.axis),
                                                    features.spread.shape))
        return IntervalEstimate(self.scale(features) * np.float32(features.range), bins,
                                np.ascontiguousarray(features.known_volume()), self.quantiles[k_range(features.k)],
                                self.levels)

    # ---- JSON ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": FORMAT_VERSION,
            "levels": list(self.levels), "default_level": DEFAULT_LEVEL,
            "k_edges": list(self.k_edges), "k_ranges": k_range_names(),
            "distance_edges_mm": list(self.distance_edges_mm),
            "features": list(self.features),
            "coefficients": np.round(self.coefficients, 6).tolist(),
            "quantiles": np.round(self.quantiles, 5).tolist(),
            "counts": self.counts.astype(int).tolist(),
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "calibration table") -> "IntervalCalibration":
        """Check every field (a one-line XDiffusionError naming ``source`` and the problem)."""
        def bad(problem: str) -> XDiffusionError:
            return XDiffusionError(f"{source}: malformed interval calibration ({problem}); regenerate it with "
                                   f"scripts/calibrate_uncertainty.py")

        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise bad(f"'format' is not {FORMAT!r}")
        if data.get("version") != FORMAT_VERSION:
            raise bad(f"version {data.get('version')!r}, this code reads version {FORMAT_VERSION}")
        try:
            levels = tuple(float(v) for v in data["levels"])
            k_edges = tuple(int(v) for v in data["k_edges"])
            edges = tuple(float(v) for v in data["distance_edges_mm"])
            features = tuple(str(v) for v in data["features"])
            coefficients = np.asarray(data["coefficients"], dtype=np.float64)
            quantiles = np.asarray(data["quantiles"], dtype=np.float64)
            counts = np.asarray(data["counts"], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as error:
            raise bad(f"missing or non-numeric field {error}") from None
        if (levels, k_edges, edges, features) != (LEVELS, K_EDGES, DISTANCE_EDGES_MM, FEATURES):
            raise bad("its levels, K ranges, distance bins or features differ from this code's")
        n_k, n_d = len(K_EDGES), len(DISTANCE_EDGES_MM) + 1
        if coefficients.shape != (n_k, 1 + len(FEATURES)) or quantiles.shape != (n_k, n_d, len(LEVELS)) \
                or counts.shape != (n_k, n_d):
            raise bad("table shapes do not match its K ranges, distance bins and levels")
        if not (np.all(np.isfinite(coefficients)) and np.all(coefficients >= 0) and np.all(np.isfinite(quantiles))
                and np.all(quantiles > 0)):
            raise bad("coefficients must be finite and >= 0, quantiles finite and > 0")
        if np.any(np.diff(quantiles, axis=2) < 0):
            raise bad("quantiles must not decrease with the level")
        return cls(coefficients, quantiles, counts, levels, k_edges, edges, features, dict(data.get("info") or {}))


@dataclass
class IntervalEstimate:
    """One reconstruction's interval: half-width(level) = q[distance bin, level] * scale, 0 on input slices.

    Every array is per voxel on the reconstruction's grid, so ``mapped`` can reorient them all alike."""

    scale: np.ndarray  # s(x) in intensity units (float32)
    bins: np.ndarray  # distance bin (uint8)
    known: np.ndarray  # bool: voxels of the input slices
    quantiles: np.ndarray  # (n_distance, n_levels) of this reconstruction's K range
    levels: tuple[float, ...]

    def halfwidth(self, level: float = DEFAULT_LEVEL) -> np.ndarray:
        index = [i for i, v in enumerate(self.levels) if abs(v - float(level)) < 1e-9]
        if not index:
            raise XDiffusionError(f"interval level {level}: choose one of {', '.join(f'{v:g}' for v in self.levels)}")
        q = self.quantiles[:, index[0]].astype(np.float32)[self.bins]
        return np.where(self.known, np.float32(0.0), self.scale * q).astype(np.float32)

    def mapped(self, array_map) -> "IntervalEstimate":
        """The same interval with its voxel arrays passed through ``array_map`` (e.g. a reorientation)."""
        return IntervalEstimate(array_map(self.scale), array_map(self.bins), array_map(self.known),
                                self.quantiles, self.levels)


# ---- fitting (scripts/calibrate_uncertainty.py) ---------------------------------------------

def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The ceil((n + 1) level)-th smallest score (split conformal); the largest when that exceeds n."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    n = scores.size
    if n == 0:
        raise XDiffusionError("no calibration scores")
    rank = min(n, int(math.ceil((n + 1) * float(level))))
    return float(scores[rank - 1])


def fit_coefficients(design: np.ndarray, abs_error: np.ndarray) -> np.ndarray:
    """c >= 0 minimising ||design c - |error| ||^2 (scipy's NNLS); the intercept at least ``MIN_SCALE``."""
    from scipy.optimize import nnls

    design = np.asarray(design, dtype=np.float64)
    target = np.asarray(abs_error, dtype=np.float64)
    # Columns scaled to unit RMS so NNLS is well conditioned; undone on the result.
    norms = np.sqrt(np.mean(design * design, axis=0))
    norms[norms == 0] = 1.0
    c, _ = nnls(design / norms, target, maxiter=50 * design.shape[1])
    c = c / norms
    c[0] = max(c[0], MIN_SCALE)
    return c


def fit_calibration(fit: Mapping[str, np.ndarray], calibrate: Mapping[str, np.ndarray],
                    info: Mapping[str, Any] | None = None, min_count: int = 200) -> IntervalCalibration:
    """A table from voxel samples: ``fit`` and ``calibrate`` each hold ``design`` (n, 1 + features),
    ``abs_error`` (range units), ``k`` and ``distance_mm`` (n,). Coefficients come from ``fit``,
    quantiles from ``calibrate`` (disjoint subjects: split conformal). A (K range, distance) bin
    with fewer than ``min_count`` voxels borrows the nearest populated bin of its K range (its
    count is then 0), a K range without any voxels the nearest K range."""
    n_k, n_d = len(K_EDGES), len(DISTANCE_EDGES_MM) + 1
    k_fit = np.array([k_range(k) for k in np.asarray(fit["k"])])
    k_cal = np.array([k_range(k) for k in np.asarray(calibrate["k"])])
    coefficients = np.zeros((n_k, 1 + len(FEATURES)))
    fitted = [r for r in range(n_k) if np.any(k_fit == r)]
    if not fitted:
        raise XDiffusionError("no fit samples")
    for r in range(n_k):
        source = r if r in fitted else min(fitted, key=lambda f: abs(f - r))
        rows = k_fit == source
        coefficients[r] = fit_coefficients(fit["design"][rows], fit["abs_error"][rows])
    scale = np.maximum(np.einsum("ij,ij->i", np.asarray(calibrate["design"]), coefficients[k_cal]), MIN_SCALE)
    scores = np.asarray(calibrate["abs_error"]) / scale
    bins = distance_bins(calibrate["distance_mm"]).astype(int)
    quantiles = np.full((n_k, n_d, len(LEVELS)), np.nan)
    counts = np.zeros((n_k, n_d), dtype=np.int64)
    for r in range(n_k):
        for d in range(n_d):
            chosen = scores[(k_cal == r) & (bins == d)]
            if chosen.size >= min_count:
                counts[r, d] = chosen.size
                quantiles[r, d] = [conformal_quantile(chosen, a) for a in LEVELS]
    populated_k = [r for r in range(n_k) if counts[r].any()]
    if not populated_k:
        raise XDiffusionError(f"no (K range, distance) bin has {min_count} calibration voxels")
    for r in range(n_k):
        source_r = r if r in populated_k else min(populated_k, key=lambda p: abs(p - r))
        filled = np.flatnonzero(counts[source_r])
        for d in range(n_d):
            if counts[r, d] == 0:
                # Farther bins borrow the farthest populated one below them (never a nearer, smaller one
                # when a farther exists on the same side).
                below = filled[filled < d]
                source_d = below.max() if below.size else filled.min()
                quantiles[r, d] = quantiles[source_r, source_d]
    quantiles = np.maximum.accumulate(quantiles, axis=2)  # ties in tiny bins never decrease with the level
    return IntervalCalibration(coefficients, quantiles, counts, info=dict(info or {}))


def observed_coverage(abs_error: np.ndarray, halfwidth: np.ndarray) -> float:
    """Fraction of voxels with |error| <= half-width."""
    abs_error = np.asarray(abs_error)
    return float(np.mean(abs_error <= np.asarray(halfwidth))) if abs_error.size else float("nan")


__all__ = [
    "DEFAULT_LEVEL", "DISTANCE_EDGES_MM", "FEATURES", "K_EDGES", "LEVELS", "UNCALIBRATED", "IntervalCalibration",
    "IntervalEstimate", "IntervalFeatures", "UncertaintyInfo", "calibrated_info", "conformal_quantile",
    "distance_bins", "fit_calibration", "interval_features", "k_range",
]
