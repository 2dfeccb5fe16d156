"""``xdiffusion evaluate --extra-metrics``: the paper's other measures, on request.

- ``volume``: the foreground (head or, for a skull-stripped scan, brain) volume of the truth and of
  the reconstruction, each by the same automatic mask (``baselines.foreground.head_mask``), in mL;
  the summary gives the mean absolute error in percent and, across cases, the Pearson correlation
  of reconstructed against true volumes (the paper's brain-volume agreement; needs 3 cases).
- ``lpips``: LPIPS per canonical plane with local backbone weights (``--lpips-weights``; nothing
  is downloaded, and without weights it refuses: a random backbone means nothing).
- ``random_pair``: the paper's reference floor (A.2): PSNR between two DIFFERENT cases' true
  volumes, mean and std over every ordered pair; a method near it has learnt nothing about the
  subject. Only for cohorts on one grid (BraTS, UK Biobank); otherwise it says so.

Per-case values go into the case rows (and ``extra_metrics_cases.csv``), the summary into
``extra_metrics.csv`` and a section of ``summary.md``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ..baselines.foreground import head_mask
from ..errors import XDiffusionError
from ..io.volume import Volume
from ..metrics.correlation import pearson_r
from ..metrics.lpips import NO_WEIGHTS_MESSAGE, lpips_per_plane
from ..metrics.psnr import random_pair_psnr
from ..metrics.volume import brain_volume_mm3

EXTRA_METRICS = ("volume", "lpips", "random_pair")
CASE_COLUMNS = {"volume": ("volume_true_ml", "volume_reconstructed_ml", "volume_error_pct"),
                "lpips": ("lpips_axial", "lpips_coronal", "lpips_sagittal"), "random_pair": ()}
SUMMARY_COLUMNS = {"volume": ("volume_abs_error_pct_mean", "volume_pearson_r"),
                   "lpips": ("lpips_axial_mean", "lpips_coronal_mean", "lpips_sagittal_mean"), "random_pair": ()}


def check_extra_metrics(names: Sequence[str] | None, lpips_weights: str | None) -> tuple[str, ...]:
    """The requested extra metrics, or one line naming the unknown one / the missing weights."""
    names = tuple(dict.fromkeys(names or ()))
    for name in names:
        if name not in EXTRA_METRICS:
            raise XDiffusionError(f"unknown extra metric {name!r}: choose from {', '.join(EXTRA_METRICS)}")
    if "lpips" in names:
        if not lpips_weights:
            raise XDiffusionError(NO_WEIGHTS_MESSAGE)
        if not Path(lpips_weights).is_file():
            raise XDiffusionError(f"--lpips-weights {lpips_weights}: no such file")
    elif lpips_weights:
        raise XDiffusionError(f"--lpips-weights {lpips_weights} is only used by --extra-metrics lpips")
    return names


def foreground_volume_ml(volume: Volume) -> float:
    mask = head_mask(volume.array).astype(np.float32)
    return brain_volume_mm3(mask, volume.spacing, threshold=0.5) / 1000.0


def score_extra(names: Sequence[str], truth: Volume, output: Volume, lpips_weights: str | None = None) -> dict:
    """The extra metrics of one reconstruction (columns of ``CASE_COLUMNS``)."""
    row: dict = {}
    if "volume" in names:
        true_ml, reconstructed_ml = foreground_volume_ml(truth), foreground_volume_ml(output)
        row.update(volume_true_ml=true_ml, volume_reconstructed_ml=reconstructed_ml,
                   volume_error_pct=100.0 * (reconstructed_ml - true_ml) / true_ml if true_ml > 0 else math.nan)
    if "lpips" in names:
        low, high = float(truth.array.min()), float(truth.array.max())
        scores = lpips_per_plane(truth.array, output.array, lpips_weights, data_range=(low, high))
        row.update({f"lpips_{plane}": value for plane, value in scores.items()})
    return row


def summarise_extra(rows: list[dict], names: Sequence[str]) -> list[dict]:
    """Per (method, K): the summary columns of the requested extra metrics."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], int(row["k"])), []).append(row)
    summary = []
    for (method, k), group in sorted(groups.items(), key=lambda item: (item[0][1], item[0][0])):
        entry: dict = {"method": method, "k": k, "n": len(group)}
        if "volume" in names:
            errors = [abs(r["volume_error_pct"]) for r in group if math.isfinite(r["volume_error_pct"])]
            entry["volume_abs_error_pct_mean"] = float(np.mean(errors)) if errors else math.nan
            true = [r["volume_true_ml"] for r in group]
            made = [r["volume_reconstructed_ml"] for r in group]
            correlated = len(group) >= 3 and np.ptp(true) > 0 and np.ptp(made) > 0
            entry["volume_pearson_r"] = pearson_r(true, made) if correlated else math.nan
        if "lpips" in names:
            for plane in ("axial", "coronal", "sagittal"):
                entry[f"lpips_{plane}_mean"] = float(np.mean([r[f"lpips_{plane}"] for r in group]))
        summary.append(entry)
    return summary


def summary_columns(names: Sequence[str]) -> tuple[str, ...]:
    return ("method", "k", "n", *(c for name in names for c in SUMMARY_COLUMNS[name]))


def case_columns(names: Sequence[str]) -> tuple[str, ...]:
    return ("case", "method", "k", *(c for name in names for c in CASE_COLUMNS[name]))


def format_extra_markdown(summary: list[dict], names: Sequence[str]) -> str:
    if not summary:
        return ""
    columns = summary_columns(names)
    lines = ["", "## Extra metrics", "",
             "Volume: foreground (head, or brain when skull-stripped) by the same automatic mask on truth and "
             "reconstruction; Pearson r across cases (nan with fewer than 3 cases).", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for entry in summary:
        cells = [f"{entry[c]:.4f}" if isinstance(entry[c], float) else str(entry[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def random_pair_floor(truths: Sequence[Volume]) -> tuple[float, float] | str:
    """(mean, std) PSNR between different cases' true volumes, or why it cannot be computed."""
    if len(truths) < 2:
        return "needs at least 2 cases"
    shapes = {tuple(v.shape) for v in truths}
    if len(shapes) > 1:
        return f"the cases lie on {len(shapes)} different grids (it needs one grid, as in BraTS or UK Biobank)"
    return random_pair_psnr([v.array for v in truths])


def format_random_pair_markdown(floor: tuple[float, float] | str) -> str:
    text = floor if isinstance(floor, str) else f"{floor[0]:.2f} ± {floor[1]:.2f} dB (psnr_paper, every ordered pair)"
    return f"\nRandom-pair floor (PSNR between two different subjects' true volumes): {text}\n"
