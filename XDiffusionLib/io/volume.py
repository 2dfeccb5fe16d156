"""The one volume type: a 3D voxel array with its full physical geometry.

Conventions (ITK's, as SimpleITK and DICOM use them):
- ``array[i, j, k]`` is the voxel at grid index (i, j, k): i runs fastest in the file.
- Physical points are in LPS millimetres:
  ``point = origin + direction @ (spacing * [i, j, k])``.
- ``direction`` columns are the unit vectors of the i, j, k axes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Grid:
    """Voxel grid geometry without voxels."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(s) for s in self.origin))
        object.__setattr__(self, "direction", np.asarray(self.direction, dtype=np.float64).reshape(3, 3))

    @property
    def index_to_physical(self) -> np.ndarray:
        """4x4 affine from (i, j, k, 1) to LPS millimetres."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction @ np.diag(self.spacing)
        affine[:3, 3] = self.origin
        return affine

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def same_geometry(self, other: "Grid", tol: float = 1e-6) -> bool:
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )


@dataclass(frozen=True)
class Volume:
    """A 3D scalar volume: voxels plus geometry. Immutable by convention: operations return new volumes."""

    array: np.ndarray
    grid: Grid

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume needs a 3D array, got shape {self.array.shape}")
        if tuple(self.array.shape) != self.grid.shape:
            raise ValueError(f"array shape {self.array.shape} does not match grid shape {self.grid.shape}")

    @classmethod
    def from_array(cls, array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None) -> "Volume":
        direction = np.eye(3) if direction is None else direction
        return cls(np.asarray(array), Grid(array.shape, spacing, origin, direction))

    def with_array(self, array: np.ndarray) -> "Volume":
        """Same geometry, new voxels."""
        return Volume(np.asarray(array), self.grid)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.grid.shape

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.grid.spacing

    @property
    def origin(self) -> tuple[float, float, float]:
        return self.grid.origin

    @property
    def direction(self) -> np.ndarray:
        return self.grid.direction
