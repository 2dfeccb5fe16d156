"""Shared input checks for the metrics: same shapes, finite values, usable masks."""

from __future__ import annotations

import numpy as np

from ..errors import XDiffusionError


def as_pair(gt, pred, name: str = "prediction") -> tuple[np.ndarray, np.ndarray]:
    """Both arrays as float64 with equal shapes, or a clear error."""
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if gt.shape != pred.shape:
        raise XDiffusionError(f"{name} shape {pred.shape} differs from ground truth shape {gt.shape}")
    if gt.size == 0:
        raise XDiffusionError("cannot score empty volumes")
    if not (np.isfinite(gt).all() and np.isfinite(pred).all()):
        raise XDiffusionError(f"ground truth or {name} contains NaN or infinite values")
    return gt, pred


def as_mask(mask, shape: tuple[int, ...]) -> np.ndarray | None:
    """A boolean mask of ``shape`` selecting at least one voxel, or None."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise XDiffusionError(f"mask shape {mask.shape} differs from volume shape {shape}")
    mask = mask.astype(bool)
    if not mask.any():
        raise XDiffusionError("mask selects no voxels: nothing to score")
    return mask
