"""The model's cube: a canonical grid fitted, isotropic and centred, into S x S x S voxels, and back.

Geometry (voxels are boxes of their spacing, centred on their index):
- The canonical grid's physical extent along axis a is ``E_a = shape[a] * spacing[a]``.
- The cube has isotropic voxels of ``cube_spacing = max(E_a) / S`` mm: its box equals the grid's
  box along the longest axis and is centred on the grid's centre along every axis, so shorter
  axes get zero padding on both sides.
- Cube index ``u`` along axis a and canonical index ``x`` are related by the diagonal affine
  ``x = scale[a] * u + offset[a]`` (``cube_to_canonical``); cube axes are parallel to the
  canonical array axes, so the cube has the canonical grid's direction (``cube_grid``).

Normalised cube coordinates (``slice_position``) follow the align_corners=True convention of
``torch.nn.functional.grid_sample``: ``-1`` is the centre of cube voxel 0 and ``+1`` the centre of
voxel S-1, i.e. ``position = 2 * u / (S - 1) - 1``. A canonical slice near the border of the
longest axis can sit up to half a cube voxel outside that range.

Resampling is separable (the affine is diagonal): order 1 is trilinear, order 0 nearest.
A cube voxel holds data when its centre lies inside the grid's box (``cube_data_range``; within
half a canonical voxel of the edge voxels it takes the edge value); the others are 0 padding.
``to_grid`` reads only the data voxels, so the padding never bleeds into the canonical grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io.volume import Grid


@dataclass(frozen=True)
class _AxisSampler:
    """1D resampling of one array axis at fractional source indices (linear or nearest)."""

    lower: np.ndarray
    upper: np.ndarray
    weight: np.ndarray  # of ``upper``; 0 for nearest
    inside: np.ndarray  # False where the target lies outside the source

    @classmethod
    def build(cls, coords: np.ndarray, low: float, high: float, order: int, inside: np.ndarray | None = None) -> "_AxisSampler":
        """Sample at ``coords`` clamped to the source index range [low, high]; 0 where not ``inside``."""
        if order not in (0, 1):
            raise ValueError(f"interpolation order {order} is not supported: use 0 (nearest) or 1 (linear)")
        inside = np.ones(len(coords), bool) if inside is None else inside
        clamped = np.clip(coords, low, high)
        if order == 0:
            nearest = np.clip(np.floor(clamped + 0.5), low, high).astype(np.intp)
            return cls(nearest, nearest, np.zeros(len(coords), np.float32), inside)
        lower = np.clip(np.floor(clamped), low, max(high - 1, low)).astype(np.intp)
        upper = np.minimum(lower + 1, int(high))
        weight = (clamped - lower).astype(np.float32)
        return cls(lower, upper, weight, inside)

    def apply(self, array: np.ndarray, axis: int) -> np.ndarray:
        shape = [1] * array.ndim
        shape[axis] = len(self.lower)
        weight = self.weight.reshape(shape)
        inside = self.inside.reshape(shape)
        low = np.take(array, self.lower, axis=axis)
        if np.any(self.weight):
            low = low + (np.take(array, self.upper, axis=axis) - low) * weight
        if self.inside.all():
            return low
        return np.where(inside, low, np.float32(0.0))


@dataclass(frozen=True)
class ModelSpace:
    """Mapping between a canonical grid and the model's S^3 cube (see the module docs)."""

    grid: Grid
    side: int
    cube_spacing: float
    scale: tuple[float, float, float]  # canonical voxels per cube voxel, per axis
    offset: tuple[float, float, float]  # canonical index of cube voxel 0, per axis

    @classmethod
    def for_grid(cls, grid: Grid, side: int) -> "ModelSpace":
        side = int(side)
        if side < 2:
            raise ValueError(f"cube side must be at least 2, got {side}")
        shape = np.asarray(grid.shape, dtype=np.float64)
        spacing = np.asarray(grid.spacing, dtype=np.float64)
        extent = shape * spacing
        cube_spacing = float(extent.max() / side)
        scale = cube_spacing / spacing
        # Centre of cube voxel 0 is at -E/2 + c/2 from the common centre; canonical voxel x at
        # (x + 0.5) * s_a - E_a/2.
        offset = (0.5 * cube_spacing - 0.5 * extent.max() + 0.5 * extent) / spacing - 0.5
        return cls(grid, side, cube_spacing, tuple(map(float, scale)), tuple(map(float, offset)))  # type: ignore[arg-type]

    # ---- index maps ---------------------------------------------------------------------------

    @property
    def cube_to_canonical(self) -> np.ndarray:
        """4x4 affine from cube indices (u, v, w, 1) to canonical (continuous) indices."""
        affine = np.diag([*self.scale, 1.0])
        affine[:3, 3] = self.offset
        return affine

    @property
    def canonical_to_cube(self) -> np.ndarray:
        """4x4 affine from canonical indices (i, j, k, 1) to cube (continuous) indices."""
        affine = np.diag([*(1.0 / np.asarray(self.scale)), 1.0])
        affine[:3, 3] = -np.asarray(self.offset) / np.asarray(self.scale)
        return affine

    def cube_index_to_canonical_index(self, points: np.ndarray) -> np.ndarray:
        """Cube indices (..., 3) -> canonical continuous indices (..., 3)."""
        return np.asarray(points, dtype=np.float64) * self.scale + self.offset

    def canonical_index_to_cube_index(self, points: np.ndarray) -> np.ndarray:
        """Canonical indices (..., 3) -> cube continuous indices (..., 3)."""
        return (np.asarray(points, dtype=np.float64) - self.offset) / self.scale

    @property
    def cube_grid(self) -> Grid:
        """The cube as a physical grid (same direction as the canonical grid), e.g. to save a cube."""
        first = self.grid.index_to_physical @ np.array([*self.offset, 1.0])
        return Grid((self.side,) * 3, (self.cube_spacing,) * 3, tuple(first[:3]), self.grid.direction)

    def slice_position(self, axis: int, index: float) -> float:
        """Normalised cube coordinate (-1 = centre of cube voxel 0, +1 = of voxel S-1) of canonical
        slice ``index`` along ``axis``."""
        u = (index - self.offset[axis]) / self.scale[axis]
        return float(2.0 * u / (self.side - 1) - 1.0)

    def position_to_index(self, axis: int, position: float) -> float:
        """Canonical continuous index along ``axis`` at normalised cube coordinate ``position``."""
        u = (position + 1.0) * (self.side - 1) / 2.0
        return float(self.scale[axis] * u + self.offset[axis])

    # ---- resampling ---------------------------------------------------------------------------

    def to_cube(self, array: np.ndarray, order: int = 1, antialias: bool = False) -> np.ndarray:
        """Canonical-grid array (..., n0, n1, n2) -> float32 cube (..., S, S, S); 0 outside the grid.

        ``antialias`` blurs axes that shrink by more than 1x before sampling (Gaussian, sigma
        (factor - 1) / 2 source voxels) to avoid aliasing; off by default (plain trilinear).
        """
        array = self._check(array, self.grid.shape, 3, "canonical grid")
        if antialias:
            array = self._blur(array, range(3))
        for axis in range(3):
            array = self._to_cube_sampler(axis, order).apply(array, array.ndim - 3 + axis)
        return array

    def to_grid(self, cube: np.ndarray, order: int = 1) -> np.ndarray:
        """Cube (..., S, S, S) -> float32 array (..., n0, n1, n2) on the canonical grid."""
        cube = self._check(cube, (self.side,) * 3, 3, "cube")
        for axis in range(3):
            cube = self._to_grid_sampler(axis, order).apply(cube, cube.ndim - 3 + axis)
        return cube

    def slice_to_cube_plane(self, axis: int, image2d: np.ndarray, order: int = 1, antialias: bool = False) -> np.ndarray:
        """Canonical slice along ``axis`` (..., n_b, n_c; the other two axes in order) -> cube plane (..., S, S).

        The result matches the cube's cross-section at ``slice_position(axis, index)``: the same
        in-plane sampling (and in-plane antialiasing) as ``to_cube``.
        """
        axes = [a for a in range(3) if a != axis]
        shape = tuple(self.grid.shape[a] for a in axes)
        image = self._check(image2d, shape, 2, f"canonical slice along axis {axis}")
        if antialias:
            image = self._blur(image, axes)
        for position, a in enumerate(axes):
            image = self._to_cube_sampler(a, order).apply(image, image.ndim - 2 + position)
        return image

    def cube_plane_to_slice(self, axis: int, plane: np.ndarray, order: int = 1) -> np.ndarray:
        """Cube plane (..., S, S) along ``axis`` -> canonical slice (..., n_b, n_c)."""
        axes = [a for a in range(3) if a != axis]
        plane = self._check(plane, (self.side,) * 2, 2, "cube plane")
        for position, a in enumerate(axes):
            plane = self._to_grid_sampler(a, order).apply(plane, plane.ndim - 2 + position)
        return plane

    def cube_data_range(self, axis: int) -> tuple[int, int]:
        """First and last cube index along ``axis`` whose voxel centre lies inside the canonical grid's
        box: ``to_cube`` fills these and zero-pads the rest; ``to_grid`` reads only these."""
        n = self.grid.shape[axis]
        first = int(np.ceil((-0.5 - self.offset[axis]) / self.scale[axis] - 1e-9))
        last = int(np.floor((n - 0.5 - self.offset[axis]) / self.scale[axis] + 1e-9))
        first, last = max(first, 0), min(last, self.side - 1)
        if first > last:  # a slab thinner than one cube voxel still keeps its nearest cube voxel
            centre = (0.5 * (n - 1) - self.offset[axis]) / self.scale[axis]
            first = last = int(np.clip(np.floor(centre + 0.5), 0, self.side - 1))
        return first, last

    def _to_cube_sampler(self, axis: int, order: int) -> _AxisSampler:
        first, last = self.cube_data_range(axis)
        u = np.arange(self.side)
        coords = self.scale[axis] * u + self.offset[axis]
        return _AxisSampler.build(coords, 0, self.grid.shape[axis] - 1, order, (u >= first) & (u <= last))

    def _to_grid_sampler(self, axis: int, order: int) -> _AxisSampler:
        # Read only cube voxels that hold data, so edge voxels never blend in the zero padding.
        first, last = self.cube_data_range(axis)
        coords = (np.arange(self.grid.shape[axis]) - self.offset[axis]) / self.scale[axis]
        return _AxisSampler.build(coords, first, last, order)

    def _blur(self, array: np.ndarray, axes) -> np.ndarray:
        from scipy.ndimage import gaussian_filter  # scipy: only where a blur is needed (Slicer loads this module)

        sigma = [0.0] * array.ndim
        tail = array.ndim - len(list(axes))
        for position, a in enumerate(axes):
            sigma[tail + position] = max(self.scale[a] - 1.0, 0.0) / 2.0
        if not any(sigma):
            return array
        return gaussian_filter(array, sigma=sigma, mode="nearest").astype(np.float32)

    @staticmethod
    def _check(array: np.ndarray, shape: tuple[int, ...], ndim: int, what: str) -> np.ndarray:
        array = np.asarray(array, dtype=np.float32)
        if array.ndim < ndim or tuple(array.shape[-ndim:]) != tuple(shape):
            raise ValueError(f"array of shape {array.shape} does not end in the {what} shape {tuple(shape)}")
        return array
