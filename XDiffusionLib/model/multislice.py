"""Multi-slice reduction: K input slices -> the channels the denoiser concatenates (paper §3.2).

- ``ProductReduction`` (no parameters): the paper's x = 1/(K-1) sum_j x_j * x_{j+1} over slices
  sorted by position (K = 1: x itself), computed on [0, 1] intensities so background stays 0,
  returned in network range; all slices dropped -> zeros (the null condition).
- ``AttentionReduction`` (learned): per-slice conv features plus a position embedding, pooled per
  pixel with a softmax over slices whose query comes from the target pose; padded/dropped slices
  are masked out. Lets the model weigh near slices more than far ones for the section at hand.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .conditioning import Condition, from_network, to_network
from .config import XDiffusionConfig
from .pose import PoseEmbedding


class ProductReduction(nn.Module):
    out_channels = 1

    def forward(self, cond: Condition) -> torch.Tensor:
        mask = cond.slice_mask[:, :, None, None].to(cond.slices.dtype)
        x = from_network(cond.slices) * mask
        count = cond.slice_mask.sum(dim=1)
        if x.shape[1] > 1:
            pair_mask = mask[:, :-1] * mask[:, 1:]
            pairs = (x[:, :-1] * x[:, 1:] * pair_mask).sum(dim=1) / pair_mask.sum(dim=1).clamp_min(1.0)
        else:
            pairs = torch.zeros_like(x[:, 0])
        reduced = torch.where((count > 1)[:, None, None], pairs, x[:, 0])
        out = torch.where((count > 0)[:, None, None], to_network(reduced), torch.zeros_like(reduced))
        return out.unsqueeze(1)


class AttentionReduction(nn.Module):
    def __init__(self, config: XDiffusionConfig) -> None:
        super().__init__()
        channels = config.multislice_channels
        self.out_channels = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1)
        )
        self.position = nn.Sequential(nn.Linear(2 * config.depth_frequencies, channels), nn.SiLU(), nn.Linear(channels, channels))
        self.frequencies = config.depth_frequencies
        self.query = PoseEmbedding(config, channels)

    def _position_features(self, positions: torch.Tensor) -> torch.Tensor:
        scales = math.pi * (2.0 ** torch.arange(self.frequencies, device=positions.device, dtype=positions.dtype))
        angles = positions[..., None] * scales
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)

    def forward(self, cond: Condition) -> torch.Tensor:
        b, k, s, _ = cond.slices.shape
        feats = self.features(cond.slices.reshape(b * k, 1, s, s)).reshape(b, k, -1, s, s)
        # Slice positions come from the pose summary: [6D, d, plane(3), positions(K_max), mask(K_max)].
        positions = cond.pose[:, 10 : 10 + k]
        feats = feats + self.position(self._position_features(positions))[..., None, None]
        query = self.query(cond)  # (B, F)
        logits = (feats * query[:, None, :, None, None]).sum(dim=2) / math.sqrt(feats.shape[2])  # (B, K, S, S)
        valid = cond.slice_mask[:, :, None, None] > 0
        logits = logits.masked_fill(~valid, float("-inf"))
        weights = torch.softmax(logits, dim=1)
        weights = torch.nan_to_num(weights, nan=0.0)  # all slices dropped -> zero output
        return (weights.unsqueeze(2) * feats).sum(dim=1)


class NoReduction(nn.Module):
    """``multislice="none"``: the slices reach the model through an aligned prior (the anchor) instead."""

    def forward(self, cond: Condition) -> torch.Tensor:
        b, _, h, w = cond.image.shape
        return cond.image.new_zeros(b, 0, h, w)


def build_reduction(config: XDiffusionConfig) -> nn.Module:
    if config.multislice == "none":
        return NoReduction()
    return ProductReduction() if config.multislice == "product" else AttentionReduction(config)
