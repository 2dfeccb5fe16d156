"""Run the evaluation protocol (``protocol.py``) over cases x methods x K and write the outputs.

Two phases, so that nothing is written when any argument is bad:
1. ``prepare``: checks every setting, builds every method, reads every case, chooses and checks
   every set of input indices (and runs a method's own ``validate(inputs)`` where it has one).
2. ``run``: reconstructs and scores, then writes ``cases.csv``, ``summary.csv``, ``protocol.json``
   and the figures into ``out``.
"""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..errors import XDiffusionError
from ..io.names import safe_file_name
from ..io.volume import Volume
from ..inputs import PLANE_AXIS, Reconstructor, SliceInput, plane_axis
from ..methods import get_method
from ..metrics.slice_errors import error_by_distance
from ..baselines.foreground import head_mask
from ..metrics.coverage import result_coverage, scored_mask
from ..uncertainty.intervals import DEFAULT_LEVEL
from ..io.atomic import write_atomic
from . import protocol
from .cases import CaseSource, find_cases, skip_reason
from .coverage_report import format_coverage_markdown, write_coverage
from .figures import PAPER_CONVENTION, case_figure, error_by_distance_figure, psnr_vs_k_figure
from .extra_metrics import (case_columns, check_extra_metrics, format_extra_markdown, format_random_pair_markdown,
                            random_pair_floor, score_extra, summarise_extra, summary_columns)
from .report import CASE_COLUMNS, SUMMARY_COLUMNS, format_markdown, format_table, summarise, write_csv, write_json

DEFAULT_METHODS = ("nearest", "linear", "cubic", "template")
DEFAULT_KS = (1, 3, 5, 10, 31)  # the paper's numbers of input slices (its tables use 1, 2, 3, 5, 10, 31)
# Canonical volumes kept in memory between the two phases up to this many bytes (else re-read).
_KEEP_BYTES = 1_500_000_000


@dataclass
class EvaluationSettings:
    """What ``xdiffusion evaluate`` was asked (before any checking)."""

    out: Path
    data: list[str] | None = None
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    ks: list[int] | None = None
    plane: str = "axial"
    indices: list[int] | None = None
    volume_index: int | None = None
    figures: bool = True
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra_metrics: list[str] = field(default_factory=list)  # evaluation.extra_metrics.EXTRA_METRICS
    lpips_weights: str | None = None


@dataclass
class PreparedCase:
    source: CaseSource
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    indices: dict[int, tuple[int, ...]]  # K -> canonical input indices
    volume: Volume | None  # canonical; None when it did not fit the memory budget

    def load(self) -> Volume:
        return self.volume if self.volume is not None else _read_canonical(self.source)


@dataclass
class Plan:
    settings: EvaluationSettings
    out: Path
    ks: list[int]
    methods: dict[str, Reconstructor]
    cases: list[PreparedCase]
    skipped: list[dict[str, str]]


def _read_canonical(source: CaseSource) -> Volume:
    from ..io.readers import read_volume  # SimpleITK: loaded when a case is read, not with the evaluation package

    return protocol.canonical_case(read_volume(source.path, source.volume_index))


def check_out_dir(out: Path) -> Path:
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise XDiffusionError(f"--out {out} is an existing file, not a folder")
    for ancestor in out.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise XDiffusionError(f"--out {out}: {ancestor} is a file, not a folder")
            break
    return out


def _check_ks(settings: EvaluationSettings) -> list[int]:
    if settings.indices is not None:
        k = len(settings.indices)
        if settings.ks is not None and list(settings.ks) != [k]:
            raise XDiffusionError(f"--indices gives {k} slices but --slices asks for {' '.join(map(str, settings.ks))}")
        if len(set(settings.indices)) != k:
            raise XDiffusionError(f"--indices {' '.join(map(str, settings.indices))} repeats a slice")
        return [k]
    ks = list(settings.ks) if settings.ks else list(DEFAULT_KS)
    for k in ks:
        if int(k) < 1:
            raise XDiffusionError(f"--slices {k}: the number of input slices must be at least 1")
    return sorted(set(int(k) for k in ks))


def _build_methods(settings: EvaluationSettings) -> dict[str, Reconstructor]:
    names = list(dict.fromkeys(settings.methods))
    if not names:
        raise XDiffusionError("--method: name at least one method")
    for name in settings.method_options:
        if name not in names:
            raise XDiffusionError(f"options were given for method {name!r}, which is not evaluated: add --method {name}")
    return {name: get_method(name, **settings.method_options.get(name, {})) for name in names}


def _case_indices(volume: Volume, source: CaseSource, settings: EvaluationSettings, ks: list[int]) -> dict[int, tuple[int, ...]]:
    axis = plane_axis(settings.plane)
    depth = volume.shape[axis]
    if settings.indices is not None:
        for index in settings.indices:
            if not 0 <= index < depth:
                raise XDiffusionError(
                    f"--indices {index}: slice index outside {source.name}, whose {settings.plane} indices run 0..{depth - 1}"
                )
        return {ks[0]: tuple(int(i) for i in settings.indices)}
    out = {}
    for k in ks:
        if k > depth:
            raise XDiffusionError(
                f"--slices {k}: larger than the volume depth: {source.name} has only {depth} {settings.plane} slices"
            )
        out[k] = protocol.choose_indices(volume.array, settings.plane, k)
    return out


def prepare(settings: EvaluationSettings, note: Callable[[str], None] = print) -> Plan:
    """Phase 1: every check, before anything is computed or written (see the module docstring)."""
    plane_axis(settings.plane)
    settings.extra_metrics = list(check_extra_metrics(settings.extra_metrics, settings.lpips_weights))
    out = check_out_dir(settings.out)
    ks = _check_ks(settings)
    if settings.volume_index is not None and settings.volume_index < 0:
        raise XDiffusionError(f"--volume {settings.volume_index}: volume numbers start at 0")
    methods = _build_methods(settings)
    sources = find_cases(settings.data, settings.volume_index)
    cases: list[PreparedCase] = []
    skipped: list[dict[str, str]] = []
    kept_bytes = 0
    dropped: list[str] = []
    for source in sources:
        volume = _read_canonical(source)
        reason = skip_reason(source, volume.array)
        if reason is not None:
            skipped.append({"case": source.name, "path": str(source.path), "reason": reason})
            continue
        if settings.ks is None and settings.indices is None:
            # The default K list adapts to thin volumes (an explicit --slices never does).
            depth = volume.shape[plane_axis(settings.plane)]
            for k in [k for k in ks if k > depth]:
                dropped.append(f"K={k} left out of the default list: {source.name} has only {depth} {settings.plane} slices")
            ks = [k for k in ks if k <= depth]
        indices = _case_indices(volume, source, settings, ks)
        for name, method in methods.items():
            validate = getattr(method, "validate", None)
            if callable(validate):
                for k, chosen in indices.items():
                    validate(SliceInput.from_volume(volume, settings.plane, chosen))
        keep = kept_bytes + volume.array.nbytes <= _KEEP_BYTES
        kept_bytes += volume.array.nbytes if keep else 0
        cases.append(PreparedCase(source, volume.shape, volume.spacing, indices, volume if keep else None))
    if not cases:
        raise XDiffusionError("no cases left to evaluate: every volume found was skipped")
    for skip in skipped:  # only once every check passed, so an error stays alone on stderr
        note(f"skipping {skip['case']}: {skip['reason']}")
    for text in dropped:
        note(text)
    for case in cases:
        case.indices = {k: v for k, v in case.indices.items() if k in ks}
    return Plan(settings, out, ks, methods, cases, skipped)


@dataclass
class EvaluationResult:
    rows: list[dict]
    summary: list[dict]
    table: str
    written: list[Path]


def _versions(methods) -> dict[str, str]:
    versions = {"xdiffusion": __version__, "python": platform.python_version(), "platform": platform.platform()}
    packages = ["numpy", "scipy", "SimpleITK", "matplotlib"]
    if "xdiffusion" in methods:
        packages += ["torch", "diffusers"]
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _protocol_record(plan: Plan) -> dict:
    settings = plan.settings
    return {
        "protocol_version": protocol.PROTOCOL_VERSION,
        "protocol": protocol.__doc__.strip(),
        "command": sys.argv,
        "plane": settings.plane,
        "plane_axis": PLANE_AXIS[settings.plane],
        "k": plan.ks,
        "indices_given": settings.indices,
        "index_rule": "given by --indices" if settings.indices is not None
        else "centres of K equal bins over the ground truth's foreground extent along the plane axis",
        "foreground_rule": "voxels above p1 + 0.1 * (p99 - p1)",
        "head_rule": "the ground truth's foreground, binary closing by 2 voxels (6-connected), enclosed holes filled",
        "methods": {name: {"options": {k: str(v) for k, v in settings.method_options.get(name, {}).items()}}
                    for name in plan.methods},
        "metrics": {
            "psnr_paper": "10 log10(max(gt)^2 / MSE), whole volume, data units",
            "psnr_paper_noninput": "psnr_paper over the non-input slices only (peak over those voxels)",
            "psnr_unit": "gt [min, max] -> [0, 1], same map for the prediction, both clipped, data range 1",
            "ssim": "2D SSIM per slice (Gaussian 11x11, sigma 1.5, data range gt max - min), mean over slices per plane",
            "head_ssim": "the same SSIM map averaged over the ground truth's head voxels of each slice (head_rule), "
                         "then over the slices holding head voxels (others skipped), per plane; head_ssim = mean of "
                         "the three planes",
            "sharpness_through_plane": "mean |v[i+1] - v[i]| along the input axis over the neighbour pairs (i, i+1) "
                                       "not both input slices, at in-plane positions inside the ground truth's head "
                                       "on slice i or i+1 (head_rule); output / truth on the same voxels (1 = as "
                                       "sharp as the truth, < 1 = blurred); nan when every slice is an input",
            "seconds": "wall time of method.reconstruct",
        },
        "cases": [{
            "case": c.source.name,
            "path": str(c.source.path),
            "volume_index": c.source.volume_index,
            "canonical_shape": list(c.shape),
            "spacing_mm": list(c.spacing),
            "indices": {str(k): list(v) for k, v in c.indices.items()},
        } for c in plan.cases],
        "skipped": plan.skipped,
        "versions": _versions(plan.methods),
    }


def run(plan: Plan, progress: bool = True) -> EvaluationResult:
    """Phase 2: reconstruct, score, write. Figures appear as they are made; tables at the end."""
    rows, written = run_cases(plan, progress)
    return write_tables(plan, rows, written)


def run_cases(plan: Plan, progress: bool = True) -> tuple[list[dict], list[Path]]:
    """Reconstruct and score every case of ``plan`` and write its figures; returns the rows and
    the figures (``evaluation.cohort`` runs this one case at a time, on many ranks)."""
    from tqdm import tqdm  # the progress bar's library: loaded when cases run

    settings = plan.settings
    plan.out.mkdir(parents=True, exist_ok=True)
    figure_dir = plan.out / "figures"
    if settings.figures:
        figure_dir.mkdir(exist_ok=True)
    written: list[Path] = []
    rows: list[dict] = []
    distance_rows: dict[str, list[dict]] = {}  # case -> per-slice errors of every (method, K)
    total = len(plan.cases) * len(plan.methods) * len(plan.ks)
    with tqdm(total=total, desc="evaluate", unit="run", disable=not progress, file=sys.stderr) as bar:
        for case in plan.cases:
            volume = case.load()
            # Error-by-distance uses slices inside the head only: empty ones score near-infinite PSNR.
            low, high = protocol.foreground_extent(volume.array, plane_axis(settings.plane))
            head = head_mask(volume.array)  # the truth's head: once per case, for every method and K
            # K outermost: the template baseline, the anchor and the model fit one head prior per
            # input set (baselines.template keeps the last fits), so each K's prior is fitted once.
            for k, (name, method) in ((k, item) for k in plan.ks for item in plan.methods.items()):
                bar.set_postfix_str(f"{case.source.name} {name} K={k}")
                indices = case.indices[k]
                inputs = SliceInput.from_volume(volume, settings.plane, indices)
                start = time.perf_counter()
                # Methods with a calibrated interval also get its coverage scored (metrics.coverage).
                detailed = getattr(method, "reconstruct_with_uncertainty", None)
                result = detailed(inputs) if callable(detailed) else None
                output = result.volume if result is not None else method.reconstruct(inputs)
                seconds = time.perf_counter() - start
                if not output.grid.same_geometry(volume.grid):
                    raise XDiffusionError(f"method {name} returned a volume off the input grid for {case.source.name}")
                metrics = protocol.score(volume.array, output.array, settings.plane, indices, head)
                interval = getattr(result, "interval", None)
                if interval is not None:  # truth inside the interval, non-input voxels inside the head
                    mask = scored_mask(head, inputs.axis, indices)
                    metrics.update(result_coverage(volume.array, output.array, interval, mask, DEFAULT_LEVEL))
                if settings.extra_metrics:
                    metrics.update(score_extra(settings.extra_metrics, volume, output, settings.lpips_weights))
                rows.append({"case": case.source.name, "method": name, "k": k, "plane": settings.plane,
                             "indices": indices, **metrics, "seconds": seconds})
                if settings.figures:
                    distance_rows.setdefault(case.source.name, []).extend(
                        {"method": name, "k": k, **row}
                        for row in error_by_distance(volume.array, output.array, inputs.axis, indices)
                        if low <= row["index"] <= high)
                if settings.figures:
                    title = (f"{case.source.name} | {name} | K={k} {settings.plane} slices {list(indices)}\n"
                             f"{PAPER_CONVENTION}: {metrics['psnr_paper']:.2f} dB whole volume, "
                             f"{metrics['psnr_paper_noninput']:.2f} dB non-input slices | "
                             f"unit [0,1] convention: {metrics['psnr_unit']:.2f} dB")
                    path = figure_dir / f"{safe_file_name(case.source.name)}_{safe_file_name(name)}_k{k}.png"
                    written.append(case_figure(volume, output.array, inputs, title, path))
                bar.update()
            if settings.figures:
                path = figure_dir / f"{safe_file_name(case.source.name)}_error_by_distance.png"
                written.append(error_by_distance_figure(distance_rows.pop(case.source.name, []), case.source.name,
                                                        settings.plane, volume.spacing[plane_axis(settings.plane)], path))
            del volume
    # Tables list methods in the order given, then K (the loop ran K outermost).
    case_order = {case.source.name: i for i, case in enumerate(plan.cases)}
    method_order = {name: i for i, name in enumerate(plan.methods)}
    rows.sort(key=lambda row: (case_order[row["case"]], method_order[row["method"]], plan.ks.index(row["k"])))
    return rows, written


def write_tables(plan: Plan, rows: list[dict], written: list[Path]) -> EvaluationResult:
    """Write the tables (and the PSNR-vs-K figure) of every case's ``rows``; ``written`` gains their paths."""

    settings = plan.settings
    written = list(written)
    summary = summarise(rows)
    written.append(write_csv(plan.out / "cases.csv", rows, CASE_COLUMNS))
    written.append(write_csv(plan.out / "summary.csv", summary, SUMMARY_COLUMNS))
    markdown = format_markdown(summary) + format_coverage_markdown(rows)
    per_case = [name for name in settings.extra_metrics if name != "random_pair"]  # that one is per cohort
    if per_case:
        extra = summarise_extra(rows, per_case)
        written.append(write_csv(plan.out / "extra_metrics.csv", extra, summary_columns(per_case)))
        written.append(write_csv(plan.out / "extra_metrics_cases.csv", rows, case_columns(per_case)))
        markdown += format_extra_markdown(extra, per_case)
    if "random_pair" in settings.extra_metrics:
        floor = random_pair_floor([case.load() for case in plan.cases])
        markdown += format_random_pair_markdown(floor)
        written.append(write_json(plan.out / "random_pair.json", {"psnr_paper_mean": floor[0], "psnr_paper_std": floor[1]}
                                  if not isinstance(floor, str) else {"skipped": floor}))
    written.extend(write_coverage(plan.out, rows, settings.figures))
    written.append(write_atomic(plan.out / "summary.md", lambda handle: handle.write(markdown)))
    if settings.figures and len(plan.ks) > 1:
        written.append(psnr_vs_k_figure(summary, plan.out / "psnr_vs_k.png", len(plan.cases)))
    written.append(write_json(plan.out / "protocol.json", _protocol_record(plan)))
    return EvaluationResult(rows, summary, format_table(summary), written)


def evaluate(settings: EvaluationSettings, progress: bool = True, note: Callable[[str], None] = print) -> EvaluationResult:
    """Both phases: ``prepare`` (all checks) then ``run``."""
    return run(prepare(settings, note), progress)


__all__ = ["DEFAULT_KS", "DEFAULT_METHODS", "EvaluationResult", "EvaluationSettings", "Plan", "evaluate", "prepare", "run",
           "run_cases", "write_tables"]
