"""Volumes in and out: one Volume type, readers and writers for NIfTI, NRRD, MHA and DICOM.

Modules, by idea: ``volume`` (the Volume and its Grid), ``formats`` (which files are volumes),
``data_files`` (every file a volume reads, and the containment check), ``images`` (SimpleITK images
as Volumes), ``dicom`` (series), ``readers`` and ``writers`` (checked reading and atomic writing),
``header_checks`` (what a header may declare, before any voxel is read), ``nifti`` (NIfTI as stored),
``atomic`` (whole files in one step), ``checksums``, ``names``, ``outputs``, ``text_files``.

Imports are lazy (as in ``XDiffusionLib.model``), so the light modules of this package (``volume``,
``formats``, ``data_files``, ``atomic``, ``names``) and the input vocabulary built on them load
without SimpleITK, e.g. while the command line builds its options.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"read_labelmap": "readers", "read_volume": "readers", "MultiVolumeError": "readers",
            "write_volume": "writers", "Grid": "volume", "Volume": "volume",
            "FORMATS": "formats", "READ_SUFFIXES": "formats", "volume_suffix": "formats",
            "is_volume_file": "formats", "volume_files": "data_files", "detached_data_files": "data_files",
            "check_self_contained": "data_files", "image_to_volume": "images", "header_slice_thickness": "dicom"}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_EXPORTS)
