"""A deliberately simple automatic tumour segmentation, the same for a ground truth and a reconstruction.

Used by ``scripts/hallucination_check.py`` (paper Table I): the point is to apply one fixed rule to
both volumes, so any difference between the two masks comes from the images.

- ``brain_mask``: the ground truth's head (``baselines.foreground.head_mask``) eroded by ``erode_mm`` so the
  scalp, skull and face layers (about 20 mm in the synthetic heads) are left out;
- ``segment_anomaly``: voxels of the brain that depart from a *healthy reference* (in the
  hallucination check the synthetic subject's healthy twin, computed once and used for both
  volumes) by more than a threshold, opened once (6-neighbourhood) and kept as connected components of at least
  ``min_voxels`` (26-connectivity): a tumour with its edema is such an anomaly, in any contrast;
- ``tumour_window`` / ``segment_tumour``: the same with an intensity window (the 10th..90th
  percentile of the truth inside the label) instead of a reference; it needs the label, and
  healthy tissue of the same intensity falls inside the window (kept for comparison).

``invented_regions`` answers "did the reconstruction make a structure the truth does not have":
compact regions inside the brain where the reconstruction departs from the truth by more than
``threshold`` *and* from a reference (the deterministic anchor) by more than half of it, so the
structure comes from the generative part, not from the anchor's ordinary error.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .overlap import dice_per_label


def brain_mask(head: np.ndarray, spacing_mm: float, erode_mm: float = 20.0) -> np.ndarray:
    """``head`` (the ground truth's head mask) eroded by ``erode_mm`` (module docstring)."""
    iterations = max(1, int(round(float(erode_mm) / float(spacing_mm))))
    return ndimage.binary_erosion(head, iterations=iterations, border_value=0)


def tumour_window(truth: np.ndarray, label_mask: np.ndarray) -> tuple[float, float]:
    values = np.asarray(truth)[np.asarray(label_mask, dtype=bool)]
    if values.size == 0:
        raise ValueError("empty tumour label")
    low, high = np.percentile(values, [10.0, 90.0])
    return float(low), float(high)


def keep_components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return sizes[labels] >= int(min_voxels)


def segment_tumour(image: np.ndarray, window: tuple[float, float], brain: np.ndarray, min_voxels: int) -> np.ndarray:
    low, high = window
    image = np.asarray(image)
    mask = brain & (image >= low) & (image <= high)
    mask = ndimage.binary_opening(mask, structure=ndimage.generate_binary_structure(3, 1))
    return keep_components(mask, min_voxels)


def segment_anomaly(image: np.ndarray, reference: np.ndarray, brain: np.ndarray, threshold: float,
                    min_voxels: int) -> np.ndarray:
    away = brain & (np.abs(np.asarray(image, np.float32) - np.asarray(reference, np.float32)) > threshold)
    away = ndimage.binary_opening(away, structure=ndimage.generate_binary_structure(3, 1))
    return keep_components(away, min_voxels)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks; 1 when both are empty (``overlap.dice_per_label`` on label 1)."""
    return dice_per_label(np.asarray(a, dtype=bool).astype(np.uint8), np.asarray(b, dtype=bool).astype(np.uint8), [1])[1]


def invented_regions(reconstruction: np.ndarray, truth: np.ndarray, reference: np.ndarray | None, brain: np.ndarray,
                     threshold: float, min_voxels: int) -> tuple[int, int]:
    """(number of regions, voxels in them) per the module docstring; ``reference`` None: the
    reconstruction's own departures from the truth (for the reference method itself)."""
    reconstruction = np.asarray(reconstruction, np.float32)
    away = np.abs(reconstruction - np.asarray(truth, np.float32)) > threshold
    if reference is not None:
        away &= np.abs(reconstruction - np.asarray(reference, np.float32)) > threshold / 2
    kept = keep_components(away & brain, min_voxels)
    count = ndimage.label(kept, structure=np.ones((3, 3, 3), dtype=bool))[1]
    return int(count), int(kept.sum())


__all__ = ["brain_mask", "dice", "invented_regions", "keep_components", "segment_anomaly", "segment_tumour",
           "tumour_window"]
