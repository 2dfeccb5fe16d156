"""Validation during training: reconstruct held-out synthetic volumes, log paper-convention PSNR.

Validation volumes are synthetic subjects generated with a seed the training data does not use
(``--val-data``, or ``VALIDATION_SEED`` in memory); the shipped real held-out volumes are never
touched here. Each validation reconstructs every volume from K = ``val_slices`` input slices
of ``val_plane`` (chosen as ``xdiffusion evaluate`` chooses them) with the EMA weights at small settings (``val_views`` azimuth views,
``val_steps`` DPM-Solver++ steps, the model cube) and appends one row per (volume, K) and one
mean row per K to ``validation.csv`` (``psnr_paper`` over the whole volume and over
the non-input slices, the evaluation protocol's two PSNRs); ``validation.png`` plots mean PSNR against step.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import XDiffusionError
from ..evaluation.protocol import choose_indices, noninput_mask
from ..io.atomic import atomic_file
from ..io.readers import read_volume
from ..io.volume import Volume
from ..inputs import SliceInput, plane_axis
from ..metrics.psnr import psnr_paper
from ..sampling.reconstructor import XDiffusionReconstructor
from ..synth.subject import subject_rng, synthesize_subject
from ..transforms.orientation import to_canonical
from .data import find_volume_sources
from .csv_log import append_row, truncate_after

VALIDATION_CSV = "validation.csv"
VALIDATION_PNG = "validation.png"
VALIDATION_FIELDS = ("step", "volume", "k", "psnr_paper", "psnr_paper_noninput", "views", "sampler_steps", "seconds")
VALIDATION_SEED = 90_001  # synthetic validation subjects when no --val-data is given


def load_validation_volumes(paths: Sequence[str], train_config) -> list[tuple[str, Volume]]:
    """(name, canonical volume) pairs: the files under ``paths``, or synthetic subjects made in memory."""
    if paths:
        return [(Path(p).name, to_canonical(read_volume(p))[0]) for p in find_volume_sources(paths)]
    volumes = []
    for index in range(int(train_config.val_subjects)):
        subject = synthesize_subject(subject_rng(VALIDATION_SEED, index), spacing=2.0)
        volumes.append((f"synth-seed{VALIDATION_SEED}-{index:04d}", to_canonical(subject.image)[0]))
    return volumes


class Validator:
    """Runs and records validation for one training run (main process only)."""

    def __init__(self, volumes: Sequence[tuple[str, Volume]], train_config, run_dir: Path) -> None:
        if not volumes:
            raise XDiffusionError("validation needs at least one volume")
        self.volumes = list(volumes)
        self.tc = train_config
        self.run_dir = Path(run_dir)
        self.plane = train_config.val_plane
        plane_axis(self.plane)

    @property
    def csv_path(self) -> Path:
        return self.run_dir / VALIDATION_CSV

    def truncate(self, step: int) -> None:
        truncate_after(self.csv_path, step)

    def run(self, model, config, step: int) -> list[dict]:
        reconstructor = XDiffusionReconstructor(
            model=model, config=config, views=self.tc.val_views, steps=self.tc.val_steps, sampler="dpmpp",
            seed=0, device="auto",
        )
        rows = []
        for k in self.tc.val_slices:
            scores = []
            for name, volume in self.volumes:
                start = time.perf_counter()
                indices = choose_indices(volume.array, self.plane, k)  # the evaluation protocol's inputs
                output = reconstructor.reconstruct(SliceInput.from_volume(volume, self.plane, indices))
                seconds = time.perf_counter() - start
                mask = noninput_mask(volume.shape, self.plane, indices)
                score = (psnr_paper(volume.array, output.array), psnr_paper(volume.array, output.array, mask))
                scores.append(score)
                rows.append(self._row(step, name, k, score, seconds))
            rows.append(self._row(step, "mean", k, tuple(np.mean(scores, axis=0)), float("nan")))
        for row in rows:
            append_row(self.csv_path, VALIDATION_FIELDS, [row[f] for f in VALIDATION_FIELDS])
        self.plot()
        return rows

    def _row(self, step: int, name: str, k: int, score: tuple[float, float], seconds: float) -> dict:
        return {
            "step": step, "volume": name, "k": k, "psnr_paper": f"{score[0]:.4f}", "psnr_paper_noninput": f"{score[1]:.4f}",
            "views": self.tc.val_views, "sampler_steps": self.tc.val_steps, "seconds": f"{seconds:.2f}",
        }

    def plot(self) -> None:
        """``validation.png``: mean validation PSNR (paper convention) against step, one line per K."""
        import matplotlib  # matplotlib: only when the plot is drawn; Agg before pyplot loads

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # after the backend is chosen

        series: dict[int, list[tuple[int, float]]] = {}
        with open(self.csv_path, newline="") as handle:
            for row in csv.DictReader(handle):
                if row["volume"] == "mean":
                    series.setdefault(int(row["k"]), []).append((int(row["step"]), float(row["psnr_paper"])))
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for k, points in sorted(series.items()):
            steps, values = zip(*sorted(points))
            ax.plot(steps, values, marker="o", label=f"K = {k}")
        ax.set_xlabel("training step")
        ax.set_ylabel("validation PSNR (paper convention, dB)")
        ax.set_title(f"{len(self.volumes)} synthetic validation volumes, {self.plane} inputs")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        try:
            with atomic_file(self.run_dir / VALIDATION_PNG, suffix=".png") as tmp:
                fig.savefig(tmp)
        finally:
            plt.close(fig)
