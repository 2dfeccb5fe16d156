"""The demo: one shipped real volume, one slice, the shipped model beside every baseline.

It follows the evaluation protocol (``evaluation/protocol.py``) for one case: canonical
orientation, the input slice chosen from the foreground extent, metrics by ``protocol.score``.
The volume is held out: the shipped model never saw it in training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import maps
from ..data.samples import SAMPLES, sample_path
from ..errors import XDiffusionError
from ..inputs import SliceInput
from ..io.outputs import OutputLedger, check_outputs
from ..io.volume import Volume
from ..methods import get_method
from ..sampling.result import ReconstructionResult, write_result
from ..uncertainty.marking import file_metadata

DEMO_SAMPLE = "kmeans_t1"
BASELINE_NAMES = ("nearest", "linear", "cubic", "template")


@dataclass(frozen=True)
class DemoResult:
    rows: list[dict]
    outputs: dict[str, Path]
    indices: tuple[int, ...]


def run_demo(
    out_dir: str | Path,
    sample: str = DEMO_SAMPLE,
    plane: str = "axial",
    k: int = 1,
    model_dir: str | Path | None = None,
    progress: Callable[[float, str], None] | None = None,
    note: Callable[[str], None] = print,
    overwrite: bool = False,
    **settings,
) -> DemoResult:
    """Reconstruct ``sample`` from ``k`` slices with the model and every baseline; write outputs and figure.
    An existing output is replaced only if an earlier demo wrote it (unchanged since) or ``overwrite``."""
    # scipy, SimpleITK, torch: loaded when the demo runs, not with the command line's --help.
    from ..evaluation.figures import case_figure
    from ..evaluation.protocol import choose_indices, score
    from ..evaluation.runner import check_out_dir
    from ..io.readers import read_volume
    from ..io.writers import write_volume
    from ..sampling.reconstructor import XDiffusionReconstructor
    from ..transforms.orientation import to_canonical

    out_dir = check_out_dir(Path(out_dir))
    path = sample_path(sample)
    if SAMPLES[sample].role != "heldout":
        raise XDiffusionError(f"sample {sample!r} was used for training; the demo needs a held-out sample")
    outputs = {
        "reconstruction": out_dir / f"{sample}_xdiffusion.nii.gz",
        "uncertainty": out_dir / f"{sample}_uncertainty.nii.gz",
        "difference": out_dir / f"{sample}_difference.nii.gz",
        "figure": out_dir / f"{sample}_demo.png",
    }
    # Before any work: the user's files are never replaced unasked; an earlier demo's are ours.
    ledger = OutputLedger(out_dir, "demo")
    check_outputs(list(outputs.values()), overwrite=overwrite, ours=ledger.ours())
    reconstructor = XDiffusionReconstructor(model_dir=model_dir, progress=progress, **settings)
    reconstructor.config  # fail on a missing model before any work

    volume = read_volume(path)
    canonical, reorientation = to_canonical(volume)
    indices = choose_indices(canonical.array, plane, k)
    inputs = SliceInput.from_volume(canonical, plane, indices)
    note(f"{sample}: {volume.shape} voxels at {tuple(round(s, 2) for s in volume.spacing)} mm; "
         f"input: {plane} slice{'s' if k > 1 else ''} {list(indices)} (canonical RAS index)")

    rows: list[dict] = []
    start = time.perf_counter()
    result = reconstructor.reconstruct_with_uncertainty(inputs)
    rows.append({"method": "xdiffusion", "seconds": time.perf_counter() - start,
                 **score(canonical.array, result.volume.array, plane, indices)})
    for name in BASELINE_NAMES:
        start = time.perf_counter()
        prediction = get_method(name).reconstruct(inputs)
        rows.append({"method": name, "seconds": time.perf_counter() - start,
                     **score(canonical.array, prediction.array, plane, indices)})

    def on_input_grid(array: np.ndarray) -> Volume:
        return reorientation.invert(Volume(np.asarray(array, dtype=np.float32), canonical.grid))

    # The reconstruction and its uncertainty on the input's grid, written together by the one writer.
    write_result(ReconstructionResult(on_input_grid(result.volume.array), on_input_grid(result.uncertainty.array),
                                      info=result.info), outputs["reconstruction"], outputs["uncertainty"])
    write_volume(on_input_grid(maps.difference(canonical.array, result.volume.array)), outputs["difference"],
                 metadata=file_metadata("difference"))
    model_row = rows[0]
    title = (f"{sample} | X-Diffusion (AI-generated pseudo-MRI, not for diagnosis) | K={k} {plane} {list(indices)}\n"
             f"PSNR paper convention (max of GT): {model_row['psnr_paper']:.2f} dB whole volume, "
             f"{model_row['psnr_paper_noninput']:.2f} dB non-input slices")
    case_figure(canonical, result.volume.array, inputs, title, outputs["figure"],
                uncertainty=result.uncertainty.array, uncertainty_label=result.info.label)
    ledger.record(outputs.values())
    return DemoResult(rows=rows, outputs=outputs, indices=indices)


def format_demo_table(rows: list[dict]) -> str:
    headers = ("method", "PSNR paper", "PSNR paper non-input", "PSNR unit", "SSIM ax/cor/sag", "seconds")
    lines = [[
        r["method"],
        f"{r['psnr_paper']:.2f}",
        f"{r['psnr_paper_noninput']:.2f}",
        f"{r['psnr_unit']:.2f}",
        f"{r['ssim_axial']:.3f}/{r['ssim_coronal']:.3f}/{r['ssim_sagittal']:.3f}",
        f"{r['seconds']:.1f}",
    ] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    text = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    text.append("  ".join("-" * w for w in widths))
    text += ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths)))
             for line in lines]
    return "\n".join(text) + "\n(PSNR in dB; paper = eq. 4 with max of ground truth; unit = [0,1] data range 1)"


def mean_ssim(row: dict) -> float:
    return float(np.mean([row["ssim_axial"], row["ssim_coronal"], row["ssim_sagittal"]]))


def format_verdict(rows: list[dict], model: str = "xdiffusion") -> str:
    """One line saying, in both metrics, whether the model beats every baseline on this case, or where it loses."""
    ours = next(r for r in rows if r["method"] == model)
    losses = []
    for row in rows:
        if row["method"] == model:
            continue
        if row["psnr_paper"] >= ours["psnr_paper"]:
            losses.append(f"{row['method']} has the higher PSNR ({row['psnr_paper']:.2f} vs {ours['psnr_paper']:.2f} dB)")
        if mean_ssim(row) >= mean_ssim(ours):
            losses.append(f"{row['method']} has the higher mean SSIM ({mean_ssim(row):.3f} vs {mean_ssim(ours):.3f})")
    if not losses:
        return f"{model} beats every baseline here in both PSNR and mean SSIM"
    return f"{model} does NOT beat every baseline here: " + "; ".join(losses)
