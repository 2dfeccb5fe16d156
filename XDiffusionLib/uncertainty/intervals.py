"""Calibrated per-voxel intervals: reconstruction +- half-width covers the truth with a stated probability.

The spread across views (``sampling.pipeline``) mostly measures sampler noise: with a residual model
started near the anchor it is small everywhere and says little about the error. The interval here
is split conformal prediction (Vovk et al.; Angelopoulos & Bates 2021, "A gentle introduction to
conformal prediction") with a normalised score:

    score(x) = |truth(x) - prediction(x)| / s(x),
    s(x) = c . [1, spread, disagreement, edge, intensity, curvature]

where every feature is cheap at inference and in units of the inputs' intensity range (the
normaliser's ``high - low``, so one table serves any scanner scale):

- ``spread``: std across views x samples of the model's residual;
- ``disagreement``: |interpolation - fitted template|, the two parts the anchor blends;
- ``edge``: magnitude of the anchor's 3D gradient (per voxel step): edges move, flat tissue not;
- ``intensity``: the anchor itself (bright tissue errs more than background);
- ``curvature``: |second difference of the anchor along the input axis|: where the volume bends
  between slices, interpolation and template err most (it is what a straight line cannot follow).

``disagreement``, ``edge`` and ``curvature`` are smoothed over a voxel or two
(``NEIGHBOURHOOD_VOXELS``, ``CURVATURE_VOXELS``): an edge that is misplaced by a voxel errs *beside*
where the anchor puts it. Chosen on synthetic subjects only (4 of seed 17, axial, the shipped
model, coefficients fitted on three and tested on the fourth in turn): the width's rank correlation
with the model's error rose from 0.34 / 0.47 / 0.35 to 0.38 / 0.49 / 0.41 at K = 3 / 10 / 31 (table
format 3; format 2 had the first four features, unsmoothed).

The half-width at level a is ``lambda * q(K range, d, a) * s(x) * range``, d the distance (mm) from
the voxel's slice to the nearest input slice, lambda the scan's own scale (``uncertainty.scan_scale``:
from leaving each input slice out in turn; 1 with one input slice). Fitting (the calibration script),
on synthetic subjects split in two:

- *fit subjects*: the coefficients ``c`` per K range (least squares with c >= 0); the scan
  reference behind lambda; the distance profile g(K range, d, a): the quantiles of
  |error| / (lambda s) per distance bin, placed at the bin's knot (``KNOTS_MM``) and joined by
  straight lines in d (constant before the first knot and after the last);
- *calibration subjects*: per K range and level one conformal quantile t of the score
  |error| / (lambda s g(d)); the table stores q = t * g at the knots.

Why a profile, not a quantile per bin: a step at a bin edge (2.5, 5, 10, 20, 40 mm) is a plane of
constant distance, which drew bands across coronal and sagittal views. Piecewise-linear q varies
continuously with d (``IntervalEstimate.halfwidth``). Accounted for in the guarantee: g is fixed
before the calibration subjects are seen, so lambda s g is one normaliser and t its split-conformal
quantile; on subjects exchangeable with the calibration subjects the interval covers at least a of
the non-input head voxels of a K range (marginally over distance: per distance band only
approximately). On real scans, which the synthetic subjects only imitate, coverage is measured by
``xdiffusion evaluate`` (``metrics.coverage``); ``scan_scale`` says what lambda assumes. The
smoothing of the features is part of s(x), fixed before any calibration subject is seen, so it
changes the width's shape, not the guarantee. Tables of earlier formats were fitted to other
features and are refused with a line saying how to regenerate them.

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
# Where each bin's quantile sits on the smooth distance profile (mid-bin; the open bin at 60 mm).
KNOTS_MM = (1.25, 3.75, 7.5, 15.0, 30.0, 60.0)
FEATURES = ("spread", "disagreement", "edge", "intensity", "curvature")
# Gaussian sigma (voxels) of the neighbourhood features (edge and disagreement; curvature: its own).
NEIGHBOURHOOD_VOXELS = 1.5
CURVATURE_VOXELS = 1.0
MIN_SCALE = 1e-3  # floor of s(x) in range units: a zero-width interval is never calibrated
FORMAT = "xdiffusion-interval-calibration"
FORMAT_VERSION = 3  # 2: smooth distance profile and scan reference; 3: the features smoothed, curvature added
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
    scan_folds: int = 0  # input slices left out to rescale for this scan (0: synthetic table only)
    scan_scale: float = 1.0  # lambda (``uncertainty.scan_scale``)

    @property
    def calibration(self) -> str:
        """Where the interval was calibrated: this scan (leave-one-slice-out) or synthetic data only."""
        if not self.calibrated:
            return "not calibrated"
        if self.scan_folds:
            return f"calibrated on this scan (leave-one-slice-out, {self.scan_folds} folds)"
        return "synthetic only"

    @property
    def legend(self) -> str:
        """Colour-bar title in short lines (Slicer): what the value is, its level, where it was calibrated."""
        if not self.calibrated:
            return "view spread (std)\nnot calibrated"
        where = "calibrated on this scan" if self.scan_folds else "synthetic calibration only"
        return f"{self.level:.0%} interval\nhalf-width (\u00b1)\n{where}"

    def metadata(self) -> dict[str, str]:
        """Key-value pairs for exported files (NRRD/MetaImage keys; ``descrip`` for NIfTI's one field;
        the Slicer module stores the same on the node, ``XDiffusion_`` -> ``XDiffusion.``)."""
        return {
            "descrip": self.short,
            "XDiffusion_uncertainty": "calibrated interval half-width" if self.calibrated else "view spread (std)",
            "XDiffusion_uncertainty_level": "" if self.level is None else f"{self.level:g}",
            "XDiffusion_uncertainty_units": self.units,
            "XDiffusion_uncertainty_description": self.description,
            "XDiffusion_uncertainty_calibration": self.calibration,
            "XDiffusion_uncertainty_scan_folds": str(self.scan_folds),
            "XDiffusion_uncertainty_scan_scale": f"{self.scan_scale:.4g}",
        }

    @classmethod
    def from_metadata(cls, get) -> "UncertaintyInfo":
        """Back from ``metadata()`` keys (``get(key)`` -> str or None, e.g. a node's GetAttribute
        with the ``XDiffusion.`` spelling handled by the caller); uncalibrated when no level is
        recorded, synthetic only when no scan folds are (files written before issue 24)."""
        level = get("XDiffusion_uncertainty_level") or ""
        try:
            folds = int(get("XDiffusion_uncertainty_scan_folds") or 0)
            scale = float(get("XDiffusion_uncertainty_scan_scale") or 1.0)
            return calibrated_info(float(level), folds, scale) if level else UNCALIBRATED
        except ValueError:
            return UNCALIBRATED

    @property
    def short(self) -> str:
        """At most 80 characters (the NIfTI ``descrip`` field)."""
        if self.calibrated:
            where = "scan-calibrated" if self.scan_folds else "synthetic calibration"
            return f"XDiffusion {self.level:.0%} interval half-width (+-, intensity units), {where}"[:80]
        return "XDiffusion view spread (std, intensity units; not calibrated)"[:80]


def calibrated_info(level: float, scan_folds: int = 0, scan_scale: float = 1.0) -> UncertaintyInfo:
    """The calibrated interval at ``level``; ``scan_folds`` > 0: rescaled by ``scan_scale`` from that
    many left-out input slices (``uncertainty.scan_scale``), else the synthetic table alone."""
    percent = f"{level:.0%}"
    synthetic = (f"on synthetic calibration subjects the truth lay within reconstruction ± h for {percent} "
                 f"of non-input voxels inside the head")
    if scan_folds:
        where = "calibrated on this scan"
        how = (f"{synthetic}; rescaled x{scan_scale:.2f} for this scan from its {scan_folds} input slices, each "
               f"left out and predicted from the others (leave-one-slice-out)")
    else:
        where = "synthetic calibration only"
        how = f"{synthetic}; not rescaled for this scan (one input slice, or a table without a scan reference)"
    return UncertaintyInfo(
        calibrated=True, level=float(level),
        label=f"{percent} interval half-width (±, intensity units), {where}",
        description=f"per-voxel half-width h: {how} (0 on input slices)",
        scan_folds=int(scan_folds), scan_scale=float(f"{scan_scale:.4g}"),  # as the metadata keep it
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
    edge: np.ndarray
    intensity: np.ndarray
    curvature: np.ndarray
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
    """Features from a reconstruction's parts (all on one grid, intensity units, ``axis`` the input
    axis; see the module docstring)."""
    from scipy.ndimage import gaussian_filter  # at inference only (this module loads inside Slicer at startup)

    value_range = float(value_range)
    if not value_range > 0 or not math.isfinite(value_range):
        raise XDiffusionError(f"intensity range {value_range} of the inputs must be positive")
    inv = np.float32(1.0 / value_range)
    anchor = np.asarray(anchor, dtype=np.float32)
    edge = np.sqrt(sum(g * g for g in np.gradient(anchor)))  # needs 2 slices along every axis, as below
    disagreement = np.abs(np.asarray(interpolation, np.float32) - np.asarray(template, np.float32))
    curvature = np.abs(np.gradient(np.gradient(anchor, axis=axis), axis=axis))
    return IntervalFeatures(
        k=int(k), distance_mm=np.asarray(distance_mm, dtype=np.float64), axis=int(axis),
        spread=np.asarray(spread, dtype=np.float32) * inv,
        disagreement=gaussian_filter(disagreement, NEIGHBOURHOOD_VOXELS) * inv,
        edge=gaussian_filter(edge, NEIGHBOURHOOD_VOXELS).astype(np.float32) * inv,
        intensity=np.clip(anchor, 0.0, None) * inv,
        curvature=gaussian_filter(curvature, CURVATURE_VOXELS).astype(np.float32) * inv,
        range=value_range, known=np.asarray(known, dtype=bool),
    )


@dataclass(frozen=True)
class IntervalCalibration:
    """A calibration table (see the module docstring): per K range the scale coefficients, per
    (K range, distance knot) the score quantiles at ``levels``, and the scan reference."""

    coefficients: np.ndarray  # (n_k, 1 + n_features)
    quantiles: np.ndarray  # (n_k, n_distance, n_levels) at the knots ``KNOTS_MM``
    counts: np.ndarray  # (n_k, n_distance) calibration voxels per distance bin (0: the bin borrowed)
    levels: tuple[float, ...] = LEVELS
    k_edges: tuple[int, ...] = K_EDGES
    distance_edges_mm: tuple[float, ...] = DISTANCE_EDGES_MM
    features: tuple[str, ...] = FEATURES
    info: dict[str, Any] = field(default_factory=dict)  # provenance: data, settings, weights checksum
    # The leave-one-out reference (``scan_scale.ScanReference.to_dict``); None: lambda is always 1.
    scan_reference: dict[str, Any] | None = None
    knots_mm: tuple[float, ...] = KNOTS_MM

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

    def estimate(self, features: IntervalFeatures, scan_scale: float = 1.0) -> "IntervalEstimate":
        """The interval of one reconstruction; ``scan_scale``: the scan's lambda (``scan_scale``)."""
        distance = np.ascontiguousarray(np.broadcast_to(
            _along(features.distance_mm.astype(np.float32), features.axis), features.spread.shape))
        return IntervalEstimate(self.scale(features) * np.float32(features.range), distance,
                                np.ascontiguousarray(features.known_volume()), self.quantiles[k_range(features.k)],
                                self.levels, self.knots_mm, float(scan_scale))

    # ---- JSON ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": FORMAT_VERSION,
            "levels": list(self.levels), "default_level": DEFAULT_LEVEL,
            "k_edges": list(self.k_edges), "k_ranges": k_range_names(),
            "distance_edges_mm": list(self.distance_edges_mm), "knots_mm": list(self.knots_mm),
            "features": list(self.features),
            "coefficients": np.round(self.coefficients, 6).tolist(),
            "quantiles": np.round(self.quantiles, 5).tolist(),
            "counts": self.counts.astype(int).tolist(),
            "scan_reference": self.scan_reference,
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "calibration table") -> "IntervalCalibration":
        """Check every field (a one-line XDiffusionError naming ``source`` and the problem); the scan
        reference's own fields are checked by ``scan_scale.scan_reference_of`` (``model.calibration``)."""
        def bad(problem: str) -> XDiffusionError:
            return XDiffusionError(f"{source}: malformed interval calibration ({problem}); regenerate it with "
                                   f"scripts/calibrate_uncertainty.py")

        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise bad(f"'format' is not {FORMAT!r}")
        version = data.get("version")
        if version != FORMAT_VERSION:
            raise bad(f"format version {version!r}: this code reads version {FORMAT_VERSION} only (earlier "
                      f"versions were fitted to other error features)")
        try:
            levels = tuple(float(v) for v in data["levels"])
            k_edges = tuple(int(v) for v in data["k_edges"])
            edges = tuple(float(v) for v in data["distance_edges_mm"])
            knots = tuple(float(v) for v in data["knots_mm"])
            features = tuple(str(v) for v in data["features"])
            coefficients = np.asarray(data["coefficients"], dtype=np.float64)
            quantiles = np.asarray(data["quantiles"], dtype=np.float64)
            counts = np.asarray(data["counts"], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as error:
            raise bad(f"missing or non-numeric field {error}") from None
        if (levels, k_edges, edges, knots, features) != (LEVELS, K_EDGES, DISTANCE_EDGES_MM, KNOTS_MM, FEATURES):
            raise bad("its levels, K ranges, distance bins, knots or features differ from this code's")
        n_k, n_d = len(K_EDGES), len(DISTANCE_EDGES_MM) + 1
        if coefficients.shape != (n_k, 1 + len(FEATURES)) or quantiles.shape != (n_k, n_d, len(LEVELS)) \
                or counts.shape != (n_k, n_d):
            raise bad("table shapes do not match its K ranges, distance bins and levels")
        if not (np.all(np.isfinite(coefficients)) and np.all(coefficients >= 0) and np.all(np.isfinite(quantiles))
                and np.all(quantiles > 0)):
            raise bad("coefficients must be finite and >= 0, quantiles finite and > 0")
        if np.any(np.diff(quantiles, axis=2) < 0):
            raise bad("quantiles must not decrease with the level")
        reference = data.get("scan_reference")
        if reference is not None and not isinstance(reference, Mapping):
            raise bad("'scan_reference' is neither null nor an object")
        return cls(coefficients, quantiles, counts, levels, k_edges, edges, features, dict(data.get("info") or {}),
                   None if reference is None else dict(reference), knots)


def profile_at(distance_mm: np.ndarray, knots_mm, values) -> np.ndarray:
    """Piecewise-linear in distance through (knot, value), constant outside the knots (float32):
    continuous in distance, so no band where a distance bin ends."""
    distance = np.asarray(distance_mm, dtype=np.float32)
    values = np.asarray(values, dtype=np.float64)
    out = np.full(distance.shape, np.float32(values[0]), dtype=np.float32)
    # A sum of clipped ramps (float32, no float64 copy of a whole volume as np.interp would make).
    for (low, high), step in zip(zip(knots_mm[:-1], knots_mm[1:]), np.diff(values)):
        if step:
            ramp = np.clip((distance - np.float32(low)) * np.float32(1.0 / (high - low)), 0.0, 1.0)
            out += np.float32(step) * ramp
    return out


@dataclass
class IntervalEstimate:
    """One reconstruction's interval: half-width(level) = lambda * q(distance, level) * scale, 0 on
    input slices, q piecewise-linear in distance between the knots (``profile_at``).

    Every array is per voxel on the reconstruction's grid, so ``mapped`` can reorient them all alike."""

    scale: np.ndarray  # s(x) in intensity units (float32)
    distance_mm: np.ndarray  # to the nearest input slice (float32)
    known: np.ndarray  # bool: voxels of the input slices
    quantiles: np.ndarray  # (n_knots, n_levels) of this reconstruction's K range
    levels: tuple[float, ...]
    knots_mm: tuple[float, ...] = KNOTS_MM
    scan_scale: float = 1.0  # lambda (``scan_scale``); 1: the synthetic table alone

    def halfwidth(self, level: float = DEFAULT_LEVEL) -> np.ndarray:
        index = [i for i, v in enumerate(self.levels) if abs(v - float(level)) < 1e-9]
        if not index:
            raise XDiffusionError(f"interval level {level}: choose one of {', '.join(f'{v:g}' for v in self.levels)}")
        q = profile_at(self.distance_mm, self.knots_mm, self.quantiles[:, index[0]] * self.scan_scale)
        return np.where(self.known, np.float32(0.0), self.scale * q).astype(np.float32)

    def mapped(self, array_map) -> "IntervalEstimate":
        """The same interval with its voxel arrays passed through ``array_map`` (e.g. a reorientation)."""
        return IntervalEstimate(array_map(self.scale), array_map(self.distance_mm), array_map(self.known),
                                self.quantiles, self.levels, self.knots_mm, self.scan_scale)


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
    from scipy.optimize import nnls  # scipy: only when a table is fitted (this module loads inside Slicer at startup)

    design = np.asarray(design, dtype=np.float64)
    target = np.asarray(abs_error, dtype=np.float64)
    # Columns scaled to unit RMS so NNLS is well conditioned; undone on the result.
    norms = np.sqrt(np.mean(design * design, axis=0))
    norms[norms == 0] = 1.0
    c, _ = nnls(design / norms, target, maxiter=50 * design.shape[1])
    c = c / norms
    c[0] = max(c[0], MIN_SCALE)
    return c


def fit_scale_coefficients(fit: Mapping[str, np.ndarray]) -> np.ndarray:
    """(n_k, 1 + features) coefficients per K range from ``fit`` samples (``design``, ``abs_error``,
    ``k``); a K range without samples takes the nearest fitted one."""
    n_k = len(K_EDGES)
    k_fit = np.array([k_range(k) for k in np.asarray(fit["k"])])
    fitted = [r for r in range(n_k) if np.any(k_fit == r)]
    if not fitted:
        raise XDiffusionError("no fit samples")
    coefficients = np.zeros((n_k, 1 + len(FEATURES)))
    for r in range(n_k):
        rows = k_fit == (r if r in fitted else min(fitted, key=lambda f: abs(f - r)))
        coefficients[r] = fit_coefficients(fit["design"][rows], fit["abs_error"][rows])
    return coefficients


def _scores(samples: Mapping[str, np.ndarray], coefficients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K range index, |error| / (lambda s)) per sample; lambda from ``scan_scale`` (1 when absent)."""
    ranges = np.array([k_range(k) for k in np.asarray(samples["k"])], dtype=int)
    scale = np.maximum(np.einsum("ij,ij->i", np.asarray(samples["design"], np.float64), coefficients[ranges]),
                       MIN_SCALE)
    lam = np.asarray(samples.get("scan_scale", np.ones(ranges.size)), dtype=np.float64)
    return ranges, np.asarray(samples["abs_error"], np.float64) / (scale * lam)


def _bin_quantiles(ranges: np.ndarray, scores: np.ndarray, bins: np.ndarray,
                   min_count: int) -> tuple[np.ndarray, np.ndarray]:
    """Per (K range, distance bin) the conformal quantiles at ``LEVELS`` and the counts; a bin with
    fewer than ``min_count`` samples borrows the farthest populated bin below it (else the nearest
    above) of its K range (count 0), a K range without samples the nearest K range."""
    n_k, n_d = len(K_EDGES), len(DISTANCE_EDGES_MM) + 1
    quantiles = np.full((n_k, n_d, len(LEVELS)), np.nan)
    counts = np.zeros((n_k, n_d), dtype=np.int64)
    for r in range(n_k):
        for d in range(n_d):
            chosen = scores[(ranges == r) & (bins == d)]
            if chosen.size >= min_count:
                counts[r, d] = chosen.size
                quantiles[r, d] = [conformal_quantile(chosen, a) for a in LEVELS]
    populated_k = [r for r in range(n_k) if counts[r].any()]
    if not populated_k:
        raise XDiffusionError(f"no (K range, distance) bin has {min_count} samples")
    for r in range(n_k):
        source_r = r if r in populated_k else min(populated_k, key=lambda p: abs(p - r))
        filled = np.flatnonzero(counts[source_r])
        for d in range(n_d):
            if counts[r, d] == 0:
                below = filled[filled < d]
                source_d = below.max() if below.size else filled.min()
                quantiles[r, d] = quantiles[source_r, source_d]
    return np.maximum.accumulate(quantiles, axis=2), counts  # never decreasing with the level


def fit_calibration(fit: Mapping[str, np.ndarray], calibrate: Mapping[str, np.ndarray],
                    info: Mapping[str, Any] | None = None, min_count: int = 200,
                    coefficients: np.ndarray | None = None,
                    scan_reference: Mapping[str, Any] | None = None) -> IntervalCalibration:
    """A table from voxel samples: ``fit`` and ``calibrate`` each hold ``design`` (n, 1 + features),
    ``abs_error`` (range units), ``k``, ``distance_mm`` and optionally ``scan_scale`` (n,: the
    lambda of each sample's reconstruction, 1 when absent). From ``fit`` (unless given):
    ``coefficients``; from ``fit``: the distance profile g (quantiles per bin at the knots); from
    ``calibrate`` (disjoint subjects): one conformal quantile t per K range and level of
    |error| / (lambda s g(d)); the table holds t * g (module docstring). ``scan_reference``: stored
    as it is (``ScanReference.to_dict``)."""
    if coefficients is None:
        coefficients = fit_scale_coefficients(fit)
    fit_ranges, fit_scores = _scores(fit, coefficients)
    profile, _ = _bin_quantiles(fit_ranges, fit_scores, distance_bins(fit["distance_mm"]).astype(int), min_count)
    ranges, scores = _scores(calibrate, coefficients)
    counts = _bin_quantiles(ranges, scores, distance_bins(calibrate["distance_mm"]).astype(int), 1)[1]
    distance = np.asarray(calibrate["distance_mm"], np.float32)
    quantiles = np.empty_like(profile)
    populated = [r for r in range(len(K_EDGES)) if np.any(ranges == r)]
    if not populated:
        raise XDiffusionError("no calibration samples")
    for r in range(len(K_EDGES)):
        # A K range without calibration samples takes its t from the nearest one that has them.
        source = r if r in populated else min(populated, key=lambda p: abs(p - r))
        chosen = ranges == source
        for a, level in enumerate(LEVELS):
            g = profile_at(distance[chosen], KNOTS_MM, profile[source, :, a])
            t = conformal_quantile(scores[chosen] / g, level)
            quantiles[r, :, a] = t * profile[r, :, a]
    quantiles = np.maximum.accumulate(quantiles, axis=2)
    return IntervalCalibration(coefficients, quantiles, counts, info=dict(info or {}),
                               scan_reference=None if scan_reference is None else dict(scan_reference))


def observed_coverage(abs_error: np.ndarray, halfwidth: np.ndarray) -> float:
    """Fraction of voxels with |error| <= half-width."""
    abs_error = np.asarray(abs_error)
    return float(np.mean(abs_error <= np.asarray(halfwidth))) if abs_error.size else float("nan")


__all__ = [
    "DEFAULT_LEVEL", "DISTANCE_EDGES_MM", "FEATURES", "K_EDGES", "KNOTS_MM", "LEVELS", "UNCALIBRATED",
    "IntervalCalibration", "IntervalEstimate", "IntervalFeatures", "UncertaintyInfo", "calibrated_info",
    "conformal_quantile", "distance_bins", "fit_calibration", "fit_scale_coefficients", "interval_features",
    "k_range", "profile_at",
]
