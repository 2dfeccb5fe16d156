"""A SMORE-style through-plane super-resolution baseline: a small CNN trained on the scan itself.

SMORE (Zhao et al., self-supervised anti-aliasing and super-resolution) learns, from a thick-slice
scan's own in-plane images, to undo what the slice axis suffers: each in-plane image is degraded
along one in-plane axis to the through-plane resolution and profile (a box ``thickness`` wide, one
sample every ``slice spacing``, cubic interpolation back), and a small residual CNN learns to
restore the original. Applied to the through-plane sections (the slice axis taking the degraded
axis's place, after cubic interpolation onto the in-plane pixel spacing), averaged over the two
section orientations, then sampled onto the requested fine grid.

Kept small on purpose (4 conv layers, 24 channels, a few hundred steps on 32x32 patches) so it
runs on a CPU in a minute or two at the shipped samples' size; not the published network.
Works on canonical-free arrays: ``axis`` is the slice axis of ``array``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import CubicSpline


@dataclass(frozen=True)
class SmoreSettings:
    steps: int = 300
    batch: int = 16
    patch: int = 32
    channels: int = 24
    layers: int = 4
    seed: int = 0
    learning_rate: float = 2e-3


def _box_resample(lines: np.ndarray, pixel: float, spacing: float, thickness: float) -> np.ndarray:
    """Lines (n, L) at ``pixel`` mm degraded like the slice axis: box-averaged over ``thickness``,
    sampled every ``spacing`` mm, cubic back onto every pixel."""
    length = lines.shape[1]
    width = max(1, int(round(thickness / pixel)))
    kernel = np.ones(width, dtype=np.float32) / width
    padded = np.pad(lines, ((0, 0), (width // 2, width - 1 - width // 2)), mode="edge")
    blurred = np.stack([np.convolve(line, kernel, mode="valid") for line in padded])
    positions = np.arange(0.0, length - 1 + 1e-6, spacing / pixel)
    samples = np.stack([np.interp(positions, np.arange(length), line) for line in blurred])
    if len(positions) < 2:
        return np.repeat(samples[:, :1], length, axis=1)
    return CubicSpline(positions, samples, axis=1, extrapolate=True)(np.arange(length)).astype(np.float32)


def cubic_along(array: np.ndarray, axis: int, positions: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``array``'s slices (at ``positions`` along ``axis``) cubic-interpolated to ``targets`` (same units)."""
    spline = CubicSpline(positions, np.moveaxis(array, axis, 0), axis=0, extrapolate=True)
    return np.moveaxis(spline(targets).astype(np.float32), 0, axis)


def _network(settings: SmoreSettings):
    import torch  # torch: only when this baseline runs (the other baselines need none)

    layers = []
    channels = 1
    for n in range(settings.layers):
        last = n == settings.layers - 1
        layers.append(torch.nn.Conv2d(channels, 1 if last else settings.channels, 3, padding=1))
        if not last:
            layers.append(torch.nn.ReLU())
        channels = settings.channels
    return torch.nn.Sequential(*layers)


def through_plane_sr(array: np.ndarray, axis: int, pixel: float, spacing: float, thickness: float,
                     targets_mm: np.ndarray, settings: SmoreSettings = SmoreSettings()) -> np.ndarray:
    """The SMORE-style estimate of ``array`` (acquired slices ``spacing`` mm apart along ``axis``,
    each ``thickness`` thick, in-plane pixels ``pixel`` mm) at ``targets_mm`` along ``axis``
    (mm from the first acquired slice); returns the array with ``len(targets_mm)`` slices there."""
    import torch  # as in _network

    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    stack = np.moveaxis(np.asarray(array, dtype=np.float32), axis, 0)  # (slices, a, b): in-plane images
    scale = float(np.percentile(stack, 99.5)) or 1.0
    stack = stack / scale
    # Training pairs: every in-plane image degraded along each of its two axes.
    pairs = []
    for image in stack:
        for transpose in (False, True):
            high = image.T if transpose else image
            low = _box_resample(high.T, pixel, spacing, thickness).T  # degrade along the rows' axis 0
            pairs.append((low, high))
    net = _network(settings)
    optimiser = torch.optim.Adam(net.parameters(), lr=settings.learning_rate)
    size = settings.patch
    for _ in range(settings.steps):
        lows, highs = [], []
        for _ in range(settings.batch):
            low, high = pairs[rng.integers(len(pairs))]
            if low.shape[0] < size or low.shape[1] < size:
                continue
            i, j = rng.integers(low.shape[0] - size + 1), rng.integers(low.shape[1] - size + 1)
            lows.append(low[i:i + size, j:j + size])
            highs.append(high[i:i + size, j:j + size])
        if not lows:
            break
        x = torch.from_numpy(np.stack(lows))[:, None]
        y = torch.from_numpy(np.stack(highs))[:, None]
        loss = torch.nn.functional.l1_loss(x + net(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    # Apply: cubic onto the pixel spacing along the slice axis, restore both section orientations.
    positions = np.arange(stack.shape[0]) * spacing
    dense_mm = np.arange(0.0, positions[-1] + 1e-6, pixel)
    dense = cubic_along(stack, 0, positions, dense_mm)  # (dense, a, b)
    outputs = []
    with torch.no_grad():
        for section_axis in (1, 2):  # sections hold the slice axis and one in-plane axis
            sections = np.moveaxis(dense, section_axis, 0)  # (n, dense, other)
            x = torch.from_numpy(np.ascontiguousarray(sections))[:, None]
            restored = torch.cat([chunk + net(chunk) for chunk in torch.split(x, 16)])[:, 0].numpy()
            outputs.append(np.moveaxis(restored, 0, section_axis))
    restored = (outputs[0] + outputs[1]) / 2
    # Linear from the pixel-spaced slices onto the targets (the two grids nearly coincide).
    where = np.clip(np.asarray(targets_mm, dtype=np.float64) / pixel, 0, len(dense_mm) - 1)
    low = np.minimum(np.floor(where).astype(int), len(dense_mm) - 2) if len(dense_mm) > 1 else np.zeros(len(where), int)
    weight = (where - low).astype(np.float32)[:, None, None]
    high = np.minimum(low + 1, len(dense_mm) - 1)
    fine = ((1 - weight) * restored[low] + weight * restored[high]) * np.float32(scale)
    return np.moveaxis(fine, 0, axis)


__all__ = ["SmoreSettings", "cubic_along", "through_plane_sr"]
