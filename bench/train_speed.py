"""Training speed: seconds per optimizer step, split into example drawing and forward/backward.

Not a test. Usage (on a quiet machine; the numbers depend on what else runs):

    OMP_NUM_THREADS=2 .venv/bin/python bench/train_speed.py --data DIR [--side 64] [--batch-size 16]
        [--steps 8] [--config JSON] [--json OUT.json]

Uses the trainer's own pieces (``sample_batch``, ``drop_condition``, ``diffusion_loss``, AdamW),
reports the median over the steps after the first (warm-up), and writes JSON when asked.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from XDiffusionLib.model.conditioning import drop_condition
from XDiffusionLib.model.factory import build_denoiser
from XDiffusionLib.training.config import model_profile
from XDiffusionLib.training.data import VolumeDataset
from XDiffusionLib.training.examples import sample_batch
from XDiffusionLib.training.trainer import diffusion_loss, training_noise_scheduler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--profile", default="compact")
    parser.add_argument("--side", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--config", default=None, help="model config overrides (JSON object)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    config = model_profile(args.profile, side=args.side, overrides=json.loads(args.config) if args.config else None)
    start = time.perf_counter()
    dataset = VolumeDataset(args.data, config.side)
    load_s = time.perf_counter() - start
    torch.manual_seed(0)
    model = build_denoiser(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = training_noise_scheduler(config)
    data_s, compute_s = [], []
    for step in range(args.steps):
        generator = torch.Generator().manual_seed(step)
        t0 = time.perf_counter()
        target, condition = sample_batch(dataset, args.batch_size, generator, config)
        condition = drop_condition(condition, generator, config.cond_dropout)
        t1 = time.perf_counter()
        loss = diffusion_loss(model, scheduler, target, condition, generator, config.prediction_type)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        data_s.append(t1 - t0)
        compute_s.append(t2 - t1)
    data_med = statistics.median(data_s[1:] or data_s)
    compute_med = statistics.median(compute_s[1:] or compute_s)
    result = {
        "volumes": len(dataset),
        "load_seconds": round(load_s, 2),
        "side": config.side,
        "batch_size": args.batch_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "median_data_seconds": round(data_med, 4),
        "median_forward_backward_seconds": round(compute_med, 4),
        "steps_per_second": round(1.0 / (data_med + compute_med), 3),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": platform.processor() or platform.machine(),
        "load_average": os.getloadavg()[0],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
