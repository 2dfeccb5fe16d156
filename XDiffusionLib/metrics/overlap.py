"""Dice overlap per label of two label maps."""

from __future__ import annotations

import numpy as np

from ..errors import XDiffusionError


def dice_per_label(gt_labels, pred_labels, labels=None) -> dict[int, float]:
    """``{label: 2 |G & P| / (|G| + |P|)}`` over the whole volume, for each label.

    ``labels`` defaults to every non-zero label present in either map (0 is background). A label
    absent from both maps scores 1.0 (both agree it is not there), so asking for a label that
    neither contains never divides by zero.
    """
    gt = np.asarray(gt_labels)
    pred = np.asarray(pred_labels)
    if gt.shape != pred.shape:
        raise XDiffusionError(f"predicted label map shape {pred.shape} differs from ground truth shape {gt.shape}")
    if labels is None:
        labels = sorted((set(np.unique(gt).tolist()) | set(np.unique(pred).tolist())) - {0})
    scores: dict[int, float] = {}
    for label in labels:
        g = gt == label
        p = pred == label
        total = int(g.sum()) + int(p.sum())
        scores[int(label)] = 1.0 if total == 0 else 2.0 * int(np.logical_and(g, p).sum()) / total
    return scores
