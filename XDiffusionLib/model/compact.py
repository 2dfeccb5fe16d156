"""``CompactDenoiser``: the CPU-sized cross-sectional denoiser (profile ``"compact"``).

A pixel-space diffusers ``UNet2DModel`` (no VAE: at 64x64 a latent space would cost more than it
saves) whose input is [noisy section, aligned priors, reduced input slices] and whose time
embedding gets the pose embedding added (``class_embed_type="identity"``), the way Zero-1-to-3
feeds the pose next to the image. Same forward signature as every profile:
``forward(noisy (B,1,S,S), timesteps (B,), cond: Condition) -> (B,1,S,S)`` (epsilon or v, per
``config.prediction_type``).
"""

from __future__ import annotations

import torch
from diffusers import UNet2DModel

from .conditioning import Condition
from .config import XDiffusionConfig
from .denoiser import Denoiser
from .multislice import build_reduction
from .pose import PoseEmbedding


class CompactDenoiser(Denoiser):
    def __init__(self, config: XDiffusionConfig) -> None:
        super().__init__()
        self.config = config
        levels = len(config.block_out_channels)
        down = tuple("AttnDownBlock2D" if i in config.attention_levels else "DownBlock2D" for i in range(levels))
        up = tuple("AttnUpBlock2D" if levels - 1 - i in config.attention_levels else "UpBlock2D" for i in range(levels))
        self.unet = UNet2DModel(
            sample_size=config.side,
            in_channels=config.in_channels,
            out_channels=1,
            block_out_channels=config.block_out_channels,
            down_block_types=down,
            up_block_types=up,
            layers_per_block=config.layers_per_block,
            attention_head_dim=config.attention_head_dim,
            norm_num_groups=config.norm_num_groups,
            class_embed_type="identity",
        )
        self.reduction = build_reduction(config)
        self.pose_embedding = PoseEmbedding(config, out_dim=config.block_out_channels[0] * 4)

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Condition) -> torch.Tensor:
        x = torch.cat([noisy, cond.image.to(noisy.dtype), self.reduction(cond).to(noisy.dtype)], dim=1)
        emb = self.pose_embedding(cond)
        return self.unet(x, timesteps, class_labels=emb).sample
