"""``xdiffusion demo``: reconstruct a shipped real volume from one slice and compare with the baselines."""

from __future__ import annotations

import argparse
import sys
import time

from ..demo import format_demo_table, format_verdict, run_demo


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="reconstruct a shipped held-out MRI from one slice with the shipped model; compare with baselines",
        description="Reconstruct a shipped held-out real MRI from one slice with the shipped weights, write "
                    "NIfTI outputs and a PNG figure, and print PSNR/SSIM for the model and every baseline.",
    )
    parser.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    parser.add_argument("--sample", default="kmeans_t1", help="held-out shipped sample (default: kmeans_t1)")
    parser.add_argument("--plane", default="axial", help="plane of the input slice(s)")
    parser.add_argument("--slices", type=int, default=1, metavar="K", help="number of input slices (default 1)")
    parser.add_argument("--model", default=None, metavar="DIR", help="model folder (default: shipped weights)")
    parser.add_argument("--views", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing output files an earlier demo did not write")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm  # the progress bar's library loads when the demo runs, not with --help

    start = time.perf_counter()
    settings = {"seed": args.seed, "device": args.device}
    if args.views is not None:
        settings["views"] = args.views
    if args.steps is not None:
        settings["steps"] = args.steps
    bars: list[tqdm] = []  # opened at the first step, after the case description is printed

    def progress(fraction: float, message: str) -> None:
        if not bars:
            bars.append(tqdm(total=100, desc="X-Diffusion", unit="%", file=sys.stderr,
                             bar_format="{l_bar}{bar}| {elapsed}"))
        bars[0].n = round(100 * fraction)
        bars[0].set_postfix_str(message, refresh=True)

    def note(text: str) -> None:
        print(text, flush=True)

    try:
        result = run_demo(args.out, sample=args.sample, plane=args.plane, k=args.slices,
                          model_dir=args.model, progress=progress, note=note,
                          overwrite=args.overwrite, **settings)
    finally:
        for bar in bars:
            bar.close()
    print(format_demo_table(result.rows))
    print(format_verdict(result.rows))
    for name, path in result.outputs.items():
        print(f"{name}: {path}")
    print(f"demo finished in {time.perf_counter() - start:.1f} s")
    return 0
