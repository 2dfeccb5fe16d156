"""The evaluation protocol: one fixed, written, leak-free way to score a slices-to-volume method.

Published numbers for this task are hard to compare because each codebase picks its own input
slices, PSNR convention and whether the input slices count (field notes §1). ``xdiffusion
evaluate`` follows exactly these rules, and records every choice in ``protocol.json``.

1. Case. Each volume is read (``io.read_volume``, float32) and brought to canonical RAS+ voxel
   order (``transforms.orientation.to_canonical``: axis permutations and flips only, no
   resampling). Everything below happens in canonical space; the metrics do not depend on the
   orientation, and planes and indices mean the same thing for every case (sagittal = axis 0,
   coronal = axis 1, axial = axis 2). Volumes whose voxels take at most 16 distinct integer
   values are label maps, not MRI intensities: an explicitly named one is an error, one found in
   a folder (or among the shipped samples) is skipped with a note.
2. Input slices. Given with ``--indices`` (the same canonical indices for every case), or chosen
   deterministically from the ground truth's foreground extent along the plane's axis:
   foreground = voxels above 10% of the robust range (1st..99th percentile,
   ``baselines.foreground``); the extent [lo, hi] is cut into K equal bins and the input is the
   slice at each bin's centre (``floor(c + 0.5)``). K=1 gives the middle of the head; K>1 spreads
   the slices uniformly with the outermost ones half a bin inside the extent (slices right at the
   head's edge are nearly empty and would waste an input). If the extent holds fewer than K
   slices, the whole axis is used instead; K larger than the axis is an error. The same indices
   are used for every method (as the paper's C.4 asks: fixed inputs shared by all models).
3. What a method sees. Only ``SliceInput.from_volume(canonical, plane, indices)``: the grid
   geometry and the K input slices. The ground truth never reaches the method (leak-free by
   construction); the output must lie on exactly the input grid.
4. Metrics, against the canonical ground truth, in ``metrics``:
   - ``psnr_paper``: paper eq. 4, ``10 log10(max(gt)^2 / MSE)`` over every voxel of the volume,
     in the data's own units (input slices included: they are exact for every method, so this
     rewards nothing a method did not do, but it is the paper's number).
   - ``psnr_paper_noninput``: the same over the voxels of the non-input slices only (peak = max
     of the ground truth over those voxels, as ``metrics.psnr_paper`` does with a mask). This is
     the honest number: it measures only what was generated. NaN when every slice is an input.
   - ``psnr_unit``: TPDM's convention: the ground truth's [min, max] is mapped to [0, 1] and the
     SAME affine map is applied to the prediction, both are clipped to [0, 1], data range 1.
     (Never a separate min-max of the prediction: that would hide intensity errors.)
   - ``ssim_axial`` / ``ssim_coronal`` / ``ssim_sagittal``: mean 2D SSIM over all slices of each
     canonical plane (Gaussian window 11x11, sigma 1.5, data range = ground-truth max - min).
   - ``head_ssim_axial`` / ``head_ssim_coronal`` / ``head_ssim_sagittal``: SSIM inside the ground
     truth's head. The head is ``baselines.foreground.head_mask`` of the ground truth (the
     foreground above, closed by 2 voxels, enclosed holes filled). The same SSIM map as above
     (same window, constants, data range and valid region) is averaged over the head voxels of
     each slice of the plane, then over the slices holding any head voxel in SSIM's valid region
     (slices without one are skipped). Whole-slice SSIM is mostly background, which every method gets right.
     ``head_ssim``: the mean of the three planes.
   - ``sharpness_through_plane``: through-plane gradient energy of the output over the truth's
     (``metrics.sharpness``): along the input axis, the mean absolute difference between
     neighbouring slices ``|v[i+1] - v[i]|``, over the pairs of neighbours that are not both input
     slices and the in-plane positions where the ground truth's head holds on either slice of the
     pair; output / truth on the same voxels. 1.0 is as sharp as the truth, below 1 is blurred or
     cross-faded between the inputs. NaN when every slice is an input.
   - ``seconds``: wall time of ``method.reconstruct`` alone (no reading, no scoring).
5. Summary per (method, K): number of cases, mean and population std (ddof 0) of ``psnr_paper``,
   mean ``psnr_unit``, mean SSIM (over cases of the mean of the three planes), and the means over
   cases of ``head_ssim`` (and of each plane's head SSIM) and of ``sharpness_through_plane``.
"""

from __future__ import annotations

import math

import numpy as np

from ..baselines.foreground import bounding_box, foreground_mask, head_mask
from ..errors import XDiffusionError
from ..io.volume import Volume
from ..metrics import psnr_all, psnr_paper, sharpness_ratio, ssim_per_plane
from ..inputs import LABEL_MAP_MAX_VALUES, label_value_count, plane_axis  # noqa: F401  (the rule of step 1 lives in inputs)

PROTOCOL_VERSION = 2  # 2: head SSIM per plane and through-plane sharpness

METRIC_COLUMNS = (
    "psnr_paper",
    "psnr_unit",
    "psnr_paper_noninput",
    "ssim_axial",
    "ssim_coronal",
    "ssim_sagittal",
    "head_ssim_axial",
    "head_ssim_coronal",
    "head_ssim_sagittal",
    "head_ssim",
    "sharpness_through_plane",
)


def canonical_case(volume: Volume) -> Volume:
    """Step 1: the case in canonical RAS+ voxel order."""
    from ..transforms.orientation import to_canonical  # SimpleITK: loaded when a case is read

    canonical, _ = to_canonical(volume)
    return canonical


def foreground_extent(array: np.ndarray, axis: int) -> tuple[int, int]:
    """First and last slice along ``axis`` holding foreground; the whole axis when there is none."""
    box = bounding_box(foreground_mask(array), axis)
    return box if box is not None else (0, array.shape[axis] - 1)


def choose_indices(array: np.ndarray, plane: str, k: int) -> tuple[int, ...]:
    """Step 2: K input slice indices at the bin centres of the foreground extent along ``plane``'s axis."""
    axis = plane_axis(plane)
    depth = array.shape[axis]
    if k < 1:
        raise XDiffusionError(f"K={k}: the number of input slices must be at least 1")
    if k > depth:
        raise XDiffusionError(f"K={k} input slices but the volume has only {depth} {plane} slices")
    low, high = foreground_extent(array, axis)
    if high - low + 1 < k:
        low, high = 0, depth - 1
    # Bin centres are >= 1 slice apart when K <= length, and floor(c + 0.5) keeps them distinct.
    return tuple(int(math.floor(c + 0.5)) for c in bin_centres(low, high, k))


def bin_centres(low: int, high: int, k: int) -> np.ndarray:
    """Centres of K equal bins over the inclusive slice range [low, high] (continuous indices)."""
    length = high - low + 1
    return low - 0.5 + (np.arange(k) + 0.5) * length / k


def noninput_mask(shape: tuple[int, int, int], plane: str, indices) -> np.ndarray:
    """True on every voxel that is not on an input slice."""
    axis = plane_axis(plane)
    keep = np.ones(shape[axis], dtype=bool)
    keep[list(indices)] = False
    return np.broadcast_to(np.expand_dims(keep, tuple(a for a in range(3) if a != axis)), shape)


def score(ground_truth: np.ndarray, prediction: np.ndarray, plane: str, indices,
          head: np.ndarray | None = None) -> dict[str, float]:
    """Step 4: every metric of one reconstruction (``METRIC_COLUMNS``).

    ``head``: the ground truth's ``head_mask`` when the caller already has it (it depends on the
    truth alone, so one per case serves every method and K); computed here otherwise.
    """
    # The metrics work in float64: convert once here rather than once per metric.
    gt = np.asarray(ground_truth, dtype=np.float64)
    pred = np.asarray(prediction, dtype=np.float64)
    head = head_mask(gt) if head is None else head
    both = psnr_all(gt, pred)
    mask = noninput_mask(gt.shape, plane, indices)
    noninput = psnr_paper(gt, pred, mask) if mask.any() else math.nan
    ssim = ssim_per_plane(gt, pred, mask=head)
    head_planes = [ssim["head_axial"], ssim["head_coronal"], ssim["head_sagittal"]]
    return {
        "psnr_paper": both["psnr_paper"],
        "psnr_unit": both["psnr_unit"],
        "psnr_paper_noninput": noninput,
        "ssim_axial": ssim["axial"],
        "ssim_coronal": ssim["coronal"],
        "ssim_sagittal": ssim["sagittal"],
        "head_ssim_axial": ssim["head_axial"],
        "head_ssim_coronal": ssim["head_coronal"],
        "head_ssim_sagittal": ssim["head_sagittal"],
        "head_ssim": float(np.mean(head_planes)),
        "sharpness_through_plane": sharpness_ratio(gt, pred, head, plane_axis(plane), indices),
    }
