"""Rotations, rotated volumes and cross-sections (XDiffusionLib.geometry)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from XDiffusionLib.errors import XDiffusionError
from XDiffusionLib.geometry import (
    azimuth_rotations,
    coverage_mask,
    cross_section,
    cross_section_grid,
    depth_index_to_normalised,
    normalised_to_depth_index,
    padded_side,
    random_rotations,
    rotate_back,
    rotation_6d,
    rotation_about_axis,
    rotation_from_6d,
)

from geometry_helpers import plane_rotation, rotate_volume  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _blob(side: int, batch: int = 1, sigma_frac: float = 0.16) -> torch.Tensor:
    """Smooth anisotropic, off-centre Gaussian blob (B, 1, S, S, S) well inside the cube."""
    v = torch.linspace(-1, 1, side)
    i, j, k = torch.meshgrid(v, v, v, indexing="ij")
    vols = []
    for b in range(batch):
        c = (0.15 + 0.05 * b, -0.1, 0.05)
        r2 = ((i - c[0]) / 1.3) ** 2 + (j - c[1]) ** 2 + ((k - c[2]) / 0.8) ** 2
        vols.append(torch.exp(-r2 / (2 * (sigma_frac * 2) ** 2)))
    return torch.stack(vols)[:, None]


def _random_volume(side: int, batch: int = 2, channels: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, side, side, side, generator=g)


# --------------------------------------------------------------------------- rotations


def test_rotation_about_axis_is_right_handed_in_array_axis_order():
    # +90 deg about axis 2 turns axis 0 onto axis 1; about axis 0 turns axis 1 onto axis 2.
    R = rotation_about_axis(math.pi / 2, 2)
    assert torch.allclose(R @ torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1, 0]), atol=1e-7)
    R = rotation_about_axis(math.pi / 2, "x")
    assert torch.allclose(R @ torch.tensor([0.0, 1, 0]), torch.tensor([0.0, 0, 1]), atol=1e-7)
    R = rotation_about_axis(math.pi / 2, 1)
    assert torch.allclose(R @ torch.tensor([0.0, 0, 1]), torch.tensor([1.0, 0, 0]), atol=1e-7)


def test_rotation_about_axis_batched_matches_scalar():
    angles = torch.tensor([0.1, -1.2, 2.5], dtype=torch.float64)
    batched = rotation_about_axis(angles, "y")
    assert batched.shape == (3, 3, 3) and batched.dtype == torch.float64
    for a, Rb in zip(angles, batched):
        assert torch.allclose(Rb, rotation_about_axis(float(a), 1, dtype=torch.float64), atol=1e-12)


def test_rotation_about_axis_rejects_bad_axis():
    with pytest.raises(XDiffusionError, match="axis"):
        rotation_about_axis(0.3, 3)
    with pytest.raises(XDiffusionError, match="axis"):
        rotation_about_axis(0.3, "w")


def test_random_rotations_are_proper_orthonormal_and_uniform():
    g = torch.Generator().manual_seed(1)
    R = random_rotations(20000, g, dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64).expand_as(R)
    assert torch.allclose(R.transpose(-1, -2) @ R, eye, atol=1e-10)
    assert torch.allclose(torch.linalg.det(R), torch.ones(len(R), dtype=torch.float64), atol=1e-10)
    # Haar measure on SO(3): E[R] = 0, E[tr R] = 0, E[(tr R)^2] = 1 (the trace is an irreducible
    # character). Uniform Euler angles, for example, fail the last two.
    trace = R.diagonal(dim1=-2, dim2=-1).sum(-1)
    assert R.mean(0).abs().max() < 0.03
    assert abs(trace.mean().item()) < 0.03
    assert abs((trace**2).mean().item() - 1.0) < 0.05


def test_random_rotations_follow_generator():
    a = random_rotations(5, torch.Generator().manual_seed(7))
    b = random_rotations(5, torch.Generator().manual_seed(7))
    c = random_rotations(5, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert a.shape == (5, 3, 3) and a.dtype == torch.get_default_dtype()


def test_azimuth_rotations_even_about_axis_last_identity():
    n = 5
    R = azimuth_rotations(n)
    assert R.shape == (n, 3, 3)
    assert torch.allclose(R[-1], torch.eye(3), atol=1e-6)
    # Default axis 2 (I->S, vertical in the canonical RAS array) is fixed by every view.
    assert torch.allclose(R @ torch.tensor([0.0, 0, 1]), torch.tensor([0.0, 0, 1]).expand(n, 3), atol=1e-6)
    expected = torch.tensor([2 * math.pi * (i + 1) / n for i in range(n)])
    assert torch.allclose(R[:, 0, 0], torch.cos(expected), atol=1e-6)
    assert torch.allclose(R[:, 1, 0], torch.sin(expected), atol=1e-6)
    # Configurable axis.
    R0 = azimuth_rotations(4, axis=0)
    assert torch.allclose(R0 @ torch.tensor([1.0, 0, 0]), torch.tensor([1.0, 0, 0]).expand(4, 3), atol=1e-6)
    assert torch.allclose(R0[0] @ torch.tensor([0.0, 1, 0]), torch.tensor([0.0, 0, 1]), atol=1e-6)


def test_rotation_6d_round_trip():
    R = random_rotations(10, torch.Generator().manual_seed(3))
    code = rotation_6d(R)
    assert code.shape == (10, 6)
    assert torch.allclose(code[:, :3], R[:, :, 0]) and torch.allclose(code[:, 3:], R[:, :, 1])
    assert torch.allclose(rotation_from_6d(code), R, atol=1e-5)


def test_plane_rotation_makes_canonical_slices_the_depth_planes():
    X = _random_volume(6, batch=1, channels=1)[:, 0]
    for plane, axis in (("sagittal", 0), ("coronal", 1), ("axial", 2)):
        R = plane_rotation(plane)
        assert torch.allclose(torch.linalg.det(R), torch.tensor(1.0))
        Y = rotate_volume(X, R)
        for d in (0, 2, 5):
            expected = X[0].select(axis, d)
            if plane == "coronal":
                expected = expected.T
            assert torch.allclose(Y[0, d], expected, atol=1e-5), (plane, d)


# --------------------------------------------------------------------------- rotated volumes


def test_grid_axis_order_matches_grid_sample():
    """grid[..., 0] must address axis 2, grid[..., 2] axis 0 (grid_sample's x, y, z = W, H, D)."""
    side = 5
    X = torch.zeros(1, 1, side, side, side)
    X[0, 0, 4, 1, 0] = 1.0  # distinct index on each axis
    grid = cross_section_grid(torch.eye(3), depth_index_to_normalised(4.0, side), side)
    # Identity: plane d = 4 of R.X is X[4], its pixel (1, 0) must read the marked voxel.
    pixel = grid[0, 1, 0]
    expected_xyz = torch.tensor([-1.0, 2 * 1 / 4 - 1, 1.0])  # (u2, u1, u0)
    assert torch.allclose(pixel, expected_xyz, atol=1e-6)
    values = F.grid_sample(X, grid[:, None], align_corners=True)
    assert values[0, 0, 0, 1, 0] == pytest.approx(1.0, abs=1e-6)
    assert values.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_identity_rotation_is_exact_copy():
    X = _random_volume(7)
    assert torch.allclose(rotate_volume(X, torch.eye(3)), X, atol=1e-5)
    # Padded output: the original sits centred in the bigger cube, padding is zero.
    out = padded_side(7)
    Y = rotate_volume(X, torch.eye(3), out_side=out)
    o = (out - 7) // 2
    assert torch.allclose(Y[:, :, o : o + 7, o : o + 7, o : o + 7], X, atol=1e-5)
    Y[:, :, o : o + 7, o : o + 7, o : o + 7] = 0
    assert Y.abs().max() < 1e-6


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("quarter_turns", [1, 2, 3])
def test_quarter_turns_match_rot90(axis, quarter_turns):
    X = _random_volume(6)
    R = rotation_about_axis(quarter_turns * math.pi / 2, axis)
    # Right-handed about `axis` turns axis+1 towards axis+2, which is torch.rot90 over those dims.
    dims = (2 + (axis + 1) % 3, 2 + (axis + 2) % 3)
    expected = torch.rot90(X, quarter_turns, dims=dims)
    assert torch.allclose(rotate_volume(X, R), expected, atol=1e-5)


def test_half_turn_about_axis2_is_double_flip():
    X = _random_volume(5)
    R = rotation_about_axis(math.pi, 2)
    assert torch.allclose(rotate_volume(X, R), X.flip(2, 3), atol=1e-5)


def test_per_sample_rotations_in_a_batch():
    X = _random_volume(6, batch=3)
    R = torch.stack([torch.eye(3), rotation_about_axis(math.pi / 2, 0), rotation_about_axis(math.pi, 1)])
    Y = rotate_volume(X, R)
    for b in range(3):
        assert torch.allclose(Y[b : b + 1], rotate_volume(X[b : b + 1], R[b]), atol=1e-6)
    # 4D input (no channel dim) keeps its rank.
    assert rotate_volume(X[:, 0], R).shape == (3, 6, 6, 6)


def test_rotate_back_inverts_rotation_inside_support():
    # Two trilinear resamplings blur a little: about 0.6 % on this blob (sigma about 8 voxels).
    side = 32
    X = _blob(side, batch=2, sigma_frac=0.25)
    R = random_rotations(2, torch.Generator().manual_seed(5))
    out = padded_side(side)
    back = rotate_back(rotate_volume(X, R, out_side=out), R, side)
    assert back.shape == X.shape
    interior = (slice(None), slice(None), slice(3, -3), slice(3, -3), slice(3, -3))
    err = (back - X)[interior].norm() / X[interior].norm()
    assert err < 1e-2
    # The round trip with a wrong inverse is far off: the check can fail.
    wrong = rotate_back(rotate_volume(X, R, out_side=out), R.transpose(-1, -2), side)
    assert ((wrong - X)[interior].norm() / X[interior].norm()) > 0.1


def test_padded_rotation_keeps_mass_unpadded_loses_it():
    side = 16
    ones = torch.ones(1, 1, side, side, side)
    R = rotation_about_axis(math.pi / 4, 2)
    padded = rotate_volume(ones, R, out_side=padded_side(side))
    same = rotate_volume(ones, R)
    mass = ones.sum().item()
    assert abs(padded.sum().item() / mass - 1.0) < 0.02
    assert same.sum().item() / mass < 0.9
    # Oblique rotation about all axes: still nothing cut with padding.
    R = random_rotations(1, torch.Generator().manual_seed(2))
    assert abs(rotate_volume(ones, R, out_side=padded_side(side)).sum().item() / mass - 1.0) < 0.02


def test_padded_side_values():
    assert padded_side(16) == 28  # ceil(27.7) = 28, same parity
    assert padded_side(32) == 56
    assert padded_side(33) == 59  # ceil(57.2) = 58 -> odd like 33
    for s in range(2, 40):
        p = padded_side(s)
        assert p >= s * math.sqrt(3) and (p - s) % 2 == 0 and p - s * math.sqrt(3) < 2


# --------------------------------------------------------------------------- cross-sections


def test_depth_helpers_round_trip():
    assert depth_index_to_normalised(0, 9) == -1.0
    assert depth_index_to_normalised(8, 9) == 1.0
    assert depth_index_to_normalised(4, 9) == 0.0
    idx = torch.arange(9)
    assert torch.allclose(normalised_to_depth_index(depth_index_to_normalised(idx, 9), 9), idx.float())


@pytest.mark.parametrize("out_side", [None, "padded"])
def test_cross_section_equals_plane_of_rotated_volume(out_side):
    side = 10
    X = _random_volume(side, batch=2)
    out = padded_side(side) if out_side == "padded" else side
    rotations = [
        torch.eye(3),
        rotation_about_axis(math.pi / 2, 1),
        rotation_about_axis(0.7, 2),
        *random_rotations(2, torch.Generator().manual_seed(11)),
    ]
    for R in rotations:
        full = rotate_volume(X, R, out_side=out_side and out)
        for d in (0, 3, out // 2, out - 1):
            plane = cross_section(X, R, depth_index_to_normalised(float(d), out), out_side=out_side and out)
            assert plane.shape == (2, 2, out, out)
            assert torch.allclose(plane, full[:, :, d], atol=1e-5), (R, d)


def test_cross_section_per_sample_depths_and_rotations():
    side = 8
    X = _random_volume(side, batch=3, channels=1)
    R = random_rotations(3, torch.Generator().manual_seed(4))
    d_idx = torch.tensor([1.0, 4.0, 6.0])
    planes = cross_section(X, R, depth_index_to_normalised(d_idx, side))
    full = rotate_volume(X, R)
    for b in range(3):
        assert torch.allclose(planes[b], full[b, :, int(d_idx[b])], atol=1e-5)
    # Several planes per sample: (B, K) depths -> (B, C, K, out, out).
    many = cross_section(X, R, depth_index_to_normalised(torch.tensor([[0.0, 7.0]] * 3), side))
    assert many.shape == (3, 1, 2, side, side)
    assert torch.allclose(many[:, :, 1], full[:, :, 7], atol=1e-5)
    # 4D input gives (B, out, out).
    assert cross_section(X[:, 0], R, 0.0).shape == (3, side, side)


def test_cross_section_refuses_integer_depth():
    X = _random_volume(6)
    with pytest.raises(XDiffusionError, match="normalised depth"):
        cross_section(X, torch.eye(3), 3)
    with pytest.raises(XDiffusionError, match="normalised depth"):
        cross_section(X, torch.eye(3), torch.tensor([1, 2]))


def test_fractional_depth_interpolates_between_planes():
    side = 6
    X = _random_volume(side, batch=1, channels=1)
    half = cross_section(X, torch.eye(3), depth_index_to_normalised(2.5, side))
    assert torch.allclose(half, 0.5 * (X[:, :, 2] + X[:, :, 3]), atol=1e-5)


# --------------------------------------------------------------------------- putting views back


def test_coverage_mask_padded_full_unpadded_cuts_corners():
    side = 10
    R = rotation_about_axis(math.pi / 4, 2)
    assert coverage_mask(R, side, padded_side(side)).all()
    same = coverage_mask(R, side, side)
    assert not same[0, 0, 0, 5] and not same[0, -1, -1, 5]  # corners in the rotation plane fall off
    assert same[0, 5, 5, 0] and same[0, 5, 5, -1]  # axis 2 (rotation axis) is untouched
    assert coverage_mask(torch.eye(3), side, side).all()


def _aggregate(views, rotations, side):
    from XDiffusionLib.sampling.aggregate import ViewAggregator

    aggregator = ViewAggregator(side)
    aggregator.start_sample()
    for view, R in zip(views, rotations):
        aggregator.add_view(view, R)
    aggregator.end_sample()
    return aggregator.result(0.0), aggregator.coverage


def test_average_views_reconstructs_and_weights():
    # The view aggregator (sampling.aggregate, which replaced geometry.average_views) on exact views.
    side = 32
    X = _blob(side, sigma_frac=0.25)[0, 0]
    rotations = azimuth_rotations(3)
    out = padded_side(side)
    views = [rotate_volume(X[None, None], R, out_side=out)[0, 0] for R in rotations]
    merged, weight = _aggregate(views, rotations, side)
    assert merged.shape == X.shape and torch.all(weight == 3)
    interior = (slice(2, -2), slice(2, -2), slice(2, -2))
    assert ((merged - X)[interior].norm() / X[interior].norm()) < 1e-2
    # Unpadded views (the paper's same-size cubes), each filled with ones as a generator would:
    # corners are covered by fewer views and must not be averaged with the zeros beyond a view.
    side = 12
    views = torch.ones(3, side, side, side)
    rotations = rotation_about_axis(torch.tensor([45.0, 165.0, 285.0]).deg2rad(), 2)
    merged, weight = _aggregate(views, rotations, side)
    assert weight.max() == 3 and (weight == 1).any() and (weight == 2).any()
    covered = weight > 0
    assert (~covered).any()  # in-plane cube corners stay inside a same-size cube only at multiples of 90 deg
    assert torch.allclose(merged[covered], torch.ones((), dtype=merged.dtype), atol=1e-5)
    assert torch.all(merged[~covered] == 0)


def test_device_and_dtype_follow_input():
    X = _random_volume(6, batch=1).double()
    R = rotation_about_axis(0.3, 0)  # float32 on CPU: must be cast to the volume's dtype
    assert rotate_volume(X, R).dtype == torch.float64
    assert cross_section(X, R, 0.25).dtype == torch.float64
    assert rotate_back(X, R, 6).dtype == torch.float64
    assert torch.allclose(rotate_volume(X, R), rotate_volume(X.float(), R).double(), atol=1e-5)
    for device in DEVICES:
        Xd = X.float().to(device)
        for out in (rotate_volume(Xd, R), cross_section(Xd, R, 0.0), rotate_back(Xd, R, 6)):
            assert out.device.type == device


@pytest.mark.parametrize("device", DEVICES)
def test_float32_on_each_device_matches_float64_cpu_reference(device):
    # DEVICES holds "cuda" only where a GPU exists, so the CUDA path runs there and nowhere else.
    X = _random_volume(12, batch=2)
    R = random_rotations(2, torch.Generator().manual_seed(6))
    out = padded_side(12)
    reference = rotate_volume(X.double(), R, out_side=out)
    got = rotate_volume(X.to(device), R.to(device), out_side=out)
    assert got.device.type == device
    assert torch.allclose(got.cpu().double(), reference, atol=1e-4)
    depth = torch.tensor([0.1, -0.3], device=device)
    plane = cross_section(X.to(device), R.to(device), depth, out_side=out)
    assert plane.device.type == device
    assert torch.allclose(plane.cpu().double(), cross_section(X.double(), R, depth.cpu(), out_side=out), atol=1e-4)
    back = rotate_back(got, R.to(device), 12)
    assert torch.allclose(back.cpu().double(), rotate_back(reference, R, 12), atol=1e-4)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(XDiffusionError, match="cube"):
        cross_section(torch.zeros(1, 1, 4, 4, 5), torch.eye(3), 0.0)
    with pytest.raises(XDiffusionError, match="rotations"):
        cross_section(torch.zeros(1, 1, 4, 4, 4), torch.eye(4), 0.0)
    with pytest.raises(XDiffusionError, match="rotation per volume"):
        rotate_back(torch.zeros(2, 1, 4, 4, 4), torch.eye(3).expand(3, 3, 3), 4)
    with pytest.raises(XDiffusionError, match="give one per volume"):
        cross_section(torch.zeros(2, 1, 4, 4, 4), torch.eye(3).expand(3, 3, 3), 0.0)
    with pytest.raises(XDiffusionError, match="mode"):
        cross_section(torch.zeros(1, 1, 4, 4, 4), torch.eye(3), 0.0, mode="bicubic")
