"""How the cost of a reconstruction grows (issue 13, item 3): time and peak memory against views,
model-space size and volume size, as a table and a plot in bench/results/.

Every point is one end-to-end ``XDiffusionReconstructor.reconstruct`` of the shipped model (default
settings from XDiffusionLib/settings.py unless varied) from the middle axial slice of the shipped
held-out ``kmeans_t1`` MRI, in its own subprocess (peak memory = that process's ``ru_maxrss``):
- views 1, 2, 4, 8 (model cube 64^3, the volume as shipped);
- model-space side 32, 48, 64, 96 (the U-Net is convolutional, so it runs at any side; it was
  trained at 64, so only time and memory are meaningful away from 64);
- volume size 128x128x62 up to 512x512x300 (the sample resampled to that grid, same field of view).

Expected growth, written beside the measurement in the table:
- views: linear (each view is one pass over the cube's sections; the anchor is shared);
- side S: ~S^3 for the network (S sections x S^2 pixels) plus the S^3 rotations;
- volume voxels V: the network cost is fixed (the model cube does not change); the anchor, the
  resampling to and from the cube and the intensity mapping are linear in V, and so is memory.

    .venv/bin/python bench/scaling.py          # writes bench/results/scaling_cpu.{json,md,png}

Each point runs with one thread and reports the process's CPU time of the reconstruction (what
the work costs, nearly independent of other jobs on a shared machine) beside its wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import zoom

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from run_benchmarks import RESULTS, machine, write_json  # noqa: E402

from XDiffusionLib.app.demo import DEMO_SAMPLE  # noqa: E402
from XDiffusionLib.data.samples import sample_path  # noqa: E402
from XDiffusionLib.inputs import SliceInput  # noqa: E402
from XDiffusionLib.io import read_volume  # noqa: E402
from XDiffusionLib.io.volume import Grid, Volume  # noqa: E402
from XDiffusionLib.model.checkpoint import default_model_dir, load_pretrained  # noqa: E402
from XDiffusionLib.sampling.reconstructor import XDiffusionReconstructor  # noqa: E402
from XDiffusionLib.settings import DEFAULTS  # noqa: E402
from XDiffusionLib.transforms.orientation import to_canonical  # noqa: E402

VIEWS = (1, 2, 4, 8)
SIDES = (32, 48, 64, 96)
SHAPES = ((128, 128, 62), (192, 192, 124), (256, 256, 180), (384, 384, 240), (512, 512, 300))


def volume_of_shape(shape: tuple[int, int, int] | None):
    """The shipped sample, or the sample resampled to ``shape`` over the same field of view."""
    canonical, _ = to_canonical(read_volume(sample_path(DEMO_SAMPLE)))
    if shape is None:
        return canonical
    factors = [n / s for n, s in zip(shape, canonical.shape)]
    array = zoom(canonical.array.astype(np.float32), factors, order=1)[: shape[0], : shape[1], : shape[2]]
    spacing = tuple(sp * s / n for sp, s, n in zip(canonical.spacing, canonical.shape, shape))
    return Volume(array, Grid(array.shape, spacing, canonical.grid.origin, canonical.grid.direction))


def run_point(views: int, side: int | None, shape: tuple[int, int, int] | None) -> dict:
    model, config = load_pretrained(default_model_dir())
    if side is not None:
        config = dataclasses.replace(config, side=side)
    volume = volume_of_shape(shape)
    inputs = SliceInput.from_volume(volume, "axial", [volume.shape[2] // 2])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # The shipped path: ONNX Runtime for the U-Net (the in-memory model is exported for it).
    reconstructor = XDiffusionReconstructor(model=model, config=config, device="cpu", views=views, runtime="onnx")
    _ = reconstructor.pipeline  # export and session set-up are not part of the growth
    usage = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    result = reconstructor.reconstruct(inputs)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_seconds = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    assert result.shape == volume.shape
    return {"views": views, "side": config.side, "shape": list(volume.shape), "voxels": int(volume.array.size),
            "seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_before_mb": round(rss_before, 1), "torch_threads": torch.get_num_threads()}


def in_subprocess(views: int, side: int | None, shape) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "point.json"
        spec = json.dumps({"views": views, "side": side, "shape": shape})
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # CPU time of one thread: robust to a shared machine
        subprocess.run([sys.executable, __file__, "--point", spec, "--result", str(out)], check=True, cwd=ROOT, env=env)
        return json.loads(out.read_text())


def growth(points: list[dict], key: str) -> list[str]:
    """Measured ratio to the first point beside the ratio of ``key``."""
    first = points[0]
    return [f"{p['cpu_seconds'] / first['cpu_seconds']:.2f}x CPU time, {p['peak_rss_mb'] / first['peak_rss_mb']:.2f}x memory "
            f"for {p[key] / first[key]:.2f}x {key}" for p in points]


def table(title: str, points: list[dict], key: str, expected: str) -> list[str]:
    lines = [f"### {title}", "", f"Expected: {expected}", "",
             "| views | model side | volume | CPU seconds | wall seconds | peak RSS (MB) | growth vs first row |",
             "|---|---|---|---|---|---|---|"]
    for p, g in zip(points, growth(points, key)):
        lines.append(f"| {p['views']} | {p['side']} | {'x'.join(map(str, p['shape']))} | {p['cpu_seconds']} | "
                     f"{p['seconds']} | {p['peak_rss_mb']} | {g} |")
    return lines + [""]


def plot(groups: dict[str, tuple[list[dict], str]], path: Path) -> None:
    # here, not at the top: each point's process runs this file, and its peak memory is the measurement
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (title, (points, key)) in zip(axes, groups.items()):
        x = [p[key] for p in points]
        ax.plot(x, [p["cpu_seconds"] for p in points], "o-", color="tab:blue", label="CPU seconds (1 thread)")
        ideal = {"views": lambda v: v, "side": lambda s: s**3, "voxels": lambda v: 1.0}[key]
        ax.plot(x, [points[0]["cpu_seconds"] * ideal(v) / ideal(x[0]) for v in x], ":", color="tab:blue",
                label="expected (network)")
        ax.set_xlabel(key)
        ax.set_ylabel("CPU seconds per volume", color="tab:blue")
        if key != "views":
            ax.set_xscale("log")
            ax.set_yscale("log")
        twin = ax.twinx()
        twin.plot(x, [p["peak_rss_mb"] / 1024 for p in points], "s--", color="tab:red", label="peak RSS")
        twin.set_ylabel("peak RSS (GB)", color="tab:red")
        ax.set_title(title)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle("X-Diffusion reconstruction cost on this CPU (shipped model, 1 axial input slice)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--point", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.point:
        spec = json.loads(args.point)
        shape = tuple(spec["shape"]) if spec["shape"] else None
        write_json(args.result, run_point(spec["views"], spec["side"], shape))
        return 0
    info = machine()
    groups: dict[str, tuple[list[dict], str]] = {}
    groups["views"] = ([in_subprocess(v, None, None) for v in VIEWS], "views")
    groups["model-space side"] = ([in_subprocess(DEFAULTS.views, s, None) for s in SIDES], "side")
    groups["volume size"] = ([in_subprocess(DEFAULTS.views, None, list(s)) for s in SHAPES], "voxels")
    for title, (points, _) in groups.items():
        print(f"[scaling] {title}: {points}", flush=True)
    expected = {"views": "linear in views (one network pass over the cube per view; anchor shared)",
                "model-space side": "~side^3 (side sections x side^2 pixels per view)",
                "volume size": "network time constant; anchor, resampling and memory linear in voxels"}
    lines = ["# Reconstruction cost against views, model side and volume size", "",
             f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, load average at start "
             f"{info['load_average_1min_at_start']}; default {DEFAULTS.views} views x {DEFAULTS.steps} "
             f"{DEFAULTS.sampler} steps; `.venv/bin/python bench/scaling.py`.", ""]
    for title, (points, key) in groups.items():
        lines += table(title, points, key, expected[title])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling_cpu.md").write_text("\n".join(lines))
    write_json(args.out / "scaling_cpu.json", {"machine": info, "expected": expected,
                                               "points": {t: p for t, (p, _) in groups.items()}})
    plot(groups, args.out / "scaling_cpu.png")
    print(f"[scaling] written {args.out}/scaling_cpu.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
