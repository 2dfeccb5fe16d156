"""The maps a reader sees beside a reconstruction (difference and uncertainty): their sign, colours
and windows, declared once for the figures, the Slicer module and the web app.

The difference is real - generated, in the volume's intensity units: positive (red to yellow) where
the reconstruction is too dark, negative (blue to light blue) where it is too bright. Its colours
are dark at 0, as in a reading room: a good reconstruction is a dark, quiet map in which the large
errors glow, and the map's labels stay readable on it. The middle is a very dark grey, not black,
so the extent of the slice remains visible against the viewer's black background.

The uncertainty (>= 0) runs from black (certain) through purple and orange to pale yellow.
"""

from __future__ import annotations

import numpy as np

DIFFERENCE_TITLE = "difference (real - generated)"
DIFFERENCE_UNITS = "intensity units of the volume"

# Anchor colours (position 0..1 over the window, RGB 0..1), linearly interpolated.
DIFFERENCE_COLOURS = (
    (0.0, (0.65, 0.85, 1.0)),
    (0.25, (0.15, 0.45, 0.95)),
    (0.5, (0.06, 0.06, 0.06)),
    (0.75, (0.95, 0.20, 0.10)),
    (1.0, (1.0, 0.85, 0.45)),
)
UNCERTAINTY_COLOURS = (
    (0.0, (0.0, 0.0, 0.0)),
    (0.35, (0.35, 0.05, 0.55)),
    (0.7, (0.95, 0.45, 0.10)),
    (1.0, (1.0, 1.0, 0.75)),
)
WINDOW_PERCENTILE = 99.5  # a few outliers do not wash out the rest of a map


def difference(real: np.ndarray, generated: np.ndarray) -> np.ndarray:
    """The difference map, real - generated, as float32."""
    return np.asarray(real, dtype=np.float32) - np.asarray(generated, dtype=np.float32)


def ramp(anchors, count: int = 256) -> np.ndarray:
    """``count`` RGB colours (rows, 0..1) interpolated between ``anchors``."""
    positions = np.array([p for p, _ in anchors])
    colours = np.array([c for _, c in anchors])
    t = np.linspace(0.0, 1.0, count)
    return np.stack([np.interp(t, positions, colours[:, c]) for c in range(3)], axis=1)


def upper_limit(array: np.ndarray, percentile: float = WINDOW_PERCENTILE) -> float:
    """Top of a window from 0 for a map >= 0: its ``percentile`` (its maximum when that is 0; never 0)."""
    values = np.asarray(array, dtype=np.float64)
    high = float(np.percentile(values, percentile)) if values.size else 0.0
    if high <= 0.0:
        high = float(values.max()) if values.size else 0.0
    return high if high > 0.0 else 1.0


def symmetric_limit(array: np.ndarray, percentile: float = WINDOW_PERCENTILE) -> float:
    """Half-width of a window centred on 0 that covers ``percentile`` % of |values| (never 0)."""
    return upper_limit(np.abs(np.asarray(array, dtype=np.float64)), percentile)
