"""``xdiffusion evaluate --thick-slice``: the thick-slice workflow scored two ways (issue 21).

(a) ``simulated``: an isotropic volume (canonical, slices of ``plane``) is acquired thick in
    simulation: slabs ``thickness`` voxels thick every ``thickness + gap`` voxels, each the box
    average of its slab (``transforms.thick_slices.slab_average``, the same profile the workflow
    assumes). Each method puts them back on the original grid (factor = thickness + gap); scored
    against the original on that grid: PSNR (paper convention) and SSIM (mean of the 3 planes).
(b) ``leave-out``: the real acquired slices: every other one is kept (2x the spacing, each as thick
    as the spacing: a gap of one slice), the others are predicted with factor 2 and scored at the
    left-out slab positions against the real acquired slices (PSNR over those slices, axial SSIM).

Methods: ``xdiffusion`` (``sampling.thick_slices.reconstruct_thick_slices``), ``cubic`` and
``pchip`` along the slice axis, ``smore`` (``baselines.through_plane_sr``). The whole volume is scored: a scan with more
slabs than the model takes at once goes through the workflow's overlapping windows, as a user's
would. ``max_slabs`` (``evaluate --thick-max-slabs``) crops each case to its central slabs, for a
quicker run.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np

from ..baselines.through_plane_sr import SmoreSettings, cubic_along, through_plane_sr
from ..inputs import plane_axis
from ..io.atomic import write_text_atomic
from ..io.volume import Grid, Volume
from ..metrics.psnr import psnr_paper
from ..metrics.ssim import ssim_per_plane, ssim_slices
from ..sampling.thick_slices import interpolate_along, reconstruct_thick_slices
from ..transforms.thick_slices import as_acquired, plan_thick_slices, slab_average
from .figures import thick_slice_figure

METHODS = ("xdiffusion", "cubic", "pchip", "smore")
COLUMNS = ("case", "protocol", "method", "factor", "thickness_mm", "gap_mm", "psnr", "ssim", "seconds")


def _crop(array: np.ndarray, axis: int, length: int) -> np.ndarray:
    """The central ``length`` slices along ``axis`` (all if shorter)."""
    depth = array.shape[axis]
    if depth <= length:
        return array
    start = (depth - length) // 2
    return np.take(array, np.arange(start, start + length), axis=axis)


def _predict(method: str, thick: Volume, factor: int, thickness: float, axis: int, reconstructor,
             smore: SmoreSettings) -> np.ndarray:
    """``method``'s fine-grid array for the canonical thick volume (acquired slice i at fine i*factor)."""
    spacing = float(thick.spacing[axis])
    positions = np.arange(thick.shape[axis]) * spacing
    targets = np.arange((thick.shape[axis] - 1) * factor + 1) * spacing / factor
    if method == "xdiffusion":
        return reconstruct_thick_slices(thick, factor, thickness=thickness, reconstructor=reconstructor).volume.array
    if method == "cubic":
        return cubic_along(thick.array, axis, positions, targets)
    if method == "pchip":  # the workflow's own interpolation along the slice axis
        return interpolate_along(thick.array, plan_thick_slices(thick.grid, slice_factor=factor, thickness=thickness))
    if method == "smore":
        pixel = float(min(s for a, s in enumerate(thick.spacing) if a != axis))
        return through_plane_sr(thick.array, axis, pixel, spacing, thickness, targets, smore)
    raise ValueError(method)


def simulated_case(truth: Volume, axis: int, thickness_voxels: int, gap_voxels: int, max_slabs: int | None = None):
    """(the thick Volume, the plan, the truth on the fine grid) of protocol (a); at most ``max_slabs``
    slabs (None: as many as the volume holds)."""
    factor = thickness_voxels + gap_voxels
    depth = truth.shape[axis]
    count = (depth - 1) // factor + 1
    count = count if max_slabs is None else min(max_slabs, count)
    fine = _crop(truth.array, axis, (count - 1) * factor + 1)
    voxel = float(truth.spacing[axis])
    spacing = list(truth.spacing)
    spacing[axis] = voxel * factor
    shape = list(fine.shape)
    shape[axis] = count
    thick_grid = Grid(tuple(shape), tuple(spacing), truth.origin, truth.direction)
    plan = plan_thick_slices(thick_grid, slice_factor=factor, thickness=thickness_voxels * voxel)
    thick = Volume(slab_average(fine, plan), thick_grid)
    return thick, plan, fine


def leave_out_case(volume: Volume, axis: int, max_slabs: int | None = None):
    """(the kept thick Volume, the real left-out slices, the plan) of protocol (b); at most
    ``max_slabs`` kept slices (None: every other slice of the whole volume)."""
    array = volume.array if max_slabs is None else _crop(volume.array, axis, 2 * max_slabs - 1)
    if array.shape[axis] % 2 == 0:  # end on a kept slice
        array = np.take(array, np.arange(array.shape[axis] - 1), axis=axis)
    spacing = list(volume.spacing)
    slice_spacing = spacing[axis]
    spacing[axis] = 2 * slice_spacing
    kept = np.take(array, np.arange(0, array.shape[axis], 2), axis=axis)
    left_out = np.take(array, np.arange(1, array.shape[axis], 2), axis=axis)
    grid = Grid(kept.shape, tuple(spacing), volume.origin, volume.direction)
    plan = plan_thick_slices(grid, slice_factor=2, thickness=slice_spacing)
    return Volume(kept, grid), left_out, plan


def run_thick_slice(volumes: dict[str, Volume], out: Path, plane: str = "axial", methods=METHODS,
                    thickness_voxels: int = 3, gap_voxels: int = 1, reconstructor=None,
                    smore: SmoreSettings = SmoreSettings(), note=print, max_slabs: int | None = None) -> list[dict]:
    """Both protocols on canonical ``volumes`` {name: Volume}; writes ``out/thick_slice.csv``,
    ``out/thick_slice_summary.md`` and a figure per case (``out/figures/thick_slice_<case>.png``,
    simulated protocol: ``figures.thick_slice_figure``); returns the rows."""
    axis = plane_axis(plane)
    rows: list[dict] = []
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for name, volume in volumes.items():
        thick, plan, truth = simulated_case(volume, axis, thickness_voxels, gap_voxels, max_slabs)
        low, high = float(truth.min()), float(truth.max())
        shown = {"truth": truth, f"as acquired ({plan.thickness:g} mm slabs)": as_acquired(thick, plan).array}
        for method in methods:
            start = time.perf_counter()
            fine = _predict(method, thick, plan.factor, plan.thickness, axis, reconstructor, smore)
            seconds = time.perf_counter() - start
            shown[method] = fine
            ssim = ssim_per_plane(truth, fine, data_range=high - low)
            rows.append(dict(case=name, protocol="simulated", method=method, factor=plan.factor,
                             thickness_mm=plan.thickness, gap_mm=plan.gap, psnr=psnr_paper(truth, fine),
                             ssim=float(np.mean(list(ssim.values()))), seconds=seconds))
            note(f"{name} simulated {method}: {rows[-1]['psnr']:.2f} dB, SSIM {rows[-1]['ssim']:.3f}, {seconds:.1f} s")
        thick_slice_figure(shown, plan.grid.spacing, plane, f"{name}: simulated thick {plane} slices, factor "
                           f"{plan.factor}", out / "figures" / f"thick_slice_{name}.png")
        del shown
        kept, left_out, plan = leave_out_case(volume, axis, max_slabs)
        for method in methods:
            start = time.perf_counter()
            fine = _predict(method, kept, 2, plan.thickness, axis, reconstructor, smore)
            seconds = time.perf_counter() - start
            # The left-out slab (as thick as the fine step) is exactly fine slice 2i+1.
            predicted = np.take(fine, np.arange(1, fine.shape[axis], 2), axis=axis)
            peak = float(left_out.max())
            rows.append(dict(case=name, protocol="leave-out", method=method, factor=2, thickness_mm=plan.thickness,
                             gap_mm=plan.gap, psnr=psnr_paper(left_out, predicted),
                             ssim=float(np.mean(ssim_slices(left_out, predicted, axis,
                                                            data_range=peak - float(left_out.min())))),
                             seconds=seconds))
            note(f"{name} leave-out {method}: {rows[-1]['psnr']:.2f} dB, SSIM {rows[-1]['ssim']:.3f}, {seconds:.1f} s")
    out.mkdir(parents=True, exist_ok=True)
    # Whole or not at all: a full disk or Ctrl-C never leaves a cut-short table under its name.
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "thick_slice.csv", table.getvalue())
    write_text_atomic(out / "thick_slice_summary.md", summary_table(rows))
    return rows


def summary_table(rows: list[dict]) -> str:
    """Mean PSNR / SSIM per protocol and method (Markdown)."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = ["| method | simulated PSNR | simulated SSIM | leave-out PSNR | leave-out SSIM |",
             "|---|---:|---:|---:|---:|"]
    for method in methods:
        cells = []
        for protocol in ("simulated", "leave-out"):
            chosen = [r for r in rows if r["method"] == method and r["protocol"] == protocol]
            cells += [f"{np.mean([r['psnr'] for r in chosen]):.2f}", f"{np.mean([r['ssim'] for r in chosen]):.3f}"]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["COLUMNS", "METHODS", "leave_out_case", "run_thick_slice", "simulated_case", "summary_table"]
