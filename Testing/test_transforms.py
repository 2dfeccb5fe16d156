"""Invertible preprocessing: orientation, resampling, intensity, cube padding, model space."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from XDiffusionLib.data.samples import sample_path
from XDiffusionLib.errors import XDiffusionError
from XDiffusionLib.io import Grid, Volume, read_volume
from XDiffusionLib.transforms.intensity import IntensityNormalizer
from XDiffusionLib.transforms.model_space import ModelSpace
from XDiffusionLib.transforms.orientation import orientation_code, to_canonical
from XDiffusionLib.transforms.resample import isotropic_grid, resample_isotropic, resample_to_grid

from conftest import rotation, smooth_array


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


# ---- model space --------------------------------------------------------------------------------


def cross_section(space: ModelSpace, cube: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The cube's plane at canonical slice ``index``: linear along ``axis`` at slice_position, read
    only from data voxels (as to_grid does)."""
    first, last = space.cube_data_range(axis)
    u = np.clip((space.slice_position(axis, index) + 1) * (space.side - 1) / 2, first, last)
    low = int(min(np.floor(u), max(last - 1, first)))
    high = min(low + 1, last)
    planes = np.moveaxis(cube, axis, 0)
    return planes[low] * (1 - (u - low)) + planes[high] * (u - low)


def test_identity_when_grid_is_the_cube():
    grid = Grid((16, 16, 16), (1.5, 1.5, 1.5), (3.0, -2.0, 1.0))
    space = ModelSpace.for_grid(grid, 16)
    array = smooth_array(grid.shape)
    np.testing.assert_array_equal(space.to_cube(array), array)
    np.testing.assert_array_equal(space.to_grid(array), array)
    np.testing.assert_allclose(space.cube_to_canonical, np.eye(4), atol=1e-12)
    assert space.slice_position(2, 0) == -1.0 and space.slice_position(2, 15) == 1.0
    assert space.cube_grid.same_geometry(grid)


@pytest.mark.parametrize(
    "shape, spacing, side",
    [((20, 14, 10), (1.0, 1.0, 2.0), 24), ((20, 14, 10), (1.0, 1.0, 2.0), 16), ((10, 10, 8), (2.0, 2.0, 3.0), 16)],
)
def test_to_cube_then_to_grid_reproduces_smooth_volume(shape, spacing, side):
    space = ModelSpace.for_grid(Grid(shape, spacing), side)
    array = smooth_array(shape, noise=0.0)
    cube = space.to_cube(array)
    assert cube.shape == (side,) * 3 and cube.dtype == np.float32
    back = space.to_grid(cube)
    assert back.shape == shape and back.dtype == np.float32
    error = np.abs(back - array) / np.ptp(array)
    assert error.max() < 0.03 and error.mean() < 0.01


def test_anisotropic_2x2x3_grid_maps_to_the_centred_cube():
    # kmeans_t1 after to_canonical: 128 x 62 x 128 voxels of 2 x 3 x 2 mm: extents 256 x 186 x 256 mm.
    grid = Grid((128, 62, 128), (2.0, 3.0, 2.0), (10.0, -20.0, 5.0), np.diag([-1.0, -1.0, 1.0]))
    space = ModelSpace.for_grid(grid, 64)
    assert space.cube_spacing == 4.0
    np.testing.assert_allclose(space.scale, (2.0, 4.0 / 3.0, 2.0))
    # Axis 1 is 186 of 256 mm: cube voxels whose centre falls in the grid box are 9..54.
    assert space.cube_data_range(0) == (0, 63)
    assert space.cube_data_range(1) == (9, 54)
    cube = space.to_cube(np.ones(grid.shape, np.float32))
    profile = cube[32, :, 32]
    assert np.all(profile[9:55] == 1.0) and np.all(profile[:9] == 0.0) and np.all(profile[55:] == 0.0)
    # The cube and the grid share their centre, and cube voxels sit where the index maps say.
    cube_grid = space.cube_grid
    centre = lambda g: (g.index_to_physical @ np.array([*(np.array(g.shape) - 1) / 2, 1.0]))[:3]  # noqa: E731
    np.testing.assert_allclose(centre(cube_grid), centre(grid), atol=1e-9)
    for u in [(0, 0, 0), (63, 9, 17), (5, 54, 63)]:
        x = space.cube_index_to_canonical_index(np.array(u))
        np.testing.assert_allclose(
            cube_grid.index_to_physical @ np.array([*u, 1.0]), grid.index_to_physical @ np.array([*x, 1.0]), atol=1e-9
        )
        np.testing.assert_allclose(space.canonical_index_to_cube_index(x), u, atol=1e-12)
    np.testing.assert_allclose(space.cube_to_canonical @ space.canonical_to_cube, np.eye(4), atol=1e-12)
    # Canonical slice 0 along axis 1 sits at 1.5 mm + 35 mm padding into the cube: u = 8.625.
    assert space.slice_position(1, 0) == pytest.approx(2 * 8.625 / 63 - 1)
    assert space.position_to_index(1, space.slice_position(1, 17)) == pytest.approx(17)


def test_slice_positions_are_monotonic_and_within_the_cube():
    space = ModelSpace.for_grid(Grid((20, 14, 10), (1.0, 1.0, 2.0)), 16)
    for axis in range(3):
        positions = [space.slice_position(axis, i) for i in range(space.grid.shape[axis])]
        assert np.all(np.diff(positions) > 0)
        half_voxel = 1.0 / (space.side - 1)
        assert -1 - half_voxel <= positions[0] and positions[-1] <= 1 + half_voxel
        # Centred: first and last slices are symmetric about 0.
        assert positions[0] == pytest.approx(-positions[-1])


def test_positions_follow_grid_sample_align_corners_true():
    import torch
    # Longest axis 32 voxels into a 16-cube: cube voxel 0 is the mean of canonical voxels 0 and 1.
    space = ModelSpace.for_grid(Grid((32, 20, 12), (1.0, 1.0, 1.0)), 16)
    assert space.slice_position(0, 0.5) == pytest.approx(-1.0)
    assert space.slice_position(0, 30.5) == pytest.approx(1.0)
    assert space.position_to_index(0, -1.0) == pytest.approx(0.5)
    cube = space.to_cube(smooth_array((32, 20, 12)))
    volume = torch.from_numpy(cube)[None, None]  # (N, C, D, H, W) = axes 0, 1, 2
    for index in (3, 10, 27):
        position = space.slice_position(0, index)
        # grid_sample's (x, y, z) address (W, H, D) = cube axes (2, 1, 0).
        ys, zs = np.meshgrid(np.linspace(-1, 1, 16), np.linspace(-1, 1, 16), indexing="ij")
        points = np.stack([zs, ys, np.full_like(ys, position)], axis=-1)[None, None]
        sampled = torch.nn.functional.grid_sample(
            volume, torch.from_numpy(points).float(), mode="bilinear", align_corners=True
        )[0, 0, 0].numpy()
        np.testing.assert_allclose(sampled, cross_section(space, cube, 0, index), atol=1e-4)


@pytest.mark.parametrize("shape, spacing, side", [((20, 14, 10), (1.0, 1.0, 2.0), 16), ((10, 10, 8), (2.0, 2.0, 3.0), 16)])
def test_slice_to_cube_plane_matches_cube_cross_section(shape, spacing, side):
    space = ModelSpace.for_grid(Grid(shape, spacing), side)
    array = smooth_array(shape, noise=0.0)
    cube = space.to_cube(array)
    for axis in range(3):
        for index in range(shape[axis]):
            plane = space.slice_to_cube_plane(axis, np.take(array, index, axis=axis))
            assert plane.shape == (side, side)
            reference = cross_section(space, cube, axis, index)
            assert np.abs(plane - reference).max() < 0.03 * np.ptp(array)
            # Same zero padding as the cube.
            assert np.array_equal(plane == 0, reference == 0)


def test_slice_to_cube_plane_is_exact_for_a_linear_profile():
    # Linear along the slice axis: interpolating the cube's planes reproduces the slice exactly.
    shape = (12, 9, 7)
    space = ModelSpace.for_grid(Grid(shape, (1.0, 1.5, 2.0)), 10)
    in_plane = smooth_array((12, 9, 1), noise=0.0)[:, :, 0]
    array = in_plane[:, :, None] * (1.0 + 0.1 * np.arange(7))[None, None, :]
    cube = space.to_cube(array.astype(np.float32))
    for index in range(1, 6):
        plane = space.slice_to_cube_plane(2, array[:, :, index])
        np.testing.assert_allclose(plane, cross_section(space, cube, 2, index), rtol=1e-5, atol=1e-4)


def test_cube_plane_back_to_slice_and_batches():
    shape = (20, 14, 10)
    space = ModelSpace.for_grid(Grid(shape, (1.0, 1.0, 2.0)), 16)
    array = smooth_array(shape, noise=0.0)
    image = array[:, 6, :]
    plane = space.slice_to_cube_plane(1, image)
    back = space.cube_plane_to_slice(1, plane)
    assert back.shape == image.shape
    assert np.abs(back - image).max() < 0.03 * np.ptp(array)
    batch = space.slice_to_cube_plane(1, np.stack([image, 2 * image]))
    np.testing.assert_allclose(batch[1], 2 * plane, rtol=1e-6)
    cubes = space.to_cube(np.stack([array, array + 1]))
    assert cubes.shape == (2, 16, 16, 16)
    with pytest.raises(ValueError):
        space.to_cube(np.zeros((20, 14, 9)))
    with pytest.raises(ValueError):
        space.slice_to_cube_plane(0, image)


def test_nearest_order_keeps_labels():
    labels = np.zeros((20, 14, 10), np.float32)
    labels[5:12, 3:9, 2:7] = 3
    labels[12:16, 3:9, 2:7] = 7
    space = ModelSpace.for_grid(Grid(labels.shape, (1.0, 1.0, 2.0)), 16)
    cube = space.to_cube(labels, order=0)
    assert set(np.unique(cube)) == {0.0, 3.0, 7.0}
    back = space.to_grid(cube, order=0)
    assert set(np.unique(back)) == {0.0, 3.0, 7.0}
    assert np.mean(back == labels) > 0.85
    with pytest.raises(ValueError):
        space.to_cube(labels, order=3)


def test_antialias_removes_aliasing_of_fine_stripes():
    shape = (62, 62, 16)
    stripes = np.zeros(shape, np.float32)
    stripes[::2] = 1.0  # one-voxel stripes along axis 0: should average to 0.5 at ~4x fewer voxels
    space = ModelSpace.for_grid(Grid(shape, (1.0, 1.0, 1.0)), 16)
    plain = space.to_cube(stripes)[1:-1, 8, 8]
    smooth = space.to_cube(stripes, antialias=True)[1:-1, 8, 8]
    assert np.abs(plain - 0.5).max() > 0.3  # trilinear alone beats against the stripes
    assert np.abs(smooth - 0.5).max() < 0.01
    plane = space.slice_to_cube_plane(2, stripes[:, :, 8], antialias=True)[1:-1, 1:-1]
    assert np.abs(plane - 0.5).max() < 0.01


# ---- resampling -----------------------------------------------------------------------------------


def test_isotropic_grid_keeps_box_centre_and_direction():
    grid = Grid((10, 12, 8), (1.0, 1.0, 2.0), (4.0, -3.0, 2.0), rotation((10.0, 20.0, -30.0)))
    iso = isotropic_grid(grid)
    assert iso.spacing == (1.0, 1.0, 1.0) and iso.shape == (10, 12, 16)
    np.testing.assert_allclose(iso.direction, grid.direction)
    centre = lambda g: (g.index_to_physical @ np.array([*(np.array(g.shape) - 1) / 2, 1.0]))[:3]  # noqa: E731
    np.testing.assert_allclose(centre(iso), centre(grid), atol=1e-9)
    assert isotropic_grid(grid, 2.0).shape == (5, 6, 8)


def test_isotropic_and_back_reproduces_smooth_oblique_volume(volume_factory):
    volume = volume_factory(shape=(16, 14, 9), spacing=(1.0, 1.0, 2.0))
    volume = volume.with_array(smooth_array(volume.shape, noise=0.0))
    iso = resample_isotropic(volume)
    assert iso.spacing == (1.0, 1.0, 1.0) and iso.shape == (16, 14, 18)
    assert iso.array.dtype == np.float32 and iso.array.min() > 0  # edges extended, no zero rim
    back = resample_to_grid(iso, volume.grid)
    assert back.grid is volume.grid
    error = np.abs(back.array - volume.array) / np.ptp(volume.array)
    assert error.max() < 0.02 and error.mean() < 0.005


def test_resample_onto_the_same_grid_is_identity(oblique_volume):
    same = resample_to_grid(oblique_volume, oblique_volume.grid)
    np.testing.assert_allclose(same.array, oblique_volume.array, rtol=1e-5)


def test_resample_follows_physical_space(volume_factory):
    # Target grid shifted by exactly one source voxel along axis 0: values shift by one index.
    volume = volume_factory(shape=(8, 7, 6), spacing=(1.5, 1.0, 2.0))
    step = volume.direction[:, 0] * volume.spacing[0]
    shifted = Grid(volume.shape, volume.spacing, np.add(volume.origin, step), volume.direction)
    out = resample_to_grid(volume, shifted, fill=-1.0)
    np.testing.assert_allclose(out.array[:-1], volume.array[1:], rtol=1e-5)
    assert np.all(out.array[-1] == -1.0)
    extended = resample_to_grid(volume, shifted, extrapolate=True)
    np.testing.assert_allclose(extended.array[-1], volume.array[-1], rtol=1e-5)


def test_resample_nearest_keeps_label_type():
    labels = np.zeros((8, 8, 4), np.int16)
    labels[2:6, 2:6, 1:3] = 5
    volume = Volume.from_array(labels, spacing=(1.0, 1.0, 2.0))
    iso = resample_isotropic(volume, order=0)
    assert iso.array.dtype == np.int16 and set(np.unique(iso.array)) == {0, 5}
    np.testing.assert_array_equal(resample_to_grid(iso, volume.grid, order=0).array, labels)
    with pytest.raises(ValueError):
        resample_to_grid(volume, volume.grid, order=2)


# ---- intensity ------------------------------------------------------------------------------------


def test_normalizer_uses_foreground_percentiles_and_round_trips():
    rng = np.random.default_rng(3)
    values = np.zeros((20, 20, 20), np.float32)
    values[5:15, 5:15, 5:15] = rng.uniform(100.0, 900.0, (10, 10, 10))
    values[6, 6, 6] = 50_000.0  # one bright outlier must not set the scale
    normalizer = IntensityNormalizer().fit(values)
    foreground = values[values != 0]
    assert normalizer.low == pytest.approx(np.percentile(foreground, 0.5))
    assert normalizer.high == pytest.approx(np.percentile(foreground, 99.5))
    assert normalizer.high < 1000.0
    unit = normalizer.forward(values)
    assert unit.dtype == np.float32 and unit.min() == 0.0 and unit.max() == 1.0
    back = normalizer.inverse(unit)
    inside = (values >= normalizer.low) & (values <= normalizer.high)
    np.testing.assert_allclose(back[inside], values[inside], rtol=1e-5)
    assert back.min() >= normalizer.low and back.max() <= normalizer.high + 1e-3
    assert normalizer.inverse(np.array([-0.5, 1.5])).tolist() == pytest.approx([normalizer.low, normalizer.high])


def test_normalizer_serialises():
    normalizer = IntensityNormalizer(1.0, 99.0).fit(np.arange(1, 101, dtype=np.float32))
    again = IntensityNormalizer.from_dict(normalizer.to_dict())
    assert again == normalizer
    x = np.linspace(0, 120, 7)
    np.testing.assert_array_equal(again.forward(x), normalizer.forward(x))


def test_normalizer_edge_cases():
    binary = np.zeros(100)
    binary[:3] = 7.0  # percentiles of the foreground meet: fall back to its range, then to [0, max]
    normalizer = IntensityNormalizer().fit(binary)
    assert (normalizer.low, normalizer.high) == (0.0, 7.0)
    with pytest.raises(XDiffusionError, match="every value is 0"):
        IntensityNormalizer().fit(np.zeros(10))
    with pytest.raises(XDiffusionError, match="no finite values"):
        IntensityNormalizer().fit(np.array([np.nan, np.inf]))
    with pytest.raises(XDiffusionError, match="percentiles"):
        IntensityNormalizer(60.0, 40.0)
    with pytest.raises(RuntimeError):
        IntensityNormalizer().forward(np.ones(3))


def test_orientation_codes_agree_with_nibabel_except_where_its_greedy_match_differs():
    """orientation.py keeps its own axis matching (its docstring says why): nibabel's aff2axcodes
    names the same axes for every axis-aligned grid and mildly oblique ones, and differs on a
    strongly oblique grid where its greedy match is not the best permutation."""
    import itertools

    from nibabel.orientations import aff2axcodes

    from XDiffusionLib.transforms.orientation import orientation_code

    def nibabel_code(direction, spacing=(0.9, 1.3, 2.0)):
        affine = np.eye(4)
        affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ direction @ np.diag(spacing)  # LPS -> RAS
        return "".join(aff2axcodes(affine))

    for permutation in itertools.permutations(range(3)):
        for signs in itertools.product((-1.0, 1.0), repeat=3):
            direction = np.eye(3)[:, permutation] * np.array(signs)
            assert orientation_code(direction) == nibabel_code(direction)
            tilted = rotation((12.0, -8.0, 15.0)) @ direction
            assert orientation_code(tilted) == nibabel_code(tilted)
    oblique = np.array([[-0.3813, -0.6625, 0.6447], [-0.0401, 0.7086, 0.7045], [-0.9236, 0.2428, -0.2968]])
    u, _, vt = np.linalg.svd(oblique)
    oblique = u @ vt  # the nearest exact rotation
    assert (orientation_code(oblique), nibabel_code(oblique)) == ("IRP", "IPL")
