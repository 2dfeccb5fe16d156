"""Training examples for paper eq. 2: (target cross-section, condition) pairs drawn at random.

Per example, all from one ``torch.Generator`` (so a step's batch is a pure function of its seed):

1. a random training volume (model-space cube) and a random input plane axis (0, 1, 2; by
   ``plane_weights``, uniform by default);
2. K input slices, K in 1..K_max (a quarter of the examples use K = 1, the paper's headline
   case; the rest are uniform in 2..K_max), at random distinct integer positions inside the
   foreground extent along the axis: random gaps, not necessarily consecutive (paper C.4);
3. an ``IntensityNormalizer`` fitted on those K slices only, applied to the cube: inference fits
   it on the user's input slices only, so training sees the same intensity mapping;
4. a rotation R. The paper draws R ~ SO(3). Inference here uses N azimuth views about the
   vertical axis (canonical axis 2), so half the rotations (``so3_fraction``) are uniform on SO(3)
   (keeps every section direction in the training distribution) and the other half are azimuth
   rotations by a uniform random angle (the views the model is actually asked for);
5. a depth d (normalised on the rotated cube, ``geometry.sections`` convention): with probability
   ``foreground_depth_fraction`` uniform over the depths whose plane meets the foreground
   (projection of foreground points on the plane normal), otherwise uniform over [-1, 1];
6. target = ``cross_section(cube, R, d)`` in network range; condition = ``build_condition`` of
   the ``SparseCube`` of the K slices, at the same (R, d).

Target sections are cut for the whole batch in one ``cross_section`` call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import XDiffusionError
from ..geometry.rotation import random_rotations, rotation_about_axis, section_rotations_at
from ..geometry.sections import cross_section
from ..model.conditioning import Condition, SparseCube, build_condition, to_network
from ..transforms.intensity import IntensityNormalizer
from .data import VolumeDataset

K1_FRACTION = 0.25


@dataclass(frozen=True)
class ExampleSettings:
    """The knobs of ``sample_batch`` (from ``TrainConfig`` and the model config)."""

    k_max: int = 8
    plane_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    so3_fraction: float = 0.5
    foreground_depth_fraction: float = 0.8
    k1_fraction: float = K1_FRACTION


def _uniform(generator: torch.Generator, n: int) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64)


def draw_slice_counts(generator: torch.Generator, n: int, k_max: int, k1_fraction: float) -> torch.Tensor:
    """K per example: 1 with probability ``k1_fraction`` (or when k_max = 1), else uniform in 2..k_max."""
    u = _uniform(generator, n)
    rest = torch.randint(2, max(k_max, 2) + 1, (n,), generator=generator)
    return torch.where((u < k1_fraction) | (k_max == 1), torch.ones_like(rest), rest)


def draw_rotations(generator: torch.Generator, n: int, so3_fraction: float) -> torch.Tensor:
    """(n, 3, 3): uniform SO(3) with probability ``so3_fraction``, else azimuth about canonical axis 2."""
    use_so3 = _uniform(generator, n) < so3_fraction
    so3 = random_rotations(n, generator, dtype=torch.float32)
    angles = _uniform(generator, n) * (2.0 * math.pi)
    azimuth = rotation_about_axis(angles, 2).to(torch.float32)
    return torch.where(use_so3[:, None, None], so3, azimuth)


def draw_depths(
    generator: torch.Generator, rotations: torch.Tensor, points: list[np.ndarray], foreground_fraction: float
) -> torch.Tensor:
    """(n,) normalised depths: mostly planes that cut the foreground, some anywhere in the cube.

    The plane at depth t of R.X (same-size rotated cube) is {p : R[0] . p = t} in the original
    cube's normalised coordinates, so the foreground spans t in [min, max] of R[0] . points.
    """
    n = rotations.shape[0]
    lows, highs = [], []
    for b in range(n):
        projection = torch.from_numpy(points[b]).to(torch.float64) @ rotations[b, 0].to(torch.float64)
        lows.append(projection.min())
        highs.append(projection.max())
    low = torch.stack(lows).clamp(-1.0, 1.0)
    high = torch.stack(highs).clamp(-1.0, 1.0)
    use_foreground = _uniform(generator, n) < foreground_fraction
    u = _uniform(generator, n)
    foreground = low + u * (high - low)
    anywhere = -1.0 + 2.0 * u
    return torch.where(use_foreground, foreground, anywhere).to(torch.float32)


def draw_positions(generator: torch.Generator, extent: tuple[int, int], k: int) -> list[int]:
    """``k`` distinct random integer positions in the inclusive ``extent`` (fewer if it is too short)."""
    low, high = extent
    order = torch.randperm(high - low + 1, generator=generator)[:k]
    return sorted(int(i) + low for i in order)


@dataclass(frozen=True)
class ExampleDraws:
    """The random choices of a batch (everything ``build_examples`` needs besides the data)."""

    volume_index: list[int]
    axes: list[int]
    positions: list[list[int]]  # per example: sorted integer cube indices along its axis
    rotations: torch.Tensor  # (B, 3, 3)
    depths: torch.Tensor  # (B,) normalised


def draw_examples(dataset: VolumeDataset, batch_size: int, generator: torch.Generator, k_max: int,
                  settings: ExampleSettings) -> ExampleDraws:
    """Steps 1, 2, 4 and 5 of the module docstring, all from ``generator``."""
    n = int(batch_size)
    volume_index = torch.randint(0, len(dataset), (n,), generator=generator)
    weights = torch.tensor(settings.plane_weights, dtype=torch.float64)
    axes = torch.multinomial(weights / weights.sum(), n, replacement=True, generator=generator)
    counts = draw_slice_counts(generator, n, k_max, settings.k1_fraction)
    positions = [
        draw_positions(generator, dataset[int(v)].extent[int(a)], int(k))
        for v, a, k in zip(volume_index, axes, counts)
    ]
    rotations = draw_rotations(generator, n, settings.so3_fraction)
    depths = draw_depths(
        generator, rotations, [dataset[int(v)].points for v in volume_index], settings.foreground_depth_fraction
    )
    return ExampleDraws([int(v) for v in volume_index], [int(a) for a in axes], positions, rotations, depths)


def build_examples(dataset: VolumeDataset, draws: ExampleDraws, config, device: torch.device | str = "cpu"):
    """Steps 3 and 6: normalise each cube on its input slices, cut targets (one batched call) and conditions."""
    cubes = []
    for v, axis, pos in zip(draws.volume_index, draws.axes, draws.positions):
        cube = dataset.cubes[v]
        normalizer = IntensityNormalizer().fit(np.take(cube, pos, axis=axis))
        cubes.append(torch.from_numpy(np.asarray(normalizer.forward(cube), dtype=np.float32)))
    cube_batch = torch.stack(cubes).to(device)  # (B, S, S, S) in the examples' normalised intensities
    rotations = draws.rotations.to(device)
    depths = draws.depths.to(device)
    target = to_network(cross_section(cube_batch[:, None], rotations, depths))  # (B, 1, S, S)
    conditions = [
        build_condition(SparseCube.from_cube(cube_batch[b], axis, pos), rotations[b : b + 1], depths[b : b + 1], config)
        for b, (axis, pos) in enumerate(zip(draws.axes, draws.positions))
    ]
    return target, Condition.cat(conditions)


def sample_batch(
    dataset: VolumeDataset,
    batch_size: int,
    generator: torch.Generator,
    config,
    settings: ExampleSettings = ExampleSettings(),
    device: torch.device | str = "cpu",
):
    """A batch of training examples: ``(target (B, 1, S, S) in network range, Condition)``.

    ``config`` is the model's ``XDiffusionConfig`` (side, priors, K_max of the pose). Deterministic
    given the generator state; ``device`` is where the tensors are built and returned.
    """
    if len(dataset) == 0:
        raise XDiffusionError("the training set holds no volumes")
    if dataset.side != config.side:
        raise XDiffusionError(f"training cubes have side {dataset.side} but the model side is {config.side}")
    if "template" in config.priors:
        raise XDiffusionError("training a model with the template prior is not supported: remove 'template' from priors")
    k_max = max(1, min(int(settings.k_max), int(config.max_slices)))
    draws = draw_examples(dataset, batch_size, generator, k_max, settings)
    return build_examples(dataset, draws, config, device)


def sample_residual_batch(bank, batch_size: int, generator: torch.Generator, config,
                          settings: ExampleSettings = ExampleSettings(), device: torch.device | str = "cpu"):
    """A batch for a residual model: ``(target residual section (B, 1, S, S) in network units, Condition)``.

    Entries come from an ``AnchorBank`` (inputs, normalisation and anchor already drawn); here only the
    section is drawn: a rotation of the inference family (``section_rotations_at``: sections that
    contain the input normal, at a uniform angle) and a depth as in ``draw_depths``.
    """
    if len(bank) == 0:
        raise XDiffusionError("the training set holds no volumes")
    if bank.side != config.side:
        raise XDiffusionError(f"training cubes have side {bank.side} but the model side is {config.side}")
    n = int(batch_size)
    entries = torch.randint(0, len(bank), (n,), generator=generator).tolist()
    angles = _uniform(generator, n) * math.pi
    rotations = torch.cat([section_rotations_at(angles[b : b + 1], int(bank.axes[e])) for b, e in enumerate(entries)])
    rotations = rotations.to(torch.float32)
    depths = draw_depths(generator, rotations, [bank.points[e] for e in entries], settings.foreground_depth_fraction)
    cubes = torch.from_numpy(np.stack([bank.cubes[e] for e in entries]).astype(np.float32)).to(device)
    anchors = torch.from_numpy(np.stack([bank.anchors[e] for e in entries]).astype(np.float32)).to(device)
    rotations, depths = rotations.to(device), depths.to(device)
    residual = cross_section((cubes - anchors)[:, None], rotations, depths) * float(config.residual_scale)
    conditions = [
        build_condition(SparseCube.from_cube(cubes[b], int(bank.axes[e]), bank.positions[e], anchor=anchors[b]),
                        rotations[b : b + 1], depths[b : b + 1], config)
        for b, e in enumerate(entries)
    ]
    return residual, Condition.cat(conditions)
