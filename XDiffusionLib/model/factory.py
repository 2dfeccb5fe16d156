"""``build_denoiser(config)``: the profile registry.

Each profile is a module ``XDiffusionLib.model.<module>`` with a class taking the config and the
common forward ``(noisy (B,1,S,S), timesteps (B,), cond: Condition) -> (B,1,S,S)``. Modules are
imported on first use so a profile with heavy dependencies costs nothing until it is chosen.
"""

from __future__ import annotations

import importlib

from torch import nn

from ..errors import XDiffusionError
from .config import XDiffusionConfig

PROFILES: dict[str, tuple[str, str]] = {
    "compact": ("XDiffusionLib.model.compact", "CompactDenoiser"),
    "paper": ("XDiffusionLib.model.paper", "PaperDenoiser"),
}


def build_denoiser(config: XDiffusionConfig) -> nn.Module:
    """A freshly initialised denoiser for ``config.profile``."""
    if config.profile not in PROFILES:
        raise XDiffusionError(f"unknown model profile {config.profile!r}: choose one of {', '.join(PROFILES)}")
    module_name, class_name = PROFILES[config.profile]
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, class_name)
    except (ImportError, AttributeError) as error:
        raise XDiffusionError(f"model profile {config.profile!r} is not available ({error})") from None
    return cls(config)
