"""Pose embedding: Condition.pose + keep flags -> a vector added to the U-Net time embedding.

The depth d gets sinusoidal features (a plain MLP on a scalar resolves neighbouring depths
poorly); the rest of the pose (rotation 6D, plane one-hot, input positions and mask) goes in as is.
The keep flags tell a dropped pose (zeros) from a real one at the cube centre.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .conditioning import Condition
from .config import XDiffusionConfig

DEPTH_INDEX = 6  # pose = [rotation 6D (0..5), depth (6), plane one-hot, positions, mask]


class PoseEmbedding(nn.Module):
    """MLP from the pose features to an ``out_dim`` embedding."""

    def __init__(self, config: XDiffusionConfig, out_dim: int) -> None:
        super().__init__()
        self.frequencies = config.depth_frequencies
        in_dim = config.pose_dim + 2 + 2 * self.frequencies
        self.mlp = nn.Sequential(nn.Linear(in_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def features(self, cond: Condition) -> torch.Tensor:
        depth = cond.pose[:, DEPTH_INDEX : DEPTH_INDEX + 1]
        scales = math.pi * (2.0 ** torch.arange(self.frequencies, device=depth.device, dtype=depth.dtype))
        angles = depth * scales
        keep_pose = cond.keep[:, 1:2]
        fourier = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1) * keep_pose
        return torch.cat([cond.pose, cond.keep, fourier], dim=1)

    def forward(self, cond: Condition) -> torch.Tensor:
        return self.mlp(self.features(cond))
