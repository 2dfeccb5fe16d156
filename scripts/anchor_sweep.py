#!/usr/bin/env python3
"""Choose the anchor's decays on synthetic validation subjects (never on the held-out MRI).

For each subject and K in 1 3 5 10 31 (axial inputs by the evaluation protocol) it fits the template
once and scores the baselines and the anchor blend at every (inside, outside) decay pair, then
prints mean PSNR (paper convention) / head SSIM / through-plane sharpness per K. The shipped choice is in
``baselines/anchor.py`` and the model card.

    python scripts/anchor_sweep.py --data synth-val --first 3 --n 4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from XDiffusionLib.baselines.anchor import blend, interpolate, interpolation_weight
from XDiffusionLib.baselines.foreground import head_mask
from XDiffusionLib.baselines.interpolation import linear_fill, pchip_fill
from XDiffusionLib.baselines.template import TemplateBaseline
from XDiffusionLib.evaluation import protocol
from XDiffusionLib.io import read_volume
from XDiffusionLib.inputs import SliceInput
from XDiffusionLib.training.data import find_volume_sources

KS = (1, 3, 5, 10, 31)
INSIDE_MM = (3.0, 6.0, 12.0, 24.0, 48.0)
OUTSIDE_MM = (3.0, 6.0, 12.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder of synthetic validation subjects")
    parser.add_argument("--first", type=int, default=0, help="index of the first subject used")
    parser.add_argument("--n", type=int, default=4, help="number of subjects")
    parser.add_argument("--plane", default="axial")
    parser.add_argument("--out", help="write every score as JSON here")
    args = parser.parse_args()
    sources = find_volume_sources([args.data])[args.first:args.first + args.n]
    template = TemplateBaseline()
    scores: dict[str, list[tuple[float, float]]] = {}
    for source in sources:
        volume = protocol.canonical_case(read_volume(source))
        head = head_mask(volume.array)
        for k in KS:
            indices = protocol.choose_indices(volume.array, args.plane, k)
            inputs = SliceInput.from_volume(volume, args.plane, indices)
            prior = template.fit(inputs)
            fitted = inputs.paste_into(prior.prior)
            interpolated = interpolate(inputs).array
            outputs = {"linear": linear_fill(inputs).array, "cubic": pchip_fill(inputs).array, "template": fitted}
            for inside in INSIDE_MM:
                for outside in OUTSIDE_MM:
                    w = interpolation_weight(inputs, inside, outside)
                    outputs[f"anchor {inside:g}/{outside:g}"] = blend(inputs, interpolated, fitted, w, prior.coverage)
            for name, output in outputs.items():
                s = protocol.score(volume.array, output, args.plane, indices, head=head)
                scores.setdefault(f"{name}|{k}", []).append(
                    (s["psnr_paper"], s["head_ssim"], s["sharpness_through_plane"]))
        print(f"scored {source.name}", flush=True)
    names = list(dict.fromkeys(key.split("|")[0] for key in scores))
    print("method".ljust(16) + "".join(f"K={k}".rjust(21) for k in KS)
          + "   (PSNR paper dB / head SSIM / through-plane sharpness)")
    for name in names:
        cells = [np.nanmean(np.asarray(scores[f"{name}|{k}"], dtype=float), axis=0) for k in KS]
        print(name.ljust(16) + "".join(f"{p:6.2f}/{s:.3f}/{r:.2f}".rjust(21) for p, s, r in cells))
    if args.out:
        Path(args.out).write_text(json.dumps({"subjects": [str(s) for s in sources], "scores": scores}, indent=1))


if __name__ == "__main__":
    main()
