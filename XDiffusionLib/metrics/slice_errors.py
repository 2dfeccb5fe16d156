"""Error per slice against its distance to the nearest input slice (paper Fig. XV / D.5)."""

from __future__ import annotations

import numpy as np

from ..errors import XDiffusionError
from ._checks import as_pair
from .psnr import psnr_from_mse


def error_by_distance(gt, pred, axis: int, input_indices) -> list[dict]:
    """One row per slice along ``axis``: ``{"index", "distance", "mse", "psnr_paper"}``.

    distance = |index - nearest input index| in slices (0 for the input slices themselves).
    psnr_paper uses the WHOLE volume's max(gt) as peak so that slices compare on one scale
    (a background slice has no peak of its own); a perfect slice gives inf.
    """
    gt_arr, pred_arr = as_pair(gt, pred)
    if gt_arr.ndim != 3 or axis not in (0, 1, 2):
        raise XDiffusionError(f"error_by_distance needs 3D volumes and axis 0, 1 or 2, got shape {gt_arr.shape}, axis {axis!r}")
    depth = gt_arr.shape[axis]
    inputs = np.array(sorted({int(i) for i in input_indices}), dtype=np.int64)
    if inputs.size == 0:
        raise XDiffusionError("error_by_distance needs at least one input slice index")
    if inputs.min() < 0 or inputs.max() >= depth:
        raise XDiffusionError(f"input slice indices {inputs.tolist()} fall outside 0..{depth - 1} along axis {axis}")
    peak = float(gt_arr.max())
    if peak <= 0.0:
        raise XDiffusionError(f"psnr_paper needs a positive ground-truth maximum, got {peak:g}")
    squared = np.moveaxis((gt_arr - pred_arr) ** 2, axis, 0).reshape(depth, -1).mean(axis=1)
    rows = []
    for index in range(depth):
        distance = int(np.abs(inputs - index).min())
        rows.append(
            {"index": index, "distance": distance, "mse": float(squared[index]), "psnr_paper": psnr_from_mse(float(squared[index]), peak)}
        )
    return rows


def mean_error_by_distance(rows: list[dict], peak: float) -> list[dict]:
    """Group ``error_by_distance`` rows by distance: ``{"distance", "n_slices", "mse", "psnr_paper"}``.

    mse is the mean over the slices at that distance; psnr_paper is computed from that mean MSE
    with ``peak`` (the volume's max(gt)), so it is the PSNR of those slices taken together.
    """
    grouped: dict[int, list[float]] = {}
    for row in rows:
        grouped.setdefault(int(row["distance"]), []).append(float(row["mse"]))
    out = []
    for distance in sorted(grouped):
        values = grouped[distance]
        mean_mse = float(np.mean(values))
        out.append({"distance": distance, "n_slices": len(values), "mse": mean_mse, "psnr_paper": psnr_from_mse(mean_mse, peak)})
    return out
