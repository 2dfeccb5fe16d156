"""Validation during training: reconstruct held-out synthetic volumes, log paper-convention PSNR.

Validation volumes are synthetic subjects generated with a seed the training data does not use
(``--val-data``, or ``VALIDATION_SEED`` in memory); the shipped real held-out volumes are never
touched here. Each validation reconstructs every volume from K = ``val_slices`` input slices
of ``val_plane`` with the EMA weights at small settings (``val_views`` azimuth views,
``val_steps`` DPM-Solver++ steps, the model cube) and appends one row per (volume, K) and one
mean row per K to ``validation.csv``; ``validation.png`` plots mean PSNR against step.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import XDiffusionError
from ..io.volume import Volume
from ..methods import SliceInput, plane_axis

VALIDATION_CSV = "validation.csv"
VALIDATION_PNG = "validation.png"
VALIDATION_FIELDS = ("step", "volume", "k", "psnr_paper", "views", "sampler_steps", "seconds")
VALIDATION_SEED = 90_001  # synthetic validation subjects when no --val-data is given


def input_indices(volume: Volume, plane: str, k: int) -> list[int]:
    """K input slices evenly spaced inside the foreground along the plane axis (K = 1: its middle)."""
    from ..baselines.foreground import bounding_box, foreground_mask

    axis = plane_axis(plane)
    box = bounding_box(foreground_mask(volume.array), axis) or (0, volume.shape[axis] - 1)
    low, high = box
    positions = np.linspace(low, high, k + 2)[1:-1]
    indices = sorted({int(round(p)) for p in positions})
    return indices


def load_validation_volumes(paths: Sequence[str], train_config) -> list[tuple[str, Volume]]:
    """(name, canonical volume) pairs: the files under ``paths``, or synthetic subjects made in memory."""
    from ..transforms.orientation import to_canonical

    if paths:
        from ..io.readers import read_volume
        from .data import find_volume_sources

        return [(Path(p).name, to_canonical(read_volume(p))[0]) for p in find_volume_sources(paths)]
    from ..synth.subject import subject_rng, synthesize_subject

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
        from .trainer import _truncate_csv

        _truncate_csv(self.csv_path, step)

    def run(self, model, config, step: int) -> list[dict]:
        from ..metrics.psnr import psnr_paper
        from ..sampling.reconstructor import XDiffusionReconstructor
        from .trainer import _append_csv

        reconstructor = XDiffusionReconstructor(
            model=model, config=config, views=self.tc.val_views, steps=self.tc.val_steps, sampler="dpmpp",
            seed=0, device="auto",
        )
        rows = []
        for k in self.tc.val_slices:
            scores = []
            for name, volume in self.volumes:
                start = time.perf_counter()
                inputs = SliceInput.from_volume(volume, self.plane, input_indices(volume, self.plane, k))
                output = reconstructor.reconstruct(inputs)
                score = psnr_paper(volume.array, output.array)
                scores.append(score)
                rows.append(self._row(step, name, k, score, time.perf_counter() - start))
            rows.append(self._row(step, "mean", k, float(np.mean(scores)), float("nan")))
        for row in rows:
            _append_csv(self.csv_path, VALIDATION_FIELDS, [row[f] for f in VALIDATION_FIELDS])
        self.plot()
        return rows

    def _row(self, step: int, name: str, k: int, score: float, seconds: float) -> dict:
        return {
            "step": step, "volume": name, "k": k, "psnr_paper": f"{score:.4f}",
            "views": self.tc.val_views, "sampler_steps": self.tc.val_steps, "seconds": f"{seconds:.2f}",
        }

    def plot(self) -> None:
        """``validation.png``: mean validation PSNR (paper convention) against step, one line per K."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

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
        tmp = self.run_dir / f".{VALIDATION_PNG}.tmp.png"
        fig.savefig(tmp)
        plt.close(fig)
        os.replace(tmp, self.run_dir / VALIDATION_PNG)
