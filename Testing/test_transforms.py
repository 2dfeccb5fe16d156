"""Invertible preprocessing: orientation, resampling, intensity, cube padding, model space."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from XDiffusionLib.data.samples import sample_path
from XDiffusionLib.io import Grid, Volume, read_volume
from XDiffusionLib.transforms.orientation import Reorientation, orientation_code, to_canonical

from conftest import rotation


def physical_points(grid: Grid) -> np.ndarray:
    """(n_i, n_j, n_k, 3) LPS point of every voxel centre."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), axis=-1).astype(float)
    affine = grid.index_to_physical
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def signed_permutations():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            matrix = np.zeros((3, 3))
            for column, row in enumerate(perm):
                matrix[row, column] = signs[column]
            yield matrix


# ---- orientation --------------------------------------------------------------------------------


def test_kmeans_t1_lsa_to_canonical_and_back_is_exact():
    volume = read_volume(sample_path("kmeans_t1"))
    assert orientation_code(volume.direction) == "LSA"
    canonical, reorientation = to_canonical(volume)
    assert orientation_code(canonical.direction) == "RAS"
    assert canonical.shape == (128, 62, 128)
    assert canonical.spacing == (2.0, 3.0, 2.0)
    back = reorientation.invert(canonical)
    assert back.grid is volume.grid
    np.testing.assert_array_equal(back.array, volume.array)
    # Each voxel keeps its physical position: compare value -> point maps on a subsample.
    to_canon = reorientation.original_to_canonical_index
    for ijk in [(0, 0, 0), (127, 127, 61), (5, 70, 33), (100, 2, 60)]:
        i, j, k = (to_canon @ np.array([*ijk, 1.0]))[:3].astype(int)
        assert canonical.array[i, j, k] == volume.array[ijk]
        np.testing.assert_allclose(
            canonical.grid.index_to_physical @ np.array([i, j, k, 1.0]),
            volume.grid.index_to_physical @ np.array([*ijk, 1.0]),
            atol=1e-9,
        )


@pytest.mark.parametrize("matrix_index", range(48))
def test_every_axis_order_keeps_voxel_positions(volume_factory, matrix_index):
    signed = list(signed_permutations())[matrix_index]
    # A mild obliquity on top of the signed permutation: matching must still find the nearest axes.
    direction = rotation((8.0, -5.0, 12.0)) @ signed
    volume = volume_factory(shape=(5, 4, 3), spacing=(0.7, 1.2, 2.5), direction=direction)
    canonical, reorientation = to_canonical(volume)
    assert orientation_code(canonical.direction) == "RAS"
    d = canonical.direction
    assert d[0, 0] < -0.9 and d[1, 1] < -0.9 and d[2, 2] > 0.9
    # Same multiset of (value, physical point) pairs, voxel by voxel.
    original_points = physical_points(volume.grid)
    canonical_points = physical_points(canonical.grid)
    to_canon = reorientation.original_to_canonical_index
    for ijk in itertools.product(*[range(n) for n in volume.shape]):
        c = tuple((to_canon @ np.array([*ijk, 1.0]))[:3].round().astype(int))
        assert canonical.array[c] == volume.array[ijk]
        np.testing.assert_allclose(canonical_points[c], original_points[ijk], atol=1e-9)
    back = reorientation.invert(canonical)
    np.testing.assert_array_equal(back.array, volume.array)
    assert back.grid is volume.grid


def test_canonical_index_maps_slices(volume_factory):
    # LSA-like: axis 0 -> L, axis 1 -> S, axis 2 -> A.
    volume = volume_factory(shape=(6, 5, 4), direction=[[1, 0, 0], [0, 0, -1], [0, 1, 0]])
    canonical, reorientation = to_canonical(volume)
    assert reorientation.permutation == (0, 2, 1) and reorientation.flips == (True, False, False)
    for axis in range(3):
        for index in range(volume.shape[axis]):
            c_axis, c_index = reorientation.canonical_index(axis, index)
            assert reorientation.original_index(c_axis, c_index) == (axis, index)
            original_slice = np.take(volume.array, index, axis=axis)
            canonical_slice = np.take(canonical.array, c_index, axis=c_axis)
            assert sorted(original_slice.ravel()) == sorted(canonical_slice.ravel())
    assert reorientation.canonical_index(0, 0) == (0, 5)
    with pytest.raises(ValueError):
        reorientation.canonical_index(1, 5)


def test_canonical_input_is_left_alone(volume_factory):
    volume = volume_factory(direction=np.diag([-1.0, -1.0, 1.0]))
    canonical, reorientation = to_canonical(volume)
    assert reorientation.is_identity
    np.testing.assert_array_equal(canonical.array, volume.array)
    assert canonical.grid.same_geometry(volume.grid, tol=0.0)


def test_invert_refuses_a_foreign_grid(oblique_volume):
    canonical, reorientation = to_canonical(oblique_volume)
    shifted = Grid(canonical.shape, canonical.spacing, np.add(canonical.origin, 1.0), canonical.direction)
    with pytest.raises(ValueError):
        reorientation.invert(Volume(canonical.array, shifted))
    with pytest.raises(ValueError):
        reorientation.invert_array(np.zeros((2, 2, 2)))
