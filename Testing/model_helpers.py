"""The tests' tiny random model: one recipe for every test file that needs a model folder."""

from __future__ import annotations

from pathlib import Path


def save_tiny_model(folder: Path, max_slices: int = 4) -> Path:
    """A randomly initialised compact model (side 16, seed 0) taking up to ``max_slices`` input
    slices, saved to ``folder`` (``save_pretrained``); returns the folder."""
    import torch  # as the test files do: torch only where a model is built

    from XDiffusionLib.model.checkpoint import save_pretrained
    from XDiffusionLib.model.config import XDiffusionConfig
    from XDiffusionLib.model.factory import build_denoiser

    torch.manual_seed(0)
    config = XDiffusionConfig(side=16, block_out_channels=(8, 16), attention_levels=(1,), max_slices=max_slices,
                              depth_frequencies=4)
    return save_pretrained(build_denoiser(config), config, folder)
