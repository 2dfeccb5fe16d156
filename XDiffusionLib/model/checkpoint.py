"""Model folders: ``config.json`` + ``model.safetensors`` (never pickle).

``save_pretrained`` writes into a temporary sibling folder and renames it into place, so a reader
never sees half a model. It records two checksums in the metadata of ``model.safetensors``:
``config_sha256`` (the bytes of ``config.json``) and ``weights_sha256`` (the tensor bytes,
``io.checksums``), so both files travel together (training checkpoints move them out of the
folder). ``load_pretrained`` verifies both when they are recorded, and fails with one line naming
the file that changed: flipped bytes in the weights, or an edited or swapped config, would
otherwise give wrong images without any error. Folders saved before checksums existed load
without verification. It also checks everything else a user's folder can get wrong and says
which file and which tensor.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import XDiffusionError
from ..io.atomic import replace_directory, temporary_directory
from ..io.checksums import (
    check_safetensors_size,
    file_sha256,
    read_safetensors_header,
    safetensors_metadata,
    seal_safetensors,
    tensor_data_sha256,
)
from .config import INFERENCE_FIELDS, XDiffusionConfig
from .factory import build_denoiser
# Their one home is model/files.py (torch-free).
from .files import CONFIG_NAME, WEIGHTS_CHECKSUM, WEIGHTS_NAME, default_model_dir, weights_checksum  # noqa: F401

# The other key of the checksums recorded in the weights file's metadata (besides WEIGHTS_CHECKSUM).
CONFIG_CHECKSUM = "config_sha256"


def save_pretrained(model: nn.Module, config: XDiffusionConfig, directory: str | os.PathLike) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (with both checksums) to ``directory``
    atomically; returns the folder."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_directory(directory)
    try:
        config.save_json(tmp / CONFIG_NAME)
        state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
        unsealed = tmp / f".{WEIGHTS_NAME}.unsealed"
        save_file(state, str(unsealed), metadata={"format": "pt", "profile": config.profile})
        seal_safetensors(unsealed, tmp / WEIGHTS_NAME, {CONFIG_CHECKSUM: file_sha256(tmp / CONFIG_NAME)},
                         WEIGHTS_CHECKSUM)
        unsealed.unlink()
        replace_directory(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def replace_config(directory: str | os.PathLike, config: XDiffusionConfig) -> Path:
    """Give the model folder ``directory`` a new ``config.json`` (an inference-time field such as
    ``residual_gain``; the architecture must stay the weights') and record its checksum in the weights
    file, whose tensor bytes stay as they are. The folder is replaced as a whole (its other files
    copied): never a new config beside weights sealed for the old one."""
    directory = Path(directory)
    verify_checksums(directory)
    old = read_config(directory)
    fixed = {key: value for key, value in old.to_dict().items() if key not in INFERENCE_FIELDS}
    if fixed != {key: value for key, value in config.to_dict().items() if key not in INFERENCE_FIELDS}:
        raise XDiffusionError(f"{directory / CONFIG_NAME}: only {', '.join(INFERENCE_FIELDS)} may change "
                              "without new weights")
    tmp = temporary_directory(directory)
    try:
        for item in directory.iterdir():
            if item.is_file() and item.name not in (CONFIG_NAME, WEIGHTS_NAME):
                shutil.copy2(item, tmp / item.name)
        config.save_json(tmp / CONFIG_NAME)
        seal_safetensors(directory / WEIGHTS_NAME, tmp / WEIGHTS_NAME, {CONFIG_CHECKSUM: file_sha256(tmp / CONFIG_NAME)},
                         WEIGHTS_CHECKSUM)
        replace_directory(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_config(directory: Path) -> XDiffusionConfig:
    """The ``XDiffusionConfig`` of a model folder, without loading (or verifying) its weights."""
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise XDiffusionError(f"{path}: missing model config (a model folder holds {CONFIG_NAME} and {WEIGHTS_NAME})")
    return XDiffusionConfig.load_json(path)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise XDiffusionError(f"{path}: missing model weights")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise XDiffusionError(f"{path}: corrupt or truncated safetensors file ({message})") from None


def verify_checksums(directory: str | os.PathLike) -> bool:
    """Check ``config.json`` and the tensor bytes of ``model.safetensors`` against the checksums
    recorded at save time; False when none are recorded (a folder saved before they existed),
    XDiffusionError naming the file that does not match."""
    directory = Path(directory)
    weights = directory / WEIGHTS_NAME
    check_safetensors_size(weights)  # a cut-short file says so, not "changed"
    recorded = safetensors_metadata(weights)
    if WEIGHTS_CHECKSUM not in recorded and CONFIG_CHECKSUM not in recorded:
        return False
    if WEIGHTS_CHECKSUM in recorded and tensor_data_sha256(weights) != recorded[WEIGHTS_CHECKSUM]:
        raise XDiffusionError(f"{weights}: the weights do not match the checksum recorded when they were saved "
                              "(the file is corrupt or was changed): copy the model folder again")
    if CONFIG_CHECKSUM in recorded and file_sha256(directory / CONFIG_NAME) != recorded[CONFIG_CHECKSUM]:
        raise XDiffusionError(f"{directory / CONFIG_NAME}: does not match the config these weights were saved with "
                              f"(checksum recorded in {WEIGHTS_NAME}); it was edited or comes from another model: "
                              "restore the model's own config.json")
    return True


def _verify_or_warn(directory: Path) -> bool:
    """``verify_checksums``, with one warning line when the folder records none (nothing verified)."""
    if verify_checksums(directory):
        return True
    warnings.warn(f"{directory}: this model folder records no checksums (saved by an older version): its "
                  "files are not verified", RuntimeWarning, stacklevel=3)
    return False


def _expected_shapes(config: XDiffusionConfig) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the config's model, built on the meta device: no memory is taken,
    whatever sizes an edited config asks for."""
    with torch.device("meta"):
        return _shapes(build_denoiser(config).state_dict())


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header (no tensor is read)."""
    _, header = read_safetensors_header(path)
    try:
        return {name: tuple(int(n) for n in entry["shape"]) for name, entry in header.items() if name != "__metadata__"}
    except (TypeError, KeyError, ValueError):
        raise XDiffusionError(f"{path}: corrupt safetensors file (a tensor without a shape)") from None


def _check_state(path: Path, expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> None:
    """The tensors of ``path`` (name -> shape) are exactly those the config's model needs."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))

    def listing(names: list[str]) -> str:
        return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

    if missing:
        raise XDiffusionError(f"{path}: missing {len(missing)} tensors the config's model needs: {listing(missing)}")
    if unexpected:
        raise XDiffusionError(f"{path}: {len(unexpected)} unexpected tensors for this config: {listing(unexpected)}")
    for name, shape in expected.items():
        if tuple(found[name]) != tuple(shape):
            raise XDiffusionError(
                f"{path}: tensor {name} has shape {tuple(found[name])}, the config's model needs {tuple(shape)}"
            )


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def check_model_folder(directory: str | os.PathLike, extra_weights: tuple[str, ...] = ()) -> XDiffusionConfig:
    """Everything ``load_pretrained`` checks, without loading any weights: the config, the
    recorded checksums, and that ``model.safetensors`` (and each of ``extra_weights``, such as a
    training checkpoint's EMA weights) holds exactly the tensors the config's model needs.
    Returns the config."""
    directory = Path(directory)
    if not directory.is_dir():
        raise XDiffusionError(f"{directory}: model folder not found")
    config = read_config(directory)
    for name in (WEIGHTS_NAME, *extra_weights):
        if not (directory / name).is_file():
            raise XDiffusionError(f"{directory / name}: missing model weights")
    _verify_or_warn(directory)  # before anything is built from the config
    expected = _expected_shapes(config)
    for name in (WEIGHTS_NAME, *extra_weights):
        _check_state(directory / name, expected, _tensor_shapes(directory / name))
    return config


def load_pretrained(directory: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, XDiffusionConfig]:
    """Rebuild the model from ``config.json`` and load ``model.safetensors``; returns (model in eval mode, config)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise XDiffusionError(f"{directory}: model folder not found")
    config = read_config(directory)
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise XDiffusionError(f"{weights_path}: missing model weights")
    # Checked in this order so that an edited config.json (2048 channels: gigabytes) is refused
    # before any memory is spent on it: checksums, then the shapes the config's model would have
    # (built with no memory) against the weights file's header; only then are tensors read and built.
    _verify_or_warn(directory)
    _check_state(weights_path, _expected_shapes(config), _tensor_shapes(weights_path))
    state = _read_weights(weights_path)
    model = build_denoiser(config)
    _check_state(weights_path, _shapes(model.state_dict()), _shapes(state))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), config
