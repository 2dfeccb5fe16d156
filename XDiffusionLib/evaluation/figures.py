"""Evaluation figures (matplotlib, Agg, no display): one panel per case/method/K, PSNR against K,
and the interval calibration plot (expected against observed coverage, one panel per K).

Thick-slice figure (``evaluate --thick-slice``, simulated protocol): per case, the two planes across
the acquired slices (mid-cuts), one row per panel: the truth, the thick slices as acquired (each fine
slice shows its nearest slab: the staircase), then each method on the fine grid; one grey window.

Error-by-distance figure (paper Fig. XV): per case, the PSNR of the non-input slices inside the head
(peak = the volume's maximum), grouped by their distance in mm to the nearest input slice, one line
per method and one panel per K.

Case panel: rows = axial, coronal, sagittal cuts; columns = input, ground truth, reconstruction,
difference (ground truth - reconstruction, ``maps.difference``: the sign and colours of the Slicer
and web views). In the input plane the cut is a NON-input slice (the one farthest from every input
within the middle half of the head; an input slice would show a perfect copy), and the input
column shows the nearest input slice. In the two other planes the input column shows the sparse
input (input slices only, zeros elsewhere), i.e. where the inputs are. Images use the canonical
RAS+ arrays with the patient's superior/anterior side up, one shared grey window (ground truth
0.5..99.5 percentile), and physical aspect ratios. The difference window is +/- half that grey
window, the same for every method's figure of a case.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import maps
from ..io.atomic import write_atomic
from ..inputs import PLANE_AXIS, SliceInput
from ..metrics.psnr import psnr_from_mse
from ..metrics.slice_errors import mean_error_by_distance
from .protocol import foreground_extent

_PLANES = ("axial", "coronal", "sagittal")
PAPER_CONVENTION = "PSNR paper convention: 10 log10(max(GT)^2 / MSE)"


def cut_positions(ground_truth: np.ndarray, inputs: SliceInput) -> list[int]:
    """Index of the displayed cut along each canonical axis (see the module docstring)."""
    positions = []
    for axis in range(3):
        low, high = foreground_extent(ground_truth, axis)
        if axis != inputs.axis:
            positions.append((low + high) // 2)
            continue
        quarter = (high - low) // 4
        candidates = [i for i in range(low + quarter, high - quarter + 1) if i not in inputs.indices]
        if not candidates:
            positions.append((low + high) // 2)
            continue
        distance = [min(abs(i - j) for j in inputs.indices) for i in candidates]
        positions.append(candidates[int(np.argmax(distance))])
    return positions


def _cut(array: np.ndarray, plane: str, position: int) -> np.ndarray:
    """2D image of the canonical cut, rows top->bottom = superior->inferior (or anterior->posterior)."""
    image = np.take(array, position, axis=PLANE_AXIS[plane])
    # Remaining axes: axial (0, 1) -> show axis 1 (P->A) as rows flipped; coronal (0, 2), sagittal (1, 2) -> axis 2 flipped.
    return image.T[::-1]


def _aspect(spacing, plane: str) -> float:
    rows, cols = {"axial": (1, 0), "coronal": (2, 0), "sagittal": (2, 1)}[plane]
    return spacing[rows] / spacing[cols]


def _save(figure, path: Path) -> Path:
    return write_atomic(path, lambda handle: figure.savefig(handle, format="png", dpi=100), binary=True)


def case_figure(ground_truth, prediction: np.ndarray, inputs: SliceInput, title: str, path: Path,
                uncertainty: np.ndarray | None = None, uncertainty_label: str = "std across views") -> Path:
    """The case panel (module docstring) written atomically to ``path``; with ``uncertainty``, a fifth
    column shows it, titled and its colour bar labelled with ``uncertainty_label`` (what it is: the
    calibrated interval half-width at its level, or the view spread; ``UncertaintyInfo.label``)."""
    # matplotlib: loaded when a figure is drawn (no pyplot: no global state, no display needed)
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    difference_colours = ListedColormap(maps.ramp(maps.DIFFERENCE_COLOURS), name="difference")
    uncertainty_colours = ListedColormap(maps.ramp(maps.UNCERTAINTY_COLOURS), name="uncertainty")

    gt = np.asarray(ground_truth.array if hasattr(ground_truth, "array") else ground_truth, dtype=np.float32)
    pred = np.asarray(prediction, dtype=np.float32)
    spacing = inputs.grid.spacing
    sparse = inputs.paste_into(np.zeros_like(gt))
    low, high = np.percentile(gt[::2, ::2, ::2], [0.5, 99.5])
    high = high if high > low else low + 1.0
    limit = 0.5 * (high - low)
    positions = cut_positions(gt, inputs)

    columns = 4 if uncertainty is None else 5
    figure = Figure(figsize=(2.75 * columns, 8.8), layout="constrained")
    figure.suptitle(title, fontsize=10)
    axes = figure.subplots(3, columns)
    if uncertainty is not None:
        uncertainty = np.asarray(uncertainty, dtype=np.float32)
        spread_max = maps.upper_limit(uncertainty)
    for row, plane in enumerate(_PLANES):
        axis = PLANE_AXIS[plane]
        position = positions[axis]
        if axis == inputs.axis:
            nearest = min(inputs.indices, key=lambda i: (abs(i - position), i))
            first = _cut(sparse, plane, nearest)
            first_label = f"nearest input ({plane} {nearest})"
        else:
            first = _cut(sparse, plane, position)
            first_label = f"inputs seen in {plane} {position}"
        panels = [
            (first, first_label, "gray", (low, high)),
            (_cut(gt, plane, position), f"ground truth ({plane} {position})", "gray", (low, high)),
            (_cut(pred, plane, position), "reconstruction", "gray", (low, high)),
            (_cut(maps.difference(gt, pred), plane, position), maps.DIFFERENCE_TITLE, difference_colours,
             (-limit, limit)),
        ]
        if uncertainty is not None:
            panels.append((_cut(uncertainty, plane, position), "uncertainty", uncertainty_colours,
                           (0.0, spread_max)))
        for col, (image, label, cmap, (vmin, vmax)) in enumerate(panels):
            ax = axes[row, col]
            shown = ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, aspect=_aspect(spacing, plane),
                              interpolation="nearest")
            ax.set_title(label, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 3 and row == 0:
                figure.colorbar(shown, ax=axes[:, 3], shrink=0.6, label=maps.DIFFERENCE_UNITS)
            if col == 4 and row == 0:
                figure.colorbar(shown, ax=axes[:, 4], shrink=0.6, label=uncertainty_label)
    return _save(figure, path)


def psnr_vs_k_figure(summary: list[dict], path: Path, n_cases: int) -> Path:
    """Mean ``psnr_paper`` (error bars: std over cases) against K, one line per method."""
    from matplotlib.figure import Figure  # matplotlib, as in case_figure

    figure = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = figure.subplots()
    methods = list(dict.fromkeys(r["method"] for r in summary))
    for method in methods:
        rows = sorted((r for r in summary if r["method"] == method), key=lambda r: r["k"])
        ax.errorbar([r["k"] for r in rows], [r["psnr_paper_mean"] for r in rows],
                    yerr=[r["psnr_paper_std"] for r in rows], marker="o", capsize=3, label=method)
    ks = sorted({r["k"] for r in summary})
    ax.set_xticks(ks)
    ax.set_xlabel("K (input slices)")
    ax.set_ylabel("3D PSNR (dB), mean ± std over cases")
    ax.set_title(f"PSNR against K ({n_cases} case{'s' if n_cases != 1 else ''})\n{PAPER_CONVENTION}, whole volume",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(figure, path)


def error_by_distance_figure(rows: list[dict], case: str, plane: str, spacing_mm: float, path: Path) -> Path:
    """``rows``: ``metrics.error_by_distance`` rows tagged with ``method`` and ``k``; one panel per K."""
    from matplotlib.figure import Figure  # matplotlib, as in case_figure

    ks = sorted({int(r["k"]) for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    figure = Figure(figsize=(3.2 * max(len(ks), 1) + 1.0, 3.6), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, max(len(ks), 1), sharey=True))
    for ax, k in zip(axes, ks):
        for method in methods:
            group = [r for r in rows if r["method"] == method and int(r["k"]) == k and r["distance"] > 0]
            if not group:
                continue
            # All slices of one case share the peak: recover it from any finite row's mse and psnr.
            row = next(r for r in group if np.isfinite(r["psnr_paper"]))
            peak = float(np.sqrt(row["mse"] * 10 ** (row["psnr_paper"] / 10)))
            means = mean_error_by_distance(group, peak)
            ax.plot([m["distance"] * spacing_mm for m in means], [psnr_from_mse(m["mse"], peak) for m in means],
                    marker=".", label=method)
        ax.set_title(f"K={k}", fontsize=9)
        ax.set_xlabel("distance to nearest input (mm)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("slice PSNR (dB, volume peak)")
    axes[-1].legend(fontsize=7)
    figure.suptitle(f"{case}: error against distance to the nearest {plane} input slice", fontsize=10)
    return _save(figure, path)


def calibration_figure(rows: list[dict], levels: list[float], path: Path) -> Path:
    """Expected against observed coverage of the calibrated interval, one panel per K: one thin
    line per case, the mean over cases thick, the diagonal = perfect calibration; ``rows`` hold
    ``coverage_<level>`` keys (``metrics.coverage.interval_coverage``)."""
    from matplotlib.figure import Figure  # matplotlib, as in case_figure

    ks = sorted({int(r["k"]) for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    figure = Figure(figsize=(2.7 * max(len(ks), 1) + 0.8, 3.3), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, max(len(ks), 1), sharey=True))
    for ax, k in zip(axes, ks):
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
        for number, method in enumerate(methods):
            group = [r for r in rows if r["method"] == method and int(r["k"]) == k]
            colour = f"C{number}"
            for r in group:
                ax.plot(levels, [r[f"coverage_{a:g}"] for a in levels], color=colour, lw=0.8, alpha=0.45)
            mean = [float(np.mean([r[f"coverage_{a:g}"] for r in group])) for a in levels]
            ax.plot(levels, mean, color=colour, lw=2, marker="o", ms=3, label=f"{method} (mean of {len(group)})")
        ax.plot([0.9, 0.9], [0.85, 0.95], color="k", lw=3, alpha=0.25, solid_capstyle="butt")  # 85-95% target
        ax.set_xlim(min(levels) - 0.05, 1.0)
        ax.set_ylim(min(levels) - 0.25, 1.0)
        ax.set_title(f"K={k}", fontsize=9)
        ax.set_xlabel("stated level")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("observed coverage\n(non-input voxels in the head)")
    axes[-1].legend(fontsize=7, loc="lower right")
    figure.suptitle("Calibrated interval: observed against stated coverage (dashed: perfect; grey bar at 90%: the 85-95% target)", fontsize=10)
    return _save(figure, path)


def thick_slice_figure(rows: dict[str, np.ndarray], spacing, acquisition_plane: str, title: str, path: Path) -> Path:
    """The thick-slice figure (module docstring): ``rows`` {label: canonical fine-grid array}, the
    first one the truth (its foreground places the cuts and sets the grey window)."""
    from matplotlib.figure import Figure  # matplotlib, as in case_figure

    labels = list(rows)
    truth = np.asarray(rows[labels[0]], dtype=np.float32)
    low, high = np.percentile(truth[::2, ::2, ::2], [0.5, 99.5])
    high = high if high > low else low + 1.0
    planes = [plane for plane in _PLANES if plane != acquisition_plane]
    figure = Figure(figsize=(3.2 * len(planes), 2.6 * len(labels)), layout="constrained")
    figure.suptitle(title, fontsize=10)
    axes = figure.subplots(len(labels), len(planes), squeeze=False)
    for col, plane in enumerate(planes):
        axis = PLANE_AXIS[plane]
        position = sum(foreground_extent(truth, axis)) // 2
        for row, label in enumerate(labels):
            ax = axes[row, col]
            ax.imshow(_cut(np.asarray(rows[label], dtype=np.float32), plane, position), cmap="gray", vmin=low,
                      vmax=high, aspect=_aspect(spacing, plane), interpolation="nearest")
            ax.set_title(f"{label} ({plane} {position})", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    return _save(figure, path)
