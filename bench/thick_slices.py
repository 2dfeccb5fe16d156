"""Thick-slice workflow speed (issue 21 item 5): a 256x256x25 scan at 0.78x0.78x6.5 mm onto 0.8125 mm
slices (factor 8: 256x256x193; the grid runs from the first acquired slice's centre to the last's).

The scan is made from the shipped held-out ``pydeface_mean`` (1 mm mean head): resampled in-plane to
256x256 at 0.78 mm and box-averaged into 25 axial slabs 6.5 mm thick. Times
``reconstruct_thick_slices`` with the shipped weights and default settings (the anchor with its
template fit, the model, the data-consistency projection) in this process after a cold model
load, and the process's peak resident memory; writes ``bench/results/thick_slices.json``.

    OMP_NUM_THREADS=1 .venv/bin/python bench/thick_slices.py
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import zoom

from XDiffusionLib.data.samples import samples_with_role
from XDiffusionLib.evaluation.protocol import canonical_case
from XDiffusionLib.io.readers import read_volume
from XDiffusionLib.io.volume import Volume
from XDiffusionLib.sampling.thick_slices import reconstruct_thick_slices

OUT = Path(__file__).resolve().parent / "results" / "thick_slices.json"


def thick_scan():
    sample = next(s for s in samples_with_role("heldout") if s.name == "pydeface_mean")
    head = canonical_case(read_volume(sample.path))
    spacing = np.asarray(head.spacing)
    in_plane = zoom(head.array, (256 * 0.78 / (head.shape[0] * spacing[0]), 256 * 0.78 / (head.shape[1] * spacing[1]),
                                 1.0), order=1)[:256, :256]
    in_plane = np.pad(in_plane, [(0, 256 - in_plane.shape[0]), (0, 256 - in_plane.shape[1]), (0, 0)])
    z = np.arange(head.shape[2]) * spacing[2]
    centre = z.mean()
    slabs = [in_plane[:, :, np.abs(z - (centre + (i - 12) * 6.5)) <= 3.25].mean(axis=2) for i in range(25)]
    return Volume.from_array(np.stack(slabs, axis=2).astype(np.float32), (0.78, 0.78, 6.5))


def main() -> int:
    scan = thick_scan()
    start = time.perf_counter()
    result = reconstruct_thick_slices(scan, slice_factor=8)
    seconds = time.perf_counter() - start
    record = {
        "case": "256x256x25 at 0.78x0.78x6.5 mm -> factor 8",
        "output_shape": list(result.volume.shape),
        "output_spacing_mm": [round(s, 4) for s in result.volume.spacing],
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d"),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
