"""The paper profile (Zero-1-to-3-style latent model) with TINY random configs of the real classes.

Same diffusers/transformers classes as the full model (UNet2DConditionModel, AutoencoderKL,
CLIPVisionModelWithProjection), sized to run in about a second on 2 CPU cores: S = 16 sections,
32x32 VAE images, 16x16 latents.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from XDiffusionLib.errors import XDiffusionError
from XDiffusionLib.geometry.rotation import azimuth_rotations
from XDiffusionLib.geometry.sections import depth_index_to_normalised
from XDiffusionLib.io.volume import Volume
from XDiffusionLib.inputs import SliceInput
from XDiffusionLib.model.checkpoint import load_pretrained, save_pretrained
from XDiffusionLib.model.conditioning import ConditionBuilder, SparseCube
from XDiffusionLib.model.config import XDiffusionConfig
from XDiffusionLib.model.factory import build_denoiser
from XDiffusionLib.model.paper import PAPER_OPTIONS, PaperDenoiser, drop_paper_condition, paper_config
from XDiffusionLib.model.paper_weights import build_paper_from_base, check_base_folder, paper_config_from_base
from XDiffusionLib.sampling.pipeline import XDiffusionPipeline
from XDiffusionLib.settings import ReconstructionSettings
from XDiffusionLib.sampling.reconstructor import XDiffusionReconstructor

S = 16
CONTEXT = 16
TINY_OPTIONS = dict(
    image_size=32,
    cross_attention_dim=CONTEXT,
    vae_block_out_channels=[8, 16],
    vae_layers_per_block=1,
    vae_norm_num_groups=4,
    clip_hidden_size=16,
    clip_intermediate_size=32,
    clip_layers=1,
    clip_heads=2,
    clip_patch_size=8,
    clip_image_size=32,
)


def tiny_config(**changes) -> XDiffusionConfig:
    options = dict(
        side=S, block_out_channels=(16, 32), attention_levels=(0, 1), layers_per_block=1,
        attention_head_dim=2, norm_num_groups=8, max_slices=4, profile_options=dict(TINY_OPTIONS),
    )
    options.update(changes)
    return paper_config(**options)


def tiny_model(seed: int = 0, **changes) -> tuple[PaperDenoiser, XDiffusionConfig]:
    config = tiny_config(**changes)
    torch.manual_seed(seed)
    return build_denoiser(config).eval(), config


def sparse_cube(seed: int = 0, positions=(3, 8, 12)) -> SparseCube:
    g = torch.Generator().manual_seed(seed)
    cube = torch.rand(S, S, S, generator=g)
    return SparseCube.from_cube(cube, 2, list(positions))


def view_condition(config, seed: int = 0, view: int = 1, views: int = 3):
    builder = ConditionBuilder(sparse_cube(seed), config)
    depths = depth_index_to_normalised(torch.arange(S, dtype=torch.float32), S)
    return builder(azimuth_rotations(views)[view], depths)


def noisy_latents(model, batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, *model.latent_shape, generator=torch.Generator().manual_seed(seed))


def run(model, cond, seed: int = 1, t: int = 500) -> torch.Tensor:
    with torch.no_grad():
        return model(noisy_latents(model, cond.batch_size, seed), torch.full((cond.batch_size,), t), cond)


# ------------------------------------------------------------------ config


def test_paper_config_is_the_papers_model():
    config = paper_config()
    assert config.profile == "paper" and config.side == 155
    assert config.block_out_channels == (320, 640, 1280, 1280) and config.layers_per_block == 2
    assert config.attention_levels == (0, 1, 2) and config.attention_head_dim == 8
    assert (config.prediction_type, config.beta_schedule, config.num_train_timesteps) == ("epsilon", "scaled_linear", 1000)
    assert (config.beta_start, config.beta_end) == (0.00085, 0.012)
    options = config.profile_options
    assert options["image_size"] == 256 and options["cross_attention_dim"] == 768 and options["scaling_factor"] == 0.18215
    assert set(options) == set(PAPER_OPTIONS)  # every option written out, so config.json is complete
    assert XDiffusionConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    "options, words",
    [
        ({"bogus": 1}, "unknown paper option"),
        ({"image_size": 30}, "divisible"),
        ({"cfg_dropout": {"embedding": 0.7, "both": 0.5}}, "cfg_dropout"),
        ({"cfg_dropout": {"image": 0.1}}, "cfg_dropout"),
    ],
)
def test_bad_paper_options_are_clear_errors(options, words):
    with pytest.raises(XDiffusionError, match=words):
        tiny_config(profile_options={**TINY_OPTIONS, **options})


# ------------------------------------------------------------------ forward, encode, decode


def test_forward_and_latent_shapes():
    model, config = tiny_model()
    assert isinstance(model, PaperDenoiser)
    assert model.latent_shape == (4, 16, 16)
    assert model.unet.config.in_channels == 8 and model.unet.config.out_channels == 4
    assert model.cc_projection.in_features == CONTEXT + config.pose_dim
    cond = view_condition(config)
    out = run(model, cond)
    assert out.shape == (S, 4, 16, 16) and torch.isfinite(out).all()
    images = torch.rand(3, 1, S, S) * 2 - 1
    with torch.no_grad():
        latents = model.encode(images)
        assert latents.shape == (3, 4, 16, 16)
        assert model.decode(latents).shape == (3, 1, S, S)


def test_concat_latent_is_unscaled_mode_and_target_latent_is_scaled():
    model, config = tiny_model()
    images = torch.rand(2, 1, S, S) * 2 - 1
    with torch.no_grad():
        concat, _ = model.image_features(images)
        target = model.encode(images)
    assert torch.allclose(target, concat * 0.18215, atol=1e-6)
    assert not torch.allclose(target, concat)


def test_cc_projection_starts_as_identity_on_the_clip_token():
    model, config = tiny_model()
    cond = view_condition(config)
    with torch.no_grad():
        _, embeds = model.image_features(model.condition_image(cond))
        zero_pose = replace(cond, pose=torch.zeros_like(cond.pose))
        context = model.context(embeds, zero_pose)
        assert context.shape == (S, 1, CONTEXT)
        assert torch.equal(context[:, 0], embeds)
        # the pose columns start at zero, so a real pose changes nothing until training
        assert torch.equal(model.context(embeds, cond)[:, 0], embeds)
    weight = model.cc_projection.weight
    assert torch.equal(weight[:, :CONTEXT], torch.eye(CONTEXT)) and not weight[:, CONTEXT:].any()
    assert not model.cc_projection.bias.any()


def test_cached_features_match_the_direct_path_and_follow_weight_changes():
    model, config = tiny_model()
    cond = view_condition(config)
    noisy, t = noisy_latents(model, S), torch.full((S,), 300)
    with torch.no_grad():
        cached = model(noisy, t, cond)  # inference: VAE + CLIP once per distinct condition image
        assert len(model._feature_cache) == 1
    direct = model(noisy, t, cond).detach()  # grad enabled: no cache
    assert torch.allclose(cached, direct, atol=1e-5)
    with torch.no_grad():
        for p in model.vae.encoder.parameters():
            p.mul_(1.5)  # in place: the cache must notice
        changed = model(noisy, t, cond)
    assert not torch.allclose(changed, cached, atol=1e-4)


def test_gradients_reach_unet_and_projection_not_frozen_parts():
    model, config = tiny_model()
    model.train()
    cond = view_condition(config)
    model.cc_projection.weight.data[:, CONTEXT:].normal_(0, 0.1)  # pose columns live
    out = model(noisy_latents(model, S), torch.full((S,), 200), cond)
    out.square().mean().backward()
    assert model.unet.conv_in.weight.grad is not None and model.unet.conv_in.weight.grad.abs().sum() > 0
    assert model.cc_projection.weight.grad is not None and model.cc_projection.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.vae.parameters())
    assert all(p.grad is None for p in model.image_encoder.parameters())
    assert not model.vae.training and not model.image_encoder.training


def test_learned_reduction_feeds_one_grey_image():
    model, config = tiny_model(multislice="attention", multislice_channels=4)
    assert model.to_image is not None
    cond = view_condition(config)
    image = model.condition_image(cond)
    assert image.shape == (S, 1, S, S) and image.abs().max() <= 1.0
    assert run(model, cond).shape == (S, 4, 16, 16)


# ------------------------------------------------------------------ classifier-free guidance


def test_dropout_frequencies_follow_zero123_and_keep_the_pose():
    model, config = tiny_model()
    cond = view_condition(config)
    big = type(cond).cat([cond] * 1250)  # 20000 samples
    dropped = model.drop_condition(big, torch.Generator().manual_seed(0))
    keep = dropped.keep
    concat, embedding = keep[:, 0] > 0, keep[:, 1] > 0
    n = keep.shape[0]
    fractions = {
        "embedding only": ((~embedding) & concat).sum() / n,
        "both": ((~embedding) & (~concat)).sum() / n,
        "concat only": (embedding & (~concat)).sum() / n,
    }
    for name, value in fractions.items():
        assert abs(float(value) - 0.05) < 0.01, (name, float(value))
    assert torch.equal(dropped.pose, big.pose) and torch.equal(dropped.slices, big.slices)
    none = drop_paper_condition(cond, torch.Generator().manual_seed(0), {"embedding": 0, "both": 0, "concat": 0})
    assert torch.equal(none.keep, cond.keep)


def test_null_condition_ignores_the_input_slices_but_not_the_pose():
    model, config = tiny_model()
    model.cc_projection.weight.data[:, CONTEXT:].normal_(0, 0.5)  # as after training: the pose matters
    a = model.null_condition(view_condition(config, seed=0))
    b = model.null_condition(view_condition(config, seed=5))  # other input slices, same poses
    assert not torch.equal(a.slices, b.slices)
    assert torch.equal(run(model, a), run(model, b))
    other_view = model.null_condition(view_condition(config, seed=0, view=2))
    assert not torch.allclose(run(model, a), run(model, other_view))
    # and the conditional branch does depend on the slices
    assert not torch.allclose(run(model, view_condition(config, seed=0)), run(model, view_condition(config, seed=5)))


# ------------------------------------------------------------------ checkpoints


def test_save_load_round_trip_is_bitwise(tmp_path):
    model, config = tiny_model(seed=3)
    cond = view_condition(config)
    before = run(model, cond)
    folder = save_pretrained(model, config, tmp_path / "paper")
    loaded, loaded_config = load_pretrained(folder)
    assert loaded_config == config and isinstance(loaded, PaperDenoiser)
    assert torch.equal(run(loaded, cond), before)
    with torch.no_grad():
        latents = noisy_latents(model, 2)
        assert torch.equal(loaded.decode(latents), model.decode(latents))


# ------------------------------------------------------------------ base weights


def save_tiny_base(folder, in_channels: int = 4, projection_pose: int | None = None, seed: int = 7):
    """A tiny SD image-variations-layout folder (unet/, vae/, image_encoder/), saved by the real classes."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=in_channels, out_channels=4, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1, cross_attention_dim=CONTEXT, attention_head_dim=2, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=32,
    )
    clip = CLIPVisionModelWithProjection(
        CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         patch_size=8, image_size=32, projection_dim=CONTEXT)
    )
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    clip.save_pretrained(folder / "image_encoder")
    parts = {"unet": unet, "vae": vae, "image_encoder": clip}
    if projection_pose is not None:
        from safetensors.torch import save_file

        (folder / "cc_projection").mkdir()
        weight = torch.randn(CONTEXT, CONTEXT + projection_pose)
        bias = torch.randn(CONTEXT)
        save_file({"projection.weight": weight, "projection.bias": bias},
                  str(folder / "cc_projection" / "diffusion_pytorch_model.safetensors"))
        (folder / "cc_projection" / "config.json").write_text(json.dumps({"in_channel": CONTEXT + projection_pose}))
        parts["cc_projection"] = (weight, bias)
    return parts


def test_base_folder_expands_4_to_8_input_channels(tmp_path):
    base = save_tiny_base(tmp_path / "base")
    model, config = build_paper_from_base(tmp_path / "base", side=S, max_slices=4, profile_options={"image_size": 32})
    assert config.block_out_channels == (16, 32) and config.profile_options["clip_image_size"] == 32
    weight = model.unet.conv_in.weight
    assert weight.shape[1] == 8
    assert torch.equal(weight[:, :4], base["unet"].conv_in.weight)
    assert not weight[:, 4:].any()
    assert torch.equal(model.vae.decoder.conv_out.weight, base["vae"].decoder.conv_out.weight)
    assert torch.equal(model.image_encoder.visual_projection.weight, base["image_encoder"].visual_projection.weight)
    # zero new channels: the 8-channel U-Net computes exactly what the 4-channel base does
    x = torch.randn(2, 4, 16, 16)
    context = torch.randn(2, 1, CONTEXT)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        expanded = model.unet(torch.cat([x, torch.randn(2, 4, 16, 16)], 1), t, encoder_hidden_states=context).sample
        original = base["unet"](x, t, encoder_hidden_states=context).sample
    assert torch.allclose(expanded, original, atol=1e-5)
    # no projection in the base: identity initialisation stays
    assert torch.equal(model.cc_projection.weight[:, :CONTEXT], torch.eye(CONTEXT))


def test_base_folder_with_zero123_projection_and_8_channels(tmp_path):
    base = save_tiny_base(tmp_path / "base", in_channels=8, projection_pose=4)
    model, config = build_paper_from_base(tmp_path / "base", side=S, max_slices=4, profile_options={"image_size": 32})
    assert torch.equal(model.unet.conv_in.weight, base["unet"].conv_in.weight)
    weight, bias = base["cc_projection"]
    assert torch.equal(model.cc_projection.weight[:, :CONTEXT], weight[:, :CONTEXT])
    assert not model.cc_projection.weight[:, CONTEXT:].any()  # Zero-1-to-3's pose is not X-Diffusion's
    assert torch.equal(model.cc_projection.bias, bias)
    assert run(model, view_condition(config)).shape == (S, 4, 16, 16)


def test_base_folder_errors_name_the_missing_part(tmp_path):
    with pytest.raises(XDiffusionError, match="never downloaded"):
        check_base_folder("lambdalabs/sd-image-variations-diffusers")
    save_tiny_base(tmp_path / "base")
    shutil.rmtree(tmp_path / "base" / "vae")
    with pytest.raises(XDiffusionError, match=r"base/vae: missing subfolder"):
        paper_config_from_base(tmp_path / "base")
    save_tiny_base(tmp_path / "other")
    (tmp_path / "other" / "image_encoder" / "model.safetensors").unlink()
    with pytest.raises(XDiffusionError, match=r"image_encoder: no weights file"):
        build_paper_from_base(tmp_path / "other", side=S, max_slices=4, profile_options={"image_size": 32})
    save_tiny_base(tmp_path / "third")
    (tmp_path / "third" / "unet" / "config.json").unlink()
    with pytest.raises(XDiffusionError, match=r"unet/config.json: missing file"):
        check_base_folder(tmp_path / "third")


def test_base_folder_that_does_not_fit_the_config_is_a_clear_error(tmp_path):
    save_tiny_base(tmp_path / "base")
    wrong = tiny_config(block_out_channels=(16, 48), norm_num_groups=8)
    with pytest.raises(XDiffusionError, match="shape"):
        build_paper_from_base(tmp_path / "base", wrong)


# ------------------------------------------------------------------ sampling through the pipeline


@pytest.mark.slow  # the paper-size pipeline: several seconds on a 2-core CPU
def test_pipeline_samples_a_volume_with_the_paper_profile():
    model, config = tiny_model()
    pipeline = XDiffusionPipeline(model, config, device="cpu")
    out = pipeline(sparse_cube(), ReconstructionSettings(views=2, steps=2, sampler="dpmpp", guidance=3.0, seed=0))
    assert out.cube.shape == (S, S, S) and torch.isfinite(out.cube).all()
    assert out.cube.min() >= 0 and out.cube.max() <= 1 and out.cube.std() > 0
    again = pipeline(sparse_cube(), ReconstructionSettings(views=2, steps=2, sampler="dpmpp", guidance=3.0, seed=0))
    assert torch.equal(out.cube, again.cube)  # seeded, cache or not


def test_reconstructor_runs_the_paper_profile_on_a_grid():
    model, config = tiny_model()
    rng = np.random.default_rng(0)
    volume = Volume.from_array(rng.random((12, 14, 10)).astype(np.float32) * 100, (1.0, 1.2, 1.5), (0, 0, 0), np.eye(3))
    inputs = SliceInput.from_volume(volume, "axial", [2, 7])
    method = XDiffusionReconstructor(model=model, config=config, views=1, steps=2, sampler="ddim", device="cpu")
    result = method.reconstruct(inputs)
    assert result.grid == volume.grid and result.array.shape == (12, 14, 10)
    assert np.isfinite(result.array).all()
    assert np.array_equal(result.array[:, :, 7], volume.array[:, :, 7])  # inputs pasted unchanged
