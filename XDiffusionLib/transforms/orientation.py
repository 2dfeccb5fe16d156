"""Exact reorientation to the canonical RAS+ voxel order, and back.

Canonical means array axis 0 runs left->right, axis 1 posterior->anterior, axis 2
inferior->superior (nibabel's "RAS+"; in ITK's LPS terms the direction columns are closest to
(-1, 0, 0), (0, -1, 0), (0, 0, 1)). Only axis permutations and flips are used, so voxel values
are copied, never interpolated, and every voxel keeps its physical position; an oblique grid
stays oblique (its axes are matched to the nearest anatomical axes).

Why not nibabel's orientation functions (``io_orientation``, ``aff2axcodes``, issue 23 item 6):
they agree on every axis-aligned and mildly oblique grid (Testing/test_transforms.py checks), but
nibabel matches axes greedily (the largest cosine first) where ``_axis_match`` takes the best of
the six permutations as a whole; for strongly oblique grids (about 5% of random rotations) the
two pick different axes, and switching would change which plane a user's "axial" slice is.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ..io.volume import Grid, Volume

# Canonical axis c should point along LPS axis c with this sign (R->L is +x in LPS, so -1 for L->R).
_CANONICAL_SIGN = (-1.0, -1.0, 1.0)
_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))  # LPS axis -> (letter for -, letter for +)


def _axis_match(direction: np.ndarray) -> tuple[int, ...]:
    """``perm[c]``: the array axis whose direction is closest to LPS axis ``c`` (one-to-one)."""
    magnitude = np.abs(np.asarray(direction, dtype=np.float64))
    best = max(itertools.permutations(range(3)), key=lambda p: sum(magnitude[c, p[c]] for c in range(3)))
    return tuple(int(a) for a in best)


def orientation_code(direction: np.ndarray) -> str:
    """Three letters naming where array axes 0, 1, 2 point, e.g. "RAS" (canonical) or "LSA"."""
    direction = np.asarray(direction, dtype=np.float64)
    perm = _axis_match(direction)
    letters = [""] * 3
    for c, a in enumerate(perm):
        letters[a] = _LETTERS[c][1 if direction[c, a] > 0 else 0]
    return "".join(letters)


@dataclass(frozen=True)
class Reorientation:
    """How an original grid maps onto its canonical grid: ``canonical axis c = original axis
    permutation[c]``, reversed where ``flips[c]``."""

    original: Grid
    canonical: Grid
    permutation: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @classmethod
    def for_grid(cls, grid: Grid) -> "Reorientation":
        direction = np.asarray(grid.direction, dtype=np.float64)
        perm = _axis_match(direction)
        flips = tuple(bool(np.sign(direction[c, perm[c]]) != _CANONICAL_SIGN[c]) for c in range(3))
        shape = np.array(grid.shape)
        spacing = np.array(grid.spacing)
        first = np.zeros(3)  # original index of the voxel that becomes canonical (0, 0, 0)
        new_direction = np.empty((3, 3))
        for c, a in enumerate(perm):
            new_direction[:, c] = direction[:, a] * (-1.0 if flips[c] else 1.0)
            if flips[c]:
                first[a] = shape[a] - 1
        origin = np.asarray(grid.origin) + direction @ (spacing * first)
        canonical = Grid(
            shape=tuple(int(shape[a]) for a in perm),
            spacing=tuple(float(spacing[a]) for a in perm),
            origin=tuple(origin),
            direction=new_direction,
        )
        return cls(grid, canonical, perm, flips)  # type: ignore[arg-type]

    @property
    def is_identity(self) -> bool:
        return self.permutation == (0, 1, 2) and not any(self.flips)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """An array on the original grid, reordered onto the canonical grid (a contiguous copy)."""
        self._check_shape(array, self.original.shape, "original")
        out = np.transpose(array, self.permutation)
        out = np.flip(out, axis=[c for c in range(3) if self.flips[c]])
        return np.ascontiguousarray(out)

    def invert_array(self, array: np.ndarray) -> np.ndarray:
        """An array on the canonical grid, put back in the original voxel order (a contiguous copy)."""
        self._check_shape(array, self.canonical.shape, "canonical")
        out = np.flip(array, axis=[c for c in range(3) if self.flips[c]])
        out = np.transpose(out, np.argsort(self.permutation))
        return np.ascontiguousarray(out)

    def invert(self, volume: Volume | np.ndarray) -> Volume:
        """A volume on the canonical grid (or its array) as a volume on exactly the original grid."""
        if isinstance(volume, Volume):
            if not volume.grid.same_geometry(self.canonical, tol=1e-4):
                raise ValueError(f"volume grid {volume.grid} is not this reorientation's canonical grid {self.canonical}")
            volume = volume.array
        return Volume(self.invert_array(np.asarray(volume)), self.original)

    def canonical_index(self, axis: int, index: int) -> tuple[int, int]:
        """Slice ``index`` along original ``axis`` -> (canonical axis, canonical index) of the same slice."""
        c = self.permutation.index(axis)
        n = self.original.shape[axis]
        self._check_index(index, n, f"original axis {axis}")
        return c, (n - 1 - index) if self.flips[c] else index

    def original_index(self, canonical_axis: int, index: int) -> tuple[int, int]:
        """Slice ``index`` along ``canonical_axis`` -> (original axis, original index) of the same slice."""
        a = self.permutation[canonical_axis]
        n = self.canonical.shape[canonical_axis]
        self._check_index(index, n, f"canonical axis {canonical_axis}")
        return a, (n - 1 - index) if self.flips[canonical_axis] else index

    @property
    def original_to_canonical_index(self) -> np.ndarray:
        """4x4 affine from original voxel indices (i, j, k, 1) to canonical voxel indices."""
        affine = np.zeros((4, 4))
        affine[3, 3] = 1.0
        for c, a in enumerate(self.permutation):
            if self.flips[c]:
                affine[c, a] = -1.0
                affine[c, 3] = self.original.shape[a] - 1
            else:
                affine[c, a] = 1.0
        return affine

    @staticmethod
    def _check_shape(array: np.ndarray, shape: tuple[int, ...], which: str) -> None:
        if tuple(np.shape(array)) != tuple(shape):
            raise ValueError(f"array shape {np.shape(array)} is not the {which} grid shape {shape}")

    @staticmethod
    def _check_index(index: int, n: int, what: str) -> None:
        if not 0 <= index < n:
            raise ValueError(f"index {index} is outside {what} (0..{n - 1})")


def to_canonical(volume: Volume) -> tuple[Volume, Reorientation]:
    """``volume`` reordered onto its canonical RAS+ grid, and the Reorientation that undoes it."""
    reorientation = Reorientation.for_grid(volume.grid)
    return Volume(reorientation.apply(volume.array), reorientation.canonical), reorientation
