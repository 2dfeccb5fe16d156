"""Regression pins (as diffusers' pipeline tests keep them): a tiny random model and fixed seeds
give a few known voxel values, so a change that moves the numbers fails here even when every
shape, range and property test still passes.

What is pinned, and what is not:

- the pipeline on a fixed condition, for a volume-target model and for a residual model given a
  fixed anchor cube (the anchor's own computation, ``baselines/``, is deliberately left out: the
  head prior is tuned on its own schedule, and its tests cover it);
- ``reconstruct_volume`` end to end for a volume-target model (which uses no baseline), on torch
  eager (``runtime="torch"``; the ONNX Runtime path is compared with torch in
  test_onnx_runtime.py).

The values were taken on a CPU build of torch and agree between HEAD and the working tree at the
time they were recorded. The tolerance allows float rounding between machines and BLAS builds,
not a changed algorithm. When a change is meant to move the numbers, say so in its commit and
record the new values (a failing pin prints the values it got).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from XDiffusionLib.io.volume import Volume
from XDiffusionLib.model.checkpoint import save_pretrained
from XDiffusionLib.model.conditioning import SparseCube
from XDiffusionLib.model.config import XDiffusionConfig
from XDiffusionLib.model.factory import build_denoiser
from XDiffusionLib.sampling.pipeline import XDiffusionPipeline
from XDiffusionLib.sampling.reconstructor import reconstruct_volume
from XDiffusionLib.settings import ReconstructionSettings
from XDiffusionLib.training.config import COMPACT_MODEL

S = 16
CUBE_POINTS = [(8, 8, 8), (3, 12, 6), (13, 2, 9), (8, 5, 11)]
VOLUME_POINTS = [(7, 6, 4), (2, 9, 0), (11, 3, 8), (5, 5, 5)]  # none on an input slice (k = 2, 7)
RTOL, ATOL = 1e-4, 1e-4


def tiny_config(residual: bool = False) -> XDiffusionConfig:
    options = dict(COMPACT_MODEL) if residual else {}
    options.update(side=S, block_out_channels=(8, 16), attention_levels=(1,), max_slices=4, depth_frequencies=4)
    return XDiffusionConfig(**options)


def tiny_model(config: XDiffusionConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_denoiser(config).eval()


def condition(anchor: torch.Tensor | None = None) -> SparseCube:
    cube = torch.rand(S, S, S, generator=torch.Generator().manual_seed(0))
    return SparseCube.from_cube(cube, axis=2, positions=[4, 11], anchor=anchor)


def assert_pinned(values, expected, what: str) -> None:
    values = [float(v) for v in values]
    assert np.allclose(values, expected, rtol=RTOL, atol=ATOL), f"{what} moved: {values} (pinned {expected})"


def test_pipeline_pinned_for_a_volume_target_model():
    config = tiny_config()
    out = XDiffusionPipeline(tiny_model(config), config, device="cpu")(condition(), ReconstructionSettings(views=2, steps=2, seed=3))
    assert_pinned([out.cube[p] for p in CUBE_POINTS],
                  [0.20835958, 0.62412924, 0.68071616, 0.31747574], "the pipeline's mean")
    assert_pinned([out.uncertainty[p] for p in CUBE_POINTS],
                  [0.20835899, 0.25358474, 0.20805320, 0.08909485], "the pipeline's spread")


def test_pipeline_pinned_for_a_residual_model_given_a_fixed_anchor():
    config = tiny_config(residual=True)
    anchor = torch.rand(S, S, S, generator=torch.Generator().manual_seed(1)) * 0.8
    out = XDiffusionPipeline(tiny_model(config), config, device="cpu")(condition(anchor), ReconstructionSettings(views=2, steps=2, seed=3))
    assert_pinned([out.cube[p] for p in CUBE_POINTS],
                  [0.19106865, 0.08708503, -0.00144164, 0.56403315], "the residual pipeline's mean")
    assert_pinned([out.uncertainty[p] for p in CUBE_POINTS],
                  [0.11069775, 0.24763680, 0.35293567, 0.14880061], "the residual pipeline's spread")


def test_reconstruct_volume_pinned_end_to_end(tmp_path):
    config = tiny_config()
    model_dir = save_pretrained(tiny_model(config), config, tmp_path / "tiny")
    rng = np.random.default_rng(0)
    shape = (14, 12, 10)
    i, j, k = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    array = (300 + 200 * np.sin(3 * i) * np.cos(2 * j) + 150 * k + rng.normal(0, 5, shape)).astype(np.float32)
    volume = Volume.from_array(array, spacing=(1.2, 1.0, 1.6), origin=(3.0, -4.0, 5.0))
    result = reconstruct_volume(volume, "axial", [2, 7], model_dir=model_dir, steps=2, views=2, seed=3,
                                device="cpu", runtime="torch")
    assert_pinned([result.volume.array[p] for p in VOLUME_POINTS],
                  [448.88220, 373.08676, 542.81238, 498.84741], "reconstruct_volume's voxels")
    assert_pinned([result.uncertainty.array[p] for p in VOLUME_POINTS],
                  [71.899452, 43.319603, 23.447086, 92.149971], "reconstruct_volume's uncertainty")
    for index in (2, 7):  # the input slices come back exactly
        assert np.array_equal(result.volume.array[:, :, index], array[:, :, index])


@pytest.mark.parametrize("shift", [1e-3])
def test_the_pins_catch_a_small_drift(shift):
    """The tolerance is tight enough to see a drift of a thousandth of the range."""
    with pytest.raises(AssertionError, match="moved"):
        assert_pinned([0.20835958 + shift], [0.20835958], "a drifted value")
