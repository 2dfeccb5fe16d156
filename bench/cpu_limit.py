"""How close a default reconstruction comes to this CPU's limit, and which speed options win (issue 13, item 2).

1. FLOPs of one section evaluation of the shipped model (torch's FlopCounterMode: 2 x multiply-adds
   of convolutions, matmuls and attention).
2. What this CPU sustains in torch on dense work: a 2048^2 sgemm and a 3x3 convolution
   (128 -> 128 channels, 8 x 64 x 64), at 1 thread and at torch's default thread count.
3. The demo's default reconstruction (shipped model, `kmeans_t1`, 1 axial slice, the settings in
   XDiffusionLib/settings.py): wall time, the section evaluations actually run (empty sections are
   skipped), the time inside the network, hence achieved GFLOP/s and the fraction of the sgemm rate.
4. Options at equal output, each measured on the same batch of 64 sections, interleaved over
   repeats (median): torch eager (NCHW), channels_last, torch.compile (with its one-off compile
   time), ONNX Runtime (what the reconstructor uses on CPU, model/onnx_runtime.py), at 1 and at the
   default threads; and the whole demo reconstruction with each network runtime, with the largest
   output difference against torch NCHW.

    OMP_NUM_THREADS=2 .venv/bin/python bench/cpu_limit.py          # writes bench/results/cpu_limit.json
    .venv/bin/python bench/cpu_limit.py --no-compile                # skip torch.compile (~90 s to compile)
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

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
from XDiffusionLib.model.conditioning import ConditionBuilder, SparseCube  # noqa: E402
from XDiffusionLib.model.onnx_runtime import OnnxCompactDenoiser, export_unet, on_onnx_runtime  # noqa: E402
from XDiffusionLib.sampling import pipeline as pipeline_module  # noqa: E402
from XDiffusionLib.sampling.reconstructor import XDiffusionReconstructor  # noqa: E402
from XDiffusionLib.transforms.orientation import to_canonical  # noqa: E402


def dense_rates(threads: int, seconds: float = 3.0) -> dict:
    """GFLOP/s of a 2048^2 sgemm and a 3x3 conv at ``threads`` torch threads."""
    torch.set_num_threads(threads)
    a = torch.randn(2048, 2048)
    conv = torch.nn.Conv2d(128, 128, 3, padding=1).eval()
    image = torch.randn(8, 128, 64, 64)
    conv_flops = 2 * 128 * 128 * 9 * 8 * 64 * 64

    def rate(work, flops: float) -> float:
        work()
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            work()
            n += 1
        return flops * n / (time.perf_counter() - start) / 1e9

    with torch.inference_mode():
        return {"threads": threads,
                "sgemm_2048_gflops": round(rate(lambda: a @ a, 2 * 2048**3), 1),
                "conv3x3_128ch_gflops": round(rate(lambda: conv(image), conv_flops), 1)}


def section_batch(model, config, batch: int):
    side = config.side
    g = torch.Generator().manual_seed(0)
    cube = torch.rand(side, side, side, generator=g)
    sparse = SparseCube.from_cube(cube, 2, [side // 2], anchor=cube)
    depths = depth_index_to_normalised(torch.arange(batch, dtype=torch.float32), side)
    cond = ConditionBuilder(sparse, config)(section_rotations(1, 2)[0].float(), depths)
    return torch.randn(batch, 1, side, side, generator=g), torch.full((batch,), 400), cond


def flops_per_section(model, config) -> float:
    x, t, cond = section_batch(model, config, 1)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x, t, cond)
    return float(counter.get_total_flops())


class CountingModel:
    """Wraps the denoiser: counts sections evaluated and seconds spent inside the network."""

    def __init__(self, model) -> None:
        self.model, self.sections, self.seconds = model, 0, 0.0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, x, t, cond):
        start = time.perf_counter()
        out = self.model(x, t, cond)
        self.seconds += time.perf_counter() - start
        self.sections += int(x.shape[0])
        return out


def demo_reconstruction(variant: str) -> dict:
    """The demo's case with the default settings, the network (``variant``: torch_nchw,
    torch_channels_last or onnxruntime) wrapped to count its work."""
    model, config = load_pretrained(default_model_dir())
    if variant == "onnxruntime":
        model = on_onnx_runtime(model, "onnx", default_model_dir())
    canonical, _ = to_canonical(read_volume(sample_path(DEMO_SAMPLE)))
    indices = choose_indices(canonical.array, "axial", 1)
    inputs = SliceInput.from_volume(canonical, "axial", indices)
    counting = CountingModel(model)
    original = pipeline_module.XDiffusionPipeline.__init__

    def init(self, model, config, *args, **kwargs):  # the pipeline sees the wrapper, not an nn.Module
        original(self, model.model, config, *args, **kwargs)
        if variant == "torch_nchw":
            self.model = self.model.to(memory_format=torch.contiguous_format)
        counting.model = self.model
        self.model = counting

    pipeline_module.XDiffusionPipeline.__init__ = init
    try:
        reconstructor = XDiffusionReconstructor(model=counting, config=config, device="cpu", runtime="torch")
        start = time.perf_counter()
        result = reconstructor.reconstruct(inputs)
        wall = time.perf_counter() - start
    finally:
        pipeline_module.XDiffusionPipeline.__init__ = original
    scores = score(canonical.array, result.array, "axial", indices)
    return {"variant": variant, "wall_seconds": round(wall, 2),
            "network_seconds": round(counting.seconds, 2), "sections_evaluated": counting.sections,
            "psnr_paper": round(scores["psnr_paper"], 3), "array": result.array}


def option_timings(model, config, repeats: int, compile_model: bool) -> dict:
    x, t, cond = section_batch(model, config, 64)
    variants = {"eager_nchw": copy.deepcopy(model).to(memory_format=torch.contiguous_format),
                "channels_last": copy.deepcopy(model).to(memory_format=torch.channels_last)}
    compile_seconds = None
    with torch.inference_mode():
        reference = variants["eager_nchw"](x, t, cond)
        if compile_model:
            variants["torch_compile"] = torch.compile(copy.deepcopy(model))
            start = time.perf_counter()
            variants["torch_compile"](x, t, cond)
            compile_seconds = round(time.perf_counter() - start, 1)
        with tempfile.TemporaryDirectory() as folder:
            variants["onnxruntime"] = OnnxCompactDenoiser(model, export_unet(model, Path(folder) / "unet.onnx"))
        differences = {name: float((m(x, t, cond) - reference).abs().max()) for name, m in variants.items()}
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(repeats):
            for name, m in variants.items():
                start = time.perf_counter()
                m(x, t, cond)
                times[name].append((time.perf_counter() - start) / 64 * 1e3)
    return {name: {"ms_per_section": round(statistics.median(times[name]), 2),
                   "max_abs_difference_vs_eager": differences[name]} for name in variants} | \
        {"torch_compile_first_call_seconds": compile_seconds, "batch": 64}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--out", type=Path, default=RESULTS / "cpu_limit.json")
    args = parser.parse_args(argv)
    default_threads = torch.get_num_threads()
    info = machine() | {"torch_threads_default": default_threads}
    model, config = load_pretrained(default_model_dir())
    model.eval()
    flops = flops_per_section(model, config)
    print(f"[cpu_limit] {flops / 1e9:.3f} GFLOP per section evaluation", flush=True)
    dense = [dense_rates(1)] + ([dense_rates(default_threads)] if default_threads > 1 else [])
    torch.set_num_threads(default_threads)
    print(f"[cpu_limit] dense: {dense}", flush=True)
    options = {f"threads_{n}": (torch.set_num_threads(n), option_timings(model, config, args.repeats,
                                                                          not args.no_compile and n == default_threads))[1]
               for n in sorted({1, default_threads})}
    torch.set_num_threads(default_threads)
    print(f"[cpu_limit] options: {options}", flush=True)
    runs = {v: demo_reconstruction(v) for v in ("torch_nchw", "torch_channels_last", "onnxruntime")}
    peak = dense[-1]["sgemm_2048_gflops"]
    reference = runs["torch_nchw"]["array"]
    for run in runs.values():
        run["max_abs_output_difference_vs_torch_nchw"] = float(np.abs(run.pop("array") - reference).max())
    on = runs["onnxruntime"]
    achieved = flops * on["sections_evaluated"] / on["network_seconds"] / 1e9
    report = {
        "machine": info,
        "gflop_per_section_evaluation": round(flops / 1e9, 4),
        "dense_rates": dense,
        "options_batch64": options,
        "demo_reconstruction": runs,
        "achieved_network_gflops": round(achieved, 1),
        "fraction_of_sgemm_rate_in_network": round(achieved / peak, 3),
        "fraction_of_sgemm_rate_whole_reconstruction": round(
            flops * on["sections_evaluated"] / on["wall_seconds"] / 1e9 / peak, 3),
    }
    write_json(args.out, report)
    print(f"[cpu_limit] network {achieved:.1f} GFLOP/s = {achieved / peak:.0%} of sgemm ({peak} GFLOP/s, "
          f"{dense[-1]['threads']} threads); written {args.out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
