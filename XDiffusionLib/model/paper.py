"""``PaperDenoiser``: the paper's Zero-1-to-3-style latent model (profile ``"paper"``).

What the paper (§3, §4.4, A.3) and the authors' code use, built from diffusers/transformers parts:
- a Stable-Diffusion-1.x ``UNet2DConditionModel`` on 32x32 latents of 256x256 images: channel
  multiples [1, 2, 4, 4] of 320, 2 ResNets per level, cross-attention (transformer depth 1,
  8 heads) at the three finest levels, context width 768, 8 input channels = noisy latent (4) +
  VAE latent of the conditioning image (4, the posterior *mode*, NOT multiplied by the 0.18215
  scale, as Zero-1-to-3 does);
- the SD ``AutoencoderKL`` (frozen): the target cross-section is denoised in its latent space
  (``encode``/``decode`` between (B,1,S,S) network-range images and scaled latents);
- a CLIP ViT-L/14 image encoder (frozen, ``CLIPVisionModelWithProjection``): one 768 token of the
  conditioning image, concatenated with the pose and projected back to 768 by ``cc_projection``
  (identity on the CLIP inputs, zero on the pose inputs and bias at initialisation, so a fresh
  model starts as the image-variations model it was fine-tuned from).

X-Diffusion's conditioning on this backbone: the conditioning image is the input slice reduced by
the config's multi-slice reduction (the paper's product or the learned one, ``multislice.py``);
the pose is ``Condition.pose`` = [rotation_6d(R), d, plane one-hot, input positions, mask], so
the projection is Linear(768 + P -> 768). The aligned priors (``Condition.image``) are not used:
the paper's model sees the input slice only.

Grayscale goes in as 3 equal channels: at ``image_size`` (256) for the VAE, at the CLIP encoder's
own ``image_size`` (224 for ViT-L/14: its position embeddings fix it) with CLIP's normalisation.

Classifier-free guidance (Zero-1-to-3): the ``keep`` flags of a condition mean, for this profile,
[concat latent present, CLIP embedding present]; the pose always stays. ``drop_condition`` draws
one r per sample: r < p_embedding drops the embedding, the next p_both drops both, the next
p_concat zeroes the concat latent. ``null_condition`` (the unconditional branch) drops both.

Sizes live in the config: ``block_out_channels``, ``layers_per_block``, ``attention_levels``,
``attention_head_dim`` (= number of heads, diffusers' SD-1.x convention), ``norm_num_groups`` for
the U-Net; ``profile_options`` for the rest (see ``PAPER_OPTIONS``). ``paper_config()`` gives the
paper's full-size config; loading pretrained base weights is ``paper_weights.py``.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import XDiffusionError
from .conditioning import Condition
from .config import XDiffusionConfig
from .denoiser import Denoiser
from .multislice import build_reduction

# profile_options of the paper profile and their paper values (SD-1.x VAE, CLIP ViT-L/14).
PAPER_OPTIONS: dict[str, Any] = {
    "image_size": 256,  # the VAE's input side; latents are image_size / 2**(len(vae_block_out_channels) - 1)
    "latent_channels": 4,
    "cross_attention_dim": 768,
    "transformer_layers": 1,
    "scaling_factor": 0.18215,
    "vae_block_out_channels": [128, 256, 512, 512],
    "vae_layers_per_block": 2,
    "vae_norm_num_groups": 32,
    "clip_hidden_size": 1024,
    "clip_intermediate_size": 4096,
    "clip_layers": 24,
    "clip_heads": 16,
    "clip_patch_size": 14,
    "clip_image_size": 224,
    # Zero-1-to-3 classifier-free guidance dropout (one draw per sample; probabilities in order)
    "cfg_dropout": {"embedding": 0.05, "both": 0.05, "concat": 0.05},
    # sampling: latents are not images in [-1, 1], so samplers must not clip x0 there
    "clip_sample": False,
    "vae_batch": 8,  # images per VAE/CLIP call (a 256x256 VAE decoder pass is memory-heavy)
}

# The architecture the paper fine-tunes (Zero-1-to-3 / SD image variations, 256x256 images).
PAPER_MODEL: dict[str, Any] = dict(
    profile="paper",
    side=155,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_levels=(0, 1, 2),
    attention_head_dim=8,
    norm_num_groups=32,
    prediction_type="epsilon",
    num_train_timesteps=1000,
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
)

CFG_KEYS = ("embedding", "both", "concat")
# CLIP's input normalisation (OpenAI CLIP statistics, what the ViT-L/14 encoder was trained with).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def paper_config(**changes: Any) -> XDiffusionConfig:
    """The paper's full-size config (1000-step scaled-linear epsilon model), with ``changes`` applied.

    ``profile_options`` in ``changes`` are merged over ``PAPER_OPTIONS``; the result always lists
    every option, so a saved ``config.json`` does not depend on later defaults.
    """
    options = {**copy.deepcopy(PAPER_OPTIONS), **dict(changes.pop("profile_options", {}) or {})}
    data = {**PAPER_MODEL, **changes, "profile": "paper", "profile_options": options}
    config = XDiffusionConfig(**data)
    paper_options(config)
    return config


def paper_options(config: XDiffusionConfig) -> dict[str, Any]:
    """The config's paper options with defaults filled in; XDiffusionError for a bad option."""
    unknown = sorted(set(config.profile_options) - set(PAPER_OPTIONS))
    if unknown:
        raise XDiffusionError(f"config profile_options: unknown paper option(s) {unknown}: known are {sorted(PAPER_OPTIONS)}")
    options = {**copy.deepcopy(PAPER_OPTIONS), **copy.deepcopy(config.profile_options)}
    vae_levels = len(options["vae_block_out_channels"])
    factor = 2 ** (vae_levels - 1)
    if int(options["image_size"]) % factor:
        raise XDiffusionError(f"config image_size {options['image_size']} must be divisible by the VAE factor {factor}")
    latent_side = int(options["image_size"]) // factor
    unet_factor = 2 ** (len(config.block_out_channels) - 1)
    if latent_side % unet_factor:
        raise XDiffusionError(
            f"config latent side {latent_side} (image_size {options['image_size']} / {factor}) must be divisible "
            f"by 2**{len(config.block_out_channels) - 1} for {len(config.block_out_channels)} U-Net levels"
        )
    if int(options["cross_attention_dim"]) % int(config.attention_head_dim):
        raise XDiffusionError(
            f"config cross_attention_dim {options['cross_attention_dim']} is not divisible by "
            f"attention_head_dim (heads) {config.attention_head_dim}"
        )
    probs = options["cfg_dropout"]
    bad = sorted(set(probs) - set(CFG_KEYS))
    values = [float(probs.get(k, 0.0)) for k in CFG_KEYS]
    if bad or any(not 0.0 <= v <= 1.0 for v in values) or sum(values) > 1.0:
        raise XDiffusionError(
            f"config profile_options cfg_dropout {probs}: keys from {', '.join(CFG_KEYS)}, "
            "probabilities in [0, 1] summing to at most 1"
        )
    return options


def _resize(images: torch.Tensor, side: int) -> torch.Tensor:
    if images.shape[-1] == side and images.shape[-2] == side:
        return images
    # antialias only matters (and is only supported for bilinear) when shrinking
    shrink = images.shape[-1] > side or images.shape[-2] > side
    return F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False, antialias=shrink)


class PaperDenoiser(Denoiser):
    """Latent-space denoiser: ``forward(noisy latents (B,4,h,w), timesteps (B,), cond) -> (B,4,h,w)``.

    ``latent_shape`` is (4, h, w); ``encode`` maps (B,1,S,S) network-range sections to scaled
    latents, ``decode`` maps latents back to (B,1,S,S) with S = ``config.side``.
    """

    def __init__(self, config: XDiffusionConfig) -> None:
        super().__init__()
        # diffusers and transformers: slow to import, only when a paper-profile network is built
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        options = paper_options(config)
        self.config = config
        self.options = options
        levels = len(config.block_out_channels)
        vae_channels = tuple(int(c) for c in options["vae_block_out_channels"])
        latent_channels = int(options["latent_channels"])
        context = int(options["cross_attention_dim"])
        self.image_size = int(options["image_size"])
        self.latent_side = self.image_size // 2 ** (len(vae_channels) - 1)
        self.scaling_factor = float(options["scaling_factor"])
        self.vae_batch = max(1, int(options["vae_batch"]))

        down = tuple("CrossAttnDownBlock2D" if i in config.attention_levels else "DownBlock2D" for i in range(levels))
        up = tuple("CrossAttnUpBlock2D" if levels - 1 - i in config.attention_levels else "UpBlock2D" for i in range(levels))
        self.unet = UNet2DConditionModel(
            sample_size=self.latent_side,
            in_channels=2 * latent_channels,
            out_channels=latent_channels,
            block_out_channels=config.block_out_channels,
            down_block_types=down,
            up_block_types=up,
            layers_per_block=config.layers_per_block,
            cross_attention_dim=context,
            attention_head_dim=config.attention_head_dim,  # SD-1.x: this number is the head count
            norm_num_groups=config.norm_num_groups,
            transformer_layers_per_block=int(options["transformer_layers"]),
        )
        self.vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
            up_block_types=("UpDecoderBlock2D",) * len(vae_channels),
            block_out_channels=vae_channels,
            layers_per_block=int(options["vae_layers_per_block"]),
            latent_channels=latent_channels,
            norm_num_groups=int(options["vae_norm_num_groups"]),
            sample_size=self.image_size,
            scaling_factor=self.scaling_factor,
        )
        self.image_encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=int(options["clip_hidden_size"]),
                intermediate_size=int(options["clip_intermediate_size"]),
                num_hidden_layers=int(options["clip_layers"]),
                num_attention_heads=int(options["clip_heads"]),
                patch_size=int(options["clip_patch_size"]),
                image_size=int(options["clip_image_size"]),
                projection_dim=context,
            )
        )
        self.cc_projection = nn.Linear(context + config.pose_dim, context)
        self.reduction = build_reduction(config)
        # A learned reduction gives several feature maps; the VAE and CLIP need one grey image.
        channels = self.reduction.out_channels
        self.to_image = nn.Conv2d(channels, 1, kernel_size=1) if channels != 1 else None
        self.register_buffer("clip_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("clip_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.reset_cc_projection()
        # Frozen as in Zero-1-to-3: only the U-Net, the projection (and a learned reduction) train.
        self.vae.requires_grad_(False)
        self.image_encoder.requires_grad_(False)
        self._feature_cache: list[tuple] = []

    # ---- pieces ------------------------------------------------------------------------------

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """Shape of one latent sample (channels, h, w): what a sampler draws its noise in."""
        return (int(self.options["latent_channels"]), self.latent_side, self.latent_side)

    @property
    def context_dim(self) -> int:
        return self.cc_projection.out_features

    def reset_cc_projection(self) -> None:
        """Identity on the CLIP-embedding inputs, zeros on the pose inputs and bias."""
        with torch.no_grad():
            weight = torch.zeros_like(self.cc_projection.weight)
            weight[:, : self.context_dim] = torch.eye(self.context_dim)
            self.cc_projection.weight.copy_(weight)
            self.cc_projection.bias.zero_()

    def train(self, mode: bool = True) -> "PaperDenoiser":
        super().train(mode)
        self.vae.eval()  # frozen parts never switch to training behaviour
        self.image_encoder.eval()
        return self

    def _apply(self, fn, *args, **kwargs):
        self._feature_cache = []  # device/dtype moves invalidate cached condition features
        return super()._apply(fn, *args, **kwargs)

    def _rgb(self, images: torch.Tensor, side: int) -> torch.Tensor:
        return _resize(images, side).expand(-1, 3, -1, -1)

    def encode(self, images: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,1,S,S) network-range sections -> scaled latents (B,4,h,w): posterior mode (or a sample) x scale."""
        dtype = self.vae.dtype
        out = []
        for chunk in images.split(self.vae_batch):
            posterior = self.vae.encode(self._rgb(chunk.to(dtype), self.image_size)).latent_dist
            out.append(posterior.sample(generator) if sample else posterior.mode())
        return torch.cat(out) * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B,4,h,w) -> (B,1,S,S) network-range sections (grey = mean of the 3 channels)."""
        side = self.config.side
        out = []
        for chunk in latents.split(self.vae_batch):
            rgb = self.vae.decode(chunk.to(self.vae.dtype) / self.scaling_factor).sample
            out.append(_resize(rgb.float().mean(dim=1, keepdim=True), side))
        return torch.cat(out)

    def condition_image(self, cond: Condition) -> torch.Tensor:
        """The conditioning image (B,1,S,S), network range: the reduced input slices."""
        reduced = self.reduction(cond)
        if self.to_image is not None:
            reduced = torch.tanh(self.to_image(reduced))
        return reduced

    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(concat latent (mode, unscaled), CLIP embedding) of (B,1,S,S) conditioning images."""
        latents, embeds = [], []
        clip_side = int(self.image_encoder.config.image_size)
        for chunk in images.split(self.vae_batch):
            chunk = chunk.to(self.vae.dtype)
            latents.append(self.vae.encode(self._rgb(chunk, self.image_size)).latent_dist.mode())
            pixels = (self._rgb(chunk, clip_side) + 1.0) * 0.5
            pixels = (pixels - self.clip_mean.to(pixels.dtype)) / self.clip_std.to(pixels.dtype)
            embeds.append(self.image_encoder(pixel_values=pixels.to(self.image_encoder.dtype)).image_embeds)
        return torch.cat(latents), torch.cat(embeds)

    def _weights_key(self) -> tuple:
        parts = [self.vae, self.image_encoder] + ([self.to_image] if self.to_image is not None else [])
        return tuple((p.data_ptr(), p._version) for part in parts for p in part.parameters())

    def _cached_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Inference: every section of a view shares its conditioning image, and it stays the same
        # for all denoising steps; compute VAE + CLIP once per distinct image (Zero-1-to-3 also
        # encodes the condition once per sample, before the sampling loop).
        flat = images.reshape(images.shape[0], -1)
        unique, inverse = torch.unique(flat, dim=0, return_inverse=True)
        key = self._weights_key()
        latents, embeds = [], []
        for row in unique:
            hit = next(
                (e for e in self._feature_cache if e[0] == key and e[1].shape == row.shape and e[1].dtype == row.dtype
                 and e[1].device == row.device and torch.equal(e[1], row)),
                None,
            )
            if hit is None:
                latent, embed = self.image_features(row.reshape(1, *images.shape[1:]))
                hit = (key, row.clone(), latent, embed)
                self._feature_cache = [hit] + self._feature_cache[:7]
            latents.append(hit[2])
            embeds.append(hit[3])
        return torch.cat(latents)[inverse], torch.cat(embeds)[inverse]

    def context(self, embeds: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Cross-attention context (B,1,768): cc_projection([CLIP embedding (dropped -> 0), pose])."""
        weight = self.cc_projection.weight
        embeds = embeds.to(weight.dtype) * cond.keep[:, 1:2].to(weight.dtype)
        return self.cc_projection(torch.cat([embeds, cond.pose.to(weight.dtype)], dim=1)).unsqueeze(1)

    # ---- the profile interface ---------------------------------------------------------------

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Condition) -> torch.Tensor:
        images = self.condition_image(cond)
        if torch.is_grad_enabled():
            latents, embeds = self.image_features(images)
        else:
            latents, embeds = self._cached_features(images)
        concat = latents.to(noisy.dtype) * cond.keep[:, 0, None, None, None].to(noisy.dtype)
        hidden = self.context(embeds, cond).to(self.unet.dtype)
        x = torch.cat([noisy, concat], dim=1)
        return self.unet(x, timesteps, encoder_hidden_states=hidden).sample

    def drop_condition(
        self, cond: Condition, generator: torch.Generator | None = None, probs: dict[str, float] | None = None
    ) -> Condition:
        """Zero-1-to-3 guidance dropout (see the module docstring); defaults to the config's ``cfg_dropout``."""
        return drop_paper_condition(cond, generator, self.options["cfg_dropout"] if probs is None else probs)

    def null_condition(self, cond: Condition) -> Condition:
        """Unconditional branch: no concat latent, no CLIP embedding, the pose kept (Zero-1-to-3)."""
        return replace(cond, keep=torch.zeros_like(cond.keep))


def drop_paper_condition(
    cond: Condition, generator: torch.Generator | None = None, probs: dict[str, float] | None = None
) -> Condition:
    """One uniform draw r per sample: r < p_embedding -> drop the CLIP embedding; next p_both ->
    drop embedding and concat latent; next p_concat -> drop the concat latent; else keep all."""
    probs = dict(PAPER_OPTIONS["cfg_dropout"] if probs is None else probs)
    p_e, p_b, p_c = (float(probs.get(k, 0.0)) for k in CFG_KEYS)
    device = generator.device if generator is not None else "cpu"
    r = torch.rand(cond.batch_size, generator=generator, device=device).to(cond.keep.device)
    drop_embedding = r < p_e + p_b
    drop_concat = (r >= p_e) & (r < p_e + p_b + p_c)
    keep = torch.stack([~drop_concat, ~drop_embedding], dim=1).to(cond.keep.dtype) * cond.keep
    return replace(cond, keep=keep)
