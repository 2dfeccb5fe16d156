"""Model folders: ``config.json`` + ``model.safetensors`` (never pickle).

``save_pretrained`` writes into a temporary sibling folder and renames it into place, so a reader
never sees half a model. ``load_pretrained`` checks everything a user's folder can get wrong and
says which file and which tensor.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..errors import XDiffusionError
from ..io.atomic import replace_directory
from .config import XDiffusionConfig
from .factory import build_denoiser

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def default_model_dir() -> Path:
    """Where the shipped compact weights live (placed there by training)."""
    return Path(__file__).resolve().parent / "weights" / "compact"


def save_pretrained(model: nn.Module, config: XDiffusionConfig, directory: str | os.PathLike) -> Path:
    """Write ``config.json`` and ``model.safetensors`` to ``directory`` atomically; returns the folder."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp.", dir=directory.parent))
    try:
        config.save_json(tmp / CONFIG_NAME)
        state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "profile": config.profile})
        replace_directory(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _read_config(directory: Path) -> XDiffusionConfig:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise XDiffusionError(f"{path}: missing model config (a model folder holds {CONFIG_NAME} and {WEIGHTS_NAME})")
    return XDiffusionConfig.load_json(path)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise XDiffusionError(f"{path}: missing model weights")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise XDiffusionError(f"{path}: corrupt or truncated safetensors file ({message})") from None


def _check_state(path: Path, expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))

    def listing(names: list[str]) -> str:
        return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

    if missing:
        raise XDiffusionError(f"{path}: missing {len(missing)} tensors the config's model needs: {listing(missing)}")
    if unexpected:
        raise XDiffusionError(f"{path}: {len(unexpected)} unexpected tensors for this config: {listing(unexpected)}")
    for name, tensor in expected.items():
        if tuple(found[name].shape) != tuple(tensor.shape):
            raise XDiffusionError(
                f"{path}: tensor {name} has shape {tuple(found[name].shape)}, "
                f"the config's model needs {tuple(tensor.shape)}"
            )


def load_pretrained(directory: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, XDiffusionConfig]:
    """Rebuild the model from ``config.json`` and load ``model.safetensors``; returns (model in eval mode, config)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise XDiffusionError(f"{directory}: model folder not found")
    config = _read_config(directory)
    weights_path = directory / WEIGHTS_NAME
    state = _read_weights(weights_path)
    model = build_denoiser(config)
    _check_state(weights_path, model.state_dict(), state)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), config


def load_default(device: str | torch.device = "cpu") -> tuple[nn.Module, XDiffusionConfig]:
    """The shipped compact model, or a clear error while none has been trained and placed yet."""
    directory = default_model_dir()
    if not (directory / WEIGHTS_NAME).is_file():
        raise XDiffusionError(f"no shipped weights at {directory}: train a model or pass --model DIR")
    return load_pretrained(directory, device)
