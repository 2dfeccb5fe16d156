"""Through-plane sharpness: is the volume as sharp between the input slices as the truth is?

A method that cross-fades (blends) the input slices draws every structure twice at half contrast
and changes slowly from slice to slice: its gradient along the input axis collapses, even where
whole-volume PSNR and SSIM look fine. This ratio measures exactly that.

Definition. Let ``a`` be the input (slice) axis, ``v[i]`` slice ``i`` along it, and
``D_i = |v[i+1] - v[i]|`` the absolute forward difference between neighbouring slices. The
through-plane gradient energy of a volume is the mean of ``D_i(x)`` over every pair of neighbours
``(i, i+1)`` that are not both input slices (a difference between two input slices is exact for
every method and would pull the ratio to 1) and every in-plane position ``x`` where the ground
truth's head mask holds on slice ``i`` or slice ``i+1`` (inside the head, its through-plane edges
included; the background is flat in both and says nothing). The sharpness ratio is the output's
energy over the truth's, on the same voxels: 1.0 for a perfect reconstruction, below 1 for a blur
or cross-fade, above 1 for added noise or structure. NaN when no pair counts or the truth's energy
is 0.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import XDiffusionError
from ._checks import as_pair


def scored_pairs(head: np.ndarray, axis: int, indices: Sequence[int]) -> np.ndarray:
    """Mask of the forward differences that count (shape of ``head`` minus one along ``axis``):
    inside the head on either slice of the pair, and not both slices inputs."""
    head = np.asarray(head, dtype=bool)
    if head.ndim != 3 or axis not in (0, 1, 2):
        raise XDiffusionError(f"sharpness needs a 3D head mask and an axis 0, 1 or 2, got shape {head.shape}, axis {axis!r}")
    depth = head.shape[axis]
    is_input = np.zeros(depth, dtype=bool)
    for index in indices:
        if not 0 <= int(index) < depth:
            raise XDiffusionError(f"input slice {index} outside the axis (0..{depth - 1})")
        is_input[int(index)] = True
    keep = ~(is_input[:-1] & is_input[1:])
    lower = np.take(head, np.arange(depth - 1), axis=axis)
    upper = np.take(head, np.arange(1, depth), axis=axis)
    other = tuple(a for a in range(3) if a != axis)
    return (lower | upper) & np.expand_dims(keep, other)


def through_plane_energy(volume: np.ndarray, pairs: np.ndarray, axis: int) -> float:
    """Mean absolute forward difference along ``axis`` over the ``pairs`` mask (``scored_pairs``)."""
    differences = np.abs(np.diff(np.asarray(volume, dtype=np.float64), axis=axis))
    if differences.shape != pairs.shape:
        raise XDiffusionError(f"difference shape {differences.shape} differs from the pair mask shape {pairs.shape}")
    return float(differences[pairs].mean()) if pairs.any() else float("nan")


def sharpness_ratio(gt, pred, head, axis: int, indices: Sequence[int]) -> float:
    """Through-plane gradient energy of ``pred`` over that of ``gt`` (module docstring).

    ``head``: the ground truth's head mask (``baselines.foreground.head_mask``); ``axis``: the
    input slices' axis; ``indices``: the input slices along it.
    """
    gt_arr, pred_arr = as_pair(gt, pred)
    head = np.asarray(head)
    if head.shape != gt_arr.shape:
        raise XDiffusionError(f"head mask shape {head.shape} differs from volume shape {gt_arr.shape}")
    pairs = scored_pairs(head, axis, indices)
    truth = through_plane_energy(gt_arr, pairs, axis)
    if not truth > 0.0:  # also NaN: nothing to compare against
        return float("nan")
    return through_plane_energy(pred_arr, pairs, axis) / truth
