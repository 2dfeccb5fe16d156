"""Draws XDiffusion.png (128x128): a stack of slanted MRI-like slices, the top one outlined.

Run once with matplotlib: ``python XDiffusion/Resources/Icons/make_icon.py``. Not installed with the
extension (only the PNG is).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Polygon
from matplotlib.transforms import Affine2D


def slice_image(size: int, phase: float) -> np.ndarray:
    """A head-like grey-scale cross-section: skull ring, darker ventricles, soft texture."""
    y, x = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    r = np.sqrt((x / 0.85) ** 2 + (y / 1.0) ** 2)
    image = np.where(r < 0.95, 0.55 + 0.25 * np.cos(6 * x + phase) * np.cos(5 * y), 0.0)
    image = np.where((r > 0.82) & (r < 0.95), 0.95, image)
    ventricles = ((x - 0.18) ** 2 / 0.02 + y**2 / 0.12 < 1) | ((x + 0.18) ** 2 / 0.02 + y**2 / 0.12 < 1)
    image = np.where(ventricles & (r < 0.8), 0.15, image)
    return np.clip(image, 0, 1)


def main() -> None:
    matplotlib.use("Agg")  # no display needed; allowed after pyplot's import while no figure exists

    figure = plt.figure(figsize=(1.28, 1.28), dpi=100)
    axes = figure.add_axes([0, 0, 1, 1])
    axes.set_xlim(0, 128)
    axes.set_ylim(0, 128)
    axes.axis("off")
    # Three slices seen obliquely, bottom to top; the top one is the reconstructed (outlined) slice.
    for level, (bottom, colour) in enumerate([(14, "#5b7fa6"), (44, "#5b7fa6"), (74, "#e8873a")]):
        corners = np.array([[18, bottom], [92, bottom], [112, bottom + 34], [38, bottom + 34]], float)
        image = slice_image(64, phase=level)
        artist = axes.imshow(image, cmap="gray", extent=(0, 1, 0, 1), vmin=0, vmax=1, zorder=2 + 2 * level)
        # Map the unit square onto the parallelogram.
        a = corners[1] - corners[0]
        b = corners[3] - corners[0]
        transform = Affine2D(np.array([[a[0], b[0], corners[0, 0]], [a[1], b[1], corners[0, 1]], [0, 0, 1]]))
        artist.set_transform(transform + axes.transData)
        outline = Polygon(corners, closed=True, fill=False, edgecolor=colour, linewidth=2.2, zorder=3 + 2 * level)
        axes.add_patch(outline)
        artist.set_clip_path(outline)
    figure.savefig(Path(__file__).with_name("XDiffusion.png"), dpi=100, transparent=True)


if __name__ == "__main__":
    main()
