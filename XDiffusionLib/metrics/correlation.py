"""Pearson correlation (e.g. of brain volumes measured on ground truth and reconstructions)."""

from __future__ import annotations

import numpy as np

from ..errors import XDiffusionError


def pearson_r(a, b) -> float:
    """Pearson's r of two equally long sequences (arrays are flattened)."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise XDiffusionError(f"pearson_r needs equally many values, got {x.size} and {y.size}")
    if x.size < 2:
        raise XDiffusionError(f"pearson_r needs at least 2 values, got {x.size}")
    dx, dy = x - x.mean(), y - y.mean()
    norm = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    if norm == 0.0:
        raise XDiffusionError("pearson_r is undefined when one of the sequences is constant")
    return float(np.clip((dx * dy).sum() / norm, -1.0, 1.0))
