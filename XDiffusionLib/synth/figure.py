"""Preview PNG of synthetic subjects: one row per subject, axial / coronal / sagittal slices."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io.atomic import atomic_file
from .subject import SyntheticSubject

_LESION_COLOURS = {1: "#ff3b30", 2: "#ffd60a", 4: "#32d2ff"}


def _centre(subject: SyntheticSubject) -> tuple[int, int, int]:
    """Slice through the lesion when there is one, else a little above the grid centre."""
    if subject.labels is not None and subject.labels.array.any():
        return tuple(int(round(c)) for c in np.argwhere(subject.labels.array > 0).mean(axis=0))  # type: ignore[return-value]
    shape = subject.image.shape
    return shape[0] // 2 + 4, shape[1] // 2, shape[2] // 2 + 6


def save_preview(subjects: Sequence[SyntheticSubject], path: str | os.PathLike, titles: Sequence[str] | None = None) -> Path:
    """Write a PNG grid (rows: subjects; columns: axial, coronal, sagittal) with lesion outlines.

    Neurological display: the subject's right is on the right of axial and coronal views, anterior
    on the right of sagittal views, superior up. Written atomically.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    path = Path(path)
    rows = max(len(subjects), 1)
    figure = Figure(figsize=(9.0, 3.0 * rows), facecolor="black")
    axes = figure.subplots(rows, 3, squeeze=False)
    for row, subject in enumerate(subjects):
        i, j, k = _centre(subject)
        image = subject.image.array
        labels = subject.labels.array if subject.labels is not None else None
        cuts = [(np.s_[:, :, k], "axial"), (np.s_[:, j, :], "coronal"), (np.s_[i, :, :], "sagittal")]
        for column, (cut, name) in enumerate(cuts):
            axis = axes[row, column]
            # Arrays are RAS+: transpose so the second index runs up the screen.
            axis.imshow(image[cut].T, origin="lower", cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            if labels is not None:
                for value, colour in _LESION_COLOURS.items():
                    mask = (labels[cut] == value).T
                    if mask.any():
                        axis.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=0.7)
            axis.set_axis_off()
            if column == 0:
                title = titles[row] if titles is not None else f"{subject.params.get('contrast', '')}"
                axis.set_title(title, color="white", fontsize=8, loc="left")
            elif row == 0:
                axis.set_title(name, color="white", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, suffix=".png") as temp:
        figure.savefig(temp, dpi=90, facecolor="black")
    return path
