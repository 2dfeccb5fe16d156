#!/usr/bin/env python3
"""Score candidate models (and the anchor alone) on synthetic validation subjects: model selection.

Models are selected on synthetic validation only, never on the held-out MRI. For each candidate
(a baseline such as ``anchor`` or ``template``, or a model folder with optional sampling settings)
and each K in 1 3 5 10 31 (axial inputs by the evaluation protocol) this prints mean PSNR (paper convention), mean non-input PSNR
and mean SSIM over the subjects, and writes every score to ``--out`` as JSON.

    python scripts/synthetic_validation.py --data synth-val3 --candidate anchor \\
        --candidate runs/r1/final --candidate runs/r1/final:views=8,steps=4 --out val.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from XDiffusionLib.evaluation import protocol
from XDiffusionLib.io import read_volume
from XDiffusionLib.inputs import SliceInput
from XDiffusionLib.methods import get_method
from XDiffusionLib.training.data import find_volume_sources

KS = (1, 3, 5, 10, 31)
BASELINES = ("anchor", "template", "nearest", "linear", "cubic")


def build(candidate: str):
    if candidate in BASELINES:
        return get_method(candidate)
    folder, _, options = candidate.partition(":")
    settings = {}
    for item in filter(None, options.split(",")):
        key, _, value = item.partition("=")
        settings[key] = value if key == "sampler" else float(value) if key == "strength" else int(value)
    return get_method("xdiffusion", model_dir=folder, device="cpu", **settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="synthetic validation volumes (file or folder)")
    parser.add_argument("--candidate", action="append", required=True,
                        help="a baseline (anchor, template, nearest, linear, cubic) or MODEL_DIR[:views=N,steps=N,samples=N,sampler=S,strength=F]")
    parser.add_argument("--ks", type=int, nargs="+", default=list(KS))
    parser.add_argument("--plane", default="axial")
    parser.add_argument("--out", help="JSON file for every score")
    args = parser.parse_args()
    cases = [(s.name, protocol.canonical_case(read_volume(s))) for s in find_volume_sources([args.data])]
    scores: dict[str, dict[str, list[dict]]] = {}
    for candidate in args.candidate:
        method = build(candidate)
        for k in args.ks:
            for name, volume in cases:
                indices = protocol.choose_indices(volume.array, args.plane, k)
                start = time.perf_counter()
                output = method.reconstruct(SliceInput.from_volume(volume, args.plane, indices))
                row = protocol.score(volume.array, output.array, args.plane, indices)
                row["seconds"] = time.perf_counter() - start
                row["case"] = name
                scores.setdefault(candidate, {}).setdefault(str(k), []).append(row)
        print(f"scored {candidate}", flush=True)
    print("candidate".ljust(44) + "".join(f"K={k}".rjust(22) for k in args.ks))
    print(" " * 44 + "".join("PSNR/non-input/SSIM".rjust(22) for _ in args.ks))
    for candidate, by_k in scores.items():
        cells = []
        for k in args.ks:
            rows = by_k[str(k)]
            psnr = np.mean([r["psnr_paper"] for r in rows])
            noninput = np.mean([r["psnr_paper_noninput"] for r in rows])
            ssim = np.mean([np.mean([r["ssim_axial"], r["ssim_coronal"], r["ssim_sagittal"]]) for r in rows])
            cells.append(f"{psnr:6.2f}/{noninput:6.2f}/{ssim:.3f}")
        print(candidate[-44:].ljust(44) + "".join(c.rjust(22) for c in cells))
    if args.out:
        Path(args.out).write_text(json.dumps(scores, indent=1))


if __name__ == "__main__":
    main()
