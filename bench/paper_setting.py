"""The paper's sampler against the shipped default, same model, case and machine, in one run (issue 13, item 1).

Case: the demo's (shipped held-out ``kmeans_t1``, one axial input slice chosen by the protocol),
scored by ``evaluation.protocol.score``, shipped model.

- **paper setting** (§4.4 / A.3: T = 1000 DDPM steps, eta 1, classifier-free guidance): DDPM on
  the 1000-step schedule, CFG scale ``--guidance`` (3), fp32, one cross-section at a time (its
  conditional/unconditional pair in one batch of 2), all sections, ``--paper-views`` views (1).
  The shipped residual model starts half-way down the schedule (``start_fraction`` 0.5, what it was
  trained for), so the paper's sampler runs the 500 DDPM steps of the 1000-step schedule below that
  start. Time = the measured per-step time (mean over ``--measured-steps`` steps after a warm-up
  step, all sections one at a time) x steps x views. Output: the same sampler run to the end with
  the sections batched (the same arithmetic up to float rounding; batching only changes speed).
- **shipped default**: ``XDiffusionLib.settings.DEFAULTS`` (4 views x 4 DPM-Solver++ steps, no
  guidance, sections batched, empty sections skipped), timed end to end.

    .venv/bin/python bench/paper_setting.py           # writes bench/results/paper_vs_default_cpu.json
    .venv/bin/python bench/paper_setting.py --no-paper-output   # timing only (the full paper run takes minutes)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from run_benchmarks import RESULTS, machine, write_json  # noqa: E402

from XDiffusionLib.app.demo import DEMO_SAMPLE  # noqa: E402
from XDiffusionLib.data.samples import sample_path  # noqa: E402
from XDiffusionLib.evaluation.protocol import choose_indices, score  # noqa: E402
from XDiffusionLib.geometry.rotation import section_rotations  # noqa: E402
from XDiffusionLib.geometry.sections import depth_index_to_normalised  # noqa: E402
from XDiffusionLib.inputs import SliceInput  # noqa: E402
from XDiffusionLib.io import read_volume  # noqa: E402
from XDiffusionLib.model.checkpoint import default_model_dir, load_pretrained  # noqa: E402
from XDiffusionLib.model.conditioning import ConditionBuilder  # noqa: E402
from XDiffusionLib.sampling.pipeline import XDiffusionPipeline  # noqa: E402
from XDiffusionLib.sampling.reconstructor import XDiffusionReconstructor  # noqa: E402
from XDiffusionLib.sampling.schedulers import make_scheduler  # noqa: E402
from XDiffusionLib.settings import DEFAULTS  # noqa: E402
from XDiffusionLib.transforms.orientation import to_canonical  # noqa: E402

PAPER_STEPS_SCHEDULE = 1000


def demo_case():
    canonical, _ = to_canonical(read_volume(sample_path(DEMO_SAMPLE)))
    indices = choose_indices(canonical.array, "axial", 1)
    return canonical, indices, SliceInput.from_volume(canonical, "axial", indices)


def scored(canonical, indices, array) -> dict:
    s = score(canonical.array, array, "axial", indices)
    return {"psnr_paper": round(s["psnr_paper"], 3), "psnr_paper_noninput": round(s["psnr_paper_noninput"], 3),
            "ssim_mean": round(float(np.mean([s["ssim_axial"], s["ssim_coronal"], s["ssim_sagittal"]])), 4)}


def capture_sparse(model, config, inputs):
    """The SparseCube (slices + anchor) the reconstructor hands to its pipeline for ``inputs``."""
    class Captured(Exception):
        pass

    reconstructor = XDiffusionReconstructor(model=model, config=config, device="cpu")
    seen = {}

    def grab(sparse):
        seen["sparse"] = sparse
        raise Captured

    reconstructor._run_pipeline = grab
    try:
        reconstructor.reconstruct(inputs)
    except Captured:
        pass
    return seen["sparse"]


def paper_seconds_per_step(model, config, inputs, guidance: float, measured_steps: int) -> float:
    """Seconds of one DDPM step over all sections, one section (and its CFG pair) at a time."""
    sparse = capture_sparse(model, config, inputs)
    pipeline = XDiffusionPipeline(model, config, device="cpu", chunk_size=1)
    side = config.side
    builder = ConditionBuilder(sparse, config)
    depths = depth_index_to_normalised(torch.arange(side, dtype=torch.float32), side)
    cond = builder(section_rotations(1, sparse.axis)[0].float(), depths)
    scheduler = make_scheduler("ddpm", config)
    scheduler.set_timesteps(PAPER_STEPS_SCHEDULE)
    first = PAPER_STEPS_SCHEDULE - int(round(PAPER_STEPS_SCHEDULE * config.start_fraction))
    x = torch.randn(side, 1, side, side)
    with torch.inference_mode():
        def step(k: int) -> None:
            nonlocal x
            t = scheduler.timesteps[first + k]
            x = scheduler.step(pipeline.predict(x, t, cond, guidance), t, x).prev_sample

        step(0)  # warm-up
        start = time.perf_counter()
        for k in range(1, 1 + measured_steps):
            step(k)
        return (time.perf_counter() - start) / measured_steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--paper-views", type=int, default=1)
    parser.add_argument("--measured-steps", type=int, default=3)
    parser.add_argument("--no-paper-output", action="store_true", help="time the paper setting only")
    parser.add_argument("--out", type=Path, default=RESULTS / "paper_vs_default_cpu.json")
    args = parser.parse_args(argv)
    info = machine() | {"torch_threads": torch.get_num_threads()}
    model, config = load_pretrained(default_model_dir())
    canonical, indices, inputs = demo_case()
    paper_steps = int(round(PAPER_STEPS_SCHEDULE * config.start_fraction))

    start = time.perf_counter()
    default = XDiffusionReconstructor(model=model, config=config, device="cpu").reconstruct(inputs)
    default_seconds = time.perf_counter() - start
    default_record = {"settings": DEFAULTS.to_dict(), "seconds": round(default_seconds, 2),
                      **scored(canonical, indices, default.array)}
    print(f"[paper_setting] default: {default_record}", flush=True)

    per_step = paper_seconds_per_step(model, config, inputs, args.guidance, args.measured_steps)
    paper_seconds = per_step * paper_steps * args.paper_views
    paper_record = {
        "sampler": "ddpm (eta 1)", "schedule_steps": PAPER_STEPS_SCHEDULE, "steps_run": paper_steps,
        "guidance": args.guidance, "views": args.paper_views, "batch": "one section (+ its CFG pair) at a time",
        "sections": config.side, "seconds_per_step_all_sections": round(per_step, 3),
        "seconds": round(paper_seconds, 1), "seconds_method": "measured per-step time x steps x views",
    }
    print(f"[paper_setting] paper timing: {paper_record}", flush=True)
    if not args.no_paper_output:
        start = time.perf_counter()
        paper = XDiffusionReconstructor(model=model, config=config, device="cpu", sampler="ddpm",
                                        steps=paper_steps, guidance=args.guidance, views=args.paper_views).reconstruct(inputs)
        paper_record["output_run_seconds_batched"] = round(time.perf_counter() - start, 1)
        paper_record.update(scored(canonical, indices, paper.array))
    report = {"machine": info, "case": f"kmeans_t1, axial slice {list(indices)}",
              "paper_setting": paper_record, "shipped_default": default_record,
              "speedup_default_vs_paper": round(paper_seconds / default_seconds, 1)}
    write_json(args.out, report)
    print(f"[paper_setting] paper {paper_seconds:.0f} s vs default {default_seconds:.1f} s: "
          f"{report['speedup_default_vs_paper']}x; written {args.out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
