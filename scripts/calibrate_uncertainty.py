#!/usr/bin/env python3
"""Regenerate the interval calibration table beside the model's weights (uncertainty_calibration.json).

Calibration subjects are synthetic only (seed 13; seed 11 trained the model, seed 12 validated
it; the real held-out volumes, Colin27 and pycortex's S1 are never used), drawn with the
scanner-like artefact preset (``synth.artifacts.SCANNER_LIKE``: noise never absent, stronger bias
field, thick slices more often, finer texture; issue 24) and the varied anatomy the model was
fine-tuned on (``anatomy="varied"``: head size and shape, ventricles, fine deformations, asymmetry;
issue 24 item 2). For each subject and each of its K values
the model reconstructs the subject from its protocol input slices with the default sampling
settings; a seeded random subset of the non-input voxels inside the head
(``metrics.coverage.head_mask``) gives (features, |error|) samples, and each input slice left out
in turn (``baselines.leave_one_out``, K >= 2) gives a fold of (features, |error|) samples; both are
cached per reconstruction under ``--cache``, so an interrupted run resumes. The first
``--fit-subjects`` subjects fit the scale coefficients, the scan reference and the distance profile;
the rest give the conformal quantiles (split conformal, ``uncertainty.intervals`` and
``uncertainty.scan_scale``). Every subject's reconstructions use its own scan scale lambda, as at
inference.

    OMP_NUM_THREADS=1 python scripts/calibrate_uncertainty.py --data synth-cal13-varied --cache cal-cache
    # makes the subjects first (seed 13, artefacts "scanner", anatomy "varied") when the folder does not exist

Subject i: axial inputs, except every fourth subject (i % 4 == 3), alternately sagittal and
coronal; K in (1, 3, 5, 10, 31) for even i and (1, 2, 7, 15, 20) for odd i, so every K range
has reconstructions from every subject.
"""

from __future__ import annotations

import argparse
import json
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
from XDiffusionLib.synth.dataset import write_synthetic_dataset
from XDiffusionLib.uncertainty.intervals import (FEATURES, FORMAT_VERSION, KNOTS_MM, LEVELS, MIN_SCALE, fit_calibration, fit_scale_coefficients,
                                                 k_range, profile_at)
from XDiffusionLib.uncertainty.scan_scale import HeldOutFold, fit_scan_reference, fold_statistic, scan_scale

SEED = 13
ARTEFACTS = "scanner"
ANATOMY = "varied"
# Layout of a cached sample (2: with leave-one-out folds); a file's name also carries the table format
# whose features it holds, so a cache made for other features is never read.
CACHE_VERSION = 2
FOLD_VOXELS = 3000  # random head voxels kept per left-out slice
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
        write_synthetic_dataset(data, n, seed=SEED, artefacts=ARTEFACTS, anatomy=ANATOMY)
    entries = json.loads(manifest.read_text())
    made = (int(entries.get("seed", -1)), entries.get("artefacts", "default"), entries.get("anatomy", "default"))
    if made != (SEED, ARTEFACTS, ANATOMY):
        raise SystemExit(f"{data}: made with seed {made[0]}, artefacts {made[1]!r} and anatomy {made[2]!r}; "
                         f"calibration subjects use seed {SEED}, artefacts {ARTEFACTS!r} and anatomy {ANATOMY!r}")
    if len(entries["subjects"]) < n:
        raise SystemExit(f"{data}: {len(entries['subjects'])} subjects, {n} asked for")
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
    rng = np.random.default_rng(seed + 7)
    folds = result.folds or ()
    design = [np.zeros((0, 1 + len(FEATURES)), np.float32)]
    fold_error, fold_id = [np.zeros(0, np.float32)], [np.zeros(0, np.int16)]
    for number, fold in enumerate(folds):
        keep = np.arange(fold.abs_error.size)
        if keep.size > FOLD_VOXELS:
            keep = np.sort(rng.choice(keep, FOLD_VOXELS, replace=False))
        design.append(fold.design[keep].astype(np.float32))
        fold_error.append(fold.abs_error[keep].astype(np.float32))
        fold_id.append(np.full(keep.size, number, dtype=np.int16))
    return {
        "design": features.stack(pick).astype(np.float32),
        "abs_error": error.astype(np.float32),
        "distance_mm": features.distance_volume().reshape(-1)[pick].astype(np.float32),
        "k": np.full(pick.size, k, dtype=np.int16),
        "fold_distance_mm": np.array([f.distance_mm for f in folds], dtype=np.float32),
        "fold_index": np.array([f.index for f in folds], dtype=np.int32),
        "fold_design": np.concatenate(design), "fold_error": np.concatenate(fold_error),
        "fold_id": np.concatenate(fold_id),
    }


def folds_of(sample: dict) -> list[HeldOutFold]:
    """The cached folds of one reconstruction."""
    return [HeldOutFold(int(index), float(distance), sample["fold_error"][sample["fold_id"] == number],
                        sample["fold_design"][sample["fold_id"] == number])
            for number, (index, distance) in enumerate(zip(sample["fold_index"], sample["fold_distance_mm"]))]


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
            path = args.cache / f"subject{i:03d}_{plane}_k{k}.v{CACHE_VERSION}.f{FORMAT_VERSION}.npz"
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
    voxel_keys = ("design", "abs_error", "distance_mm", "k")
    fit_joined = {key: np.concatenate([p[key] for p in parts["fit"]]) for key in voxel_keys}
    coefficients = fit_scale_coefficients(fit_joined)
    # The scan reference from the fit subjects' folds, then every reconstruction's own lambda.
    fold_k, fold_d, fold_m = [], [], []
    for sample in parts["fit"]:
        k = int(sample["k"][0])
        for fold in folds_of(sample):
            fold_k.append(k)
            fold_d.append(fold.distance_mm)
            fold_m.append(fold_statistic(fold, coefficients[k_range(k)]))
    reference = fit_scan_reference(np.array(fold_k), np.array(fold_d), np.array(fold_m))
    for sample in parts["fit"] + parts["calibrate"]:
        k = int(sample["k"][0])
        scan = scan_scale(reference, k, folds_of(sample), coefficients[k_range(k)])
        sample["scan_scale"] = np.full(sample["k"].size, scan.value, dtype=np.float32)
    voxel_keys += ("scan_scale",)
    joined = {name: {key: np.concatenate([p[key] for p in chunks]) for key in voxel_keys}
              for name, chunks in parts.items()}
    info = {
        "data": f"synth.dataset.write_synthetic_dataset n={args.subjects} seed {SEED}, artefacts {ARTEFACTS!r}, "
                f"anatomy {ANATOMY!r} (synthetic only; seed 11 trained, 12 validated)",
        "fit_subjects": list(range(args.fit_subjects)),
        "calibration_subjects": list(range(args.fit_subjects, len(entries))),
        "planes": "axial, every 4th subject sagittal or coronal", "ks": {"even subjects": KS_EVEN, "odd": KS_ODD},
        "inputs": "evaluation protocol indices (bin centres over the foreground extent)",
        "voxels": f"{args.voxels} random non-input voxels inside the head per reconstruction (metrics.coverage)",
        "artefacts": f"{ARTEFACTS} (synth.artifacts.SCANNER_LIKE)",
        "scan_reference": f"leave-one-slice-out folds of the fit subjects ({FOLD_VOXELS} head voxels per fold), "
                          f"prior fit reused (uncertainty.scan_scale)",
        "distance_profile": "fit subjects' per-bin quantiles at the knots, joined linearly; "
                            "one conformal quantile per K range and level on the calibration subjects",
        "settings": {key: getattr(settings, key) for key in ("views", "steps", "sampler", "samples", "guidance",
                                                              "aggregate", "strength") if hasattr(settings, key)},
        "script": "scripts/calibrate_uncertainty.py",
    }
    table = fit_calibration(joined["fit"], joined["calibrate"], info, coefficients=coefficients,
                            scan_reference=reference.to_dict())
    path = save_calibration(table, model_dir)
    print(f"wrote {path}")
    cal = joined["calibrate"]
    ranges = np.array([k_range(k) for k in cal["k"]])
    scale = np.maximum(np.einsum("ij,ij->i", cal["design"], table.coefficients[ranges]), MIN_SCALE)
    print(f"coefficients [1, {', '.join(FEATURES)}] per K range:")
    for row in table.coefficients:
        print("  ", " ".join(f"{v:.4f}" for v in row))
    print(f"90% quantile per K range at the knots {KNOTS_MM} mm:")
    print(np.round(table.quantiles[:, :, LEVELS.index(0.9)], 3))
    print("calibration voxels per distance bin:", table.counts.tolist())
    print("scan reference (log m = a + b log d) per K range:", reference.to_dict())
    print("mean scale (range units):", float(scale.mean()))
    print("scan scale lambda per K (calibration subjects: min / median / max):")
    for k in sorted({int(p["k"][0]) for p in parts["calibrate"]}):
        values = [float(p["scan_scale"][0]) for p in parts["calibrate"] if int(p["k"][0]) == k]
        print(f"   K={k}: {min(values):.2f} / {np.median(values):.2f} / {max(values):.2f}")
    # In-sample check (the calibration subjects themselves; the guarantee is per K range, marginal).
    q = np.empty(ranges.size, np.float32)
    for r in np.unique(ranges):
        chosen = ranges == r
        q[chosen] = profile_at(cal["distance_mm"][chosen], KNOTS_MM, table.quantiles[r, :, LEVELS.index(0.9)])
    covered = cal["abs_error"] <= q * scale * cal["scan_scale"]
    for r in np.unique(ranges):
        print(f"   K range {r}: 90% interval covers {covered[ranges == r].mean():.1%} of calibration voxels")


if __name__ == "__main__":
    main()
