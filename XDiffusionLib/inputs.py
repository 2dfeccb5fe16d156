"""The sparse input every reconstruction method sees, and the interface every method offers.

The ground floor of the library (it imports only ``errors`` and ``io.volume``): baselines, the
model, geometry, metrics, evaluation and the front ends all speak this vocabulary; the method
registry lives upstairs in ``methods.py``.

A method never sees the full volume: only the grid geometry (which a user knows from the
acquisition) and the chosen input slices with their plane and indices. That makes evaluation
leak-free by construction.

Planes refer to the canonical (RAS+) voxel orientation produced by
``XDiffusionLib.transforms.orientation``: axis 0 runs left->right (sagittal slices are constant
axis 0), axis 1 posterior->anterior (coronal), axis 2 inferior->superior (axial).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .errors import XDiffusionError
from .io.volume import Grid, Volume

PLANE_AXIS: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}
# A volume whose voxels take at most this many distinct integer values is a label map, not MRI intensities.
LABEL_MAP_MAX_VALUES = 16


def check_slice_indices(indices, depth: int, plane: str) -> tuple[int, ...]:
    """``indices`` as ints, each a slice of a ``plane`` stack ``depth`` deep: the one check (and message)
    for a slice outside the volume, wherever indices come from."""
    indices = tuple(int(i) for i in indices)
    for index in indices:
        if not 0 <= index < depth:
            raise XDiffusionError(f"slice index {index} is outside the volume: {plane} indices run 0..{depth - 1}")
    return indices


def label_value_count(array: np.ndarray) -> int | None:
    """Number of distinct values when ``array`` looks like a label map (few distinct integers), else None."""
    array = np.asarray(array)
    sample = array[::2, ::2, ::2]  # a cheap first look; the full volume only for candidates
    if np.unique(sample).size > LABEL_MAP_MAX_VALUES or not np.array_equal(sample, np.round(sample)):
        return None
    count = int(np.unique(array).size)
    return count if count <= LABEL_MAP_MAX_VALUES else None


def label_map_reason(array: np.ndarray) -> str | None:
    """Why ``array`` is no input for a reconstruction (it is a label map), or None: the one rule and its words."""
    labels = label_value_count(array)
    return None if labels is None else f"a label map ({labels} distinct values), not an MRI intensity volume"


def check_intensity_volume(volume: Volume, name: str = "the input volume") -> Volume:
    """``volume``, or a one-line XDiffusionError when it is a label map; ``reconstruct_volume`` and
    ``reconstruct_thick_slices`` call it first, so every front end (command line, worker, Slicer,
    web app) refuses a label map with the same words."""
    reason = label_map_reason(volume.array)
    if reason is not None:
        raise XDiffusionError(f"{name} is {reason}")
    return volume


def plane_axis(plane: str) -> int:
    """Array axis that is constant across slices of ``plane``."""
    try:
        return PLANE_AXIS[plane]
    except KeyError:
        raise XDiffusionError(f"unknown plane {plane!r}: choose one of {', '.join(PLANE_AXIS)}") from None


@dataclass(frozen=True)
class SliceInput:
    """The input slices of one reconstruction, in a canonically oriented grid.

    ``slices[n]`` is the 2D slice at ``indices[n]`` along ``plane_axis(plane)``; the two remaining
    axes keep their order.
    """

    grid: Grid
    plane: str
    indices: tuple[int, ...]
    slices: np.ndarray

    def __post_init__(self) -> None:
        axis = plane_axis(self.plane)
        object.__setattr__(self, "indices", check_slice_indices(self.indices, self.grid.shape[axis], self.plane))
        if not self.indices:
            raise XDiffusionError("no input slices given: pick at least one slice index")
        if len(set(self.indices)) != len(self.indices):
            raise XDiffusionError(f"slice indices {list(self.indices)} repeat a slice")
        in_plane = tuple(s for a, s in enumerate(self.grid.shape) if a != axis)
        if self.slices.shape != (len(self.indices), *in_plane):
            raise ValueError(f"slices shape {self.slices.shape} != {(len(self.indices), *in_plane)}")

    @property
    def axis(self) -> int:
        return plane_axis(self.plane)

    @classmethod
    def from_volume(cls, volume: Volume, plane: str, indices) -> "SliceInput":
        """Cut the input slices out of a canonically oriented volume."""
        axis = plane_axis(plane)
        indices = check_slice_indices(indices, volume.shape[axis], plane)
        slices = np.stack([np.take(volume.array, i, axis=axis) for i in indices]).astype(np.float32)
        return cls(volume.grid, plane, indices, slices)

    def paste_into(self, array: np.ndarray) -> np.ndarray:
        """Return ``array`` with the input slices written at their indices (outputs reproduce the inputs)."""
        out = np.array(array, dtype=np.float32, copy=True)
        for index, image in zip(self.indices, self.slices):
            np.moveaxis(out, self.axis, 0)[index] = image
        return out


class Reconstructor(Protocol):
    """A slices-to-volume method: baselines and the X-Diffusion model share it."""

    name: str

    def reconstruct(self, inputs: SliceInput) -> Volume:
        """Return a volume on exactly ``inputs.grid``, in the inputs' intensity range."""
        ...
