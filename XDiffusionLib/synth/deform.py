"""Random spatial transforms: affine (scale, rotation, translation) plus a smooth displacement field.

A transform maps each output voxel to the template position it samples (pull-back), so the
subject is the template pushed through the inverse. Positions are RAS millimetres relative to the
centres of the output and template grids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .tissues import AtlasMaps


@dataclass(frozen=True)
class SpatialTransform:
    """``template = matrix @ x + translation + displacement(x)`` for output position x (mm)."""

    matrix: np.ndarray  # 3x3
    translation: np.ndarray  # 3, mm
    control_points: np.ndarray  # (3, n, n, n) displacement (mm) at a coarse grid over the output box
    params: dict


def rotation_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation about the x, then y, then z axis (right-handed, degrees)."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_transform(
    rng: np.random.Generator,
    scale_range: tuple[float, float] = (0.85, 1.15),
    max_rotation_deg: float = 10.0,
    max_translation_mm: float = 8.0,
    control_range: tuple[int, int] = (5, 8),
    max_displacement_mm: float = 5.0,
) -> SpatialTransform:
    """Draw a random affine + smooth deformation.

    ``scale`` is the subject's size relative to the template per axis (1.1 = 10 % larger head);
    the displacement is Gaussian at ``n^3`` control points (n in ``control_range``) with a random
    standard deviation up to 0.4 ``max_displacement_mm``, clipped to that maximum.
    """
    scale = rng.uniform(*scale_range, size=3)
    # A little shared scale keeps heads mostly proportional, like real ones.
    shared = rng.uniform(*scale_range)
    scale = np.clip(0.5 * scale + 0.5 * shared, *scale_range)
    angles = rng.uniform(-max_rotation_deg, max_rotation_deg, size=3)
    translation = rng.uniform(-max_translation_mm, max_translation_mm, size=3)
    n = int(rng.integers(control_range[0], control_range[1] + 1))
    std = rng.uniform(0.0, max_displacement_mm / 2.5)
    control = np.clip(rng.normal(0.0, std, size=(3, n, n, n)), -max_displacement_mm, max_displacement_mm)
    # The subject is x = R diag(scale) y + translation for template y; pull back y = M (x - translation).
    rotation = rotation_matrix(angles)
    matrix = np.diag(1.0 / scale) @ rotation.T
    params = {
        "scale": scale.tolist(),
        "rotation_deg": angles.tolist(),
        "translation_mm": translation.tolist(),
        "control_points": n,
        "displacement_std_mm": float(std),
    }
    return SpatialTransform(matrix, -(matrix @ translation), control.astype(np.float32), params)


def output_positions(shape: tuple[int, int, int], spacing: float) -> list[np.ndarray]:
    """Per-axis voxel positions (mm from the grid centre), broadcastable over the 3D grid."""
    axes = []
    for a, n in enumerate(shape):
        values = (spacing * (np.arange(n) - (n - 1) / 2.0)).astype(np.float32)
        view = [1, 1, 1]
        view[a] = n
        axes.append(values.reshape(view))
    return axes


def smooth_field(coarse: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Upsample a (C, n, n, n) coarse grid smoothly to (C, *shape): cubic to ~4n, then linear."""
    mid = tuple(max(4 * s, 8) for s in coarse.shape[1:])
    factors = [m / s for m, s in zip(mid, coarse.shape[1:])]
    fine = np.stack([ndimage.zoom(c, factors, order=3, mode="nearest", grid_mode=False) for c in coarse])
    tensor = torch.from_numpy(np.ascontiguousarray(fine, dtype=np.float32))[None]
    up = F.interpolate(tensor, size=tuple(shape), mode="trilinear", align_corners=True)
    return up[0].numpy()


def template_positions(transform: SpatialTransform, shape: tuple[int, int, int], spacing: float) -> np.ndarray:
    """(3, *shape) template positions (mm from template centre) sampled by each output voxel."""
    x = output_positions(shape, spacing)
    displacement = smooth_field(transform.control_points, shape)
    m, t = transform.matrix.astype(np.float32), transform.translation.astype(np.float32)
    out = np.empty((3, *shape), dtype=np.float32)
    for r in range(3):
        out[r] = m[r, 0] * x[0] + m[r, 1] * x[1] + m[r, 2] * x[2] + (t[r] + displacement[r])
    return out


def sample_atlas(atlas: AtlasMaps, positions: np.ndarray) -> np.ndarray:
    """Trilinear samples of every atlas channel at ``positions`` (3, *shape) -> (C, *shape).

    Outside the template the edge values continue (the brainstem runs on below the template, and
    the far field stays far from the head).
    """
    half = atlas.half_extent_mm.astype(np.float32)
    # grid_sample wants (x, y, z) = (last, middle, first) array axis, normalised to [-1, 1].
    grid = np.stack([positions[2] / half[2], positions[1] / half[1], positions[0] / half[0]], axis=-1)
    channels = torch.from_numpy(atlas.channels)[None]
    sampled = F.grid_sample(
        channels, torch.from_numpy(np.ascontiguousarray(grid))[None], mode="bilinear",
        padding_mode="border", align_corners=True,
    )
    return sampled[0].numpy()


def radial_push(positions: np.ndarray, center: np.ndarray, strength: float, radius: float) -> np.ndarray:
    """Pull sampled template positions towards ``center``: what is there grows, tissue around is pushed out.

    r -> r (1 - k exp(-(r/R)^2)) is monotone for strength k < 1, so nothing folds. Used for tumour
    mass effect and for enlarged ventricles.
    """
    if strength <= 0:
        return positions
    c = np.asarray(center, dtype=np.float32)[:, None, None, None]
    offset = positions - c
    r2 = np.einsum("c...,c...->...", offset, offset) / np.float32(radius**2)
    return c + offset * (1.0 - np.float32(strength) * np.exp(-r2))
