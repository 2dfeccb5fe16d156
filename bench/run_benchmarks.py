"""Speed and memory of X-Diffusion reconstructions (``make bench``). Never part of the tests.

Every case runs in its own Python subprocess, so its peak memory is that process's own
``ru_maxrss`` (torch allocates outside Python's heap, where tracemalloc cannot see) and CUDA peak
memory is ``torch.cuda.max_memory_allocated`` of that process alone. Results go to
``bench/results/cpu.json`` and ``bench/results/gpu.json`` with the machine described.

CPU section (always):
- ``compact_cpu``: the compact profile (shipped weights when present, else the default config with
  random weights) reconstructing a shipped held-out MRI (MNI152 NLin6 2 mm, 91x109x91) from one
  axial slice, end to end through ``reconstruct_volume``.
- ``paper_small_cpu``: the paper profile's architecture at a CPU-sized width (see
  ``PAPER_SMALL``), random weights, the same volume and settings.
- ``paper_full_cpu_step``: the full-size paper model (random weights): one U-Net evaluation of
  one cross-section, its condition features (VAE encode + CLIP) and one VAE decode, timed; the
  paper setting on this CPU is estimated from the measured per-evaluation time.
GPU section (only with CUDA; else recorded as skipped): the full-size paper profile, random
weights, on a 155^3 volume from one input slice, with 1 and 5 views:
- ``paper_gpu_paper_setting``: DDPM 1000 steps, one cross-section at a time (CFG pair in one
  batch), fp32; measured per-step time over a few steps x 1000 steps x views, plus the decode;
- ``paper_gpu_fast``: DPM-Solver++ 20 steps, bf16 autocast, all cross-sections of a view in one
  batch; the whole reconstruction measured.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"

VIEWS, STEPS, SAMPLER = 2, 10, "dpmpp"  # CPU settings shared by both profiles
GPU_SIDE, GPU_VIEWS, GUIDANCE = 155, (1, 5), 3.0
PAPER_SETTING_MEASURED_STEPS = 3

# The paper architecture ([1, 2, 4, 4] channel multiples, 2 ResNets per level, cross-attention at
# the 3 finest levels, 8 heads, VAE with 4 levels, CLIP ViT) at a width a 2-core CPU can run:
# base 64 channels instead of 320, context 256 instead of 768, 128x128 VAE images (16x16
# latents) instead of 256x256, a 4-layer ViT-B-like-but-narrow CLIP, model cube side 64.
PAPER_SMALL = dict(
    side=64,
    block_out_channels=(64, 128, 256, 256),
    norm_num_groups=32,
    profile_options=dict(
        image_size=128, cross_attention_dim=256, vae_block_out_channels=[32, 64, 128, 128],
        clip_hidden_size=256, clip_intermediate_size=1024, clip_layers=4, clip_heads=4,
        clip_patch_size=16, clip_image_size=128,
    ),
)


# ---------------------------------------------------------------------------------------- helpers


def machine() -> dict:
    # here, not at the top: each case's process runs this file and loads only what it needs (peak memory)
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": ram_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
    }
    try:
        # optional: their versions go in the machine description when installed
        import diffusers
        import transformers

        info["diffusers"], info["transformers"] = diffusers.__version__, transformers.__version__
    except ImportError:
        pass
    return info


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def sample_volume():
    # here, not at the top: each case's process runs this file and loads only what it needs (peak memory)
    from XDiffusionLib.data.samples import sample_path
    from XDiffusionLib.io.readers import read_volume

    return read_volume(sample_path("mni152_nlin6"))


def reconstruct_case(model, config, label: str) -> dict:
    """End-to-end seconds per volume (one axial input slice) on the shipped held-out MRI."""
    # here, not at the top: each case's process runs this file and loads only what it needs (peak memory)
    import torch

    from XDiffusionLib.sampling.reconstructor import XDiffusionReconstructor, reconstruct_volume
    from XDiffusionLib.transforms.orientation import to_canonical

    volume = sample_volume()
    canonical, _ = to_canonical(volume)
    middle = canonical.shape[2] // 2
    method = XDiffusionReconstructor(model=model, config=config, views=VIEWS, steps=STEPS, sampler=SAMPLER, device="cpu")
    rss_setup = peak_rss_mb()
    start = time.perf_counter()
    result = reconstruct_volume(volume, "axial", [middle], reconstructor=method)
    seconds = time.perf_counter() - start
    assert result.volume.array.shape == volume.shape
    return {
        "model": label,
        "parameters_million": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "model_side": config.side,
        "volume": f"mni152_nlin6 {'x'.join(map(str, volume.shape))}",
        "input_slices": 1,
        "views": VIEWS,
        "steps": STEPS,
        "sampler": SAMPLER,
        "guidance": 1.0,
        "cross_section_evaluations": VIEWS * STEPS * config.side,
        "seconds_per_volume": round(seconds, 2),
        "peak_rss_mb_after_setup": rss_setup,
        "torch_threads": torch.get_num_threads(),
    }


# ------------------------------------------------------------------------------------- CPU cases


def case_compact_cpu() -> dict:
    # here, not at the top: each case's process runs this file and loads only what it needs (peak memory)
    import torch

    from XDiffusionLib.model.checkpoint import WEIGHTS_NAME, default_model_dir, load_pretrained
    from XDiffusionLib.model.config import XDiffusionConfig
    from XDiffusionLib.model.factory import build_denoiser

    directory = default_model_dir()
    if (directory / WEIGHTS_NAME).is_file():
        model, config = load_pretrained(directory)
        label = f"compact, shipped weights ({directory.relative_to(ROOT)})"
    else:
        torch.manual_seed(0)
        config = XDiffusionConfig()
        model = build_denoiser(config).eval()
        label = "compact, default config, random weights (no shipped weights found)"
    return reconstruct_case(model, config, label)


def case_paper_small_cpu() -> dict:
    # here, not at the top: each case's process runs this file and loads only what it needs (peak memory)
    import torch

    from XDiffusionLib.model.paper import PaperDenoiser, paper_config

    torch.manual_seed(0)
    config = paper_config(**PAPER_SMALL)
    model = PaperDenoiser(config).eval()
    result = reconstruct_case(model, config, "paper architecture at CPU width (PAPER_SMALL), random weights")
    result["size"] = (
        "U-Net (64,128,256,256) x2 ResNets, cross-attention at 3 levels, 8 heads, context 256; "
        "VAE (32,64,128,128), 128x128 images -> 4x16x16 latents; CLIP 4 layers x 256; cube side 64"
    )
    return result


def case_paper_full_cpu_step() -> dict:
    # here, not at the top: each case's process runs this file and loads only what it needs (peak memory)
    import torch

    from XDiffusionLib.geometry.rotation import azimuth_rotations
    from XDiffusionLib.model.conditioning import ConditionBuilder, SparseCube
    from XDiffusionLib.model.paper import PaperDenoiser, paper_config

    torch.manual_seed(0)
    start = time.perf_counter()
    config = paper_config()
    model = PaperDenoiser(config).eval()
    build = time.perf_counter() - start
    side = config.side
    sparse = SparseCube.from_cube(torch.rand(side, side, side), 2, [side // 2])
    cond = ConditionBuilder(sparse, config)(azimuth_rotations(1)[0], torch.zeros(1))
    noisy = torch.randn(1, *model.latent_shape)
    t = torch.full((1,), 500)
    with torch.inference_mode():
        start = time.perf_counter()
        latents, embeds = model.image_features(model.condition_image(cond))
        features = time.perf_counter() - start
        hidden = model.context(embeds, cond)
        x = torch.cat([noisy, latents], 1)
        model.unet(x, t, encoder_hidden_states=hidden)  # warm-up
        times = []
        for _ in range(2):
            start = time.perf_counter()
            model.unet(x, t, encoder_hidden_states=hidden)
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        model.decode(noisy)
        decode = time.perf_counter() - start
    unet = sum(times) / len(times)
    evaluations = side * 1000 * 2  # one view: D sections x 1000 DDPM steps x (conditional + unconditional)
    return {
        "model": "paper, full size, random weights",
        "parameters_million": {
            "unet": round(sum(p.numel() for p in model.unet.parameters()) / 1e6, 1),
            "vae": round(sum(p.numel() for p in model.vae.parameters()) / 1e6, 1),
            "clip_image_encoder": round(sum(p.numel() for p in model.image_encoder.parameters()) / 1e6, 1),
        },
        "build_seconds_random_init": round(build, 2),
        "unet_seconds_per_evaluation_batch1": round(unet, 3),
        "condition_features_seconds": round(features, 3),
        "vae_decode_seconds_per_section": round(decode, 3),
        "estimated_paper_setting_hours_per_view": round((evaluations * unet + side * decode) / 3600, 1),
        "estimate": f"{side} sections x 1000 DDPM steps x 2 (CFG) x measured U-Net time + {side} decodes",
        "torch_threads": torch.get_num_threads(),
    }


# ------------------------------------------------------------------------------------- GPU cases


def _gpu_model():
    # here, not at the top: each case's process runs this file and loads only what it needs (peak memory)
    import torch

    from XDiffusionLib.model.conditioning import SparseCube
    from XDiffusionLib.model.paper import PaperDenoiser, paper_config

    torch.manual_seed(0)
    config = paper_config(side=GPU_SIDE)
    model = PaperDenoiser(config).eval()
    g = torch.Generator().manual_seed(0)
    sparse = SparseCube.from_cube(torch.rand((GPU_SIDE,) * 3, generator=g), 2, [GPU_SIDE // 2])
    return model, config, sparse


def case_paper_gpu_paper_setting() -> dict:
    # here, not at the top: each case's process runs this file and loads only what it needs (peak memory)
    import torch

    from XDiffusionLib.geometry.rotation import azimuth_rotations
    from XDiffusionLib.geometry.sections import depth_index_to_normalised
    from XDiffusionLib.model.conditioning import ConditionBuilder
    from XDiffusionLib.sampling.pipeline import XDiffusionPipeline
    from XDiffusionLib.sampling.schedulers import make_scheduler

    model, config, sparse = _gpu_model()
    pipeline = XDiffusionPipeline(model, config, device="cuda", chunk_size=1, bf16=False)
    device = pipeline.device
    builder = ConditionBuilder(sparse, config, device=device)
    depths = depth_index_to_normalised(torch.arange(GPU_SIDE, dtype=torch.float32), GPU_SIDE).to(device)
    cond = builder(azimuth_rotations(1)[0].to(device), depths)
    scheduler = make_scheduler("ddpm", config)
    scheduler.set_timesteps(1000, device=device)
    x = torch.randn(GPU_SIDE, *model.latent_shape, device=device)

    def one_step(k: int) -> None:
        nonlocal x
        t = scheduler.timesteps[k]
        prediction = pipeline.predict(scheduler.scale_model_input(x, t), t, cond, GUIDANCE)
        x = scheduler.step(prediction, t, x).prev_sample

    with torch.inference_mode():
        one_step(0)  # warm-up (kernel selection, condition features)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for k in range(1, 1 + PAPER_SETTING_MEASURED_STEPS):
            one_step(k)
        torch.cuda.synchronize()
        per_step = (time.perf_counter() - start) / PAPER_SETTING_MEASURED_STEPS
        start = time.perf_counter()
        model.decode(x)
        torch.cuda.synchronize()
        decode = time.perf_counter() - start
    return {
        "model": "paper, full size, random weights, fp32",
        "volume_side": GPU_SIDE,
        "sampler": "ddpm",
        "steps": 1000,
        "guidance": GUIDANCE,
        "batch": "one cross-section at a time (its CFG pair in one batch of 2)",
        "measured_steps": PAPER_SETTING_MEASURED_STEPS,
        "seconds_per_step_all_sections": round(per_step, 3),
        "decode_seconds_per_view": round(decode, 3),
        "seconds_per_volume": {str(v): round(v * (1000 * per_step + decode), 1) for v in GPU_VIEWS},
        "seconds_per_volume_method": "measured per-step time x 1000 steps x views + measured decode x views",
        "peak_cuda_memory_gb": round(torch.cuda.max_memory_allocated() / 1024**3, 2),
    }


def case_paper_gpu_fast() -> dict:
    # here, not at the top: each case's process runs this file and loads only what it needs (peak memory)
    import torch

    from XDiffusionLib.sampling.pipeline import XDiffusionPipeline
    from XDiffusionLib.settings import ReconstructionSettings

    model, config, sparse = _gpu_model()
    pipeline = XDiffusionPipeline(model, config, device="cuda", chunk_size=None, bf16=True)
    pipeline(sparse, ReconstructionSettings(views=1, steps=2, sampler="dpmpp", guidance=GUIDANCE))  # warm-up
    seconds, memory = {}, {}
    for views in GPU_VIEWS:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        out = pipeline(sparse, ReconstructionSettings(views=views, steps=20, sampler="dpmpp", guidance=GUIDANCE))
        torch.cuda.synchronize()
        seconds[str(views)] = round(time.perf_counter() - start, 2)
        memory[str(views)] = round(torch.cuda.max_memory_allocated() / 1024**3, 2)
        assert out.cube.shape == (GPU_SIDE,) * 3
    return {
        "model": "paper, full size, random weights, bf16 autocast",
        "volume_side": GPU_SIDE,
        "sampler": "dpmpp",
        "steps": 20,
        "guidance": GUIDANCE,
        "batch": f"all {GPU_SIDE} cross-sections of a view and their CFG pairs in one batch",
        "final_chunk_size": pipeline.chunk_size,
        "seconds_per_volume": seconds,
        "peak_cuda_memory_gb": memory,
    }


def case_compact_gpu() -> dict:
    """The shipped model on the demo's case (kmeans_t1, 1 axial slice), default settings, on CUDA:
    fp32 and bf16 autocast, whole reconstructions after one warm-up, with their PSNR."""
    # here, not at the top: each case's process runs this file and loads only what it needs (peak memory)
    import torch

    from XDiffusionLib.app.demo import DEMO_SAMPLE
    from XDiffusionLib.data.samples import sample_path
    from XDiffusionLib.evaluation.protocol import choose_indices, score
    from XDiffusionLib.io import read_volume
    from XDiffusionLib.inputs import SliceInput
    from XDiffusionLib.model.checkpoint import default_model_dir, load_pretrained
    from XDiffusionLib.sampling.reconstructor import XDiffusionReconstructor
    from XDiffusionLib.settings import DEFAULTS
    from XDiffusionLib.transforms.orientation import to_canonical

    canonical, _ = to_canonical(read_volume(sample_path(DEMO_SAMPLE)))
    indices = choose_indices(canonical.array, "axial", 1)
    inputs = SliceInput.from_volume(canonical, "axial", indices)
    results = {}
    for label, bf16 in (("fp32", False), ("bf16", True)):
        model, config = load_pretrained(default_model_dir(), "cuda")
        method = XDiffusionReconstructor(model=model, config=config, device="cuda", bf16=bf16)
        method.reconstruct(inputs)  # warm-up: kernels, cuDNN autotuning
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        out = method.reconstruct(inputs)
        torch.cuda.synchronize()
        results[label] = {"seconds_per_volume": round(time.perf_counter() - start, 3),
                          "psnr_paper": round(score(canonical.array, out.array, "axial", indices)["psnr_paper"], 3),
                          "peak_cuda_memory_gb": round(torch.cuda.max_memory_allocated() / 1024**3, 2)}
    return {"model": "compact, shipped weights", "case": f"{DEMO_SAMPLE} axial {list(indices)}",
            "settings": DEFAULTS.to_dict(), **results}


CPU_CASES = {
    "compact_cpu": case_compact_cpu,
    "paper_small_cpu": case_paper_small_cpu,
    "paper_full_cpu_step": case_paper_full_cpu_step,
}
GPU_CASES = {
    "paper_gpu_paper_setting": case_paper_gpu_paper_setting,
    "paper_gpu_fast": case_paper_gpu_fast,
    "compact_gpu": case_compact_gpu,
}


# ---------------------------------------------------------------------------------------- driver


def run_in_subprocess(name: str, threads: int | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--run-case", name, "--result", str(out)]
        if threads:
            command += ["--threads", str(threads)]
        print(f"[bench] {name} ...", flush=True)
        start = time.perf_counter()
        proc = subprocess.run(command, cwd=ROOT)
        wall = time.perf_counter() - start
        if proc.returncode != 0 or not out.is_file():
            return {"error": f"case exited with status {proc.returncode}", "wall_seconds": round(wall, 1)}
        result = json.loads(out.read_text())
    result["process_wall_seconds"] = round(wall, 1)
    print(f"[bench] {name}: {json.dumps(result)}", flush=True)
    return result


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; results are for everyone to read
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=[*CPU_CASES, *GPU_CASES], help="run just these cases")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    parser.add_argument("--run-case", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.run_case:  # child process: one case
        # here, not at the top: each case's process runs this file and loads only what it needs (peak memory)
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        result = {**CPU_CASES, **GPU_CASES}[args.run_case]()
        result["peak_rss_mb"] = peak_rss_mb()
        write_json(args.result, result)
        return 0

    # here, not at the top: each case's process runs this file and loads only what it needs (peak memory)
    import torch

    info = machine()
    info["torch_threads"] = args.threads or torch.get_num_threads()
    info["omp_num_threads_env"] = os.environ.get("OMP_NUM_THREADS")
    wanted = set(args.only or [*CPU_CASES, *GPU_CASES])
    cpu = {name: run_in_subprocess(name, args.threads) for name in CPU_CASES if name in wanted}
    if cpu:
        write_json(args.out / "cpu.json", {"machine": info, "settings": {"views": VIEWS, "steps": STEPS, "sampler": SAMPLER}, "cases": cpu})
    gpu_wanted = [name for name in GPU_CASES if name in wanted]
    if gpu_wanted:
        if torch.cuda.is_available():
            gpu = {name: run_in_subprocess(name, args.threads) for name in gpu_wanted}
        else:
            gpu = {name: {"skipped": "no CUDA"} for name in gpu_wanted}
        write_json(args.out / "gpu.json", {"machine": info, "cases": gpu})
    print(f"[bench] results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
