"""Evaluation outputs of methods with a calibrated interval: ``coverage.csv``, the coverage section
of ``summary.md`` and the calibration plot (``figures.calibration_figure``).

The rows are ``cases.csv`` rows that also hold ``metrics.coverage.result_coverage`` scores (keys
``coverage``, ``coverage_<level>``, ...); rows of methods without an interval are left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .figures import calibration_figure
from .report import write_csv


COVERAGE_COLUMNS = ("case", "method", "k", "level", "coverage", "width_error_spearman", "mean_halfwidth",
                    "median_abs_error", "voxels", "scan_scale")


def coverage_levels(rows: list[dict]) -> list[float]:
    """The interval levels scored in ``rows`` (keys ``coverage_<level>``), ascending."""
    found = {float(key.split("_", 1)[1]) for row in rows for key in row
             if key.startswith("coverage_") and key[9:].replace(".", "", 1).isdigit()}
    return sorted(found)


def coverage_rows(rows: list[dict]) -> list[dict]:
    """Per case, method and K the coverage at the stated level, then per method and K the mean over
    cases (case ``mean``)."""
    scored = [r for r in rows if "coverage" in r]
    out = [{key: r[key] for key in COVERAGE_COLUMNS} for r in scored]
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in scored:
        groups.setdefault((row["method"], int(row["k"])), []).append(row)
    for (method, k), group in groups.items():
        mean = {key: float(np.mean([r[key] for r in group])) for key in COVERAGE_COLUMNS[4:]}
        out.append({"case": "mean", "method": method, "k": k, "level": group[0]["level"], **mean})
    return out


def format_coverage_markdown(rows: list[dict]) -> str:
    """A Markdown table of the mean coverage per method and K ('' when no method has an interval)."""
    table = [r for r in coverage_rows(rows) if r["case"] == "mean"]
    if not table:
        return ""
    lines = ["", "Calibrated interval, non-input voxels inside the head (ground-truth foreground, closed, holes "
             "filled), mean over cases:", "",
             "| method | K | level | coverage | Spearman(width, error) | mean half-width | median abs error |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in table:
        lines.append(f"| {r['method']} | {r['k']} | {r['level']:.0%} | {r['coverage']:.1%} | "
                     f"{r['width_error_spearman']:.3f} | {r['mean_halfwidth']:.2f} | {r['median_abs_error']:.2f} |")
    return "\n".join(lines) + "\n"


def write_coverage(out: Path, rows: list[dict], figures: bool) -> list[Path]:
    """``coverage.csv`` and (with ``figures``) ``calibration.png`` when some method has an interval."""
    table = coverage_rows(rows)
    if not table:
        return []
    written = [write_csv(Path(out) / "coverage.csv", table, COVERAGE_COLUMNS)]
    if figures:
        scored = [r for r in rows if "coverage" in r]
        written.append(calibration_figure(scored, coverage_levels(scored), Path(out) / "calibration.png"))
    return written


__all__ = ["COVERAGE_COLUMNS", "coverage_levels", "coverage_rows", "format_coverage_markdown", "write_coverage"]
