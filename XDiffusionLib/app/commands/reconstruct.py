"""``xdiffusion reconstruct``: a 3D volume from a few of its slices with the X-Diffusion model.

Reads IN, takes the slices ``--indices``/``--indices-file`` of ``--plane`` (canonical RAS+ indices,
as ``xdiffusion`` shows them), runs ``sampling.reconstructor.reconstruct_volume`` and writes OUT
and its uncertainty (the calibrated 90% interval half-width, or the view spread for a model without
a calibration table; its header says which) on exactly IN's grid.

Nothing is lost: before any computation, the outputs are checked (``io.outputs.check_outputs``):
never one of the inputs (any spelling or link), an existing file only with ``--overwrite``, and
their folder must be writable. Outputs are written only at the end: both go to hidden temporary
files in OUT's folder and are renamed into place together (``io.writers.write_volumes``), so
Ctrl-C leaves no output, and the leftovers of a kill are hidden and removed by the next write.
"""

from __future__ import annotations

import argparse
import re
import sys

from pathlib import Path

from ...errors import XDiffusionError
from ..termination import sigterm_as_interrupt
from ...inputs import PLANE_AXIS
from ...io.data_files import volume_files
from ...io.formats import WRITE_SUFFIXES, volume_suffix
from ...io.outputs import check_outputs
from ...io.text_files import read_user_text
from ...sampling.result import write_result
from ...settings import AGGREGATES, DEFAULTS, DEVICES, RUNTIMES, SAMPLERS


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "reconstruct",
        help="reconstruct a 3D volume from one or a few of its slices (X-Diffusion)",
        description=(
            "Reconstruct a volume from the chosen slices of IN (only those slices are read from it). "
            "Slice indices refer to the canonical RAS+ orientation: sagittal = axis 0 (L->R), "
            "coronal = axis 1 (P->A), axial = axis 2 (I->S)."
        ),
    )
    parser.add_argument("input", metavar="IN", help="volume file (.nii, .nii.gz, .nrrd, .mha, ...) or DICOM folder")
    # One of --indices, --indices-file, --all-slices (checked in ``run``, as one line).
    which = parser.add_mutually_exclusive_group()
    # --indices as in `xdiffusion evaluate` (where --slices counts slices); --slices kept for old scripts
    which.add_argument("--indices", "--slices", dest="slices", type=int, nargs="+", metavar="I",
                       help="input slice indices (canonical RAS+)")
    which.add_argument("--indices-file", metavar="F", help="text file of slice indices (spaces, commas or lines; # comments)")
    which.add_argument("--all-slices", action="store_true",
                       help="a thick-slice scan: every acquired slice is an input, OUT lies on a grid finer along "
                            "the slice axis (default: about the in-plane spacing), each slab's average kept")
    parser.add_argument("--slice-factor", type=int, metavar="N",
                        help="--all-slices: N fine slices per acquired slice spacing; acquired slice i is OUT's slice i*N")
    parser.add_argument("--spacing", type=float, metavar="MM",
                        help="--all-slices: the fine slice spacing (must divide the acquired slice spacing)")
    parser.add_argument("--slice-thickness", type=float, metavar="MM",
                        help="--all-slices: the acquired slices' thickness (default: DICOM SliceThickness, else the "
                             "slice spacing)")
    parser.add_argument("--plane", choices=tuple(PLANE_AXIS),
                        help="plane of the input slices (required with --indices; --all-slices: the scan's)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="output volume (.nii.gz, .nii, .nrrd, .mha)")
    parser.add_argument("--uncertainty", metavar="PATH", help="uncertainty volume (default: OUT with _uncertainty)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT and the uncertainty file if they exist (never the input)")
    parser.add_argument("--views", type=int, default=DEFAULTS.views, help=f"views averaged (default {DEFAULTS.views})")
    parser.add_argument("--steps", type=int, default=DEFAULTS.steps, help=f"denoising steps per view (default {DEFAULTS.steps})")
    parser.add_argument("--sampler", default=DEFAULTS.sampler, help=f"{', '.join(SAMPLERS)} (default {DEFAULTS.sampler})")
    parser.add_argument("--guidance", type=float, default=DEFAULTS.guidance, help="classifier-free guidance scale (1: off)")
    parser.add_argument("--samples", type=int, default=DEFAULTS.samples,
                        help=f"independent samples averaged (default {DEFAULTS.samples})")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help=f"random seed (default {DEFAULTS.seed})")
    parser.add_argument("--aggregate", default=DEFAULTS.aggregate,
                        help=f"view aggregation: {' or '.join(AGGREGATES)} (default {DEFAULTS.aggregate})")
    parser.add_argument("--strength", type=float, default=DEFAULTS.strength, metavar="F",
                        help="residual models: fraction of the noise schedule to start from (default: the model's)")
    parser.add_argument("--model", metavar="DIR", help="model folder (config.json + model.safetensors); default: shipped")
    parser.add_argument("--device", default=DEFAULTS.device, help=f"{', '.join(DEVICES)} (default {DEFAULTS.device})")
    parser.add_argument("--chunk-size", type=int, metavar="N", help="cross-sections per network call (default: a whole view)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast on CUDA (ignored on CPU)")
    parser.add_argument("--runtime", default=DEFAULTS.runtime, choices=RUNTIMES,
                        help="how the network runs on a CPU: onnx = ONNX Runtime (same numbers, faster), torch, or "
                             f"auto = onnx where installed (default {DEFAULTS.runtime})")
    parser.add_argument("--volume", type=int, metavar="N", help="volume N of a 4D file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def uncertainty_path(output: Path) -> Path:
    """OUT with ``_uncertainty`` before its (possibly double) suffix."""
    suffix = volume_suffix(output) or output.suffix
    return output.with_name(output.name[: len(output.name) - len(suffix)] + "_uncertainty" + suffix)


def read_indices_file(path: str) -> list[int]:
    """Slice indices from a text file (spaces, commas, semicolons or lines; ``#`` comments)."""
    file = Path(path)
    if file.is_dir():
        raise XDiffusionError(f"{file} is a folder: give a text file of slice indices")
    if not file.is_file():
        raise XDiffusionError(f"{file}: indices file not found")
    content = read_user_text(file, "a text file of slice indices")
    text = "\n".join(line.split("#", 1)[0] for line in content.splitlines())
    tokens = [t for t in re.split(r"[\s,;]+", text) if t]
    try:
        indices = [int(t) for t in tokens]
    except ValueError:
        bad = next(t for t in tokens if not re.fullmatch(r"[+-]?\d+", t))
        raise XDiffusionError(f"{file}: {bad[:40]!r} is not a slice index (integers only)") from None
    if not indices:
        raise XDiffusionError(f"{file}: no slice indices in the file")
    return indices


def _check_output_type(path: Path, what: str) -> None:
    if volume_suffix(path) not in WRITE_SUFFIXES:
        raise XDiffusionError(f"{path}: cannot write this {what} file type; use one of {', '.join(WRITE_SUFFIXES)}")
    if path.is_dir():
        raise XDiffusionError(f"{path} is a folder: give a file name for the {what}")


def check_thick_slice_options(args: argparse.Namespace) -> None:
    """The input-slice options fit together (one line otherwise); shared with reconstruct-batch."""
    thick = [flag for flag, value in (("--slice-factor", args.slice_factor), ("--spacing", args.spacing),
                                      ("--slice-thickness", args.slice_thickness)) if value is not None]
    if not args.all_slices:
        if thick:
            raise XDiffusionError(f"{thick[0]} needs --all-slices (a thick-slice scan onto a finer grid)")
        if getattr(args, "slices", None) is None and getattr(args, "indices_file", None) is None:
            raise XDiffusionError("give the input slices: --indices, --indices-file or --all-slices")
        if args.plane is None:
            raise XDiffusionError("--plane is required with --indices or --indices-file")
        return
    if args.slice_factor is not None and args.spacing is not None:
        raise XDiffusionError("give --slice-factor or --spacing, not both")


def thick_slice_thickness(args: argparse.Namespace, path) -> float | None:
    """--slice-thickness, else the header's (DICOM SliceThickness), else None (the slice spacing)."""
    from ...io.dicom import header_slice_thickness  # SimpleITK: only for --all-slices, not with --help

    return args.slice_thickness if args.slice_thickness is not None else header_slice_thickness(path)


def run(args: argparse.Namespace) -> int:
    output = Path(args.output)
    uncertainty = Path(args.uncertainty) if args.uncertainty else uncertainty_path(output)
    _check_output_type(output, "output")
    _check_output_type(uncertainty, "uncertainty")
    inputs = volume_files(args.input) if Path(args.input).exists() else []
    if args.indices_file:
        inputs.append(Path(args.indices_file))
    check_thick_slice_options(args)
    check_outputs([output, uncertainty], inputs, overwrite=args.overwrite)
    indices = [] if args.all_slices else args.slices if args.slices is not None else read_indices_file(args.indices_file)

    with sigterm_as_interrupt():
        return _reconstruct_and_write(args, indices, output, uncertainty)


def _reconstruct_and_write(args, indices: list[int], output: Path, uncertainty: Path) -> int:
    # SimpleITK, torch and the progress bar's library: loaded when a reconstruction runs, not with --help.
    from tqdm import tqdm

    from ...io.readers import read_volume
    from ...sampling.reconstructor import XDiffusionReconstructor, reconstruct_volume
    from ...sampling.thick_slices import plan_for, reconstruct_thick_slices

    settings = dict(
        views=args.views, steps=args.steps, sampler=args.sampler, guidance=args.guidance, samples=args.samples,
        seed=args.seed, device=args.device, aggregate=args.aggregate, chunk_size=args.chunk_size, bf16=args.bf16,
        strength=args.strength, runtime=args.runtime,
    )
    reconstructor = XDiffusionReconstructor(model_dir=args.model, **settings)  # checks the settings first
    volume = read_volume(args.input, args.volume)  # a label map is refused by the library's door
    if args.all_slices:  # every bad value (isotropic input, factor, spacing) fails here, before any work
        thickness = thick_slice_thickness(args, args.input)
        plan = plan_for(volume, args.slice_factor, args.spacing, thickness)
        if args.plane is not None and args.plane != plan.plane:
            raise XDiffusionError(f"--plane {args.plane}: the acquired slices of {args.input} are {plan.plane}")

    bars = []  # opened at the first step, so validation errors print alone on their line

    def progress(fraction: float, message: str) -> None:
        if args.no_progress:
            return
        if not bars:
            bars.append(tqdm(total=100, desc="reconstruct", unit="%", file=sys.stderr, leave=False))
        bars[0].n = round(100 * fraction, 1)
        bars[0].set_postfix_str(message, refresh=False)
        bars[0].refresh()

    try:
        if args.all_slices:
            result = reconstruct_thick_slices(volume, plan.factor, thickness=plan.thickness, progress=progress,
                                              reconstructor=reconstructor)
        else:
            result = reconstruct_volume(volume, args.plane, indices, progress=progress, reconstructor=reconstructor)
    finally:
        for bar in bars:
            bar.close()

    write_result(result, output, uncertainty)  # both files say what they are; the uncertainty its meaning
    grid = f": {plan.describe()}; {result.share.label()}" if args.all_slices else ""
    print(f"wrote {output} and {uncertainty} ({result.info.label}){grid}")
    return 0
