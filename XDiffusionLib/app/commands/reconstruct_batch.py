"""``xdiffusion reconstruct-batch``: ``xdiffusion reconstruct`` over a folder of volumes or a CSV manifest.

The per-case options (views, steps, sampler, model, device, ...) are exactly those of
``xdiffusion reconstruct``, taken from its parser, so names, defaults (``settings.py``) and help
never differ. The manifest format is in ``evaluation/manifest.py`` and docs/cohorts.md.

Runs plain, or under ``torchrun`` / ``accelerate launch``: the cases are split across ranks
(``evaluation.cohort``), each rank loads the model once (on its own GPU, ``cuda:LOCAL_RANK``,
where there is one) and writes each case's volumes and then its ``OUT/per-case/<name>.json``
atomically; rank 0 gathers ``OUT/results.csv``. Running the same command again skips the cases
already done with the same settings and recomputes the others (``--fresh``: all of them).

Nothing is lost: every row is checked before any work, an output never replaces an input, and an
existing output file is replaced only if an earlier run of this batch wrote it, or with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields
from pathlib import Path

from ... import __version__
from ...errors import XDiffusionError
from ...io.data_files import volume_files
from ...io.outputs import check_outputs, check_writable, same_file
from ...model.files import default_model_dir
from ...sampling.result import write_result
from ...settings import ReconstructionSettings
from ..termination import sigterm_as_interrupt
from . import reconstruct
from .reconstruct import check_thick_slice_options, thick_slice_thickness, uncertainty_path

RESULTS_NAME = "results.csv"
RESULT_COLUMNS = ("case", "input", "plane", "k", "indices", "output", "uncertainty", "seconds")
# ``xdiffusion reconstruct``'s options that are not about one input and its output, by their dest:
# every sampling setting (``settings.ReconstructionSettings``) and these.
PER_CASE_OPTIONS = ("model", "volume", "no_progress")
# The thick-slice options, also taken from ``xdiffusion reconstruct`` (--all-slices is its own flag here).
THICK_SLICE_OPTIONS = ("slice_factor", "spacing", "slice_thickness")


def _reconstruct_actions() -> list[argparse.Action]:
    subparsers = argparse.ArgumentParser(add_help=False).add_subparsers()
    reconstruct.register(subparsers)
    shared = {f.name for f in fields(ReconstructionSettings)} | set(PER_CASE_OPTIONS) | set(THICK_SLICE_OPTIONS)
    actions = [a for a in subparsers.choices["reconstruct"]._actions if a.dest in shared]
    missing = shared - {a.dest for a in actions}
    if missing:  # a setting without its option in `xdiffusion reconstruct`: fail loudly, not silently
        raise RuntimeError(f"xdiffusion reconstruct has no option for {sorted(missing)}")
    return actions


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "reconstruct-batch",
        help="reconstruct many volumes (a folder or a CSV manifest), on one or many processes",
        description=(
            "Reconstruct every volume of a folder (with --plane and --indices or --k) or every row of a CSV "
            "manifest (columns path, plane, slices or k, output; paths relative to the manifest's folder) into "
            "OUT. Runs under torchrun or accelerate launch with the cases split across ranks; OUT/results.csv "
            "lists every case. Running it again skips cases already done with the same settings."
        ),
    )
    parser.add_argument("--inputs", required=True, metavar="DIR|CSV", help="a folder of volumes or a CSV manifest")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    parser.add_argument("--plane", help="plane of the input slices (manifest: for rows without one)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--indices", "--slices", dest="slices", type=int, nargs="+", metavar="I",
                       help="input slice indices, canonical RAS+ (manifest: for rows without slices or k)")
    which.add_argument("--k", type=int, metavar="K",
                       help="number of input slices, chosen by the evaluation protocol (manifest: for rows without slices or k)")
    which.add_argument("--all-slices", action="store_true",
                       help="thick-slice scans: every acquired slice of each volume onto a finer grid (as "
                            "xdiffusion reconstruct --all-slices; rows give no plane, slices or k)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing output files this batch did not write (never an input)")
    parser.add_argument("--fresh", action="store_true", help="recompute every case (default: skip those already done)")
    for action in _reconstruct_actions():
        parser._add_action(action)  # the very same option objects as `xdiffusion reconstruct`
    parser.set_defaults(func=run)


def _settings(args) -> dict:
    """The sampling settings of every case: each field of ``ReconstructionSettings`` from its option."""
    return {f.name: getattr(args, f.name) for f in fields(ReconstructionSettings)}


def run(args: argparse.Namespace) -> int:
    # scipy (the evaluation package), SimpleITK, torch: loaded when the batch runs, not with --help.
    from ...evaluation.cohort import Case, Cohort, current_rank, rank_device, unique_file_names
    from ...evaluation.manifest import Defaults, case_name, folder_cases, read_manifest
    from ...evaluation.report import write_csv
    from ...sampling.reconstructor import XDiffusionReconstructor

    rank = current_rank()
    if args.all_slices or any(getattr(args, name) is not None for name in THICK_SLICE_OPTIONS):
        check_thick_slice_options(args)
    settings = _settings(args)
    settings["device"] = rank_device(settings["device"], rank)
    reconstructor = XDiffusionReconstructor(model_dir=args.model, **settings)  # checks the settings first
    max_slices = reconstructor.config.max_slices  # config.json only: no weights loaded yet
    if args.k is not None and args.k < 1:
        raise XDiffusionError(f"--k {args.k}: the number of input slices must be at least 1")
    out = _check_out(Path(args.out))
    defaults = Defaults(args.plane, tuple(args.slices) if args.slices else None, args.k, args.all_slices)
    # Absolute: a folder's cases are joined to the folder, a relative one would be joined twice.
    inputs = Path(args.inputs).expanduser().absolute()
    if inputs.is_dir():
        batch = folder_cases(inputs, defaults, args.volume, max_slices)
    elif inputs.is_file():
        batch = read_manifest(inputs, defaults, args.volume, max_slices)
    else:
        raise XDiffusionError(f"--inputs {args.inputs}: no such folder or manifest file")

    if args.all_slices:
        _check_thick_slice_plans(batch, args)
    names = unique_file_names([case_name(Path(b.output)) for b in batch])
    by_name = dict(zip(names, batch))
    key_base = _key_base(args, reconstructor)
    cases = [Case(name, _case_key(key_base, b, args.volume)) for name, b in by_name.items()]
    cohort = Cohort(out, rank)
    _check_outputs(out, cases, by_name, cohort, args.overwrite)

    def note(text: str) -> None:
        if rank.is_main:
            print(text, file=sys.stderr)

    def work(case: Case):
        return _reconstruct_case(by_name[case.name], out, reconstructor, args, rank)

    out.mkdir(parents=True, exist_ok=True)
    # SIGTERM (a launcher stopping the ranks) unwinds like Ctrl-C: temporaries are removed on the way out.
    with sigterm_as_interrupt():
        records = cohort.run(cases, work, note=note, fresh=args.fresh)
    if records is None:
        return 0
    rows = [{"case": r["case"], **r["result"]} for r in records]
    write_csv(out / RESULTS_NAME, rows, RESULT_COLUMNS)
    print(f"wrote {len(rows)} reconstructions and {out / RESULTS_NAME}")
    return 0


def _check_thick_slice_plans(batch, args) -> None:
    """Every volume's finer grid from its header, before any work (a DICOM series: when it runs)."""
    # scipy and SimpleITK, as in run
    from ...evaluation.manifest import header_grid
    from ...transforms.thick_slices import plan_thick_slices

    # No slice limit: scans longer than the model takes run in windows (sampling.thick_slices).
    for case in batch:
        grid = header_grid(case.path, args.volume)
        if grid is None:
            continue
        try:
            plan_thick_slices(grid, args.slice_factor, args.spacing, thick_slice_thickness(args, case.path))
        except XDiffusionError as error:
            raise XDiffusionError(f"{case.row}: {error}") from None


def _check_out(out: Path) -> Path:
    out = out.expanduser()
    if out.exists() and not out.is_dir():
        raise XDiffusionError(f"--out {out} is an existing file, not a folder")
    check_writable(out / "results.csv")
    return out


def _outputs(out: Path, case) -> tuple[Path, Path]:
    output = out / case.output
    return output, uncertainty_path(output)


def _check_outputs(out: Path, cases, by_name, cohort, overwrite: bool) -> None:
    """Before any work: no output is an input, and an existing output is ours or ``--overwrite`` was given."""
    ours = {p.resolve() for case in cases for p in cohort.recorded_files(case)}
    inputs = [f for b in by_name.values() for f in volume_files(b.path)]
    errors = []
    for case in cases:
        batch = by_name[case.name]
        for path in _outputs(out, batch):
            source = next((f for f in inputs if same_file(path, f)), None)
            if source is not None:
                errors.append(f"{batch.row}: output {path} is the input {source}: choose another output name")
            elif path.exists() and path.resolve() not in ours and not overwrite:
                errors.append(f"{batch.row}: {path} already exists and this batch did not write it: "
                              "pass --overwrite to replace it, or choose another output name")
    if errors:
        raise XDiffusionError("\n".join(errors[:20] + ([f"... and {len(errors) - 20} more"] if len(errors) > 20 else [])))
    check_outputs([p for b in by_name.values() for p in _outputs(out, b)], overwrite=True)


def _key_base(args, reconstructor) -> dict:
    from ...evaluation.cohort import file_identity  # scipy, as in run

    directory = Path(args.model) if args.model else default_model_dir()
    settings = {k: v for k, v in reconstructor.settings.to_dict().items() if k not in ("device", "chunk_size")}
    base = {"what": "reconstruct-batch", "version": __version__, "settings": settings,
            "model": file_identity([directory / "config.json", directory / "model.safetensors"], content=True)}
    if args.all_slices:  # another grid or profile is another result (absent otherwise: earlier keys hold)
        base["thick_slices"] = {name: getattr(args, name) for name in THICK_SLICE_OPTIONS}
    return base


def _case_key(base: dict, batch, volume_index) -> str:
    from ...evaluation.cohort import digest, file_identity  # scipy, as in run

    return digest({**base, "input": file_identity(volume_files(batch.path)), "volume_index": volume_index,
                   "plane": batch.plane, "slices": batch.slices, "k": batch.k, "output": batch.output})


def _reconstruct_case(batch, out: Path, reconstructor, args, rank) -> tuple[dict, list[Path]]:
    # scipy, SimpleITK, torch, as in run
    from ...evaluation import protocol
    from ...io.readers import read_volume
    from ...sampling.reconstructor import reconstruct_volume
    from ...sampling.thick_slices import reconstruct_thick_slices

    output, uncertainty = _outputs(out, batch)
    start = time.perf_counter()
    try:
        volume = read_volume(batch.path, args.volume)  # a label map is refused by the library's door
        if args.all_slices:
            result = reconstruct_thick_slices(volume, args.slice_factor, args.spacing,
                                              thick_slice_thickness(args, batch.path), reconstructor=reconstructor)
            plane, indices = result.plan.plane, list(result.plan.indices)
        else:
            plane = batch.plane
            if batch.slices is not None:
                indices = list(batch.slices)
            else:  # the evaluation protocol's choice: bin centres over the head along the plane's axis
                indices = list(protocol.choose_indices(protocol.canonical_case(volume).array, batch.plane, batch.k))
            result = reconstruct_volume(volume, batch.plane, indices, reconstructor=reconstructor)
        write_result(result, output, uncertainty)
    except XDiffusionError as error:
        raise XDiffusionError(f"{batch.row}: {error}") from None
    seconds = time.perf_counter() - start
    if not args.no_progress:
        print(f"[rank {rank.rank}] {batch.output}: {len(indices)} {plane} slices, {seconds:.1f} s", file=sys.stderr)
    relative = lambda path: path.relative_to(out).as_posix()  # noqa: E731
    return ({"input": batch.source, "plane": plane, "k": len(indices), "indices": indices,
             "output": relative(output), "uncertainty": relative(uncertainty), "seconds": seconds},
            [output, uncertainty])
