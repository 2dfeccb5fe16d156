"""Denoisers: configuration, the one conditioning c(x, d, R), profiles and checkpoints.

Imports are lazy so ``import XDiffusionLib.model`` stays light (no torch) until a name is used.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "XDiffusionConfig": "config",
    "SparseCube": "conditioning",
    "Condition": "conditioning",
    "ConditionBuilder": "conditioning",
    "build_condition": "conditioning",
    "drop_condition": "conditioning",
    "null_condition": "conditioning",
    "to_network": "conditioning",
    "from_network": "conditioning",
    "CompactDenoiser": "compact",
    "build_denoiser": "factory",
    "save_pretrained": "checkpoint",
    "load_pretrained": "checkpoint",
    "default_model_dir": "checkpoint",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
