"""What a model folder holds and where the shipped one lives: the one home of these names.

Torch-free (``XDiffusionLib.model`` imports lazily), so the Slicer module, the web app and the
command line can check a model folder, and name its weights by their checksum (exports, the
calibration table), before torch is installed or without loading it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..io.checksums import safetensors_metadata, tensor_data_sha256

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_FILES = (CONFIG_NAME, WEIGHTS_NAME)
# The key under which ``model/checkpoint.save_pretrained`` records the weights' SHA-256 in their
# own metadata.
WEIGHTS_CHECKSUM = "weights_sha256"


def default_model_dir() -> Path:
    """Where the shipped compact weights live (placed there by training)."""
    return Path(__file__).resolve().parent / "weights" / "compact"


def weights_checksum(directory: str | os.PathLike) -> str:
    """The SHA-256 of a model folder's tensor bytes: as recorded at save time, else computed."""
    weights = Path(directory) / WEIGHTS_NAME
    return safetensors_metadata(weights).get(WEIGHTS_CHECKSUM) or tensor_data_sha256(weights)
