"""``xdiffusion synth``: write synthetic training subjects (deformed ICBM152 anatomy, random
contrasts, artefacts and optional tumours) to a new or empty folder."""

from __future__ import annotations

import argparse
import math
import sys

from ...errors import XDiffusionError

CONTRAST_CHOICES = ("t1", "t2", "flair", "random", "mixed")
PREVIEW_ROWS = 6


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="generate synthetic MRI subjects for training",
        description="Generate N synthetic head MRI volumes (NIfTI) with lesion label maps and a manifest.json. "
        "Subject i depends only on --seed and i.",
    )
    parser.add_argument("--n", type=_integer("--n"), required=True, help="number of subjects (>= 1)")
    parser.add_argument("--out", required=True, help="new or empty folder to write")
    parser.add_argument("--seed", type=_integer("--seed"), default=0, help="random seed (>= 0, default 0)")
    parser.add_argument("--spacing", type=_number("--spacing"), default=2.0, help="isotropic voxel size in mm (default 2)")
    parser.add_argument("--lesion-probability", type=_number("--lesion-probability"), default=0.5,
                        help="chance that a subject gets a tumour, 0..1 (default 0.5)")
    parser.add_argument("--contrast", type=str.lower, default="mixed",
                        help="t1, t2, flair, random (SynthSeg-style) or mixed (a mix of all, default)")
    parser.add_argument("--anatomy", type=str.lower, default="default",
                        help="anatomical variety: default, or varied (wider head sizes, ventricles, a finer "
                        "deformation level and hemisphere asymmetry)")
    parser.add_argument("--artefacts", type=str.lower, default="default",
                        help="artefact ranges: default, or scanner (noise, bias and thick slices nearer real scans)")
    parser.add_argument("--preview", metavar="PNG", default=None,
                        help=f"also write a PNG of the first {PREVIEW_ROWS} subjects (three planes each)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _integer(flag: str):
    # argparse's own type errors print a usage block; these raise at run time as one line instead.
    def parse(text: str):
        try:
            return int(text)
        except ValueError:
            return _Bad(flag, text, "an integer")
    return parse


def _number(flag: str):
    def parse(text: str):
        try:
            value = float(text)
        except ValueError:
            return _Bad(flag, text, "a number")
        return value if math.isfinite(value) else _Bad(flag, text, "a finite number")
    return parse


class _Bad:
    def __init__(self, flag: str, text: str, wanted: str) -> None:
        self.message = f"{flag} {text!r} is not {wanted}"


def run(args: argparse.Namespace) -> int:
    for value in (args.n, args.seed, args.spacing, args.lesion_probability):
        if isinstance(value, _Bad):
            raise XDiffusionError(value.message)
    if args.n < 1:
        raise XDiffusionError(f"--n {args.n}: the number of subjects must be at least 1")
    if args.seed < 0:
        raise XDiffusionError(f"--seed {args.seed}: the seed must be 0 or more")
    if args.contrast not in CONTRAST_CHOICES:
        raise XDiffusionError(f"unknown contrast {args.contrast!r}: choose one of {', '.join(CONTRAST_CHOICES)}")
    # torch, scipy and SimpleITK (the synthetic subjects): loaded when the command runs, not with --help.
    from ...synth.anatomy import PRESETS as ANATOMY_PRESETS
    from ...synth.artifacts import PRESETS as ARTEFACT_PRESETS

    for flag, value, presets in (("--anatomy", args.anatomy, ANATOMY_PRESETS), ("--artefacts", args.artefacts, ARTEFACT_PRESETS)):
        if value not in presets:
            raise XDiffusionError(f"{flag} {value!r}: choose one of {', '.join(presets)}")
    if args.preview is not None and not args.preview.lower().endswith(".png"):
        raise XDiffusionError(f"preview {args.preview}: the file name must end in .png")

    # the progress bar's library and the dataset writer, as above
    from tqdm import tqdm

    from ...synth.dataset import validate_dataset_settings, write_synthetic_dataset

    contrast = None if args.contrast == "mixed" else args.contrast
    # Fail on bad values before the (slow) template loading starts.
    validate_dataset_settings(args.out, args.n, args.seed, contrast, args.lesion_probability, args.spacing)
    keep = PREVIEW_ROWS if args.preview else 0
    with tqdm(total=args.n, desc="synth", unit="subject", file=sys.stderr, disable=args.quiet) as bar:
        result = write_synthetic_dataset(
            args.out, args.n, seed=args.seed, contrast=contrast, lesion_probability=args.lesion_probability,
            spacing=args.spacing, keep=keep, on_subject=lambda _: bar.update(1), artefacts=args.artefacts,
            anatomy=args.anatomy,
        )
    with_lesion = sum(1 for s in result.manifest["subjects"] if s["labels"])
    print(f"wrote {args.n} subjects ({with_lesion} with lesions) and {result.folder / 'manifest.json'}")
    if args.preview:
        from ...synth.figure import save_preview  # as above

        titles = [f"subject {i}: {s.params['contrast']}" for i, s in enumerate(result.preview_subjects)]
        path = save_preview(result.preview_subjects, args.preview, titles)
        print(f"preview: {path}")
    return 0
