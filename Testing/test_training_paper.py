"""Training the paper profile (latent space, Zero-1-to-3 dropout) through ``xdiffusion train``, tiny config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from XDiffusionLib.app.cli import main

TINY_PAPER = {
    "block_out_channels": [16, 32], "attention_levels": [0, 1], "layers_per_block": 1, "attention_head_dim": 2,
    "norm_num_groups": 8, "max_slices": 4,
    "profile_options": {"image_size": 32, "cross_attention_dim": 16, "vae_block_out_channels": [8, 16],
                        "vae_layers_per_block": 1, "vae_norm_num_groups": 4, "clip_hidden_size": 16,
                        "clip_intermediate_size": 32, "clip_layers": 1, "clip_heads": 2, "clip_patch_size": 8,
                        "clip_image_size": 32},
}


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> Path:
    from XDiffusionLib.io import write_volume
    from XDiffusionLib.io.volume import Volume

    folder = tmp_path_factory.mktemp("paper-volumes")
    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, 16)] * 3, indexing="ij")
    for i in range(2):
        inside = x ** 2 + (y / 0.8) ** 2 + (z / 0.9) ** 2 < 0.8
        array = np.where(inside, 80 + 30 * np.sin(3 * x + i) + rng.normal(0, 2, x.shape), 0).astype(np.float32)
        write_volume(Volume.from_array(array), folder / f"subject_{i}.nii.gz")
    return folder


def test_paper_profile_trains_its_unet_in_latent_space_and_keeps_vae_and_clip_frozen(tmp_path, volumes):
    out = tmp_path / "run"
    code = main(["train", "--data", str(volumes), "--profile", "paper", "--out", str(out), "--side", "16",
                 "--steps", "2", "--batch-size", "2", "--checkpoint-every", "1", "--validate-every", "0",
                 "--mixed-precision", "no", "--no-progress", "--config", json.dumps(TINY_PAPER)])
    assert code == 0
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["profile"] == "paper" and config["prediction_type"] == "epsilon"
    first = load_file(str(out / "checkpoints" / "step-000001" / "model.safetensors"))
    second = load_file(str(out / "checkpoints" / "step-000002" / "model.safetensors"))
    unet = [k for k in first if k.startswith("unet.")]
    frozen = [k for k in first if k.startswith(("vae.", "image_encoder."))]
    assert unet and frozen
    assert any(not torch.equal(first[k], second[k]) for k in unet)
    assert all(torch.equal(first[k], second[k]) for k in frozen)

    from XDiffusionLib.model.checkpoint import load_pretrained

    model, loaded = load_pretrained(out / "final")
    assert loaded.profile == "paper" and hasattr(model, "encode")
