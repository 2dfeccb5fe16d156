"""``xdiffusion evaluate``: score methods on volumes with the written leak-free protocol.

A thin layer over ``XDiffusionLib.evaluation`` (the protocol is in ``evaluation/protocol.py``).
Every argument, case and index is checked before anything is computed or written.

Cases run through ``evaluation.cohort``: one process, or many under ``torchrun`` /
``accelerate launch`` (cases split across ranks, tables gathered by rank 0); each finished case is
saved in ``OUT/per-case/``, so an interrupted run resumes where it stopped (``--fresh``: redo all).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from ... import __version__
from ...errors import XDiffusionError
from ...inputs import plane_axis
from ...io.data_files import volume_files
from ...io.outputs import OutputLedger
from ...model.files import default_model_dir
from ...settings import DEVICES, SAMPLERS


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score reconstruction methods on volumes (PSNR, SSIM, figures)",
        description=(
            "Reconstruct each volume from K of its own slices with each method and score it against the "
            "full volume. Indices are canonical RAS+ indices (sagittal = axis 0 L->R, coronal = axis 1 "
            "P->A, axial = axis 2 I->S). Writes OUT/cases.csv, OUT/summary.csv, OUT/protocol.json and "
            "figures, and prints the summary. Runs under torchrun or accelerate launch with the cases split "
            "across ranks; finished cases are kept in OUT/per-case and reused by the same command (resume)."
        ),
    )
    parser.add_argument("--data", nargs="+", metavar="PATH",
                        help="volume files, folders of volumes (BraTS *_flair.nii.gz recognised), or 'samples' "
                             "(the shipped held-out MRI; the default)")
    parser.add_argument("--method", nargs="+", metavar="NAME",
                        help="methods: nearest, linear, cubic, template, xdiffusion (default: the four baselines)")
    parser.add_argument("--slices", nargs="+", type=int, metavar="K", help="numbers of input slices (default 1)")
    parser.add_argument("--plane", default="axial", metavar="P", help="plane of the input slices: axial, coronal or sagittal (default axial)")
    parser.add_argument("--indices", nargs="+", type=int, metavar="I",
                        help="the input slice indices for every case (default: K slices spread over the head)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder (created; files an earlier evaluate wrote there are replaced, others "
                             "only with --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace tables and figures in --out that an earlier evaluate did not write")
    parser.add_argument("--volume", type=int, metavar="N", help="volume N of 4D files")
    parser.add_argument("--figures", action=argparse.BooleanOptionalAction, default=True,
                        help="write PNG figures (default: yes)")
    parser.add_argument("--model", metavar="DIR", help="model folder for --method xdiffusion (default: shipped weights)")
    for flag, kind, text in (("--views", int, "views"), ("--steps", int, "denoising steps per view"),
                             ("--sampler", str, " or ".join(SAMPLERS)), ("--guidance", float, "guidance scale"),
                             ("--samples", int, "samples per view"), ("--seed", int, "random seed"),
                             ("--device", str, " or ".join(DEVICES))):
        parser.add_argument(flag, type=kind, default=None, help=f"--method xdiffusion: {text} (default: the model's)")
    parser.add_argument("--atlas", metavar="PATH", help="template volume for --method template (default: shipped ICBM152 T1)")
    # Names are checked by evaluation.extra_metrics (imported on use: it pulls in scipy and the baselines).
    parser.add_argument("--extra-metrics", nargs="+", default=[], metavar="NAME",
                        help="also score: volume (foreground volume error and Pearson r across cases), "
                             "lpips (needs --lpips-weights), random_pair (PSNR floor between different subjects; one grid)")
    parser.add_argument("--lpips-weights", metavar="FILE",
                        help="local LPIPS backbone+heads state dict for --extra-metrics lpips (nothing is downloaded)")
    parser.add_argument("--fresh", action="store_true",
                        help="recompute every case (default: reuse the cases OUT/per-case holds for these same settings)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--thick-slice", action="store_true",
                        help="score the thick-slice workflow instead (issue 21): (a) a simulated thick acquisition of "
                             "each volume, (b) every other acquired slice left out; methods xdiffusion, cubic, pchip, "
                             "smore (evaluation/thick_slice.py); writes OUT/thick_slice.csv and thick_slice_summary.md")
    parser.add_argument("--thickness-voxels", type=int, default=3, metavar="N",
                        help="--thick-slice (a): simulated slab thickness in voxels (default 3)")
    parser.add_argument("--gap-voxels", type=int, default=1, metavar="N",
                        help="--thick-slice (a): simulated gap between slabs in voxels (default 1)")
    parser.add_argument("--thick-max-slabs", type=int, default=None, metavar="N",
                        help="--thick-slice: crop each case to its central N slabs (default: the whole volume, "
                             "in the workflow's windows where it has more slabs than the model takes)")
    parser.add_argument("--smore-steps", type=int, default=300, metavar="N",
                        help="--thick-slice: training steps of the SMORE-style baseline (default 300)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # scipy (the evaluation package) and, through the methods, SimpleITK and torch: loaded when an
    # evaluation runs, not with the command line's --help.
    from ...evaluation import DEFAULT_METHODS, EvaluationSettings, prepare
    from ...evaluation.cohort import current_rank, rank_device

    if args.thick_slice:
        return _run_thick_slice(args)
    methods = args.method or list(DEFAULT_METHODS)
    options: dict[str, dict] = {}
    for flag, method, key, value in (("--model", "xdiffusion", "model_dir", args.model),
                                     ("--atlas", "template", "atlas", args.atlas)):
        if value is None:
            continue
        if method not in methods:
            raise XDiffusionError(f"{flag} {value} is only used by --method {method}, which is not evaluated")
        options.setdefault(method, {})[key] = value
    for key in ("views", "steps", "sampler", "guidance", "samples", "seed", "device"):
        value = getattr(args, key)
        if value is None:
            continue
        if "xdiffusion" not in methods:
            raise XDiffusionError(f"--{key} {value} is only used by --method xdiffusion, which is not evaluated")
        options.setdefault("xdiffusion", {})[key] = value
    rank = current_rank()
    if "xdiffusion" in methods and rank.world_size > 1:
        device = rank_device(options.get("xdiffusion", {}).get("device"), rank)  # this rank's own GPU
        if device is not None:
            options.setdefault("xdiffusion", {})["device"] = device
    settings = EvaluationSettings(
        out=Path(args.out),
        data=args.data,
        methods=methods,
        ks=args.slices,
        plane=args.plane,
        indices=args.indices,
        volume_index=args.volume,
        figures=args.figures,
        method_options=options,
        extra_metrics=args.extra_metrics,
        lpips_weights=args.lpips_weights,
    )
    def note(text: str) -> None:
        if rank.is_main:  # every rank checks everything; one of them speaks
            print(text, file=sys.stderr)

    plan = prepare(settings, note)
    result = _run_cohort(plan, rank, progress=not args.no_progress, fresh=args.fresh, note=note,
                         overwrite=args.overwrite)
    if result is None:
        return 0  # another rank gathers the tables
    print(result.table, end="")
    print(f"wrote {settings.out / 'cases.csv'}, {settings.out / 'summary.csv'}, {settings.out / 'protocol.json'}"
          + (f" and {sum(p.suffix == '.png' for p in result.written)} figures" if args.figures else ""))
    return 0


def _case_key(plan, case) -> str:
    """Everything that changes this case's rows and figures (not the device, not the rank)."""
    # scipy, as in run
    from ...evaluation import protocol
    from ...evaluation.cohort import digest, file_identity

    settings = plan.settings
    options = {name: {k: str(v) for k, v in settings.method_options.get(name, {}).items() if k != "device"}
               for name in plan.methods}
    models = {}
    if "xdiffusion" in plan.methods:
        directory = settings.method_options.get("xdiffusion", {}).get("model_dir")
        if directory is None:
            directory = default_model_dir()
        models["xdiffusion"] = file_identity([Path(directory) / "config.json", Path(directory) / "model.safetensors"],
                                             content=True)
    atlas = settings.method_options.get("template", {}).get("atlas")
    if atlas is not None:
        models["template"] = file_identity(volume_files(atlas))
    return digest({
        "what": "evaluate", "version": __version__, "protocol": protocol.PROTOCOL_VERSION, "plane": settings.plane,
        "indices": {str(k): list(v) for k, v in case.indices.items()}, "methods": options, "models": models,
        "figures": settings.figures, "volume_index": case.source.volume_index, "name": case.source.name,
        "input": file_identity(volume_files(case.source.path)),
        "extra_metrics": list(settings.extra_metrics),
        "lpips_weights": file_identity([Path(settings.lpips_weights)], content=True) if settings.lpips_weights else None,
    })


# What evaluate writes in --out (tables, summary, protocol, figures; ``evaluation.runner``): an
# existing file of these kinds there must be its own unless --overwrite.
_OWN_KINDS = (".csv", ".json", ".md", ".png")


def _check_own_files(out: Path, ours: set[str], overwrite: bool) -> None:
    """Before any work: refuse a folder holding tables or figures an earlier evaluate did not write
    (evaluate's names are its cases' and methods', so any such file may be replaced)."""
    if overwrite or not out.is_dir():
        return
    candidates = [p for p in out.iterdir() if p.suffix.lower() in _OWN_KINDS]
    if (out / "figures").is_dir():
        candidates += [p for p in (out / "figures").iterdir() if p.suffix.lower() == ".png"]
    foreign = sorted(p for p in candidates
                     if p.is_file() and not p.name.startswith(".") and os.path.realpath(p) not in ours)
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise XDiffusionError(f"{foreign[0]}{more} already exists and no earlier xdiffusion evaluate wrote it: "
                              "pass --overwrite to let evaluate replace its files there, or choose another --out")


def _run_cohort(plan, rank, progress: bool, fresh: bool, note, overwrite: bool = False):
    """Run this rank's cases (one at a time, each saved when done); rank 0 writes the tables."""
    # scipy, as in run
    from ...evaluation.cohort import Case, Cohort, unique_file_names
    from ...evaluation.runner import run_cases, write_tables

    names = unique_file_names([c.source.name for c in plan.cases])
    prepared = dict(zip(names, plan.cases))
    cases = [Case(name, _case_key(plan, c)) for name, c in prepared.items()]
    cohort = Cohort(plan.out, rank)
    ledger = OutputLedger(plan.out, "evaluate")
    ours = {os.path.realpath(p) for p in ledger.ours()}
    ours |= {os.path.realpath(p) for case in cases for p in cohort.recorded_files(case)}
    _check_own_files(plan.out, ours, overwrite)

    def work(case: Case):
        rows, figures = run_cases(replace(plan, cases=[prepared[case.name]]), progress)
        return {"rows": rows}, figures

    plan.out.mkdir(parents=True, exist_ok=True)
    records = cohort.run(cases, work, note=note, fresh=fresh)
    if records is None:
        return None
    rows = [row for record in records for row in record["result"]["rows"]]
    figures = [plan.out / name for record in records for name in record["files"]]
    result = write_tables(plan, rows, figures)
    ledger.record(result.written)
    return result


def _run_thick_slice(args: argparse.Namespace) -> int:
    """``--thick-slice``: both thick-slice protocols (``evaluation.thick_slice``), one process."""
    # scipy, SimpleITK and (for the SMORE-style baseline and the model) torch, as in run
    from ...baselines.through_plane_sr import SmoreSettings
    from ...evaluation.cases import find_cases, skip_reason
    from ...evaluation.protocol import canonical_case
    from ...evaluation.thick_slice import METHODS, run_thick_slice, summary_table
    from ...io.readers import read_volume

    methods = args.method or list(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise XDiffusionError(f"--thick-slice: unknown method {unknown[0]!r}: choose from {', '.join(METHODS)}")
    if args.thickness_voxels < 1 or args.gap_voxels < 0:
        raise XDiffusionError("--thickness-voxels must be at least 1 and --gap-voxels at least 0")
    if args.thickness_voxels + args.gap_voxels < 2:
        raise XDiffusionError("--thickness-voxels + --gap-voxels must be at least 2 (the slab spacing in voxels)")
    if args.thick_max_slabs is not None and args.thick_max_slabs < 2:
        raise XDiffusionError(f"--thick-max-slabs {args.thick_max_slabs}: at least 2 slabs are needed")
    plane_axis(args.plane)
    reconstructor = None
    if "xdiffusion" in methods:
        from ...sampling.reconstructor import XDiffusionReconstructor  # torch: only when the model is scored

        options = {k: getattr(args, k) for k in ("views", "steps", "sampler", "guidance", "samples", "seed", "device")
                   if getattr(args, k) is not None}
        reconstructor = XDiffusionReconstructor(model_dir=args.model, **options)
    volumes = {}
    for case in find_cases(args.data, args.volume):
        volume = canonical_case(read_volume(case.path, args.volume))
        reason = skip_reason(case, volume.array)
        if reason is None:
            volumes[case.name] = volume
        elif not args.no_progress:
            print(f"skipping {case.name}: {reason}", file=sys.stderr)
    if not volumes:
        raise XDiffusionError("no cases left to evaluate: every volume found was skipped")
    out = Path(args.out)
    rows = run_thick_slice(volumes, out, args.plane, methods, args.thickness_voxels, args.gap_voxels, reconstructor,
                           SmoreSettings(steps=max(1, args.smore_steps)),
                           note=lambda text: None if args.no_progress else print(text, file=sys.stderr),
                           max_slabs=args.thick_max_slabs)
    print(summary_table(rows), end="")
    print(f"wrote {out / 'thick_slice.csv'} and {out / 'thick_slice_summary.md'}")
    return 0
