"""The demo's model time now against an earlier commit, side by side on this machine (issue 13, item 2).

Runs ``xdiffusion demo`` (the shipped default model and settings of each commit, on that commit's
own code and weights) alternately for the current checkout and for ``--baseline`` (default
8a6b1bd, the model before the residual rewrite), ``--runs`` times each, and reports the median of
the demo table's ``seconds`` for the xdiffusion row (model loading + reconstruction) and the
process wall time, with the PSNR/SSIM each printed, so "faster" is never "worse".

The earlier commit is exported with ``git archive`` into a temporary folder and run with the same
virtual environment (``PYTHONPATH`` puts its ``XDiffusionLib`` in front of the editable install).

    .venv/bin/python bench/demo_speed.py                 # 3 runs each, writes bench/results/demo_speed.json
    .venv/bin/python bench/demo_speed.py --runs 5 --baseline 8a6b1bd
"""

from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from run_benchmarks import RESULTS, machine, write_json  # noqa: E402

ROW = re.compile(r"^xdiffusion\s+(?P<psnr>[\d.]+)\s+(?P<noninput>[\d.]+)\s+(?P<unit>[\d.]+)\s+"
                 r"(?P<ssim>[\d.]+/[\d.]+/[\d.]+)\s+(?P<seconds>[\d.]+)\s*$", re.M)


def export_commit(commit: str, into: Path) -> Path:
    """The tree of ``commit`` (code and its shipped weights) unpacked under ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def run_demo(code_root: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code_root), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-c", "import sys; from XDiffusionLib.app.cli import main; sys.exit(main())",
               "demo", "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=code_root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"demo in {code_root} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    match = ROW.search(proc.stdout)
    if match is None:
        raise SystemExit(f"no xdiffusion row in the demo output of {code_root}:\n{proc.stdout}")
    ssim = [float(v) for v in match["ssim"].split("/")]
    return {"model_seconds": float(match["seconds"]), "wall_seconds": round(wall, 2),
            "psnr_paper": float(match["psnr"]), "psnr_paper_noninput": float(match["noninput"]),
            "ssim_mean": round(sum(ssim) / 3, 4), "load_average_1min": round(os.getloadavg()[0], 2)}


def summarise(runs: list[dict]) -> dict:
    return {"runs": runs,
            "median_model_seconds": statistics.median(r["model_seconds"] for r in runs),
            "median_wall_seconds": statistics.median(r["wall_seconds"] for r in runs),
            "psnr_paper": runs[0]["psnr_paper"], "ssim_mean": runs[0]["ssim_mean"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="8a6b1bd", help="commit to compare against (default 8a6b1bd)")
    parser.add_argument("--runs", type=int, default=3, help="demo runs per commit (default 3)")
    parser.add_argument("--out", type=Path, default=RESULTS / "demo_speed.json")
    args = parser.parse_args(argv)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        old_root = export_commit(args.baseline, Path(tmp) / "baseline")
        results: dict[str, list[dict]] = {"current": [], "baseline": []}
        for run in range(args.runs):  # alternate, so both see the same machine load
            for label, root in (("baseline", old_root), ("current", ROOT)):
                result = run_demo(root, Path(tmp) / f"{label}-{run}")
                results[label].append(result)
                print(f"[demo_speed] run {run + 1}/{args.runs} {label}: {result}", flush=True)
    current, baseline = summarise(results["current"]), summarise(results["baseline"])
    report = {
        "machine": info,
        "current": {"commit": head, **current},
        "baseline": {"commit": args.baseline, **baseline},
        "model_time_speedup": round(baseline["median_model_seconds"] / current["median_model_seconds"], 2),
        "wall_time_speedup": round(baseline["median_wall_seconds"] / current["median_wall_seconds"], 2),
        "note": "model_seconds = the demo table's seconds for xdiffusion (model load + reconstruction); "
                "each commit runs its own shipped default model and settings",
    }
    write_json(args.out, report)
    print(f"[demo_speed] model time {baseline['median_model_seconds']:.1f} s ({args.baseline}) -> "
          f"{current['median_model_seconds']:.1f} s ({head}): {report['model_time_speedup']}x; written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
