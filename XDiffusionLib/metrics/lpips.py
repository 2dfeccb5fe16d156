"""LPIPS per canonical plane, from local backbone weights only.

LPIPS is only meaningful with its trained backbone and heads; a randomly initialised backbone
gives numbers that look plausible and mean nothing, so without weights this refuses to run.
Weight file layout: ``metrics.lpips_net``.
"""

from __future__ import annotations

import numpy as np

from ..errors import XDiffusionError
from ..inputs import PLANE_AXIS
from ._checks import as_pair

NO_WEIGHTS_MESSAGE = (
    "LPIPS needs backbone weights: pass --lpips-weights PATH (a local AlexNet/VGG state dict); no backbone is downloaded"
)


def lpips_per_plane(
    gt,
    pred,
    backbone_weights: str | None,
    data_range: tuple[float, float] | None = None,
    device: str = "cpu",
    batch_size: int = 16,
) -> dict[str, float]:
    """``{"axial", "coronal", "sagittal"}`` -> mean LPIPS distance over the slices of that plane.

    Both volumes are mapped to [-1, 1] with ONE linear map fixed by ``data_range`` = (low, high)
    (default: the ground truth's min and max), clipped, and fed as 3 identical channels.
    """
    if not backbone_weights:
        raise XDiffusionError(NO_WEIGHTS_MESSAGE)
    # torch: only when LPIPS is asked for (every other metric is numpy)
    import torch

    from .lpips_net import MIN_SIDE, load_lpips

    gt_arr, pred_arr = as_pair(gt, pred)
    if gt_arr.ndim != 3:
        raise XDiffusionError(f"LPIPS per plane needs 3D volumes, got shape {gt_arr.shape}")
    low, high = data_range if data_range is not None else (float(gt_arr.min()), float(gt_arr.max()))
    if not high > low:
        raise XDiffusionError(f"LPIPS needs a data range with high > low, got ({low:g}, {high:g})")
    net = load_lpips(backbone_weights, device=device)
    min_side = MIN_SIDE[net.architecture]

    def to_images(array: np.ndarray) -> np.ndarray:
        return np.clip(2.0 * (array - low) / (high - low) - 1.0, -1.0, 1.0).astype(np.float32)

    gt_img, pred_img = to_images(gt_arr), to_images(pred_arr)
    scores: dict[str, float] = {}
    with torch.no_grad():
        for plane in ("axial", "coronal", "sagittal"):
            axis = PLANE_AXIS[plane]
            a = np.moveaxis(gt_img, axis, 0)
            b = np.moveaxis(pred_img, axis, 0)
            if min(a.shape[1:]) < min_side:
                raise XDiffusionError(
                    f"{plane} slices of shape {a.shape[1:]} are too small for the {net.architecture} LPIPS backbone (needs >= {min_side})"
                )
            distances = []
            for start in range(0, a.shape[0], batch_size):
                ta = torch.from_numpy(np.ascontiguousarray(a[start : start + batch_size]))[:, None].expand(-1, 3, -1, -1)
                tb = torch.from_numpy(np.ascontiguousarray(b[start : start + batch_size]))[:, None].expand(-1, 3, -1, -1)
                distances.append(net(ta.to(device), tb.to(device)).cpu())
            scores[plane] = float(torch.cat(distances).mean())
    return scores
