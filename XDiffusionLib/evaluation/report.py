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
SUMMARY_COLUMNS = ("method", "k", "n", "psnr_paper_mean", "psnr_paper_std", "psnr_paper_noninput_mean", "psnr_unit_mean",
                   "ssim_mean")


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
        })
    return summary


def format_table(summary: list[dict]) -> str:
    """The summary as an aligned text table (numbers right-aligned, 2 decimals for dB, 4 for SSIM)."""
    headers = ("method", "K", "n", "PSNR paper (dB)", "non-input (dB)", "PSNR unit (dB)", "SSIM")
    lines = [[
        str(r["method"]),
        str(r["k"]),
        str(r["n"]),
        f"{r['psnr_paper_mean']:.2f} ± {r['psnr_paper_std']:.2f}",
        f"{r['psnr_paper_noninput_mean']:.2f}",
        f"{r['psnr_unit_mean']:.2f}",
        f"{r['ssim_mean']:.4f}",
    ] for r in summary]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(headers)]
    out = io.StringIO()
    out.write("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))) + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for line in lines:
        out.write("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths))) + "\n")
    return out.getvalue()


def format_markdown(summary: list[dict]) -> str:
    """The summary as a Markdown table: one row per method, per K the mean PSNR (paper convention),
    mean non-input PSNR and mean SSIM; the best value of each column in bold."""
    methods = list(dict.fromkeys(r["method"] for r in summary))
    ks = sorted({int(r["k"]) for r in summary})
    by_key = {(r["method"], int(r["k"])): r for r in summary}
    columns = [("psnr_paper_mean", "PSNR", "{:.2f}"), ("psnr_paper_noninput_mean", "non-input", "{:.2f}"),
               ("ssim_mean", "SSIM", "{:.3f}")]
    best = {}
    for k in ks:
        for key, _, _ in columns:
            values = [by_key[(m, k)][key] for m in methods if (m, k) in by_key and math.isfinite(by_key[(m, k)][key])]
            best[(k, key)] = max(values) if values else math.nan
    header = "| method | " + " | ".join(f"K={k} {label}" for k in ks for _, label, _ in columns) + " |"
    rule = "|---|" + "---:|" * (len(ks) * len(columns))
    lines = [header, rule]
    for method in methods:
        cells = []
        for k in ks:
            row = by_key.get((method, k))
            for key, _, pattern in columns:
                if row is None or not math.isfinite(row[key]):
                    cells.append("")
                    continue
                text = pattern.format(row[key])
                cells.append(f"**{text}**" if row[key] == best[(k, key)] else text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

