"""Robust intensity normalisation to [0, 1] and back to the input's intensity range.

Fit it on what a method is allowed to see (for a reconstruction: the input slices), so the
scaling never leaks information from the hidden volume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import XDiffusionError


@dataclass
class IntensityNormalizer:
    """Linear map of [low, high] onto [0, 1], clipping outside; ``low``/``high`` are percentiles of
    the non-zero (foreground) values it was fitted on.

    ``zero_floor``: for non-negative data, ``low`` is 0, so a background of 0 stays exactly 0 both
    ways (the residual model's choice: a percentile floor paints every background voxel grey).
    """

    lower_percentile: float = 0.5
    upper_percentile: float = 99.5
    low: float | None = None
    high: float | None = None
    zero_floor: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.lower_percentile < self.upper_percentile <= 100.0:
            raise XDiffusionError(
                f"intensity percentiles {self.lower_percentile}, {self.upper_percentile}: need 0 <= lower < upper <= 100"
            )

    @property
    def fitted(self) -> bool:
        return self.low is not None and self.high is not None

    def fit(self, values: np.ndarray) -> "IntensityNormalizer":
        """Set ``low``/``high`` from ``values`` (any shape); returns self."""
        values = np.asarray(values, dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise XDiffusionError("cannot normalise intensities: no finite values")
        foreground = values[values != 0]
        if foreground.size == 0:
            foreground = values
        low, high = np.percentile(foreground, [self.lower_percentile, self.upper_percentile])
        if self.zero_floor and values.min() >= 0.0:
            low = 0.0
        if not high > low:
            # Mostly one value (e.g. a binary mask): the percentiles meet, so use the full range.
            low, high = foreground.min(), foreground.max()
        if not high > low:
            low, high = min(values.min(), 0.0), max(values.max(), 0.0)
        if not high > low:
            raise XDiffusionError(f"cannot normalise intensities: every value is {low:g}")
        self.low, self.high = float(low), float(high)
        return self

    def forward(self, array: np.ndarray) -> np.ndarray:
        """Intensities -> float32 in [0, 1] (clipped at the fitted percentiles)."""
        low, high = self._range()
        scaled = (np.asarray(array, dtype=np.float64) - low) / (high - low)
        return np.clip(scaled, 0.0, 1.0).astype(np.float32)

    def inverse(self, array: np.ndarray) -> np.ndarray:
        """[0, 1] values -> float32 intensities in [low, high] (inputs are clipped to [0, 1] first)."""
        low, high = self._range()
        unit = np.clip(np.asarray(array, dtype=np.float64), 0.0, 1.0)
        return (low + unit * (high - low)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lower_percentile": self.lower_percentile,
            "upper_percentile": self.upper_percentile,
            "low": self.low,
            "high": self.high,
            "zero_floor": self.zero_floor,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IntensityNormalizer":
        return cls(
            lower_percentile=float(data["lower_percentile"]),
            upper_percentile=float(data["upper_percentile"]),
            low=None if data.get("low") is None else float(data["low"]),
            high=None if data.get("high") is None else float(data["high"]),
            zero_floor=bool(data.get("zero_floor", False)),
        )

    def _range(self) -> tuple[float, float]:
        if not self.fitted:
            raise RuntimeError("IntensityNormalizer is not fitted: call fit(values) first")
        return float(self.low), float(self.high)  # type: ignore[arg-type]
