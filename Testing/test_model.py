"""Denoiser config, conditioning c(x, d, R), compact model and checkpoints (tiny sizes: S=16)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from XDiffusionLib.errors import XDiffusionError
from XDiffusionLib.geometry.rotation import azimuth_rotations, random_rotations
from geometry_helpers import plane_rotation
from XDiffusionLib.geometry.sections import cross_section, depth_index_to_normalised
from XDiffusionLib.model.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    default_model_dir,
    load_pretrained,
    read_config,
    replace_config,
    save_pretrained,
)
from XDiffusionLib.model.conditioning import (
    Condition,
    ConditionBuilder,
    SparseCube,
    build_condition,
    cube_position,
    drop_condition,
    null_condition,
    to_network,
)
from XDiffusionLib.model.config import XDiffusionConfig
from XDiffusionLib.model.factory import build_denoiser

S = 16


def tiny_config(**changes) -> XDiffusionConfig:
    options = dict(side=S, block_out_channels=(8, 16), attention_levels=(1,), max_slices=4, depth_frequencies=4)
    options.update(changes)
    return XDiffusionConfig(**options)


def smooth_cube(seed: int = 0) -> torch.Tensor:
    """A smooth [0, 1] cube, different along every axis."""
    i, j, k = torch.meshgrid(*[torch.linspace(0, 1, S)] * 3, indexing="ij")
    g = torch.Generator().manual_seed(seed)
    phase = torch.rand(3, generator=g)
    cube = 0.5 + 0.2 * torch.sin(3 * i + phase[0]) * torch.cos(2 * j + phase[1]) + 0.25 * (k - phase[2]) ** 2
    return cube.clamp(0, 1)


def run_model(model, cond: Condition, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noisy = torch.randn(cond.batch_size, 1, S, S, generator=g)
    t = torch.full((cond.batch_size,), 500, dtype=torch.long)
    with torch.no_grad():
        return model(noisy, t, cond)


# ------------------------------------------------------------------ config


def test_config_round_trip(tmp_path):
    config = tiny_config(multislice="attention", priors=("linear",), cond_dropout={"image": 0.1, "all": 0.2})
    path = tmp_path / "config.json"
    config.save_json(path)
    loaded = XDiffusionConfig.load_json(path)
    assert loaded == config
    assert XDiffusionConfig.from_dict(config.to_dict()) == config
    assert json.loads(path.read_text())["block_out_channels"] == [8, 16]


def test_read_config_reads_a_model_folder_config_and_names_a_missing_one(tmp_path):
    """The public door to a folder's config (issue 23 item 4: it was imported as ``_read_config``)."""
    config = tiny_config()
    config.save_json(tmp_path / CONFIG_NAME)
    assert read_config(tmp_path) == config
    with pytest.raises(XDiffusionError, match="missing model config"):
        read_config(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"prediction_type": "sample"}, "prediction_type"),
        ({"multislice": "sum"}, "multislice"),
        ({"priors": ("linear", "bogus")}, "priors"),
        ({"side": 17}, "divisible"),
        ({"cond_dropout": {"image": 0.9, "all": 0.5}}, "cond_dropout"),
    ],
)
def test_config_rejects_bad_values(changes, words):
    with pytest.raises(XDiffusionError, match=words):
        tiny_config(**changes)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(XDiffusionError, match="unknown config keys"):
        XDiffusionConfig.from_dict({**tiny_config().to_dict(), "colour": "red"})


# ------------------------------------------------------------------ conditioning


def test_condition_shapes_and_pose_layout():
    config = tiny_config()
    sparse = SparseCube.from_cube(smooth_cube(), axis=2, positions=[12, 3, 7])
    assert torch.all(sparse.positions[1:] > sparse.positions[:-1]), "slices are sorted by position"
    R = random_rotations(5, torch.Generator().manual_seed(0))
    depths = torch.linspace(-0.8, 0.8, 5)
    cond = build_condition(sparse, R, depths, config)
    assert cond.image.shape == (5, config.image_channels, S, S)
    assert cond.slices.shape == (5, 3, S, S)
    assert cond.slice_mask.shape == (5, 3) and torch.all(cond.slice_mask == 1)
    assert cond.pose.shape == (5, config.pose_dim)
    assert torch.allclose(cond.pose[:, 6], depths)
    assert torch.equal(cond.pose[:, 7:10], torch.tensor([0.0, 0.0, 1.0]).expand(5, 3))
    assert torch.allclose(cond.pose[:, 10:13], cube_position([3, 7, 12], S).expand(5, 3))
    assert torch.equal(cond.pose[:, 13:14], torch.zeros(5, 1)), "padded positions are zero"
    assert torch.equal(cond.pose[:, 14:17], torch.ones(5, 3)) and torch.equal(cond.pose[:, 17:], torch.zeros(5, 1))
    assert float(cond.image.min()) >= -1.0 and float(cond.image.max()) <= 1.0


@pytest.mark.parametrize("plane, axis", [("sagittal", 0), ("coronal", 1), ("axial", 2)])
def test_image_channels_reproduce_the_input_slice_on_its_own_plane(plane, axis):
    cube = smooth_cube(1)
    sparse = SparseCube.from_cube(cube, axis=axis, positions=[4, 11])
    config = tiny_config(priors=("linear", "distance"))
    R = plane_rotation(plane)
    depth = depth_index_to_normalised(torch.tensor([11.0, 4.0, 8.0]), S)
    cond = build_condition(sparse, R, depth, config)
    expected = [torch.movedim(cube, axis, 0)[i] for i in (11, 4)]
    if plane == "coronal":  # plane_rotation documents the coronal image transposed
        expected = [e.T for e in expected]
    for b in range(2):
        assert torch.allclose(cond.image[b, 0], to_network(expected[b]), atol=1e-5)
        assert torch.allclose(cond.image[b, 1], torch.ones(S, S), atol=1e-6), "proximity is 1 on an input slice"
    # Halfway (index 8 between 4 and 11): the linear prior interpolates the two inputs.
    w = (8 - 4) / (11 - 4)
    middle = (1 - w) * expected[1] + w * expected[0]
    assert torch.allclose(cond.image[2, 0], to_network(middle), atol=1e-5)
    assert float(cond.image[2, 1].max()) < 1.0


def test_linear_prior_is_constant_outside_and_repeats_a_single_slice():
    cube = smooth_cube(2)
    one = SparseCube.from_cube(cube, axis=0, positions=[5]).prior_volumes(["linear"])[0]
    assert torch.allclose(one, cube[5].expand(S, S, S))
    two = SparseCube.from_cube(cube, axis=0, positions=[5, 9]).prior_volumes(["linear"])[0]
    assert torch.allclose(two[:5], cube[5].expand(5, S, S)) and torch.allclose(two[9:], cube[9].expand(S - 9, S, S))


def test_condition_builder_matches_target_sections():
    """A cube given as its own template prior gives exactly the target section (what training regresses)."""
    cube = smooth_cube(3)
    sparse = SparseCube.from_cube(cube, axis=1, positions=[8], template=cube)
    config = tiny_config(priors=("template",))
    R = azimuth_rotations(3)[0]
    depths = torch.linspace(-1, 1, S)
    cond = ConditionBuilder(sparse, config)(R, depths)
    target = cross_section(cube[None, None], R.expand(S, 3, 3), depths)
    assert torch.allclose(cond.image, to_network(target), atol=1e-6)


def test_template_prior_without_template_is_an_error():
    sparse = SparseCube.from_cube(smooth_cube(), axis=2, positions=[3])
    with pytest.raises(XDiffusionError, match="template"):
        ConditionBuilder(sparse, tiny_config(priors=("linear", "template")))


def test_too_many_slices_for_the_model():
    sparse = SparseCube.from_cube(smooth_cube(), axis=2, positions=[1, 3, 5, 7, 9])
    with pytest.raises(XDiffusionError, match="at most 4"):
        ConditionBuilder(sparse, tiny_config(max_slices=4))


def test_drop_condition_zeroes_the_drawn_parts():
    sparse = SparseCube.from_cube(smooth_cube(), axis=2, positions=[3, 9])
    cond = build_condition(sparse, random_rotations(400, torch.Generator().manual_seed(1)), torch.zeros(400), tiny_config())
    dropped = drop_condition(cond, torch.Generator().manual_seed(2), {"image": 0.2, "pose": 0.3, "all": 0.1})
    keep_image, keep_pose = dropped.keep[:, 0].bool(), dropped.keep[:, 1].bool()
    assert torch.all(dropped.image[~keep_image] == 0) and torch.all(dropped.slices[~keep_image] == 0)
    assert torch.all(dropped.slice_mask[~keep_image] == 0) and torch.all(dropped.pose[~keep_pose] == 0)
    assert torch.equal(dropped.image[keep_image], cond.image[keep_image])
    assert torch.equal(dropped.pose[keep_pose], cond.pose[keep_pose])
    only_image = (~keep_image & keep_pose).float().mean()
    only_pose = (keep_image & ~keep_pose).float().mean()
    both = (~keep_image & ~keep_pose).float().mean()
    assert abs(only_image - 0.2) < 0.07 and abs(only_pose - 0.3) < 0.07 and abs(both - 0.1) < 0.05
    # Same generator seed, same draw.
    again = drop_condition(cond, torch.Generator().manual_seed(2), {"image": 0.2, "pose": 0.3, "all": 0.1})
    assert torch.equal(again.keep, dropped.keep)
    assert torch.all(drop_condition(cond, None, {}).keep == 1)


def test_null_condition_drops_everything():
    sparse = SparseCube.from_cube(smooth_cube(), axis=2, positions=[3])
    null = null_condition(build_condition(sparse, torch.eye(3), torch.zeros(4), tiny_config()))
    for tensor in (null.image, null.slices, null.slice_mask, null.pose, null.keep):
        assert torch.count_nonzero(tensor) == 0


def test_condition_cat_pads_slices_and_indexes():
    config = tiny_config()
    a = build_condition(SparseCube.from_cube(smooth_cube(), 2, [3]), torch.eye(3), torch.zeros(2), config)
    b = build_condition(SparseCube.from_cube(smooth_cube(), 0, [3, 8, 12]), torch.eye(3), torch.zeros(3), config)
    both = Condition.cat([a, b])
    assert both.slices.shape == (5, 3, S, S)
    assert torch.equal(both.slice_mask[:2], torch.tensor([[1.0, 0, 0]] * 2))
    assert torch.equal(both[2:].image, b.image)


# ------------------------------------------------------------------ model


@pytest.mark.parametrize("multislice", ["product", "attention"])
def test_compact_denoiser_forward(multislice):
    torch.manual_seed(0)
    config = tiny_config(multislice=multislice)
    model = build_denoiser(config).eval()
    assert 1_000 < sum(p.numel() for p in model.parameters()) < 4_000_000
    sparse = SparseCube.from_cube(smooth_cube(), axis=2, positions=[3, 9])
    cond = build_condition(sparse, azimuth_rotations(4)[:1].expand(3, 3, 3), torch.tensor([-0.5, 0.0, 0.5]), config)
    out = run_model(model, cond)
    assert out.shape == (3, 1, S, S) and torch.isfinite(out).all()
    # The condition matters: the null condition changes the output.
    assert not torch.allclose(out, run_model(model, null_condition(cond)))


def test_product_reduction_is_the_papers_formula():
    from XDiffusionLib.model.multislice import ProductReduction

    cube = smooth_cube(4)
    sparse = SparseCube.from_cube(cube, axis=0, positions=[2, 6, 13])
    cond = build_condition(sparse, torch.eye(3), torch.zeros(1), tiny_config())
    x = [cube[i] for i in (2, 6, 13)]
    expected = (x[0] * x[1] + x[1] * x[2]) / 2
    assert torch.allclose(ProductReduction()(cond)[0, 0], to_network(expected), atol=1e-6)
    single = build_condition(SparseCube.from_cube(cube, 0, [6]), torch.eye(3), torch.zeros(1), tiny_config())
    assert torch.allclose(ProductReduction()(single)[0, 0], to_network(x[1]), atol=1e-6)
    assert torch.count_nonzero(ProductReduction()(null_condition(cond))) == 0


def test_unknown_profile():
    config = tiny_config()
    config.profile = "huge"
    with pytest.raises(XDiffusionError, match="unknown model profile 'huge'"):
        build_denoiser(config)


# ------------------------------------------------------------------ checkpoints


@pytest.fixture
def saved_model(tmp_path):
    torch.manual_seed(0)
    config = tiny_config()
    model = build_denoiser(config).eval()
    directory = save_pretrained(model, config, tmp_path / "model")
    return model, config, directory


def _cond(config):
    sparse = SparseCube.from_cube(smooth_cube(), axis=2, positions=[3, 9])
    return build_condition(sparse, torch.eye(3), torch.tensor([-0.5, 0.5]), config)


def test_checkpoint_round_trip_is_bitwise(saved_model):
    model, config, directory = saved_model
    assert sorted(p.name for p in directory.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    loaded, loaded_config = load_pretrained(directory)
    assert loaded_config == config and not loaded.training
    cond = _cond(config)
    assert torch.equal(run_model(model, cond), run_model(loaded, cond))


def test_save_pretrained_replaces_an_existing_folder(saved_model):
    model, config, directory = saved_model
    torch.manual_seed(1)
    other = build_denoiser(config).eval()
    save_pretrained(other, config, directory)
    loaded, _ = load_pretrained(directory)
    cond = _cond(config)
    assert torch.equal(run_model(other, cond), run_model(loaded, cond))
    assert [p.name for p in directory.parent.iterdir()] == ["model"], "no temporary folders left behind"


def test_replace_config_changes_an_inference_field_and_keeps_the_weights(tmp_path):
    from dataclasses import replace

    from XDiffusionLib.model.files import weights_checksum

    torch.manual_seed(0)
    config = tiny_config(target="residual", priors=("anchor", "linear", "distance"))
    model = build_denoiser(config).eval()
    directory = save_pretrained(model, config, tmp_path / "model")
    (directory / "MODEL_CARD.md").write_text("card")
    before = weights_checksum(directory)
    replace_config(directory, replace(config, residual_gain={"1": 1.5}))
    loaded, loaded_config = load_pretrained(directory)  # its checksums verified: the config is sealed
    assert loaded_config.residual_gain == {"1": 1.5} and weights_checksum(directory) == before
    assert (directory / "MODEL_CARD.md").read_text() == "card"
    original = model.state_dict()
    assert all(torch.equal(tensor, original[name]) for name, tensor in loaded.state_dict().items())
    saved = (directory / CONFIG_NAME).read_bytes()
    with pytest.raises(XDiffusionError, match="only residual_gain, anchor_weight may change"):
        replace_config(directory, replace(loaded_config, depth_frequencies=2))
    assert (directory / CONFIG_NAME).read_bytes() == saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"], "no temporary folders left behind"


def test_checkpoint_missing_folder_and_files(tmp_path, saved_model):
    _, _, directory = saved_model
    with pytest.raises(XDiffusionError, match="model folder not found"):
        load_pretrained(tmp_path / "nowhere")
    (directory / WEIGHTS_NAME).unlink()
    with pytest.raises(XDiffusionError, match=f"{WEIGHTS_NAME}: missing model weights"):
        load_pretrained(directory)
    (directory / CONFIG_NAME).unlink()
    with pytest.raises(XDiffusionError, match=f"{CONFIG_NAME}: missing model config"):
        load_pretrained(directory)


def test_checkpoint_corrupt_and_truncated_weights(saved_model):
    _, _, directory = saved_model
    path = directory / WEIGHTS_NAME
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(XDiffusionError, match="corrupt or truncated"):
        load_pretrained(directory)
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(XDiffusionError, match="corrupt or truncated"):
        load_pretrained(directory)


def test_checkpoint_invalid_config(saved_model):
    _, _, directory = saved_model
    (directory / CONFIG_NAME).write_text("{ not json")
    with pytest.raises(XDiffusionError, match="invalid JSON"):
        load_pretrained(directory)
    (directory / CONFIG_NAME).write_text(json.dumps({**tiny_config().to_dict(), "profile": "huge"}))
    with pytest.raises(XDiffusionError, match="unknown model profile|config.json: does not match the config these weights"):
        load_pretrained(directory)
    (directory / CONFIG_NAME).write_text(json.dumps({**tiny_config().to_dict(), "multislice": 3}))
    with pytest.raises(XDiffusionError, match=f"{CONFIG_NAME}.*multislice"):
        load_pretrained(directory)


def test_checkpoint_key_and_shape_mismatches(saved_model):
    from safetensors.torch import load_file, save_file

    model, config, directory = saved_model
    path = directory / WEIGHTS_NAME
    state = load_file(str(path))
    name = "unet.conv_in.weight"
    missing = {k: v for k, v in state.items() if k != name}
    save_file(missing, str(path))
    with pytest.raises(XDiffusionError, match=f"missing 1 tensors.*{name}"):
        load_pretrained(directory)
    save_file({**state, "extra.weight": torch.zeros(2)}, str(path))
    with pytest.raises(XDiffusionError, match="unexpected tensors.*extra.weight"):
        load_pretrained(directory)
    wrong = dict(state)
    wrong[name] = torch.zeros(8, 3, 3, 3)
    save_file(wrong, str(path))
    shape = tuple(state[name].shape)
    with pytest.raises(XDiffusionError, match=rf"{name} has shape \(8, 3, 3, 3\).*needs \({shape[0]}, {shape[1]}"):
        load_pretrained(directory)


def test_default_model_dir_reports_missing_shipped_weights(monkeypatch, tmp_path):
    import XDiffusionLib.model.checkpoint as checkpoint

    assert default_model_dir().parts[-3:] == ("model", "weights", "compact")
    monkeypatch.setattr(checkpoint, "default_model_dir", lambda: tmp_path / "weights" / "compact")
    from XDiffusionLib.sampling.reconstructor import XDiffusionReconstructor

    with pytest.raises(XDiffusionError, match="no shipped weights at"):
        XDiffusionReconstructor().config


# ------------------------------------------------------------------ training and inference agree


@pytest.mark.parametrize("axis, coarse", [(0, 1), (1, 0), (2, 1)])
def test_from_slice_input_agrees_with_from_cube(axis, coarse):
    """Inference (slices of a grid -> cube planes) and training (slices of the known cube) give the same SparseCube."""
    from XDiffusionLib.io.volume import Grid, Volume
    from XDiffusionLib.inputs import SliceInput
    from XDiffusionLib.transforms.intensity import IntensityNormalizer
    from XDiffusionLib.transforms.model_space import ModelSpace

    # An in-plane axis has half the voxels at twice the spacing: the cube resamples it, so the check
    # is not trivial; along the slice axis the grid matches the cube, so slices land on cube planes.
    shape, spacing = [S, S, S], [1.0, 1.0, 1.0]
    shape[coarse], spacing[coarse] = S // 2, 2.0
    grid = Grid(tuple(shape), spacing=tuple(spacing))
    rng = np.random.default_rng(axis)
    array = (100 + 400 * rng.random(grid.shape)).astype(np.float32)
    depth = grid.shape[axis]
    indices = [1, depth // 2, depth - 2]
    inputs = SliceInput.from_volume(Volume(array, grid), ["sagittal", "coronal", "axial"][axis], indices)
    space = ModelSpace.for_grid(grid, S)
    normalizer = IntensityNormalizer().fit(inputs.slices)
    inference = SparseCube.from_slice_input(inputs, space, normalizer)

    cube = normalizer.forward(space.to_cube(array))
    cube_indices = [round((space.slice_position(axis, i) + 1) * (S - 1) / 2) for i in indices]
    assert cube_indices == indices
    training = SparseCube.from_cube(cube, axis, cube_indices)
    assert inference.axis == training.axis == axis
    assert torch.allclose(inference.positions, training.positions, atol=1e-6)
    assert torch.allclose(inference.images, training.images, atol=1e-5)
    config = tiny_config()
    R, depths = azimuth_rotations(3)[0], torch.linspace(-1, 1, 5)
    a, b = build_condition(inference, R, depths, config), build_condition(training, R, depths, config)
    assert torch.allclose(a.image, b.image, atol=1e-5) and torch.allclose(a.pose, b.pose, atol=1e-6)
