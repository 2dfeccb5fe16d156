"""The residual X-Diffusion model: anchor, section views, 2.5D conditions, residual sampling, training data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from XDiffusionLib.baselines.anchor import AnchorBaseline, anchor_estimate, interpolation_weight
from XDiffusionLib.errors import XDiffusionError
from XDiffusionLib.geometry.rotation import azimuth_rotations, section_rotations
from XDiffusionLib.io.volume import Volume
from XDiffusionLib.inputs import SliceInput
from XDiffusionLib.model.conditioning import ConditionBuilder, SparseCube
from XDiffusionLib.model.config import XDiffusionConfig
from XDiffusionLib.sampling.pipeline import XDiffusionPipeline
from XDiffusionLib.settings import ReconstructionSettings
from XDiffusionLib.sampling.reconstructor import XDiffusionReconstructor, _ResidualTarget
from XDiffusionLib.sampling.schedulers import make_scheduler
from XDiffusionLib.training.config import COMPACT_MODEL
from XDiffusionLib.transforms.intensity import IntensityNormalizer

S = 16


def residual_config(**changes) -> XDiffusionConfig:
    options = dict(COMPACT_MODEL)
    options.update(side=S, block_out_channels=(8, 16), attention_levels=(1,), max_slices=32, depth_frequencies=4)
    options.update(changes)
    return XDiffusionConfig(**options)


def head(shape=(24, 28, 20), spacing=(4.0, 4.0, 5.0)) -> Volume:
    """A bright ellipsoid 'head' with an inner structure, in a zero background."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum((g / 0.8) ** 2 for g in grids)
    array = np.where(r2 < 1.0, 80.0 + 40.0 * np.cos(3.0 * grids[0]) * (r2 < 0.5), 0.0).astype(np.float32)
    return Volume.from_array(array, spacing, (0.0, 0.0, 0.0), np.eye(3))


class ExactResidual(torch.nn.Module):
    """A denoiser whose answer is the constant ``value`` in network units (v-prediction)."""

    def __init__(self, config: XDiffusionConfig, value: float) -> None:
        super().__init__()
        self.alphas = make_scheduler("ddpm", config).alphas_cumprod
        self.value = value
        self.seen = 0

    def forward(self, x, t, cond):
        self.seen += x.shape[0]
        ab = self.alphas[t.long().cpu()].view(-1, 1, 1, 1).to(x)
        x0 = torch.full_like(x, self.value)
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        return ab.sqrt() * eps - (1 - ab).sqrt() * x0


class ViewDependentResidual(ExactResidual):
    """``value`` plus a share of the noisy input: each view (its own noise) answers differently."""

    def forward(self, x, t, cond):
        self.seen += x.shape[0]
        ab = self.alphas[t.long().cpu()].view(-1, 1, 1, 1).to(x)
        x0 = self.value + 0.05 * x
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        return ab.sqrt() * eps - (1 - ab).sqrt() * x0


# ------------------------------------------------------------------ views


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("views", [1, 2, 4, 5])
def test_section_views_contain_the_input_normal_and_never_repeat(axis, views):
    R = section_rotations(views, axis).double()
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(views, 3, 3), atol=1e-9)
    assert torch.allclose(torch.linalg.det(R), torch.ones(views, dtype=torch.float64))
    normals = R[:, 0]
    assert torch.allclose(normals[:, axis], torch.zeros(views, dtype=torch.float64)), "sections contain the normal"
    assert torch.allclose(R[:, 1, axis].abs(), torch.ones(views, dtype=torch.float64)), "section rows run along it"
    # Distinct orientations: no two section normals parallel (|cos| < 1).
    cosines = (normals @ normals.T).abs() - torch.eye(views, dtype=torch.float64)
    assert float(cosines.max()) < 1.0 - 1e-6


def test_paper_azimuth_views_repeat_orientations_which_the_section_views_fix():
    # Four azimuth views at 90 degrees cut only two section orientations (the streak bug of issue 8).
    normals = azimuth_rotations(4).double()[:, 0]
    parallel = ((normals @ normals.T).abs() > 1.0 - 1e-6).sum() - 4
    assert int(parallel) > 0
    # For sagittal inputs, half the azimuth views cut sections parallel to the inputs.
    assert float(normals[:, 0].abs().max()) == pytest.approx(1.0)


# ------------------------------------------------------------------ anchor


def test_anchor_is_exact_on_inputs_and_trusts_the_template_far_from_them():
    volume = head()
    inputs = SliceInput.from_volume(volume, "axial", [10])
    parts = anchor_estimate(inputs, decay_inside_mm=24.0, decay_outside_mm=5.0)
    assert np.array_equal(parts.volume.array[:, :, 10], volume.array[:, :, 10])
    assert parts.weight[10] == 1.0 and parts.weight[0] == pytest.approx(math.exp(-50.0 / 5.0))
    far = parts.volume.array[:, :, 0]
    assert np.allclose(far, parts.template[:, :, 0], atol=1e-3 * float(np.abs(far).max()) + 1e-3)


def test_anchor_decays_longer_between_inputs_than_beyond_them():
    inputs = SliceInput.from_volume(head(), "axial", [4, 14])
    weight = interpolation_weight(inputs, decay_inside_mm=20.0, decay_outside_mm=5.0, rule="nearest")
    assert weight[9] == pytest.approx(math.exp(-25.0 / 20.0))  # 5 slices of 5 mm between the inputs
    assert weight[19] == pytest.approx(math.exp(-25.0 / 5.0))  # 5 slices beyond the last input
    assert weight[4] == weight[14] == 1.0


def test_the_union_weight_has_no_cusp_at_the_midpoint_between_inputs():
    # The nearest input's weight bends sharply at each midpoint: a line across coronal and sagittal
    # views there. Either neighbour vouching (w_l + w_r - w_l w_r) is smooth: its bend is smallest there.
    inputs = SliceInput.from_volume(head(), "axial", [4, 14])
    weight = interpolation_weight(inputs, decay_inside_mm=20.0, decay_outside_mm=5.0)
    near = math.exp(-25.0 / 20.0)
    assert weight[9] == pytest.approx(2 * near - near * near)
    assert weight[19] == pytest.approx(math.exp(-25.0 / 5.0)) and weight[4] == weight[14] == 1.0
    between = weight[4:15].astype(np.float64)
    bend = between[:-2] - 2 * between[1:-1] + between[2:]  # second difference at slices 5..13
    assert int(np.argmin(bend)) + 5 == 9
    nearest = interpolation_weight(inputs, 20.0, 5.0, rule="nearest")[4:15].astype(np.float64)
    assert int(np.argmax(nearest[:-2] - 2 * nearest[1:-1] + nearest[2:])) + 5 == 9  # the cusp it replaces
    with pytest.raises(XDiffusionError, match="anchor weight rule 'farthest'"):
        interpolation_weight(inputs, rule="farthest")


def test_a_config_file_from_before_the_anchor_weight_means_the_nearest_rule(tmp_path):
    # Models trained before the rule existed saw the nearest input's weight: their files keep it.
    config = residual_config()
    assert config.anchor_weight == "union"
    data = config.to_dict()
    del data["anchor_weight"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert XDiffusionConfig.load_json(tmp_path / "old.json").anchor_weight == "nearest"
    config.save_json(tmp_path / "new.json")
    assert XDiffusionConfig.load_json(tmp_path / "new.json") == config
    with pytest.raises(XDiffusionError, match="config anchor_weight 'cusp': choose one of union, nearest"):
        residual_config(anchor_weight="cusp")


def test_the_reconstructor_blends_its_anchor_with_the_configs_rule():
    inputs = SliceInput.from_volume(head(), "axial", [4, 14])
    for rule in ("union", "nearest"):
        config = residual_config(anchor_weight=rule)
        target = _ResidualTarget(inputs, config)
        assert np.allclose(target.estimate.weight, interpolation_weight(inputs, 6.0, 6.0, rule))


def test_anchor_method_is_registered_for_ablation():
    from XDiffusionLib.methods import get_method

    assert isinstance(get_method("anchor"), AnchorBaseline)


# ------------------------------------------------------------------ normaliser


def test_zero_floor_keeps_a_zero_background_at_zero():
    values = np.array([0.0, 0.0, 5.0, 50.0, 100.0], dtype=np.float32)
    floored = IntensityNormalizer(zero_floor=True).fit(values)
    assert floored.low == 0.0
    assert float(floored.inverse(floored.forward(np.float32(0.0)))) == 0.0
    # The percentile floor of the default maps 0 to its low percentile: the grey background bug.
    assert float(IntensityNormalizer().fit(values).inverse(np.float32(0.0))) > 0.0
    restored = IntensityNormalizer.from_dict(floored.to_dict())
    assert restored.zero_floor and restored.low == 0.0


# ------------------------------------------------------------------ conditions


def test_context_sections_stack_neighbouring_cuts_around_the_section():
    cube = torch.rand(S, S, S, generator=torch.Generator().manual_seed(1))
    anchor = torch.rand(S, S, S, generator=torch.Generator().manual_seed(2))
    sparse = SparseCube.from_cube(cube, axis=2, positions=[3, 9], anchor=anchor)
    flat = residual_config(context_sections=0, priors=("anchor", "distance"))
    stacked = residual_config(context_sections=1, priors=("anchor", "distance"))
    assert stacked.image_channels == 3 * flat.image_channels == 6
    R = section_rotations(1, 2)[0]
    depths = torch.tensor([-0.2, 0.1, 0.4])
    one = ConditionBuilder(sparse, flat)(R, depths).image
    three = ConditionBuilder(sparse, stacked)(R, depths).image
    assert three.shape == (3, 6, S, S)
    # channel order: prior-major, then depth offset -1, 0, +1
    assert torch.allclose(three[:, 1], one[:, 0], atol=1e-6)
    assert torch.allclose(three[:, 4], one[:, 1], atol=1e-6)
    step = 2.0 / (S - 1)
    below = ConditionBuilder(sparse, flat)(R, depths - step).image
    assert torch.allclose(three[:, 0], below[:, 0], atol=1e-6)


def test_residual_config_needs_the_anchor_prior():
    with pytest.raises(XDiffusionError, match="anchor"):
        residual_config(priors=("linear", "distance"))
    with pytest.raises(XDiffusionError, match="start_fraction"):
        residual_config(start_fraction=0.0)


# ------------------------------------------------------------------ residual sampling and reconstruction


def test_zero_residual_gives_back_the_full_resolution_anchor():
    volume = head()
    inputs = SliceInput.from_volume(volume, "axial", [6, 13])
    config = residual_config()
    model = ExactResidual(config, 0.0)
    out = XDiffusionReconstructor(model=model, config=config, views=3, steps=2, device="cpu").reconstruct(inputs)
    anchor = AnchorBaseline(config.anchor_decay_inside_mm, config.anchor_decay_outside_mm).reconstruct(inputs)
    assert model.seen > 0
    expected = np.clip(anchor.array, float(inputs.slices.min()), float(inputs.slices.max()))
    assert np.allclose(out.array, expected, atol=1e-3)
    assert np.array_equal(out.array[:, :, 6], volume.array[:, :, 6])


def test_a_constant_residual_is_added_in_the_inputs_units_inside_the_head():
    volume = head()
    inputs = SliceInput.from_volume(volume, "axial", [10])
    config = residual_config()
    anchor = AnchorBaseline(config.anchor_decay_inside_mm, config.anchor_decay_outside_mm).reconstruct(inputs).array
    out = XDiffusionReconstructor(model=ExactResidual(config, 0.2), config=config, views=2, steps=2,
                                  device="cpu").reconstruct(inputs).array
    high = IntensityNormalizer(zero_floor=True).fit(inputs.slices).high
    centre = out[12, 14, 5] - anchor[12, 14, 5]
    assert centre == pytest.approx(0.1 * high, rel=0.05)  # network 0.2 / residual_scale 2 = 0.1 of the range
    # Outside the anchor's head the residual is never added: the background stays the anchor's (0).
    assert float(np.abs(out[0, 0, :] - anchor[0, 0, :]).max()) == 0.0


def test_the_residual_gain_for_this_k_scales_the_residual_and_its_spread():
    volume = head()
    inputs = SliceInput.from_volume(volume, "axial", [10])
    runs = {}
    for gain in (None, 0.0, 2.0):
        config = residual_config(residual_gain={} if gain is None else {"1": gain, "2": 3.0})
        reconstructor = XDiffusionReconstructor(model=ViewDependentResidual(config, -0.05), config=config, views=2, steps=2,
                                                device="cpu", calibrated=False, keep_features=True)
        runs[gain] = reconstructor.reconstruct_with_uncertainty(inputs)
    anchor = AnchorBaseline().reconstruct(inputs).array
    added = {gain: runs[gain].volume.array[12, 14, 5] - anchor[12, 14, 5] for gain in runs}
    assert added[None] != pytest.approx(0.0, abs=1e-3)  # no table: gain 1
    assert added[0.0] == pytest.approx(0.0, abs=1e-5)  # K = 1 takes key "1", not "2"
    assert added[2.0] == pytest.approx(2.0 * added[None], rel=1e-4)
    assert float(runs[None].spread.array.max()) > 0.05  # the views disagree
    assert np.allclose(runs[2.0].spread.array, 2.0 * runs[None].spread.array, rtol=1e-4, atol=1e-5)
    assert np.array_equal(runs[0.0].volume.array[:, :, 10], volume.array[:, :, 10])  # the input slice exact
    # The parts a gain is selected on rebuild the output at any gain.
    anchor_part, residual, (low, high) = reconstructor.residual_parts(inputs)
    rebuilt = inputs.paste_into(np.clip(anchor_part + 2.0 * residual, low, high))
    assert np.allclose(rebuilt, runs[2.0].volume.array, atol=1e-4)


def test_the_residual_gain_table_is_checked_and_read_by_k():
    config = residual_config(residual_gain={5: 1.25, "1": 1.5})
    assert config.residual_gain == {"1": 1.5, "5": 1.25}  # JSON's text keys, in K order
    assert [config.residual_gain_for(k) for k in (1, 4, 5, 31)] == [1.5, 1.5, 1.25, 1.25]
    assert residual_config(residual_gain={"3": 0.5}).residual_gain_for(2) == 1.0  # below the smallest key
    assert XDiffusionConfig.from_dict(config.to_dict()).residual_gain == config.residual_gain
    for table, message in (({"0": 1.0}, "whole number K >= 1"), ({"x": 1.0}, "whole number K >= 1"),
                           ({"1": -0.5}, r"in \[0, 4\]"), ({"1": "2"}, r"in \[0, 4\]"), ([1.0], "must map K")):
        with pytest.raises(XDiffusionError, match=message):
            residual_config(residual_gain=table)
    with pytest.raises(XDiffusionError, match="only a residual model"):
        XDiffusionConfig(residual_gain={"1": 1.5})


def test_sections_outside_the_head_cost_no_evaluation_and_stay_unchanged():
    config = residual_config()
    cube = torch.zeros(S, S, S)
    cube[5:11, 5:11, 5:11] = 0.8
    sparse = SparseCube.from_cube(cube, axis=2, positions=[8], anchor=cube)
    model = ExactResidual(config, 0.5)
    out = XDiffusionPipeline(model, config, device="cpu")(sparse, ReconstructionSettings(views=2, steps=2))
    assert model.seen < 2 * 2 * S, "empty sections are skipped"
    # Views at 0 and 90 degrees cut sections normal to axes 0 and 1: the corner column meets no head in either.
    assert float(out.cube[0:4, 0:4].abs().max()) == 0.0
    assert float(out.cube[8, 8, 8]) == pytest.approx(0.25, abs=1e-4)


# ------------------------------------------------------------------ training data


def test_training_inputs_cover_the_papers_k_with_protocol_spacing():
    from XDiffusionLib.training.anchor_bank import input_positions

    rng = np.random.default_rng(0)
    counts = [len(input_positions((5, 58), rng)) for _ in range(400)]
    assert max(counts) == 31 and min(counts) == 1
    assert sum(c >= 10 for c in counts) > 80, "K >= 10 is common, as users ask for it"
    positions = input_positions((0, 63), np.random.default_rng(3))
    assert positions == sorted(set(positions)) and 0 <= positions[0] and positions[-1] <= 63


def test_bank_entries_are_reproducible_and_normalised(tmp_path):
    from XDiffusionLib.training.anchor_bank import AnchorBank, load_or_build
    from XDiffusionLib.io.writers import write_volume

    path = tmp_path / "head.nii.gz"
    write_volume(head(), path)
    config = residual_config()
    bank = load_or_build(tmp_path / "run", [path], config, per_volume=2, seed=4, progress=False)
    again = AnchorBank.load(tmp_path / "run" / "anchor_bank.npz")
    assert len(bank) == 2 and np.array_equal(bank.cubes, again.cubes) and bank.positions == again.positions
    assert bank.cubes.shape == (2, S, S, S) and float(bank.cubes.max()) <= 1.0 and float(bank.cubes.min()) >= 0.0
    for e in range(2):  # the anchor reproduces the entry's input slices
        for p in bank.positions[e]:
            assert np.allclose(np.take(bank.anchors[e], p, axis=int(bank.axes[e])),
                               np.take(bank.cubes[e], p, axis=int(bank.axes[e])), atol=2e-3)


def test_a_cached_bank_made_with_other_anchor_settings_is_rebuilt(tmp_path):
    # --resume reuses the run's bank; one made with another anchor weight (or a bank from before the
    # banks recorded it: the nearest rule) must not be trained on as this config's.
    from XDiffusionLib.training.anchor_bank import AnchorBank, load_or_build, merge_banks
    from XDiffusionLib.io.writers import write_volume

    path = tmp_path / "head.nii.gz"
    write_volume(head(), path)
    run = tmp_path / "run"
    union = load_or_build(run, [path], residual_config(), per_volume=1, seed=4, progress=False)
    assert AnchorBank.load(run / "anchor_bank.npz").anchor == {
        "anchor_decay_inside_mm": 6.0, "anchor_decay_outside_mm": 6.0, "anchor_weight": "union"}
    marked = AnchorBank.load(run / "anchor_bank.npz")
    marked.anchors[:] = 0  # a mark: a reused bank still has it, a rebuilt one does not
    marked.save(run / "anchor_bank.npz")
    assert not load_or_build(run, [path], residual_config(), per_volume=1, seed=4, progress=False).anchors.any()
    nearest = load_or_build(run, [path], residual_config(anchor_weight="nearest"), per_volume=1, seed=4,
                            progress=False)
    assert nearest.anchors.any() and nearest.anchor["anchor_weight"] == "nearest"
    assert AnchorBank.load(run / "anchor_bank.npz").anchor["anchor_weight"] == "nearest"
    longer = load_or_build(run, [path], residual_config(anchor_weight="nearest", anchor_decay_inside_mm=9.0),
                           per_volume=1, seed=4, progress=False)
    assert longer.anchor["anchor_decay_inside_mm"] == 9.0
    old = dict(np.load(run / "anchor_bank.npz"))
    del old["anchor_settings"]
    np.savez(run / "anchor_bank.npz", **old)
    assert AnchorBank.load(run / "anchor_bank.npz").matches(residual_config(anchor_weight="nearest"))
    assert not AnchorBank.load(run / "anchor_bank.npz").matches(residual_config())
    with pytest.raises(XDiffusionError, match="different anchor settings"):
        merge_banks([union, longer])


def test_residual_batches_target_truth_minus_anchor():
    from XDiffusionLib.training.anchor_bank import AnchorBank
    from XDiffusionLib.training.examples import sample_residual_batch

    config = residual_config()
    cube = np.zeros((S, S, S), np.float16)
    cube[4:12, 4:12, 4:12] = 0.75
    anchor = np.zeros_like(cube)
    anchor[4:12, 4:12, 4:12] = 0.5
    points = (np.argwhere(cube > 0)[:64] * 2.0 / (S - 1) - 1.0).astype(np.float32)
    bank = AnchorBank(cube[None], anchor[None], np.array([2]), [[8]], [points], ["x"])
    target, cond = sample_residual_batch(bank, 6, torch.Generator().manual_seed(0), config)
    assert target.shape == (6, 1, S, S) and cond.image.shape == (6, config.image_channels, S, S)
    assert float(target.max()) == pytest.approx(0.5, abs=1e-3)  # (0.75 - 0.5) * residual_scale 2
    assert float(target.min()) >= -1e-6


def test_strength_starts_lower_down_the_schedule_and_refuses_noisier_starts_than_trained():
    config = residual_config()
    cube = torch.zeros(S, S, S)
    cube[4:12, 4:12, 4:12] = 0.8
    sparse = SparseCube.from_cube(cube, axis=2, positions=[8], anchor=cube)
    pipeline = XDiffusionPipeline(ExactResidual(config, 0.4), config, device="cpu")
    out = pipeline(sparse, ReconstructionSettings(views=2, steps=2, strength=0.2))
    assert float(out.cube[8, 8, 8]) == pytest.approx(0.2, abs=1e-4)
    with pytest.raises(XDiffusionError, match="strength 0.8 must lie in"):
        pipeline(sparse, ReconstructionSettings(views=2, steps=2, strength=0.8))


def test_the_gain_selection_rule_takes_the_best_psnr_that_keeps_head_ssim():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "select_residual_gain.py"
    spec = importlib.util.spec_from_file_location("select_residual_gain", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    # (PSNR, head SSIM, SSIM) per subject, two subjects, for each gain
    scores = {1: {0.5: [(20.0, 0.50, 0.6)] * 2, 1.0: [(20.5, 0.50, 0.6)] * 2, 1.5: [(21.0, 0.499, 0.6)] * 2,
                  2.0: [(21.5, 0.490, 0.6)] * 2},
              5: {0.5: [(25.0, 0.60, 0.7)] * 2, 1.0: [(24.0, 0.60, 0.7)] * 2, 1.5: [(23.0, 0.61, 0.7)] * 2,
                  2.0: [(22.0, 0.62, 0.7)] * 2}}
    # K=1: 2.0 has the best PSNR but loses 0.01 head SSIM (more than the slack); K=5: 0.5 is simply best
    assert script.select(scores, slack=0.002) == {1: 1.5, 5: 0.5}
