"""Rotating cube volumes and cutting their cross-sections, batched, on the input's device.

Conventions (read these before using the functions):

Volumes are tensors (B, C, S, S, S) or (B, S, S, S), indexed [b, c, i, j, k] with i, j, k the
array axes 0, 1, 2 (canonical RAS+: axis0 L->R, axis1 P->A, axis2 I->S).

Normalised coordinates: ``u_a = 2 * index_a / (S - 1) - 1`` per axis (align_corners=True):
voxel 0's centre is -1, voxel S-1's centre is +1. Points are written in ARRAY-AXIS order
``p = (u0, u1, u2)`` everywhere in this package.

torch.nn.functional.grid_sample reads the last grid dimension as (x, y, z) = (W, H, D), i.e.
(axis2, axis1, axis0): the REVERSE of our order. Every grid returned here is already in
grid_sample order (``grid[..., 0]`` is the axis-2 coordinate, ``grid[..., 2]`` the axis-0 one);
``to_grid_sample_order`` / ``from_grid_sample_order`` convert (both are ``flip(-1)``).

Rotation about the cube centre: ``(R.X)(p) = X(R^T p)`` (rotation matrices from
``geometry.rotation``). The rotated volume may live on a larger cube of ``out_side`` voxels with
the SAME voxel size, both grids centred on the cube centre: rotated voxel q (normalised on the
out grid) is the physical point ``q * (out_side - 1) / (S - 1)`` in the original's normalised
units. ``padded_side(S)`` is large enough that nothing is cut at any angle; ``out_side = S`` is the
paper's same-size, zero-padded choice (corners are cut for oblique R).

Depth: plane d of R.X is index d along axis 0 of the rotated (out_side) volume (what
``cross_section`` samples, and what ``rotate_back`` takes a stack of). Depths are passed NORMALISED on that axis,
``depth = 2 * d / (out_side - 1) - 1`` in [-1, 1] (``depth_index_to_normalised``); fractional
depths are allowed. (Not the 2*d/size - 1 of the authors' loader, which is off by half a voxel.)

Sampling is trilinear (grid_sample "bilinear" on 5D input) with zeros outside the cube.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import XDiffusionError

# Grids above this many points are built and sampled in chunks of depth planes (memory bound).
_MAX_GRID_POINTS = 1 << 23
_MODES = ("bilinear", "nearest")


def padded_side(side: int) -> int:
    """Smallest cube side (same parity as ``side``) that holds a ``side`` cube at any rotation.

    The cube's diagonal is side * sqrt(3). Keeping the parity makes the two grids share voxel
    centres (offset (out - side) / 2 is an integer), so the identity rotation is an exact copy.
    """
    side = _check_side(side, "side")
    out = math.ceil(side * math.sqrt(3.0) - 1e-9)
    return out + ((out - side) % 2)


def depth_index_to_normalised(index: float | torch.Tensor, out_side: int) -> float | torch.Tensor:
    """Depth index d (0..out_side-1, may be fractional) -> normalised depth in [-1, 1]."""
    out_side = _check_side(out_side, "out_side")
    if isinstance(index, torch.Tensor) and not index.is_floating_point():
        index = index.to(torch.get_default_dtype())
    return 2.0 * index / (out_side - 1) - 1.0


def normalised_to_depth_index(depth: float | torch.Tensor, out_side: int) -> float | torch.Tensor:
    """Normalised depth in [-1, 1] -> (fractional) depth index 0..out_side-1."""
    out_side = _check_side(out_side, "out_side")
    return (depth + 1.0) * (out_side - 1) / 2.0


def to_grid_sample_order(points: torch.Tensor) -> torch.Tensor:
    """(..., 3) points in array-axis order (u0, u1, u2) -> grid_sample's (x, y, z) = (u2, u1, u0)."""
    return points.flip(-1)


def from_grid_sample_order(grid: torch.Tensor) -> torch.Tensor:
    """grid_sample's (x, y, z) -> array-axis order (u0, u1, u2)."""
    return grid.flip(-1)


def cross_section_grid(
    R: torch.Tensor,
    depths: float | torch.Tensor,
    side: int,
    out_side: int | None = None,
) -> torch.Tensor:
    """Sampling grid of depth plane(s) of R.X, in the ORIGINAL cube's normalised coordinates.

    R: (3, 3) or (B, 3, 3). depths: normalised depths on axis 0 of the rotated volume, a float,
    a (B,) tensor (one plane per sample -> grid (B, out, out, 3)) or a (B, K) tensor (K planes per
    sample -> (B, K, out, out, 3)). Grid points are in grid_sample (x, y, z) order; grid[b, r, c]
    is the point of plane pixel (row r = rotated axis 1, column c = rotated axis 2).
    """
    side = _check_side(side, "side")
    out_side = side if out_side is None else _check_side(out_side, "out_side")
    R = _as_rotation_batch(R)
    if not R.is_floating_point():
        R = R.to(torch.get_default_dtype())
    depths_t = _as_depths(depths, R.shape[0], R.device, R.dtype)
    single = depths_t.ndim == 1
    if single:
        depths_t = depths_t[:, None]
    if depths_t.shape[0] == 1 and R.shape[0] > 1:
        depths_t = depths_t.expand(R.shape[0], -1)
    if R.shape[0] == 1 and depths_t.shape[0] > 1:
        R = R.expand(depths_t.shape[0], -1, -1)
    if R.shape[0] != depths_t.shape[0]:
        raise XDiffusionError(f"{R.shape[0]} rotations but {depths_t.shape[0]} depth rows: give one per sample")
    # Rotated-frame point (depth, v_r, v_c) on the out grid, scaled into the original's units,
    # then mapped back through R^T: the original point whose value the rotated voxel shows.
    grid = _mapped_points(R.transpose(-1, -2), depths_t, out_side, (out_side - 1) / (side - 1))
    return grid[:, 0] if single else grid


def cross_section(
    volume: torch.Tensor,
    R: torch.Tensor,
    depth: float | torch.Tensor,
    out_side: int | None = None,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Plane ``depth`` of R.X sampled directly from X: (B, C, out, out), or (B, out, out) for 4D input.

    Plane d of R.X for ``depth = depth_index_to_normalised(d)``, without rotating the whole volume. ``depth`` is normalised (float or (B,) tensor), not an index:
    Python ints are refused to catch that mix-up. (B, K) depths give (B, C, K, out, out).
    """
    vol, squeeze, side = _as_volume_batch(volume)
    if isinstance(depth, (bool, int)) or (isinstance(depth, torch.Tensor) and not depth.is_floating_point()):
        raise XDiffusionError(
            f"depth {depth!r} looks like a slice index: pass a normalised depth in [-1, 1] "
            "(convert with depth_index_to_normalised(index, out_side))"
        )
    out_side = side if out_side is None else out_side
    R = _rotation_like(R, vol)
    if R.shape[0] == 1 and vol.shape[0] > 1:
        R = R.expand(vol.shape[0], -1, -1)
    grid = cross_section_grid(R, depth, side, out_side)
    if grid.ndim == 4:
        grid = grid[:, None]
    if grid.shape[0] != vol.shape[0]:
        if vol.shape[0] == 1:
            vol = vol.expand(grid.shape[0], *vol.shape[1:])
        else:
            raise XDiffusionError(f"{vol.shape[0]} volumes but {grid.shape[0]} rotations/depths: give one per volume")
    planes = _grid_sample(vol, grid, mode)  # (B, C, K, out, out)
    if not isinstance(depth, torch.Tensor) or depth.ndim <= 1:
        planes = planes[:, :, 0]
    return planes[:, 0] if squeeze else planes


def rotate_back(
    rotated: torch.Tensor,
    R: torch.Tensor,
    side: int,
    mode: str = "bilinear",
    return_coverage: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """R^T applied to a rotated volume (e.g. a stack of generated planes of view R), on the original S-cube.

    ``rotated`` is R.X on its own cube (B, C, out, out, out) or (B, out, out, out), any out side,
    same voxel size as the canonical grid. With ``return_coverage`` also returns a bool mask
    (B, S, S, S): which canonical voxels lie inside the rotated grid (see ``coverage_mask``).
    """
    vol, squeeze, out_side = _as_volume_batch(rotated)
    side = _check_side(side, "side")
    R = _rotation_like(R, vol)
    vol, R = _match_batch(vol, R)
    depths = torch.linspace(-1.0, 1.0, side, device=vol.device, dtype=_grid_dtype(vol))
    # Canonical point q (normalised on the S grid) sits at R q in the rotated frame, in units of
    # the S grid; divide by the out grid's larger half-extent to normalise on the out grid.
    scale = (side - 1) / (out_side - 1)
    out = _sample_in_chunks(vol, R, depths, side, scale, mode)
    out = out[:, 0] if squeeze else out
    if return_coverage:
        return out, coverage_mask(R, side, out_side)
    return out


def coverage_mask(R: torch.Tensor, side: int, out_side: int, tol: float = 1e-4) -> torch.Tensor:
    """Bool (B, S, S, S): canonical voxels whose rotated position lies on the out_side grid of view R.

    Those voxels get a real value from ``rotate_back``; the rest read zero padding. With
    ``out_side >= padded_side(side)`` every voxel is covered. ``tol`` is in normalised units.
    """
    side = _check_side(side, "side")
    out_side = _check_side(out_side, "out_side")
    R = _as_rotation_batch(R)
    if not R.is_floating_point():
        R = R.to(torch.get_default_dtype())
    depths = torch.linspace(-1.0, 1.0, side, device=R.device, dtype=R.dtype)[None].expand(R.shape[0], -1)
    points = _mapped_points(R, depths, side, (side - 1) / (out_side - 1))
    return (points.abs() <= 1.0 + tol).all(dim=-1)


# ---------------------------------------------------------------------------------------------
# internals


def _check_side(value, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 2:
        raise XDiffusionError(f"{name} must be an integer >= 2, got {value!r}")
    return int(value)


def _as_volume_batch(volume: torch.Tensor) -> tuple[torch.Tensor, bool, int]:
    if not isinstance(volume, torch.Tensor):
        raise XDiffusionError(f"expected a torch tensor volume, got {type(volume).__name__}")
    if volume.ndim == 4:
        vol, squeeze = volume[:, None], True
    elif volume.ndim == 5:
        vol, squeeze = volume, False
    else:
        raise XDiffusionError(f"volume must be (B, C, S, S, S) or (B, S, S, S), got shape {tuple(volume.shape)}")
    s = vol.shape[-1]
    if vol.shape[-3:] != (s, s, s):
        raise XDiffusionError(f"volume must be a cube, got spatial shape {tuple(vol.shape[-3:])}: pad it to a cube first")
    if not vol.is_floating_point():
        vol = vol.to(torch.get_default_dtype())
    return vol, squeeze, _check_side(s, "volume side")


def _as_rotation_batch(R: torch.Tensor) -> torch.Tensor:
    R = torch.as_tensor(R)
    if R.ndim == 2:
        R = R[None]
    if R.ndim != 3 or R.shape[-2:] != (3, 3):
        raise XDiffusionError(f"rotations must be (3, 3) or (B, 3, 3), got shape {tuple(R.shape)}")
    return R


def _grid_dtype(vol: torch.Tensor) -> torch.dtype:
    # Half-precision coordinates lose whole voxels on large grids; build grids in at least float32.
    return torch.float64 if vol.dtype == torch.float64 else torch.float32


def _rotation_like(R: torch.Tensor, vol: torch.Tensor) -> torch.Tensor:
    return _as_rotation_batch(R).to(device=vol.device, dtype=_grid_dtype(vol))


def _match_batch(vol: torch.Tensor, R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if R.shape[0] == vol.shape[0]:
        return vol, R
    if R.shape[0] == 1:
        return vol, R.expand(vol.shape[0], -1, -1)
    if vol.shape[0] == 1:
        return vol.expand(R.shape[0], *vol.shape[1:]), R
    raise XDiffusionError(f"{vol.shape[0]} volumes but {R.shape[0]} rotations: give one rotation per volume or one for all")


def _as_depths(depths, batch: int, device, dtype) -> torch.Tensor:
    d = torch.as_tensor(depths, device=device, dtype=dtype)
    if d.ndim == 0:
        d = d.reshape(1).expand(batch)
    if d.ndim not in (1, 2):
        raise XDiffusionError(f"depths must be a float, (B,) or (B, K), got shape {tuple(d.shape)}")
    return d


def _mapped_points(M: torch.Tensor, axis0: torch.Tensor, n: int, scale: float) -> torch.Tensor:
    """Grid (B, K, n, n, 3) in grid_sample order of the points M @ (scale * (axis0[b,k], v_r, v_c)).

    v runs over linspace(-1, 1, n) for the two in-plane axes (rows = axis 1, columns = axis 2).
    """
    v = torch.linspace(-1.0, 1.0, n, device=M.device, dtype=M.dtype) * scale
    a = axis0.to(M.dtype) * scale
    # Column m of M is where unit step along source axis m lands; sum the three contributions.
    points = (
        a[:, :, None, None, None] * M[:, None, None, None, :, 0]
        + v[None, None, :, None, None] * M[:, None, None, None, :, 1]
        + v[None, None, None, :, None] * M[:, None, None, None, :, 2]
    )
    return to_grid_sample_order(points)


def _grid_sample(vol: torch.Tensor, grid: torch.Tensor, mode: str) -> torch.Tensor:
    if mode not in _MODES:
        raise XDiffusionError(f"unknown interpolation mode {mode!r}: use one of {', '.join(_MODES)}")
    return F.grid_sample(vol, grid.to(vol.dtype), mode=mode, padding_mode="zeros", align_corners=True)


def _sample_in_chunks(
    vol: torch.Tensor, M: torch.Tensor, depths: torch.Tensor, n: int, scale: float, mode: str
) -> torch.Tensor:
    """Sample the (B, C, K, n, n) volume of points M @ (scale * (depth_k, v, v)), a few planes at a time."""
    batch = vol.shape[0]
    per_plane = batch * n * n
    step = max(1, _MAX_GRID_POINTS // per_plane)
    chunks = []
    for start in range(0, depths.shape[0], step):
        block = depths[start : start + step][None].expand(batch, -1)
        chunks.append(_grid_sample(vol, _mapped_points(M, block, n, scale), mode))
    return torch.cat(chunks, dim=2)
