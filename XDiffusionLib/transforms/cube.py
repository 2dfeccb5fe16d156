"""Pad or crop an array to a centred S x S x S cube, voxel for voxel, and back.

No resampling: each axis is zero-padded (shorter than S) or cropped (longer than S) around its
centre; for an odd difference the extra voxel goes after (padding) or is cut after (cropping).
For fitting a grid of any size and spacing into the model's cube, use ``ModelSpace``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CenteredCube:
    """Per axis: ``cube index = array index - start[a]`` (start < 0 means padding)."""

    shape: tuple[int, int, int]
    side: int
    start: tuple[int, int, int]

    @classmethod
    def for_shape(cls, shape: tuple[int, ...], side: int) -> "CenteredCube":
        if side < 1:
            raise ValueError(f"cube side must be positive, got {side}")
        shape = tuple(int(n) for n in shape)
        if len(shape) != 3:
            raise ValueError(f"need a 3D shape, got {shape}")
        start = tuple((n - side) // 2 if n >= side else -((side - n) // 2) for n in shape)
        return cls(shape, int(side), start)  # type: ignore[arg-type]

    def forward(self, array: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Array (..., *shape) -> cube (..., S, S, S); padding takes ``fill``."""
        array = np.asarray(array)
        self._check(array, self.shape)
        out = np.full(array.shape[:-3] + (self.side,) * 3, fill, dtype=array.dtype)
        out[(Ellipsis, *self._cube_slices())] = array[(Ellipsis, *self._array_slices())]
        return out

    def inverse(self, cube: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Cube (..., S, S, S) -> array (..., *shape); voxels cropped away come back as ``fill``."""
        cube = np.asarray(cube)
        self._check(cube, (self.side,) * 3)
        out = np.full(cube.shape[:-3] + self.shape, fill, dtype=cube.dtype)
        out[(Ellipsis, *self._array_slices())] = cube[(Ellipsis, *self._cube_slices())]
        return out

    def cube_index(self, axis: int, index: int) -> int:
        """Cube index of array ``index`` along ``axis`` (may fall outside 0..S-1 when cropped)."""
        return int(index) - self.start[axis]

    def array_index(self, axis: int, index: int) -> int:
        """Array index of cube ``index`` along ``axis`` (may fall outside the array when padded)."""
        return int(index) + self.start[axis]

    def _array_slices(self) -> list[slice]:
        return [slice(max(s, 0), min(s + self.side, n)) for s, n in zip(self.start, self.shape)]

    def _cube_slices(self) -> list[slice]:
        return [slice(max(-s, 0), max(-s, 0) + min(s + self.side, n) - max(s, 0)) for s, n in zip(self.start, self.shape)]

    @staticmethod
    def _check(array: np.ndarray, shape: tuple[int, ...]) -> None:
        if array.ndim < 3 or tuple(array.shape[-3:]) != tuple(shape):
            raise ValueError(f"array of shape {array.shape} does not end in {tuple(shape)}")
