#!/usr/bin/env python3
"""Hallucination check (paper Table I, honestly): are tumours recovered, or invented?

On synthetic subjects (``xdiffusion synth --seed 14``: a seed no training, validation or
calibration uses; half get a tumour), with ONE axial input slice:

- tumour subjects, twice: the input slice passes through the tumour (its centroid), and it does
  not (the slice nearest the protocol's middle slice that touches no tumour or edema voxel). The
  same automatic segmentation (``XDiffusionLib.metrics.lesion.segment_anomaly``: brain voxels that
  depart by more than 25% of the brain's intensity range from the subject's healthy twin, opened,
  components >= 0.5 cm3) is applied to the ground truth (the ceiling), to the model's
  reconstruction and to its deterministic anchor; Dice with the true tumour label (core, enhancing
  rim and edema), the share of the tumour found and the volume found outside it. Also: how much of
  the tumour the 90% interval covers.
- the healthy twin (``synthesize_subject(..., lesion_tissue=False)``): the same subject from the same
  random draws with healthy tissue where the tumour and edema are, scaled to the truth (median
  ratio in the brain). Only a synthetic study has it; it makes the segmentation of the truth nearly
  exact, so what the reconstruction's segmentation misses or adds is the reconstruction's.
- tumour-free subjects: how often the same segmentation finds a "tumour" in the reconstruction
  (and in the anchor, and in the truth: the segmentation's own false alarms), and how many
  compact regions (>= 0.5 cm3) the model makes that depart from the truth by more than that
  threshold AND from its own anchor by more than half of it (structure the residual added).

Reconstructions are cached in ``--out``/cache, so the tables and the figure can be remade quickly.

Writes ``--out``/hallucination.json and .md, and the figure (default Resources/hallucination-check.png).

    OMP_NUM_THREADS=1 python scripts/hallucination_check.py --data synth-h14 --out outputs/hallucination
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from XDiffusionLib.baselines.anchor import anchor_estimate
from XDiffusionLib.baselines.foreground import head_mask
from XDiffusionLib.evaluation import protocol
from XDiffusionLib.io import read_volume
from XDiffusionLib.inputs import SliceInput
from XDiffusionLib.metrics.lesion import brain_mask, dice, invented_regions, segment_anomaly
from XDiffusionLib.sampling.reconstructor import XDiffusionReconstructor
from XDiffusionLib.synth.subject import subject_rng, synthesize_subject

SEED = 14
PLANE, AXIS = "axial", 2
MIN_MM3 = 500.0
THRESHOLD_FRACTION = 0.25


def ensure_subjects(data: Path, n: int) -> dict:
    if not (data / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "XDiffusionLib.app.cli", "synth", "--n", str(n), "--seed", str(SEED),
                        "--out", str(data), "--quiet"], check=True)
    manifest = json.loads((data / "manifest.json").read_text())
    if int(manifest.get("seed", -1)) != SEED:
        raise SystemExit(f"{data}: made with seed {manifest.get('seed')}, this check uses seed {SEED}")
    return manifest


def slice_without(whole: np.ndarray, start: int) -> int:
    touched = whole.any(axis=(0, 1))
    for offset in range(whole.shape[AXIS]):
        for index in (start - offset, start + offset):
            if 0 <= index < whole.shape[AXIS] and not touched[index]:
                return index
    raise ValueError("every slice touches the tumour")


def reconstruct(method, truth, index, cache: Path):
    """(reconstruction, 90% half-width, anchor) of ``truth`` from its axial slice ``index``, cached."""
    if cache.is_file():
        with np.load(cache) as stored:
            return stored["recon"], stored["width"], stored["anchor"]
    inputs = SliceInput.from_volume(truth, PLANE, [index])
    result = method.reconstruct_with_uncertainty(inputs)
    if not result.info.calibrated:
        raise SystemExit("the model has no interval calibration")
    anchor = anchor_estimate(inputs).volume.array
    np.savez_compressed(cache, recon=result.volume.array, width=result.uncertainty.array, anchor=anchor)
    return result.volume.array, result.uncertainty.array, anchor


def healthy_twin(manifest: dict, entry: dict, truth, brain: np.ndarray) -> np.ndarray:
    """The subject of ``entry`` drawn again without tumour tissue, on the truth's canonical grid and
    intensity scale (the tumour shifts the synthesiser's normalisation: median ratio in the brain)."""
    contrast = None if manifest["contrast"] == "mixed" else manifest["contrast"]
    twin = synthesize_subject(subject_rng(int(manifest["seed"]), int(entry["index"])), contrast,
                              float(manifest["lesion_probability"]), float(manifest["spacing_mm"]), lesion_tissue=False)
    healthy = protocol.canonical_case(twin.image).array.astype(np.float32)
    if healthy.shape != truth.shape:
        raise SystemExit(f"subject {entry['index']}: its twin has shape {healthy.shape}, the file {truth.shape}")
    inside = brain & (healthy > 0.05 * float(healthy.max()))
    return healthy * float(np.median(truth.array[inside] / healthy[inside]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="synthetic subjects of seed 14 (made if missing)")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--figure", type=Path, default=Path("Resources/hallucination-check.png"))
    args = parser.parse_args()
    manifest = ensure_subjects(args.data, args.n)
    entries = manifest["subjects"][:args.n]
    args.out.mkdir(parents=True, exist_ok=True)
    method = XDiffusionReconstructor()
    cache = args.out / "cache"
    cache.mkdir(exist_ok=True)
    rows, free_rows, examples = [], [], {}
    for entry in entries:
        start = time.perf_counter()
        truth = protocol.canonical_case(read_volume(args.data / entry["image"]))
        voxel_mm3 = float(np.prod(truth.spacing))
        min_voxels = int(np.ceil(MIN_MM3 / voxel_mm3))
        brain = brain_mask(head_mask(truth.array), float(truth.spacing[AXIS]))
        low, high = np.percentile(truth.array[brain], [1, 99])
        threshold = THRESHOLD_FRACTION * float(high - low)
        healthy = healthy_twin(manifest, entry, truth, brain)
        segment = lambda image: segment_anomaly(image, healthy, brain, threshold, min_voxels)  # noqa: E731
        truth_seg = segment(truth.array)
        if entry["labels"]:
            labels = protocol.canonical_case(read_volume(args.data / entry["labels"])).array
            tumour = (labels > 0) & brain
            if tumour.sum() < min_voxels:
                continue
            centre = int(round(float(np.mean(np.nonzero(tumour)[AXIS]))))
            middle = protocol.choose_indices(truth.array, PLANE, 1)[0]
            for condition, index in (("through", centre), ("none", slice_without(labels > 0, middle))):
                recon, width, anchor = reconstruct(method, truth, index, cache / f"s{entry['index']}_{condition}.npz")
                model_seg = segment(recon)
                inside = np.abs(recon - truth.array)[tumour] <= width[tumour]
                rows.append({
                    "subject": entry["index"], "contrast": entry["params"]["contrast"], "condition": condition,
                    "slice": index, "tumour_cm3": float(tumour.sum() * voxel_mm3 / 1000),
                    "distance_mm": float(np.abs(np.nonzero(tumour)[AXIS] - index).min() * truth.spacing[AXIS]),
                    "dice_truth_seg": dice(truth_seg, tumour),
                    "dice_model": dice(model_seg, tumour),
                    "dice_anchor": dice(segment(anchor), tumour),
                    **found_and_extra(model_seg, tumour, voxel_mm3),
                    "tumour_covered": float(np.mean(inside)),
                    "halfwidth_tumour_over_brain": float(width[tumour].mean() / max(width[brain].mean(), 1e-6)),
                })
                examples.setdefault(entry["index"], {"truth": truth.array, "core": tumour, "centre": centre})[condition] = recon
        else:
            index = protocol.choose_indices(truth.array, PLANE, 1)[0]
            recon, _, anchor = reconstruct(method, truth, index, cache / f"s{entry['index']}_free.npz")
            count, voxels = invented_regions(recon, truth.array, anchor, brain, threshold, min_voxels)
            free_rows.append({"subject": entry["index"], "contrast": entry["params"]["contrast"], "slice": index,
                              "found_truth": int(truth_seg.any()), "found_model": int(segment(recon).any()),
                              "found_anchor": int(segment(anchor).any()),
                              "invented_regions": count, "invented_cm3": voxels * voxel_mm3 / 1000})
        print(f"subject {entry['index']}: {time.perf_counter() - start:.1f} s", flush=True)
    summary = summarise(rows, free_rows)
    (args.out / "hallucination.json").write_text(json.dumps({"tumour": rows, "tumour_free": free_rows,
                                                             "summary": summary}, indent=1))
    table = markdown(summary, rows, free_rows)
    (args.out / "hallucination.md").write_text(table)
    print(table)
    figure(examples, rows, args.figure)
    print(f"wrote {args.out}/hallucination.json, .md and {args.figure}")


def found_and_extra(mask: np.ndarray, tumour: np.ndarray, voxel_mm3: float) -> dict:
    """Of the model's segmentation: the share of the tumour it covers, and its volume outside it."""
    return {"tumour_found_model": float((mask & tumour).sum() / tumour.sum()),
            "outside_cm3_model": float((mask & ~tumour).sum() * voxel_mm3 / 1000)}


def summarise(rows: list[dict], free_rows: list[dict]) -> dict:
    out = {}
    for condition in ("through", "none"):
        group = [r for r in rows if r["condition"] == condition]
        if not group:
            continue
        out[condition] = {key: float(np.mean([r[key] for r in group])) for key in group[0]
                          if key not in ("subject", "contrast", "condition", "slice")}
        out[condition]["n"] = len(group)
        out[condition]["found_model"] = int(sum(r["dice_model"] >= 0.2 for r in group))
        out[condition]["found_truth_seg"] = int(sum(r["dice_truth_seg"] >= 0.2 for r in group))
    if free_rows:
        out["tumour_free"] = {"n": len(free_rows),
                              **{key: int(sum(r[key] for r in free_rows)) for key in ("found_truth", "found_model",
                                                                                       "found_anchor")},
                              "subjects_with_invented_region": int(sum(r["invented_regions"] > 0 for r in free_rows)),
                              "invented_regions": int(sum(r["invented_regions"] for r in free_rows)),
                              "invented_cm3_mean": float(np.mean([r["invented_cm3"] for r in free_rows]))}
    return out


def markdown(summary: dict, rows: list[dict], free_rows: list[dict]) -> str:
    lines = ["| input slice (K=1, axial) | tumours | Dice: truth segmented (ceiling) | Dice: model | Dice: anchor | "
             "found (Dice >= 0.2): truth / model | tumour found by the model's segmentation | its volume outside "
             "the tumour | tumour voxels inside the 90% interval |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for condition, name in (("through", "passes through the tumour"), ("none", "misses the tumour")):
        s = summary.get(condition)
        if s:
            lines.append(f"| {name} | {s['n']} | {s['dice_truth_seg']:.2f} | {s['dice_model']:.2f} | "
                         f"{s['dice_anchor']:.2f} | {s['found_truth_seg']}/{s['n']} / {s['found_model']}/{s['n']} | "
                         f"{s['tumour_found_model']:.0%} | {s['outside_cm3_model']:.1f} cm3 | {s['tumour_covered']:.0%} |")
    free = summary.get("tumour_free")
    if free:
        lines += ["", f"Tumour-free subjects ({free['n']}): the segmentation finds a \"tumour\" in "
                      f"{free['found_model']} reconstructions, {free['found_anchor']} anchors and {free['found_truth']} "
                      f"ground truths; {free['subjects_with_invented_region']} reconstructions have a compact region "
                      f"(>= 0.5 cm3) departing from both the truth and the anchor ({free['invented_regions']} regions, "
                      f"{free['invented_cm3_mean']:.2f} cm3 per subject on average)."]
    lines += ["", "Per subject (tumour): subject, contrast, condition, slice, distance to the tumour (mm), tumour cm3, "
                  "Dice truth seg / model / anchor, tumour voxels inside the interval:", ""]
    lines += [f"- {r['subject']} {r['contrast']} {r['condition']} z={r['slice']} {r['distance_mm']:.0f} mm "
              f"{r['tumour_cm3']:.1f} cm3: {r['dice_truth_seg']:.2f} / {r['dice_model']:.2f} / {r['dice_anchor']:.2f}, "
              f"{r['tumour_covered']:.0%}" for r in rows]
    return "\n".join(lines) + "\n"


def figure(examples: dict, rows: list[dict], path: Path) -> None:
    shown = [s for s in examples if "through" in examples[s] and "none" in examples[s]][:3]
    figure = Figure(figsize=(10.5, 3.0 * len(shown) + 3.2), layout="constrained")
    grid = figure.add_gridspec(len(shown) + 1, 3)
    for row, subject in enumerate(shown):
        example = examples[subject]
        # 3 slices (6 mm at 2 mm) off the tumour's centre, which is the "through" input slice itself.
        level = min(example["centre"] + 3, example["truth"].shape[AXIS] - 1)
        cut = lambda a: np.asarray(a)[:, :, level].T[::-1]  # noqa: E731  axial, anterior up
        vmax = float(np.percentile(example["truth"], 99.5))
        for col, (key, title) in enumerate((("truth", "ground truth"), ("through", "model, input slice through tumour"),
                                            ("none", "model, input slice misses tumour"))):
            ax = figure.add_subplot(grid[row, col])
            ax.imshow(cut(example[key]), cmap="gray", vmin=0, vmax=vmax)
            ax.contour(cut(example["core"]).astype(float), levels=[0.5], colors="red", linewidths=0.8)
            ax.set_title(f"subject {subject}: {title}\n(axial {level}, 3 slices from the tumour's centre)", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    ax = figure.add_subplot(grid[len(shown), :])
    for offset, (key, label) in enumerate((("dice_truth_seg", "segmentation of the truth (ceiling)"),
                                           ("dice_model", "model"), ("dice_anchor", "anchor (no diffusion)"))):
        for x, condition in enumerate(("through", "none")):
            values = [r[key] for r in rows if r["condition"] == condition]
            ax.scatter(np.full(len(values), x + (offset - 1) * 0.18), values, s=14, color=f"C{offset}",
                       label=label if x == 0 else None)
            if values:
                ax.plot([x + (offset - 1) * 0.18 - 0.07, x + (offset - 1) * 0.18 + 0.07], [np.mean(values)] * 2,
                        color=f"C{offset}", lw=2)
    ax.set_xticks([0, 1], ["input slice through the tumour", "input slice misses the tumour"])
    ax.set_ylabel("Dice with the true tumour")
    ax.set_ylim(-0.02, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    figure.suptitle("Hallucination check, one axial input slice (synthetic subjects, seed 14); red: true tumour (core, rim, edema)",
                    fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
