"""Volumes in and out: one Volume type, readers and writers for NIfTI, NRRD, MHA and DICOM.

Imports are lazy (as in ``XDiffusionLib.model``), so the light modules of this package (``volume``,
``atomic``, ``names``) and the input vocabulary built on them load without SimpleITK, e.g. while
the command line builds its options.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"read_labelmap": "readers", "read_volume": "readers", "write_volume": "writers",
            "Grid": "volume", "Volume": "volume"}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_EXPORTS)
