"""Evaluation outputs: ``cases.csv``, ``summary.csv``, ``protocol.json`` and the printed table.

Every file is written atomically (temporary file in the same folder, then ``os.replace``), so a
reader never sees half a table.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..io.atomic import write_atomic
from .protocol import METRIC_COLUMNS

CASE_COLUMNS = ("case", "method", "k", "plane", "indices", *METRIC_COLUMNS, "seconds")
# Per-case columns whose summary is a plain mean over the cases ("<column>_mean").
MEAN_COLUMNS = ("head_ssim", "head_ssim_axial", "head_ssim_coronal", "head_ssim_sagittal", "sharpness_through_plane")
SUMMARY_COLUMNS = ("method", "k", "n", "psnr_paper_mean", "psnr_paper_std", "psnr_paper_noninput_mean", "psnr_unit_mean",
                   "ssim_mean", *(f"{c}_mean" for c in MEAN_COLUMNS))


def _cell(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else ("inf" if math.isinf(value) else f"{float(value):.4f}")
    if isinstance(value, (tuple, list)):
        return " ".join(str(int(v)) for v in value)
    return str(value)


def write_csv(path: Path, rows: list[dict], columns: tuple[str, ...]) -> Path:
    def write(handle) -> None:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row[c]) for c in columns])

    return write_atomic(path, write)


def write_json(path: Path, data: dict) -> Path:
    return write_atomic(path, lambda handle: json.dump(data, handle, indent=2, default=_json_default))


def _json_default(value: Any):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (Path,)):
        return str(value)
    if isinstance(value, (tuple, set, np.ndarray)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def summarise(rows: list[dict]) -> list[dict]:
    """One row per (method, K) in the order first seen: means over cases (std: population, ddof 0)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], int(row["k"])), []).append(row)
    summary = []
    for (method, k), group in groups.items():
        paper = np.array([r["psnr_paper"] for r in group], dtype=np.float64)
        ssim = [np.mean([r["ssim_axial"], r["ssim_coronal"], r["ssim_sagittal"]]) for r in group]
        summary.append({
            "method": method,
            "k": k,
            "n": len(group),
            "psnr_paper_mean": float(paper.mean()),
            "psnr_paper_std": float(paper.std()) if np.isfinite(paper).all() else math.nan,
            "psnr_paper_noninput_mean": float(np.mean([r["psnr_paper_noninput"] for r in group])),
            "psnr_unit_mean": float(np.mean([r["psnr_unit"] for r in group])),
            "ssim_mean": float(np.mean(ssim)),
            **{f"{c}_mean": float(np.mean([r[c] for r in group])) for c in MEAN_COLUMNS},
        })
    return summary


def format_table(summary: list[dict]) -> str:
    """The summary as an aligned text table (numbers right-aligned, 2 decimals for dB, 4 for SSIM)."""
    headers = ("method", "K", "n", "PSNR paper (dB)", "non-input (dB)", "PSNR unit (dB)", "SSIM", "head SSIM",
               "sharpness")
    lines = [[
        str(r["method"]),
        str(r["k"]),
        str(r["n"]),
        f"{r['psnr_paper_mean']:.2f} ± {r['psnr_paper_std']:.2f}",
        f"{r['psnr_paper_noninput_mean']:.2f}",
        f"{r['psnr_unit_mean']:.2f}",
        f"{r['ssim_mean']:.4f}",
        f"{r['head_ssim_mean']:.4f}",
        f"{r['sharpness_through_plane_mean']:.3f}",
    ] for r in summary]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(headers)]
    out = io.StringIO()
    out.write("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))) + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for line in lines:
        out.write("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths))) + "\n")
    return out.getvalue()


def _closest_to_one(values: list[float]) -> float:
    return min(values, key=lambda v: abs(v - 1.0))


# Markdown columns: (summary key, label, format, how the best value of a column is chosen).
_MARKDOWN_SCORES = [("psnr_paper_mean", "PSNR", "{:.2f}", max), ("psnr_paper_noninput_mean", "non-input", "{:.2f}", max),
                    ("ssim_mean", "SSIM", "{:.3f}", max)]
# The truth's sharpness is 1: above it is added noise, not a better reconstruction.
_MARKDOWN_HEAD = [("head_ssim_mean", "head SSIM", "{:.3f}", max),
                  ("sharpness_through_plane_mean", "sharpness", "{:.2f}", _closest_to_one)]


def format_markdown(summary: list[dict]) -> str:
    """The summary as two Markdown tables, one row per method: per K the mean PSNR (paper
    convention), mean non-input PSNR and mean SSIM; then, inside the head, per K the mean head SSIM
    and the through-plane sharpness ratio. The best value of each column in bold (for sharpness:
    the closest to the truth's 1.0)."""
    return (_markdown_table(summary, _MARKDOWN_SCORES) + "\nInside the ground truth's head: SSIM (mean of the three "
            "planes) and through-plane sharpness (output / truth, 1.0 = as sharp as the truth).\n\n"
            + _markdown_table(summary, _MARKDOWN_HEAD))


def _markdown_table(summary: list[dict], columns) -> str:
    methods = list(dict.fromkeys(r["method"] for r in summary))
    ks = sorted({int(r["k"]) for r in summary})
    by_key = {(r["method"], int(r["k"])): r for r in summary}
    best = {}
    for k in ks:
        for key, _, _, pick in columns:
            values = [by_key[(m, k)][key] for m in methods if (m, k) in by_key and math.isfinite(by_key[(m, k)][key])]
            best[(k, key)] = pick(values) if values else math.nan
    header = "| method | " + " | ".join(f"K={k} {label}" for k in ks for _, label, _, _ in columns) + " |"
    rule = "|---|" + "---:|" * (len(ks) * len(columns))
    lines = [header, rule]
    for method in methods:
        cells = []
        for k in ks:
            row = by_key.get((method, k))
            for key, _, pattern, _ in columns:
                if row is None or not math.isfinite(row[key]):
                    cells.append("")
                    continue
                text = pattern.format(row[key])
                cells.append(f"**{text}**" if row[key] == best[(k, key)] else text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
