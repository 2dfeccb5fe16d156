"""Cases per hour of a cohort on CPU with 1 and 2 processes (issue 13 item 5). Never part of the tests.

The cohort: the shipped held-out MRI (``samples_with_role("heldout")`` without label maps, the
three cases ``xdiffusion evaluate`` uses by default), each reconstructed from one axial slice (K = 1, chosen by the
evaluation protocol) with the shipped model and default settings, through
``xdiffusion reconstruct-batch`` on a CSV manifest. Each configuration starts from nothing
(``--fresh``) and is timed from the launch to the last process's exit, so Python start, torch
import and model loading in every process count, as they do for a real cohort:

- ``1 process x 1 thread``   plain ``xdiffusion reconstruct-batch``, ``OMP_NUM_THREADS=1``
- ``1 process x N threads``  the same with ``OMP_NUM_THREADS=N`` (N = 2 here: the cores)
- ``2 processes x 1 thread`` ``torchrun --standalone --nproc_per_node 2`` (gloo), ``OMP_NUM_THREADS=1``

Usage::

    .venv/bin/python bench/cohort.py                  # writes bench/results/cohort_cpu.json
    .venv/bin/python bench/cohort.py --repeat 2 --only 1x1 2x1 --copies 2   # 6 cases (K = 1 and 2)

The machine's 1-minute load average is recorded before and after each run: on a shared machine it
says how much else was running.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from XDiffusionLib.data.samples import samples_with_role  # noqa: E402
from XDiffusionLib.evaluation.protocol import label_value_count  # noqa: E402
from XDiffusionLib.io import read_volume  # noqa: E402
from XDiffusionLib.io.atomic import write_json_atomic  # noqa: E402
from XDiffusionLib.settings import DEFAULTS  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "cohort_cpu.json"
CONFIGS = {"1x1": (1, 1), "1x2": (1, 2), "2x1": (2, 1)}  # name: (processes, threads per process)


def machine() -> dict:
    # torch only for its version in the record: this process times the cases, whose own processes load it
    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        memory = None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": memory, "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.cuda.is_available(), "commit": commit,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def write_manifest(folder: Path, copies: int = 1) -> tuple[Path, list[str]]:
    # As `xdiffusion evaluate` does with the samples: label maps (the skull-stripped mask) are left out.
    samples = [s for s in samples_with_role("heldout") if label_value_count(read_volume(s.path).array) is None]
    manifest = folder / "cohort.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "plane", "k", "output"])
        names = []
        for copy in range(copies):  # copy c: K = c + 1, so every row is its own case
            for sample in samples:
                name = sample.name if copy == 0 else f"{sample.name}_k{copy + 1}"
                writer.writerow([sample.path, "axial", copy + 1, name])
                names.append(name)
    return manifest, names


def run(config: str, manifest: Path, out: Path) -> dict:
    processes, threads = CONFIGS[config]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    command = [sys.executable, "-m", "XDiffusionLib.app.cli", "reconstruct-batch", "--inputs", str(manifest),
               "--out", str(out), "--device", "cpu", "--fresh", "--no-progress"]
    if processes > 1:
        command[1:2] = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), "-m"]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{config} failed:\n{done.stderr[-3000:]}")
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    case_seconds = {r["case"]: round(float(r["seconds"]), 2) for r in rows}
    return {"config": config, "processes": processes, "threads_per_process": threads, "cases": len(rows),
            "wall_seconds": round(wall, 2), "cases_per_hour": round(len(rows) / wall * 3600, 1),
            "case_seconds": case_seconds, "load_average_1min_before": round(load_before, 2),
            "load_average_1min_after": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration (alternating)")
    parser.add_argument("--copies", type=int, default=1,
                        help="list every volume this many times (copy c with K = c + 1): a longer cohort")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="xdiffusion-cohort-bench-") as scratch:
        manifest, names = write_manifest(Path(scratch), args.copies)
        for repeat in range(args.repeat):
            for config in args.only:
                result = run(config, manifest, Path(scratch) / f"{config}-{repeat}")
                print(json.dumps(result), flush=True)
                runs.append(result)
    record = {
        "what": "xdiffusion reconstruct-batch over the shipped held-out MRI, K=1 axial, shipped model, default "
                "settings; wall time from launch to exit (process start, torch import and model load included)",
        "cases": names,
        "copies": args.copies,
        "settings": DEFAULTS.to_dict(),
        "machine": machine(),
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.output, record)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
