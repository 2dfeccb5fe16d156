"""``Denoiser``: the base class of every profile's network, with the optional hooks and their defaults.

``forward(noisy, timesteps, cond) -> prediction`` is the one required method. The hooks let the
sampler (``sampling.pipeline``) and the trainer (``training.trainer``) treat pixel-space and latent
profiles alike, without probing for attributes:

- ``latent_shape``: shape of one sample the sampler draws noise in; None = pixel space (1, S, S);
- ``encode`` / ``decode``: network-range sections (B, 1, S, S) <-> what the network denoises
  (identity in pixel space);
- ``null_condition``: the unconditional branch of classifier-free guidance;
- ``drop_condition``: guidance dropout of a training batch (the config's ``cond_dropout``).

``DenoiserHooks`` holds the defaults without being a module, so the pipeline can run any plain
callable (tests, wrappers) with them.
"""

from __future__ import annotations

import torch
from torch import nn

from . import conditioning
from .conditioning import Condition
from .config import XDiffusionConfig


class DenoiserHooks:
    """The optional hooks with their pixel-space defaults (module docstring)."""

    latent_shape: tuple[int, int, int] | None = None
    config: XDiffusionConfig | None = None  # profiles set theirs in __init__

    def encode(self, sections: torch.Tensor) -> torch.Tensor:
        return sections

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def null_condition(self, cond: Condition) -> Condition:
        return conditioning.null_condition(cond)

    def drop_condition(self, cond: Condition, generator: torch.Generator | None = None) -> Condition:
        return conditioning.drop_condition(cond, generator, None if self.config is None else self.config.cond_dropout)


class Denoiser(DenoiserHooks, nn.Module):
    """Base of the profiles' networks (``CompactDenoiser``, ``PaperDenoiser``)."""


def hooks_of(model) -> DenoiserHooks:
    """``model`` itself when it has the hooks, else the defaults (a plain callable)."""
    return model if isinstance(model, DenoiserHooks) else DenoiserHooks()


__all__ = ["Denoiser", "DenoiserHooks", "hooks_of"]
