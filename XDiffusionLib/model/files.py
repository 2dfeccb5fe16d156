"""What a model folder holds and where the shipped one lives: the one home of these names.

Torch-free (``XDiffusionLib.model`` imports lazily), so the Slicer module, the web app and the
command line can check a model folder before torch is installed or loaded.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_FILES = (CONFIG_NAME, WEIGHTS_NAME)


def default_model_dir() -> Path:
    """Where the shipped compact weights live (placed there by training)."""
    return Path(__file__).resolve().parent / "weights" / "compact"
