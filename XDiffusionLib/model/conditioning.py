"""The one definition of the condition c(x, d, R), shared by training and inference.

The paper conditions the denoiser on the input slice x (concatenated to the noisy latent) and on
the pose (d, R) of the target cross-section. A 1B-parameter U-Net pretrained on Objaverse can
learn where an arbitrary cross-section meets the input slice; a 3M-parameter CPU model cannot
learn that 3D correspondence from a misaligned concatenation. So the condition here has three parts:

- ``image`` (B, C, S, S): *aligned priors*. Volumes built from the input slices only (linear
  interpolation along the slice axis with constant extrapolation, a proximity map
  exp(-4 * distance) to the nearest input slice, optionally the template baseline) are cut with
  the very same (R, d) as the target section, so every pixel of the condition lies on the pixel
  it informs.
- ``slices`` (B, K, S, S) + ``slice_mask``: the input slices themselves in their own cube plane,
  which the denoiser reduces to what the paper concatenates (``multislice``: the paper's product
  x = 1/(K-1) sum x_j*x_{j+1}, or a learned attention pooling). The reduction lives in the model
  (``model/multislice.py``) so the learned variant trains end to end.
- ``pose`` (B, P): [rotation_6d(R) (6), d (1), plane one-hot of the input axis (3), sorted input
  positions padded to K_max, their mask (K_max)], the paper's (d, R) with a summary of where the
  inputs lie.
- ``keep`` (B, 2): whether the image part / the pose part are present (classifier-free guidance
  dropout zeroes a part and clears its flag, so "dropped" never looks like a real mid-grey image).

Value ranges: the cube and slices are intensities in [0, 1] (IntensityNormalizer fitted on the
input slices only); the network sees ``to_network`` = 2x - 1 in [-1, 1]. Positions and depths are
normalised cube coordinates in [-1, 1] (align_corners=True: index i of S is -1 + 2i/(S-1)).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Iterable, Mapping

import numpy as np
import torch

from ..errors import XDiffusionError
from ..geometry.rotation import rotation_6d
from ..geometry.sections import cross_section
from .config import XDiffusionConfig


def to_network(x: torch.Tensor) -> torch.Tensor:
    """Intensities in [0, 1] -> network range [-1, 1]."""
    return x * 2.0 - 1.0


def from_network(y: torch.Tensor) -> torch.Tensor:
    """Network range [-1, 1] -> intensities in [0, 1]."""
    return (y + 1.0) * 0.5


def cube_position(index, side: int) -> torch.Tensor:
    """Normalised position in [-1, 1] of integer cube index/indices (align_corners=True)."""
    return torch.as_tensor(index, dtype=torch.float32) * (2.0 / (side - 1)) - 1.0


@dataclass(frozen=True)
class SparseCube:
    """The K input slices in model space: what every condition is built from.

    ``images[k]`` (S, S) is input slice k resampled into the cube plane of ``axis`` (the two other
    axes in order), intensities in [0, 1]; ``positions[k]`` its normalised position along ``axis``.
    Slices are sorted by position. ``template`` (S, S, S) is optional (the template prior).
    """

    images: torch.Tensor
    axis: int
    positions: torch.Tensor
    side: int
    template: torch.Tensor | None = None
    anchor: torch.Tensor | None = None

    def __post_init__(self) -> None:
        images = torch.as_tensor(self.images, dtype=torch.float32)
        positions = torch.as_tensor(self.positions, dtype=torch.float32).reshape(-1)
        if images.ndim != 3 or images.shape[1:] != (self.side, self.side) or images.shape[0] != positions.numel():
            raise ValueError(f"SparseCube images {tuple(images.shape)} do not match {positions.numel()} positions, side {self.side}")
        if self.axis not in (0, 1, 2):
            raise ValueError(f"SparseCube axis {self.axis} is not 0, 1 or 2")
        order = torch.argsort(positions)
        object.__setattr__(self, "images", images[order].contiguous())
        object.__setattr__(self, "positions", positions[order].contiguous())
        for name in ("template", "anchor"):
            value = getattr(self, name)
            if value is not None:
                value = torch.as_tensor(value, dtype=torch.float32)
                if value.shape != (self.side,) * 3:
                    raise ValueError(f"SparseCube {name} shape {tuple(value.shape)} != {(self.side,) * 3}")
                object.__setattr__(self, name, value)

    @property
    def count(self) -> int:
        return int(self.positions.numel())

    @classmethod
    def from_slice_input(cls, inputs, space, normalizer, template=None, anchor=None) -> "SparseCube":
        """Inference path: resample ``SliceInput`` slices into the ``ModelSpace`` cube.

        ``normalizer`` must have been fitted on ``inputs.slices`` only (leak-free).
        ``template`` is an optional (S, S, S) cube in [0, 1].
        """
        axis = inputs.axis
        # Resample first, then normalise: the order training uses on its cubes (the clipping at the
        # normaliser's percentiles does not commute with interpolation).
        images = [
            np.asarray(normalizer.forward(space.slice_to_cube_plane(axis, np.asarray(image, dtype=np.float32))))
            for image in inputs.slices
        ]
        positions = [float(space.slice_position(axis, index)) for index in inputs.indices]
        side = int(images[0].shape[-1])
        return cls(torch.from_numpy(np.stack(images).astype(np.float32)), axis, torch.tensor(positions), side, template,
                   anchor)

    @classmethod
    def from_cube(cls, cube, axis: int, positions: Iterable[int], template=None, anchor=None) -> "SparseCube":
        """Training path: cut slices at integer ``positions`` along ``axis`` from a known (S, S, S) cube in [0, 1].

        Agrees with ``from_slice_input`` when the volume grid already is the cube.
        """
        cube = torch.as_tensor(cube, dtype=torch.float32)
        side = int(cube.shape[0])
        if cube.shape != (side,) * 3:
            raise ValueError(f"from_cube needs an (S, S, S) cube, got {tuple(cube.shape)}")
        index = torch.as_tensor(list(positions), dtype=torch.long).reshape(-1)
        if index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= side:
            raise ValueError(f"slice positions {index.tolist()} outside 0..{side - 1}")
        images = torch.movedim(cube, axis, 0)[index]
        return cls(images, axis, cube_position(index, side), side, template, anchor)

    def prior_volumes(self, priors: Iterable[str]) -> torch.Tensor:
        """(C, S, S, S) prior volumes in [0, 1], one per name in ``priors``, built from the slices only."""
        volumes = []
        for name in priors:
            if name == "linear":
                volumes.append(self._linear_prior())
            elif name == "distance":
                volumes.append(self._proximity_prior())
            elif name == "template":
                if self.template is None:
                    raise XDiffusionError("the model uses a template prior but no template cube was given")
                volumes.append(self.template)
            elif name == "anchor":
                if self.anchor is None:
                    raise XDiffusionError("the model uses the anchor prior but no anchor cube was given")
                volumes.append(self.anchor)
            else:
                raise XDiffusionError(f"unknown prior {name!r}")
        return torch.stack(volumes)

    def _axis_coordinates(self) -> torch.Tensor:
        return cube_position(torch.arange(self.side), self.side)

    def _linear_prior(self) -> torch.Tensor:
        # Interpolate along the slice axis between the bracketing inputs; constant outside them.
        u = self._axis_coordinates()
        p = self.positions
        if self.count == 1:
            along = self.images[0].expand(self.side, -1, -1)
        else:
            upper = torch.searchsorted(p, u).clamp(1, self.count - 1)
            lower = upper - 1
            span = (p[upper] - p[lower]).clamp_min(1e-12)
            w = ((u - p[lower]) / span).clamp(0.0, 1.0)[:, None, None]
            along = self.images[lower] * (1 - w) + self.images[upper] * w
        return torch.movedim(along, 0, self.axis).contiguous()

    def _proximity_prior(self) -> torch.Tensor:
        # exp(-4 * distance): 1 on an input slice, 0.37 an eighth of the cube away, ~0 across it;
        # smooth at 0, so rounding in the positions cannot change it noticeably.
        u = self._axis_coordinates()
        distance = (u[:, None] - self.positions[None, :]).abs().min(dim=1).values
        proximity = torch.exp(-4.0 * distance)
        along = proximity[:, None, None].expand(self.side, self.side, self.side)
        return torch.movedim(along, 0, self.axis).contiguous()


@dataclass
class Condition:
    """c(x, d, R) for a batch of cross-sections (see the module docstring for each field)."""

    image: torch.Tensor  # (B, C, S, S) aligned priors, network range
    slices: torch.Tensor  # (B, K, S, S) input slices in their cube plane, network range, zero padded
    slice_mask: torch.Tensor  # (B, K) 1 for a real slice (real slices first)
    pose: torch.Tensor  # (B, P)
    keep: torch.Tensor  # (B, 2) [image present, pose present]

    @property
    def batch_size(self) -> int:
        return int(self.image.shape[0])

    def to(self, device=None, dtype=None) -> "Condition":
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return Condition(**{f.name: move(getattr(self, f.name)) for f in fields(self)})

    def __getitem__(self, index) -> "Condition":
        """Batch indexing (``cond[a:b]``) for chunked inference."""
        return Condition(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def cat(conditions: list["Condition"]) -> "Condition":
        """Concatenate along the batch, padding ``slices`` to the largest K."""
        k = max(c.slices.shape[1] for c in conditions)
        padded = []
        for c in conditions:
            extra = k - c.slices.shape[1]
            if extra:
                b, _, h, w = c.slices.shape
                c = replace(
                    c,
                    slices=torch.cat([c.slices, c.slices.new_zeros(b, extra, h, w)], 1),
                    slice_mask=torch.cat([c.slice_mask, c.slice_mask.new_zeros(b, extra)], 1),
                )
            padded.append(c)
        return Condition(**{f.name: torch.cat([getattr(c, f.name) for c in padded]) for f in fields(Condition)})


def pose_summary(sparse: SparseCube, max_slices: int) -> torch.Tensor:
    """The (3 + 2*K_max) part of the pose that depends only on the inputs: plane one-hot, positions, mask."""
    if sparse.count > max_slices:
        raise XDiffusionError(f"{sparse.count} input slices: this model takes at most {max_slices}")
    plane = torch.zeros(3)
    plane[sparse.axis] = 1.0
    positions = torch.zeros(max_slices)
    mask = torch.zeros(max_slices)
    positions[: sparse.count] = sparse.positions
    mask[: sparse.count] = 1.0
    return torch.cat([plane, positions, mask])


def section_channel(config: XDiffusionConfig, prior: str) -> int:
    """The channel of ``Condition.image`` holding ``prior`` cut at the section itself (not one of
    its ``context_sections`` neighbours): the layout ``ConditionBuilder`` stacks the priors in."""
    span = 1 + 2 * int(config.context_sections)
    return list(config.priors).index(prior) * span + int(config.context_sections)


class ConditionBuilder:
    """Builds conditions for one SparseCube; the prior volumes are computed once and reused for every (R, d)."""

    def __init__(self, sparse: SparseCube, config: XDiffusionConfig, device: torch.device | str = "cpu") -> None:
        if sparse.side != config.side:
            raise XDiffusionError(f"input cube side {sparse.side} does not match the model side {config.side}")
        self.sparse = sparse
        self.config = config
        self.device = torch.device(device)
        self.priors = sparse.prior_volumes(config.priors).to(self.device)  # (C, S, S, S) in [0, 1]
        self.slices = to_network(sparse.images).to(self.device)  # (K, S, S)
        self.summary = pose_summary(sparse, config.max_slices).to(self.device)

    def __call__(self, rotations: torch.Tensor, depths: torch.Tensor) -> Condition:
        """Conditions for sections at ``depths`` (B,) of the volume rotated by ``rotations`` (B, 3, 3) or (3, 3)."""
        depths = torch.as_tensor(depths, dtype=torch.float32, device=self.device).reshape(-1)
        batch = depths.numel()
        rotations = torch.as_tensor(rotations, dtype=torch.float32, device=self.device)
        if rotations.ndim == 2:
            rotations = rotations.expand(batch, 3, 3)
        volume = self.priors.unsqueeze(0).expand(batch, *self.priors.shape)
        # Zero padding outside the cube reads as intensity 0 / proximity 0: background, far from inputs.
        context = int(self.config.context_sections)
        if context:
            # 2.5D: the same priors one voxel apart on each side of the section, stacked as channels.
            step = 2.0 / (self.sparse.side - 1)
            offsets = torch.arange(-context, context + 1, device=self.device, dtype=torch.float32) * step
            planes = cross_section(volume, rotations, depths[:, None] + offsets[None, :])  # (B, C, 2c+1, S, S)
            image = to_network(planes.reshape(batch, -1, self.sparse.side, self.sparse.side))
        else:
            image = to_network(cross_section(volume, rotations, depths))
        k = self.sparse.count
        slices = self.slices.unsqueeze(0).expand(batch, k, self.sparse.side, self.sparse.side)
        pose = torch.cat(
            [rotation_6d(rotations).reshape(batch, 6), depths[:, None], self.summary.expand(batch, -1)], dim=1
        )
        return Condition(
            image=image,
            slices=slices,
            slice_mask=torch.ones(batch, k, device=self.device),
            pose=pose,
            keep=torch.ones(batch, 2, device=self.device),
        )


def build_condition(
    sparse: SparseCube, rotations: torch.Tensor, depths: torch.Tensor, config: XDiffusionConfig
) -> Condition:
    """c(x, d, R) for sections at ``depths`` (B,) after rotation ``rotations`` (B, 3, 3)."""
    return ConditionBuilder(sparse, config, device=torch.as_tensor(depths).device)(rotations, depths)


def _drop(cond: Condition, drop_image: torch.Tensor, drop_pose: torch.Tensor) -> Condition:
    keep_image = (~drop_image).to(cond.image.dtype)
    keep_pose = (~drop_pose).to(cond.pose.dtype)
    return Condition(
        image=cond.image * keep_image[:, None, None, None],
        slices=cond.slices * keep_image[:, None, None, None],
        slice_mask=cond.slice_mask * keep_image[:, None],
        pose=cond.pose * keep_pose[:, None],
        keep=torch.stack([keep_image, keep_pose], dim=1) * cond.keep,
    )


def drop_condition(
    cond: Condition, generator: torch.Generator | None = None, probs: Mapping[str, float] | None = None
) -> Condition:
    """Classifier-free guidance dropout (Zero-1-to-3 style): one uniform draw r per sample.

    r < p_image: drop the image part (priors and slices); next p_pose: drop the pose; next p_all:
    drop both; otherwise keep everything. ``probs`` defaults to ``XDiffusionConfig().cond_dropout``.
    """
    probs = dict(XDiffusionConfig().cond_dropout if probs is None else probs)
    p_image, p_pose, p_all = (float(probs.get(key, 0.0)) for key in ("image", "pose", "all"))
    r = torch.rand(cond.batch_size, generator=generator, device=generator.device if generator else "cpu")
    r = r.to(cond.image.device)
    only_image = r < p_image
    only_pose = (r >= p_image) & (r < p_image + p_pose)
    both = (r >= p_image + p_pose) & (r < p_image + p_pose + p_all)
    return _drop(cond, only_image | both, only_pose | both)


def null_condition(cond: Condition) -> Condition:
    """The unconditional branch for classifier-free guidance: image and pose both dropped."""
    everything = torch.ones(cond.batch_size, dtype=torch.bool, device=cond.image.device)
    return _drop(cond, everything, everything)
