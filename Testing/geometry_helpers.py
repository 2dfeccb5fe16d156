"""Geometry the tests need beyond the library: the axis permutation of a canonical plane and the
whole rotated volume R.X, built from the library's own cross-sections (the sampler only ever
needs sections; the tests check that stacking them is the rotated volume)."""

from __future__ import annotations

import torch

from XDiffusionLib.geometry import cross_section, depth_index_to_normalised
from XDiffusionLib.inputs import plane_axis


def plane_rotation(plane: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The axis permutation R (det +1) that makes canonical ``plane`` slices the depth planes of R.X:
    sagittal d = X[d], axial d = X[:, :, d], coronal d = X[:, d, :].T (a proper rotation cannot keep
    both in-plane axes in order)."""
    axis = plane_axis(plane)
    order = [axis, (axis + 1) % 3, (axis + 2) % 3]  # cyclic: det +1
    R_T = torch.zeros(3, 3, dtype=dtype or torch.get_default_dtype())
    for rotated_axis, canonical_axis in enumerate(order):
        R_T[canonical_axis, rotated_axis] = 1.0
    return R_T.T.contiguous()


def rotate_volume(volume: torch.Tensor, R: torch.Tensor, out_side: int | None = None, mode: str = "bilinear") -> torch.Tensor:
    """R.X on an ``out_side`` cube: every depth plane d is ``cross_section`` at depth d, stacked on
    the first spatial axis ((B, C, out, out, out) or (B, out, out, out), like the input)."""
    side = volume.shape[-1]
    out_side = side if out_side is None else out_side
    if R.ndim == 3 and volume.shape[0] == 1 and R.shape[0] > 1:
        volume = volume.expand(R.shape[0], *volume.shape[1:])
    planes = [cross_section(volume, R, depth_index_to_normalised(float(d), out_side), out_side, mode)
              for d in range(out_side)]
    return torch.stack(planes, dim=-3)
