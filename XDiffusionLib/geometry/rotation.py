"""3x3 rotation matrices in the canonical array frame, as torch tensors.

Coordinates are ordered like the array axes: ``p = (u0, u1, u2)`` where ``u_a`` runs along
array axis ``a``. In the canonical RAS+ array (see ``XDiffusionLib.methods``) axis 0 is L->R,
axis 1 P->A and axis 2 I->S, so the axis names "x", "y", "z" below mean array axes 0, 1, 2
(the RAS axes), NOT grid_sample's (x, y, z), which is reversed (see ``geometry.sections``).

A rotation about axis ``a`` by angle ``t`` is right-handed: it turns axis ``a+1`` towards
axis ``a+2`` (indices mod 3). A matrix ``R`` acts on volumes as ``(R.X)(p) = X(R^T p)``.
"""

from __future__ import annotations

import math

import torch

from ..errors import XDiffusionError

_AXIS_NAMES = {"x": 0, "y": 1, "z": 2}


def axis_index(axis: int | str) -> int:
    """Array axis (0, 1, 2) from an int or one of "x", "y", "z" (= array axes 0, 1, 2)."""
    if isinstance(axis, str):
        key = axis.lower()
        if key not in _AXIS_NAMES:
            raise XDiffusionError(f"unknown rotation axis {axis!r}: use 0, 1, 2 or 'x', 'y', 'z'")
        return _AXIS_NAMES[key]
    if isinstance(axis, bool) or int(axis) != axis or not 0 <= int(axis) <= 2:
        raise XDiffusionError(f"unknown rotation axis {axis!r}: use 0, 1, 2 or 'x', 'y', 'z'")
    return int(axis)


def rotation_about_axis(
    angle_rad: float | torch.Tensor,
    axis: int | str,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Right-handed rotation by ``angle_rad`` about array axis ``axis``.

    A scalar angle gives a (3, 3) matrix; a tensor of angles with shape (...) gives (..., 3, 3).
    A tensor angle keeps its device and (floating) dtype unless overridden.
    """
    a = axis_index(axis)
    if isinstance(angle_rad, torch.Tensor):
        angle = angle_rad.to(device=device or angle_rad.device)
        angle = angle.to(dtype or (angle.dtype if angle.is_floating_point() else torch.get_default_dtype()))
    else:
        # Build in float64 so that cos(pi/2) and friends are as close to exact as the output dtype allows.
        angle = torch.tensor(float(angle_rad), dtype=torch.float64, device=device)
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    b, d = (a + 1) % 3, (a + 2) % 3
    entries = [[zero] * 3 for _ in range(3)]
    entries[a][a] = one
    entries[b][b], entries[b][d] = c, -s
    entries[d][b], entries[d][d] = s, c
    matrix = torch.stack([torch.stack(row, dim=-1) for row in entries], dim=-2)
    if not isinstance(angle_rad, torch.Tensor):
        matrix = matrix.to(dtype or torch.get_default_dtype())
    return matrix


def azimuth_rotations(
    n_views: int,
    axis: int | str = 2,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The paper's N evenly spaced views about the vertical axis: R_i = R_axis(360 deg * i / N), i = 1..N.

    Returns (N, 3, 3); the last view is the identity. The vertical (I->S) axis of the canonical
    RAS array is axis 2, hence the default.
    """
    if isinstance(n_views, bool) or int(n_views) != n_views or int(n_views) < 1:
        raise XDiffusionError(f"number of views must be a positive integer, got {n_views!r}")
    n = int(n_views)
    angles = torch.arange(1, n + 1, dtype=torch.float64, device=device) * (2.0 * math.pi / n)
    return rotation_about_axis(angles, axis).to(dtype or torch.get_default_dtype())


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (..., 4) as (w, x, y, z) -> rotation matrices (..., 3, 3). q is normalised here."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def random_rotations(
    n: int,
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``n`` rotations drawn uniformly (Haar measure) on SO(3): (n, 3, 3).

    A normalised 4D Gaussian is uniform on the unit quaternion sphere, and the quaternion double
    cover carries that uniform measure to the Haar measure on SO(3). Random numbers come from
    ``generator`` (on the generator's device); the result is moved to ``device``.
    """
    if isinstance(n, bool) or int(n) != n or int(n) < 0:
        raise XDiffusionError(f"number of rotations must be a non-negative integer, got {n!r}")
    draw_device = generator.device if generator is not None else (device or "cpu")
    q = torch.randn(int(n), 4, generator=generator, device=draw_device, dtype=torch.float64)
    # A zero 4-vector has probability 0 but would give NaN; replace it by the identity quaternion.
    tiny = q.norm(dim=-1) < 1e-12
    if bool(tiny.any()):
        q[tiny] = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=q.dtype, device=q.device)
    return quaternion_to_matrix(q).to(device=device or draw_device, dtype=dtype or torch.get_default_dtype())


def rotation_6d(R: torch.Tensor) -> torch.Tensor:
    """Continuous 6D code of rotations (..., 3, 3) -> (..., 6): first column then second column.

    This is the representation of Zhou et al. (2019) for conditioning networks: unlike Euler
    angles or quaternions it has no discontinuities. ``rotation_from_6d`` inverts it.
    """
    if R.shape[-2:] != (3, 3):
        raise XDiffusionError(f"rotation_6d needs matrices of shape (..., 3, 3), got {tuple(R.shape)}")
    return torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1)


def rotation_from_6d(code: torch.Tensor) -> torch.Tensor:
    """Inverse of ``rotation_6d`` (Gram-Schmidt, so any non-degenerate 6-vector gives a rotation)."""
    if code.shape[-1] != 6:
        raise XDiffusionError(f"rotation_from_6d needs vectors of shape (..., 6), got {tuple(code.shape)}")
    a, b = code[..., :3], code[..., 3:]
    c0 = a / a.norm(dim=-1, keepdim=True)
    b = b - (c0 * b).sum(-1, keepdim=True) * c0
    c1 = b / b.norm(dim=-1, keepdim=True)
    c2 = torch.linalg.cross(c0, c1, dim=-1)
    return torch.stack([c0, c1, c2], dim=-1)


def section_rotations(
    n_views: int,
    normal_axis: int,
    *,
    offset: float = 0.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """N views whose sections all contain the input slices' normal (canonical axis ``normal_axis``).

    View i cuts sections with normal m_i = cos(t_i) e_b + sin(t_i) e_c, t_i = pi * (i + offset) / N
    (b < c the two other axes): N distinct section orientations over 180 degrees (360/N would repeat
    each one twice), every section crossing every input slice along its rows. Rows of R_i:
    [m_i, e_normal, m_i x e_normal], so R_i is a proper rotation and a section's rows run along the
    input normal. Returns (N, 3, 3).
    """
    if isinstance(n_views, bool) or int(n_views) != n_views or int(n_views) < 1:
        raise XDiffusionError(f"number of views must be a positive integer, got {n_views!r}")
    a = axis_index(normal_axis)
    b, c = (x for x in range(3) if x != a)
    angles = (torch.arange(int(n_views), dtype=torch.float64, device=device) + float(offset)) * (math.pi / int(n_views))
    return section_rotations_at(angles, a).to(dtype or torch.get_default_dtype())


def section_rotations_at(angles: torch.Tensor, normal_axis: int) -> torch.Tensor:
    """(B, 3, 3) rotations of ``section_rotations`` at arbitrary angles (radians), for training draws."""
    a = axis_index(normal_axis)
    b, c = (x for x in range(3) if x != a)
    angles = torch.as_tensor(angles, dtype=torch.float64).reshape(-1)
    rows0 = torch.zeros(angles.numel(), 3, dtype=torch.float64, device=angles.device)
    rows0[:, b], rows0[:, c] = torch.cos(angles), torch.sin(angles)
    rows1 = torch.zeros_like(rows0)
    rows1[:, a] = 1.0
    rows2 = torch.linalg.cross(rows0, rows1)
    return torch.stack([rows0, rows1, rows2], dim=1)
