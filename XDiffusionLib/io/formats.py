"""Which files are volumes: the formats read, by suffix, and which names a folder scan takes.

Light on purpose (no SimpleITK): folder scans, case names and output names use it while the
command line builds its options.
"""

from __future__ import annotations

import os
from pathlib import Path

# suffix -> (format name, ITK ImageIO); longest suffixes first so ".nii.gz" wins over ".gz".
FORMATS: dict[str, tuple[str, str]] = {
    ".nii.gz": ("NIfTI", "NiftiImageIO"),
    ".nii": ("NIfTI", "NiftiImageIO"),
    ".nrrd": ("NRRD", "NrrdImageIO"),
    ".nhdr": ("NRRD", "NrrdImageIO"),
    ".mha": ("MetaImage", "MetaImageIO"),
    ".mhd": ("MetaImage", "MetaImageIO"),
    ".dcm": ("DICOM", "GDCMImageIO"),
}
READ_SUFFIXES = tuple(FORMATS)
# Written: single-file formats only (``io.writers``). A detached header (.nhdr, .mhd) names its
# data file, which an atomic rename of the header alone would break.
WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def volume_suffix(path: str | os.PathLike) -> str | None:
    """The known volume suffix of ``path`` (lower case, e.g. ``.nii.gz``), or None."""
    name = Path(path).name.lower()
    for suffix in FORMATS:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return None


def is_volume_file(path: str | os.PathLike) -> bool:
    """Whether a folder scan should read ``path`` as a volume: a known suffix and not hidden.

    Hidden names (leading ".") are never data: they are writers' temporaries (``io.atomic``) or
    system metadata such as macOS's "._name.nii.gz" files.
    """
    return volume_suffix(path) is not None and not Path(path).name.startswith(".")
