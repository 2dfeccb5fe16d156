"""The compact denoiser's U-Net on ONNX Runtime: the same numbers, faster on a CPU.

The U-Net is >90% of a reconstruction's time on a CPU (``bench/cpu_limit.py``). ONNX Runtime runs
the exported graph 1.3x (one idle thread) to 2x (two threads on a busy machine) faster than torch
eager, with outputs equal to float rounding (max |difference| ~1e-6 on network outputs; the demo's
PSNR and SSIM agree to the reported digits). The cheap parts (input concatenation, pose embedding)
stay in torch.

The graph is exported once per weights file and torch version and cached under
``$XDIFFUSION_CACHE`` (default ``~/.cache/xdiffusion``)/onnx, written atomically. The cache is not
trusted: its key is computable by anyone and the folder may be shared, so the SHA-256 of every
graph is recorded at export (``<graph>.sha256``) and checked on the very bytes that are loaded; a
graph that does not match (another model's, damaged, or without a record) is exported again. A
cache folder or file that other users may write, or that another user owns, is not used at all
(the graph is exported for this run only). ``runtime="auto"`` uses it for the compact profile on a CPU when
``onnxruntime`` is installed, and falls back to torch (with one warning line) when export or
loading fails; ``runtime="onnx"`` makes that a one-line error instead.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import XDiffusionError
from ..io.atomic import atomic_file, write_text_atomic
from .checkpoint import load_pretrained
from .conditioning import Condition
from .denoiser import Denoiser
from .files import CONFIG_NAME, WEIGHTS_NAME, default_model_dir

OPSET = 17
GRAPH_VERSION = 2  # bump when the exported graph changes (2: dynamic section size)
EXPORT_BATCH = 2  # any batch runs: the batch axis is dynamic


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401  (optional: the check is whether it is installed)
    except ImportError:
        return False
    return True


def cache_dir() -> Path:
    root = os.environ.get("XDIFFUSION_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "xdiffusion")
    return Path(root) / "onnx"


@dataclass
class _UNetOutput:
    sample: torch.Tensor


class _UNetGraph(nn.Module):
    """What is exported: the diffusers U-Net called the way ``CompactDenoiser`` calls it."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return self.unet(x, timesteps, class_labels=embedding).sample


def export_unet(model: nn.Module, path: Path) -> Path:
    """Export ``model.unet`` (a ``CompactDenoiser``'s) to ``path`` with dynamic batch and section
    size (a model-space side other than the trained one runs too), atomically."""
    config = model.config
    channels = model.unet.config.in_channels
    embedding_dim = model.unet.config.block_out_channels[0] * 4
    example = (torch.zeros(EXPORT_BATCH, channels, config.side, config.side),
               torch.full((EXPORT_BATCH,), 500, dtype=torch.long),
               torch.zeros(EXPORT_BATCH, embedding_dim))
    graph = _UNetGraph(model.unet).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, suffix=".onnx") as temporary, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on diffusers' shape checks, which hold for every batch
        torch.onnx.export(graph, example, str(temporary), input_names=["x", "timesteps", "embedding"],
                          output_names=["sample"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"}, "timesteps": {0: "batch"},
                                        "embedding": {0: "batch"}, "sample": {0: "batch", 2: "height", 3: "width"}})
    return path


def graph_key(weights: Path, config_json: Path) -> str:
    """Names the exported graph of these weights: it changes with the weights, the config and torch."""
    digest = hashlib.sha256()
    for path in (weights, config_json):
        digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
    digest.update(f"torch {torch.__version__} opset {OPSET} graph {GRAPH_VERSION}".encode())
    return digest.hexdigest()[:24]


def _private(path: Path) -> bool:
    """Whether only this user can have written ``path`` (owned by us, not writable by group or
    others, not a link); where there are no owners (Windows) it is taken as private."""
    if not hasattr(os, "getuid"):
        return True
    try:
        stat = os.lstat(path)
    except OSError:
        return False
    return stat.st_uid == os.getuid() and not stat.st_mode & 0o022 and not os.path.islink(path)


def _record_path(graph: Path) -> Path:
    return graph.with_name(graph.name + ".sha256")


def _export_to_cache(model: nn.Module, graph: Path) -> bytes:
    """Export to the cache and record the graph's SHA-256 beside it; returns the graph's bytes."""
    export_unet(model, graph)
    data = graph.read_bytes()
    write_text_atomic(_record_path(graph), hashlib.sha256(data).hexdigest() + "\n")
    return data


def verified_graph(graph: Path) -> bytes | None:
    """The cached graph's bytes if they match the SHA-256 recorded at export, else None. The bytes
    checked are the bytes loaded (no window to swap the file in between)."""
    try:
        recorded = _record_path(graph).read_text(encoding="ascii").strip()
        data = graph.read_bytes()
    except (OSError, UnicodeDecodeError):
        return None
    return data if hashlib.sha256(data).hexdigest() == recorded else None


class OnnxCompactDenoiser(Denoiser):
    """``CompactDenoiser`` with its U-Net on an ONNX Runtime session (inference only, CPU).
    ``data``: the graph's bytes, already verified (loaded from them rather than from ``graph``)."""

    def __init__(self, model: nn.Module, graph: Path, threads: int | None = None, data: bytes | None = None) -> None:
        import onnxruntime  # optional: only where the ONNX runtime is used

        super().__init__()
        self.config = model.config
        self.reduction = model.reduction
        self.pose_embedding = model.pose_embedding
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(data if data is not None else str(graph), options,
                                                    providers=["CPUExecutionProvider"])
        self.graph = graph

    @torch.no_grad()  # inference only: the session has no gradients
    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Condition) -> torch.Tensor:
        x = torch.cat([noisy, cond.image.to(noisy.dtype), self.reduction(cond).to(noisy.dtype)], dim=1)
        embedding = self.pose_embedding(cond)
        feed = {"x": x.float().contiguous().numpy(),
                "timesteps": timesteps.reshape(-1).expand(x.shape[0]).to(torch.long).contiguous().numpy(),
                "embedding": embedding.float().contiguous().numpy()}
        return torch.from_numpy(self.session.run(None, feed)[0])


def on_onnx_runtime(model: nn.Module, runtime: str, model_dir: Path | None = None) -> nn.Module:
    """``model`` with its U-Net on ONNX Runtime where ``runtime`` asks for it and it can run.

    ``runtime``: "torch" (unchanged), "auto" (ONNX Runtime for a compact model loaded from
    ``model_dir`` when onnxruntime is installed, else unchanged; a failure warns and keeps torch) or
    "onnx" (required: a failure is an error). A model without a folder is exported to a private
    temporary file that is not kept.
    """
    if runtime == "torch":
        return model
    required = runtime == "onnx"
    if getattr(getattr(model, "config", None), "profile", None) != "compact":
        if required:
            raise XDiffusionError("the onnx runtime runs only the compact profile: use --runtime torch")
        return model
    if not onnxruntime_available():
        if required:
            raise XDiffusionError("the onnx runtime needs the onnxruntime package: pip install onnxruntime")
        return model
    if model_dir is None and not required:
        return model  # in-memory models (training validation, tests) keep torch unless asked
    try:
        if model_dir is None:
            with tempfile.TemporaryDirectory(prefix="xdiffusion-onnx-") as folder:
                return OnnxCompactDenoiser(model, export_unet(model, Path(folder) / "unet.onnx"))  # loaded, then gone
        folder = cache_dir()
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        graph = folder / f"compact-unet-{graph_key(model_dir / WEIGHTS_NAME, model_dir / CONFIG_NAME)}.onnx"
        if not _private(folder) or any(os.path.lexists(p) and not _private(p) for p in (graph, _record_path(graph))):
            # Others may write there: whatever it holds could be theirs. Export for this run only.
            warnings.warn(f"the ONNX cache {folder} can be written by other users: not used", RuntimeWarning,
                          stacklevel=2)
            with tempfile.TemporaryDirectory(prefix="xdiffusion-onnx-") as private:
                return OnnxCompactDenoiser(model, export_unet(model, Path(private) / "unet.onnx"))
        data = verified_graph(graph)
        if data is not None:
            try:
                return OnnxCompactDenoiser(model, graph, data=data)
            except Exception:  # noqa: BLE001 - recorded but unloadable (another onnxruntime): export again
                pass
        # Missing, damaged, another model's graph, or written without a record: export it again.
        return OnnxCompactDenoiser(model, graph, data=_export_to_cache(model, graph))
    except Exception as error:  # noqa: BLE001 - any export/runtime failure has the same remedy
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if required:
            raise XDiffusionError(f"the onnx runtime failed ({reason}): use --runtime torch") from None
        warnings.warn(f"ONNX Runtime unavailable ({reason}); running the U-Net in torch", RuntimeWarning, stacklevel=2)
        return model


def warm_cache(model_dir: Path | None = None) -> Path | None:
    """Export the shipped (or ``model_dir``'s) U-Net graph now, so the first reconstruction does not
    wait for it (``scripts/setup.sh`` calls this); returns the graph, or None where it cannot run."""
    directory = Path(model_dir) if model_dir is not None else default_model_dir()
    model, _ = load_pretrained(directory)
    fast = on_onnx_runtime(model, "auto", directory)
    return fast.graph if isinstance(fast, OnnxCompactDenoiser) else None
