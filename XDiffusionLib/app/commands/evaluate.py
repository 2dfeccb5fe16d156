"""``xdiffusion evaluate``: score methods on volumes with the written leak-free protocol.

A thin layer over ``XDiffusionLib.evaluation`` (the protocol is in ``evaluation/protocol.py``).
Every argument, case and index is checked before anything is computed or written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score reconstruction methods on volumes (PSNR, SSIM, figures)",
        description=(
            "Reconstruct each volume from K of its own slices with each method and score it against the "
            "full volume. Indices are canonical RAS+ indices (sagittal = axis 0 L->R, coronal = axis 1 "
            "P->A, axial = axis 2 I->S). Writes OUT/cases.csv, OUT/summary.csv, OUT/protocol.json and "
            "figures, and prints the summary."
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
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created; existing files in it are replaced)")
    parser.add_argument("--volume", type=int, metavar="N", help="volume N of 4D files")
    parser.add_argument("--figures", action=argparse.BooleanOptionalAction, default=True,
                        help="write PNG figures (default: yes)")
    parser.add_argument("--model", metavar="DIR", help="model folder for --method xdiffusion (default: shipped weights)")
    for flag, kind, text in (("--views", int, "azimuth views"), ("--steps", int, "denoising steps per view"),
                             ("--sampler", str, "ddpm, ddim or dpmpp"), ("--guidance", float, "guidance scale"),
                             ("--samples", int, "samples per view"), ("--seed", int, "random seed"),
                             ("--device", str, "auto, cpu or cuda")):
        parser.add_argument(flag, type=kind, default=None, help=f"--method xdiffusion: {text} (default: the model's)")
    parser.add_argument("--atlas", metavar="PATH", help="template volume for --method template (default: shipped ICBM152 T1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ...errors import XDiffusionError
    from ...evaluation import DEFAULT_METHODS, EvaluationSettings, evaluate

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
    )
    result = evaluate(settings, progress=not args.no_progress, note=lambda text: print(text, file=sys.stderr))
    print(result.table, end="")
    print(f"wrote {settings.out / 'cases.csv'}, {settings.out / 'summary.csv'}, {settings.out / 'protocol.json'}"
          + (f" and {sum(p.suffix == '.png' for p in result.written)} figures" if args.figures else ""))
    return 0
