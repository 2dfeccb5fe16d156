#!/usr/bin/env python3
"""Select a residual model's gain per K range on synthetic validation subjects (model selection).

A residual model's output is clip(anchor + gain x residual) (``sampling.reconstructor``). Averaged
over views and samples, the generated residual shrinks toward zero; a gain above 1 undoes part of
that, below 1 damps a residual that adds noise. For each subject of ``--data`` and each K (axial
protocol inputs, default sampling) the anchor and the residual are computed once
(``XDiffusionReconstructor.residual_parts``, cached under ``--cache``) and every gain of ``--gains``
is scored: PSNR (paper convention), head SSIM and SSIM (mean of the three planes).

The rule, per K: the gain with the best mean PSNR over the ``--data`` subjects among the gains
whose mean head SSIM is at most ``--ssim-slack`` below gain 1's. ``--confirm`` subjects are scored
with the selected table against gain 1; ``--apply`` writes the table into the model folder's
config (``checkpoint.replace_config``) only if on them the mean PSNR is not lower at any K and the
mean head SSIM not lower by more than the slack. The interval must be recalibrated afterwards
(``scripts/calibrate_uncertainty.py``: a table records the gain it was made for).

    OMP_NUM_THREADS=1 python scripts/select_residual_gain.py --data synth-t1 synth-val \\
        --confirm synth-val16 --cache gain-cache --out gain.json [--apply]

Synthetic subjects only: never a real held-out volume.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from XDiffusionLib.baselines.foreground import head_mask
from XDiffusionLib.evaluation import protocol
from XDiffusionLib.io import read_volume
from XDiffusionLib.inputs import SliceInput
from XDiffusionLib.metrics import psnr_paper, ssim_per_plane
from XDiffusionLib.model.checkpoint import default_model_dir, read_config, replace_config
from XDiffusionLib.sampling.reconstructor import XDiffusionReconstructor
from XDiffusionLib.uncertainty.intervals import K_EDGES, k_range

KS = (1, 3, 5, 10, 31)
GAINS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
PLANE = "axial"


def subjects(folder: Path) -> list[tuple[str, Path]]:
    """(name, image) of every subject in a ``xdiffusion synth`` folder (its manifest)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    return [(f"{folder.name}_{s['index']}", folder / s["image"]) for s in manifest["subjects"]]


def parts(reconstructor: XDiffusionReconstructor, name: str, volume, k: int, cache: Path) -> dict:
    """The anchor, the residual and the inputs' range of one subject and K (cached)."""
    path = cache / f"{name}_k{k}.npz"
    if not path.is_file():
        start = time.perf_counter()
        indices = protocol.choose_indices(volume.array, PLANE, k)
        anchor, residual, (low, high) = reconstructor.residual_parts(SliceInput.from_volume(volume, PLANE, indices))
        temporary = path.with_suffix(".partial.npz")
        np.savez_compressed(temporary, anchor=anchor.astype(np.float32), residual=residual.astype(np.float32),
                            indices=np.asarray(indices), low=low, high=high)
        temporary.replace(path)  # a run stopped mid-write leaves no half cache file
        print(f"{name} K={k}: {time.perf_counter() - start:.1f} s", flush=True)
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def score(volume, head: np.ndarray, cached: dict, gain: float) -> tuple[float, float, float]:
    """(PSNR, head SSIM, SSIM) of the output at ``gain``, input slices pasted in."""
    inputs = SliceInput.from_volume(volume, PLANE, [int(i) for i in cached["indices"]])
    output = inputs.paste_into(np.clip(cached["anchor"] + gain * cached["residual"], float(cached["low"]),
                                       float(cached["high"])))
    truth = volume.array.astype(np.float64)
    ssim = ssim_per_plane(truth, output.astype(np.float64), mask=head)
    return (psnr_paper(truth, output),
            float(np.mean([ssim["head_axial"], ssim["head_coronal"], ssim["head_sagittal"]])),
            float(np.mean([ssim["axial"], ssim["coronal"], ssim["sagittal"]])))


def score_folders(folders: list[Path], gains, ks, reconstructor, cache: Path) -> dict[int, dict[float, list]]:
    """k -> gain -> [(PSNR, head SSIM, SSIM) per subject]."""
    scores: dict[int, dict[float, list]] = {k: {g: [] for g in gains} for k in ks}
    for folder in folders:
        for name, image in subjects(folder):
            volume = protocol.canonical_case(read_volume(image))
            head = head_mask(volume.array)
            for k in ks:
                cached = parts(reconstructor, name, volume, k, cache)
                for gain in gains:
                    scores[k][gain].append(score(volume, head, cached, gain))
    return scores


def means(rows: list) -> tuple[float, float, float]:
    return tuple(float(v) for v in np.mean(np.asarray(rows), axis=0))


def select(scores: dict[int, dict[float, list]], slack: float) -> dict[int, float]:
    """The rule of the module docstring, per K."""
    chosen = {}
    for k, by_gain in scores.items():
        floor = means(by_gain[1.0])[1] - slack
        allowed = [g for g in by_gain if means(by_gain[g])[1] >= floor]
        chosen[k] = max(allowed, key=lambda g: means(by_gain[g])[0])
    return chosen


def print_table(title: str, scores: dict[int, dict[float, list]]) -> None:
    print(f"\n{title}: mean PSNR dB / head SSIM / SSIM")
    for k, by_gain in scores.items():
        cells = "  ".join(f"g={g:g}: {p:.2f}/{h:.3f}/{s:.3f}" for g, (p, h, s) in
                          ((g, means(rows)) for g, rows in by_gain.items()))
        print(f"K={k:>2} ({len(by_gain[1.0])} subjects)  {cells}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="synth folders the gain is selected on")
    parser.add_argument("--confirm", type=Path, nargs="*", default=[], help="synth folders that confirm it")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped weights)")
    parser.add_argument("--ks", type=int, nargs="+", default=list(KS))
    parser.add_argument("--gains", type=float, nargs="+", default=list(GAINS))
    parser.add_argument("--ssim-slack", type=float, default=0.002)
    parser.add_argument("--out", type=Path, default=None, help="every score as JSON")
    parser.add_argument("--apply", action="store_true", help="write the table into the model's config if confirmed")
    args = parser.parse_args()
    gains = sorted(set(args.gains) | {1.0})
    model = args.model or default_model_dir()
    if read_config(model).residual_gain:
        raise SystemExit(f"{model}: already has a residual_gain; select from a folder without one")
    reconstructor = XDiffusionReconstructor(model_dir=model, calibrated=False)
    args.cache.mkdir(parents=True, exist_ok=True)
    selection = score_folders(args.data, gains, args.ks, reconstructor, args.cache)
    print_table("selection subjects", selection)
    chosen = select(selection, args.ssim_slack)
    table = {str(K_EDGES[k_range(k)]): gain for k, gain in chosen.items()}
    print(f"\nselected per K: {chosen} -> residual_gain {table}")
    confirmed = True
    report = {"selection": {k: {g: rows for g, rows in v.items()} for k, v in selection.items()}, "chosen": chosen}
    if args.confirm:
        check = score_folders(args.confirm, sorted({1.0, *chosen.values()}), args.ks, reconstructor, args.cache)
        print_table("confirmation subjects", check)
        for k, gain in chosen.items():
            (p1, h1, _), (p, h, _) = means(check[k][1.0]), means(check[k][gain])
            ok = p >= p1 and h >= h1 - args.ssim_slack
            confirmed &= ok
            print(f"K={k}: gain {gain:g} vs 1: {p - p1:+.2f} dB, head SSIM {h - h1:+.4f} -> {'ok' if ok else 'FAILS'}")
        report["confirmation"] = {k: {g: rows for g, rows in v.items()} for k, v in check.items()}
    report["confirmed"] = confirmed
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    if args.apply:
        if not confirmed:
            print("not applied: the confirmation subjects do not support the table")
            return 1
        replace_config(model, replace(read_config(model), residual_gain=table))
        print(f"applied to {model}: recalibrate the interval (scripts/calibrate_uncertainty.py)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
