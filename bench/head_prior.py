#!/usr/bin/env python3
"""What the head prior costs: seconds of ``fit_head_prior`` with and without its deformable stage.

On each shipped held-out sample, K = 1, 5 and 31 axial protocol inputs, one thread, the template
already loaded (its one-time load is timed apart). Writes ``bench/results/head_prior.json`` with the
machine's load average at the start (on a shared machine it says how much else was running).

    OMP_NUM_THREADS=1 .venv/bin/python bench/head_prior.py
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from XDiffusionLib.baselines.head_prior import fit_head_prior, shipped_head_template
from XDiffusionLib.data.samples import samples_with_role
from XDiffusionLib.evaluation import protocol
from XDiffusionLib.inputs import SliceInput
from XDiffusionLib.io import read_volume

RESULTS = Path(__file__).resolve().parent / "results" / "head_prior.json"
KS = (1, 5, 31)


def main() -> None:
    load_average = os.getloadavg()[0]
    start = time.perf_counter()
    template = shipped_head_template()
    rows = {"template_load_s": time.perf_counter() - start, "cases": []}
    for sample in samples_with_role("heldout"):
        volume = protocol.canonical_case(read_volume(sample.path))
        if protocol.label_value_count(np.asarray(volume.array)) is not None:
            continue  # a label map, as the evaluation skips it
        for k in KS:
            indices = protocol.choose_indices(volume.array, "axial", k)
            inputs = SliceInput.from_volume(volume, "axial", indices)
            for deform in (False, True):
                start = time.perf_counter()
                fit = fit_head_prior(template, inputs, deform=deform)
                rows["cases"].append({"case": sample.name, "shape": list(volume.shape), "k": k, "deform": deform,
                                      "seconds": round(time.perf_counter() - start, 2), "variant": fit.variant,
                                      "deformation_kept": fit.deformed})
                print(rows["cases"][-1], flush=True)
    rows["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average_1min": load_average,
                       "threads": os.environ.get("OMP_NUM_THREADS")}
    RESULTS.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
