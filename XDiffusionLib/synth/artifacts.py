"""Acquisition artefacts: smooth bias field, lower resolution along one axis, Rician noise, gamma.

Each function draws its own random settings from ``rng`` and returns (image, params).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from .deform import smooth_field


@dataclass(frozen=True)
class ArtefactLevels:
    """The ranges artefacts and texture are drawn from. ``DEFAULT`` is what training and validation
    used (unchanged, so their subjects stay the same); ``SCANNER_LIKE`` is nearer real clinical T1
    (the interval calibration subjects, issue 24): noise never absent and up to 6% of the bright
    tissue, a stronger bias field, thick slices (partial volume) in 3 of 4 subjects, finer texture."""

    noise_relative_sigma: tuple[float, float] = (0.0, 0.04)
    bias_log_std: tuple[float, float] = (0.0, 0.2)
    thick_slice_probability: float = 0.5
    texture_scale_mm: tuple[float, float] = (6.0, 16.0)

    def params(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


DEFAULT = ArtefactLevels()
SCANNER_LIKE = ArtefactLevels((0.015, 0.06), (0.05, 0.3), 0.75, (4.0, 12.0))
PRESETS = {"default": DEFAULT, "scanner": SCANNER_LIKE}


def bias_field(rng: np.random.Generator, image: np.ndarray, max_log_std: float = 0.2,
               min_log_std: float = 0.0) -> tuple[np.ndarray, dict]:
    """Multiply by exp(smooth Gaussian field) from a 3^3..5^3 control grid."""
    n = int(rng.integers(3, 6))
    std = float(rng.uniform(min_log_std, max_log_std))
    coarse = rng.normal(0.0, std, size=(1, n, n, n)).astype(np.float32)
    field = np.exp(smooth_field(coarse, image.shape)[0])
    return image * field, {"bias_control_points": n, "bias_log_std": round(std, 4)}


def lower_resolution(
    rng: np.random.Generator, image: np.ndarray, spacing: float, probability: float = 0.5,
    thickness_range: tuple[float, float] = (2.0, 5.0),
) -> tuple[np.ndarray, dict]:
    """Simulate thick slices along one random axis: slice-profile blur, downsample, back to the grid.

    Skipped (with that probability, or when the drawn thickness is not thicker than ``spacing``).
    """
    if rng.random() >= probability:
        return image, {"slice_axis": None, "slice_thickness_mm": None}
    axis = int(rng.integers(3))
    thickness = float(rng.uniform(*thickness_range))
    if thickness <= spacing * 1.05:
        return image, {"slice_axis": None, "slice_thickness_mm": None}
    factor = thickness / spacing
    # Slice profile with FWHM = thickness (relative to what the grid already has).
    sigma = np.sqrt(max(factor**2 - 1.0, 0.0)) / 2.355
    blurred = ndimage.gaussian_filter1d(image, sigma=sigma, axis=axis, mode="nearest")
    n = image.shape[axis]
    m = max(2, int(round((n - 1) / factor)) + 1)
    coarse_positions = np.linspace(0, n - 1, m)
    low = _linear_axis(blurred, coarse_positions, axis)
    # Back onto the grid: index of each original voxel within the coarse samples.
    back = _linear_axis(low, np.linspace(0, m - 1, n), axis)
    return back, {"slice_axis": axis, "slice_thickness_mm": round(thickness, 3)}


def _linear_axis(array: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    lo = np.clip(np.floor(positions).astype(int), 0, array.shape[axis] - 1)
    hi = np.minimum(lo + 1, array.shape[axis] - 1)
    view = [1, 1, 1]
    view[axis] = -1
    w = (positions - lo).astype(np.float32).reshape(view)
    return np.take(array, lo, axis=axis) * (1 - w) + np.take(array, hi, axis=axis) * w


def rician_noise(rng: np.random.Generator, image: np.ndarray, max_relative_sigma: float = 0.04,
                 min_relative_sigma: float = 0.0) -> tuple[np.ndarray, dict]:
    """Magnitude of a complex signal with Gaussian noise on both channels (Rician statistics).

    sigma is relative to the image's 99th percentile, so it means the same for every contrast.
    """
    relative = float(rng.uniform(min_relative_sigma, max_relative_sigma))
    sigma = np.float32(relative * max(float(np.percentile(image, 99.0)), 1e-6))
    real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.sqrt(real * real + imaginary * imaginary), {"noise_relative_sigma": round(relative, 5)}


def normalise(image: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """Scale so the given percentile of the head (voxels above 2 % of the maximum) maps to 1, clip [0, 1]."""
    foreground = image[image > 0.02 * float(image.max())]
    top = float(np.percentile(foreground, percentile)) if foreground.size else 1.0
    return np.clip(image / max(top, 1e-6), 0.0, 1.0).astype(np.float32)


def gamma(rng: np.random.Generator, image: np.ndarray, log_std: float = 0.2) -> tuple[np.ndarray, dict]:
    """Random gamma on a [0, 1] image (non-linear contrast change that keeps the tissue order)."""
    value = float(np.exp(rng.normal(0.0, log_std)))
    return np.power(image, np.float32(value)), {"gamma": round(value, 4)}
