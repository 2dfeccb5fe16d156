#!/usr/bin/env python3
"""Regenerate the interval calibration table beside the model's weights (uncertainty_calibration.json).

Calibration subjects are synthetic only (``xdiffusion synth --seed 13``; seed 11 trained the
model, seed 12 validated it; the real held-out volumes, Colin27 and pycortex's S1 are never
used). For each subject and each of its K values the model reconstructs the subject from its
protocol input slices with the default sampling settings; a seeded random subset of the
non-input voxels inside the head (``metrics.coverage.head_mask``) gives (features, |error|)
samples, cached per reconstruction under ``--cache``, so an interrupted run resumes. The first
``--fit-subjects`` subjects fit the scale coefficients, the rest give the conformal quantiles
(split conformal, ``uncertainty.intervals``).

    OMP_NUM_THREADS=1 python scripts/calibrate_uncertainty.py --data synth-cal13 --cache cal-cache
    # makes synth-cal13 with `xdiffusion synth --n 16 --seed 13` first when it does not exist

Subject i: axial inputs, except every fourth subject (i % 4 == 3), alternately sagittal and
coronal; K in (1, 3, 5, 10, 31) for even i and (1, 2, 7, 15, 20) for odd i, so every K range
has reconstructions from every subject.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from XDiffusionLib.baselines.foreground import head_mask
from XDiffusionLib.evaluation import protocol
from XDiffusionLib.io import read_volume
from XDiffusionLib.inputs import SliceInput
from XDiffusionLib.metrics.coverage import scored_mask
from XDiffusionLib.model.calibration import save_calibration
from XDiffusionLib.model.checkpoint import default_model_dir
from XDiffusionLib.sampling.reconstructor import XDiffusionReconstructor
from XDiffusionLib.settings import ReconstructionSettings
from XDiffusionLib.uncertainty.intervals import LEVELS, fit_calibration, k_range

SEED = 13
KS_EVEN = (1, 3, 5, 10, 31)
KS_ODD = (1, 2, 7, 15, 20)


def subject_plane(i: int) -> str:
    if i % 4 != 3:
        return "axial"
    return "sagittal" if (i // 4) % 2 == 0 else "coronal"


def subject_ks(i: int) -> tuple[int, ...]:
    return KS_EVEN if i % 2 == 0 else KS_ODD


def ensure_subjects(data: Path, n: int) -> list[dict]:
    manifest = data / "manifest.json"
    if not manifest.is_file():
        subprocess.run([sys.executable, "-m", "XDiffusionLib.app.cli", "synth", "--n", str(n), "--seed", str(SEED),
                        "--out", str(data), "--quiet"], check=True)
    entries = json.loads(manifest.read_text())
    if int(entries.get("seed", -1)) != SEED:
        raise SystemExit(f"{data}: made with seed {entries.get('seed')}, calibration subjects use seed {SEED}")
    return entries["subjects"][:n]


def samples_for(method: XDiffusionReconstructor, volume, plane: str, k: int, voxels: int, seed: int) -> dict:
    indices = protocol.choose_indices(volume.array, plane, k)
    inputs = SliceInput.from_volume(volume, plane, indices)
    result = method.reconstruct_with_uncertainty(inputs)
    features = result.features
    mask = scored_mask(head_mask(volume.array), inputs.axis, indices)
    flat = np.flatnonzero(mask.reshape(-1))
    pick = np.sort(np.random.default_rng(seed).choice(flat, min(voxels, flat.size), replace=False))
    error = np.abs(volume.array.reshape(-1)[pick] - result.volume.array.reshape(-1)[pick]) / features.range
    return {
        "design": features.stack(pick).astype(np.float32),
        "abs_error": error.astype(np.float32),
        "distance_mm": features.distance_volume().reshape(-1)[pick].astype(np.float32),
        "k": np.full(pick.size, k, dtype=np.int16),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="synthetic subjects of seed 13 (made if missing)")
    parser.add_argument("--cache", type=Path, required=True, help="folder for per-reconstruction samples")
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped weights)")
    parser.add_argument("--subjects", type=int, default=16)
    parser.add_argument("--fit-subjects", type=int, default=4, help="the first N subjects fit the scale")
    parser.add_argument("--voxels", type=int, default=20000, help="voxels sampled per reconstruction")
    parser.add_argument("--only-samples", action="store_true", help="make the cached samples, write no table")
    args = parser.parse_args()
    model_dir = args.model or default_model_dir()
    entries = ensure_subjects(args.data, args.subjects)
    args.cache.mkdir(parents=True, exist_ok=True)
    method = XDiffusionReconstructor(model_dir=model_dir, calibrated=False, keep_features=True)
    settings = ReconstructionSettings.from_options({})
    parts: dict[str, list[dict]] = {"fit": [], "calibrate": []}
    for i, entry in enumerate(entries):
        volume = None
        plane = subject_plane(i)
        for k in subject_ks(i):
            path = args.cache / f"subject{i:03d}_{plane}_k{k}.npz"
            if not path.is_file():
                if volume is None:
                    volume = protocol.canonical_case(read_volume(args.data / entry["image"]))
                start = time.perf_counter()
                data = samples_for(method, volume, plane, k, args.voxels, seed=1000 * i + k)
                np.savez(path.with_suffix(".part.npz"), **data)
                path.with_suffix(".part.npz").replace(path)
                print(f"subject {i} {plane} K={k}: {time.perf_counter() - start:.1f} s, median |error| "
                      f"{np.median(data['abs_error']):.4f} of the range", flush=True)
            with np.load(path) as stored:
                parts["fit" if i < args.fit_subjects else "calibrate"].append({key: stored[key] for key in stored.files})
    if args.only_samples:
        return
    joined = {name: {key: np.concatenate([p[key] for p in chunks]) for key in chunks[0]} for name, chunks in parts.items()}
    info = {
        "data": f"xdiffusion synth --n {args.subjects} --seed {SEED} (synthetic only; seed 11 trained, 12 validated)",
        "fit_subjects": list(range(args.fit_subjects)),
        "calibration_subjects": list(range(args.fit_subjects, len(entries))),
        "planes": "axial, every 4th subject sagittal or coronal", "ks": {"even subjects": KS_EVEN, "odd": KS_ODD},
        "inputs": "evaluation protocol indices (bin centres over the foreground extent)",
        "voxels": f"{args.voxels} random non-input voxels inside the head per reconstruction (metrics.coverage)",
        "settings": {key: getattr(settings, key) for key in ("views", "steps", "sampler", "samples", "guidance",
                                                              "aggregate", "strength") if hasattr(settings, key)},
        "script": "scripts/calibrate_uncertainty.py",
    }
    table = fit_calibration(joined["fit"], joined["calibrate"], info)
    path = save_calibration(table, model_dir)
    print(f"wrote {path}")
    cal = joined["calibrate"]
    scale = np.maximum(np.einsum("ij,ij->i", cal["design"], table.coefficients[[k_range(k) for k in cal["k"]]]), 1e-3)
    print("coefficients [1, spread, disagreement, gradient, intensity] per K range:")
    for row in table.coefficients:
        print("  ", " ".join(f"{v:.4f}" for v in row))
    print("90% quantile per K range x distance bin:")
    print(np.round(table.quantiles[:, :, LEVELS.index(0.9)], 3))
    print("counts:", table.counts.tolist())
    print("mean scale (range units):", float(scale.mean()))


if __name__ == "__main__":
    main()
