"""Every file reading a volume opens, and the check that they all lie inside one folder.

An NRRD or MetaImage header may keep its voxels in other files (one, a ``LIST``, or a numbered
pattern) and a DICOM series is a folder of files: readers of uploads and server paths refuse a
volume that would read a file outside the folder it came from.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import XDiffusionError
from .formats import volume_suffix

# A header naming more data files than this is refused rather than listed (a pattern can name millions).
_MAX_DATA_FILES = 100_000
_HEADER_BYTES = 1 << 20


def volume_files(path: str | os.PathLike) -> list[Path]:
    """Every file reading ``path`` may open: the file itself and, for an NRRD or MetaImage header,
    the data files it names; for a DICOM folder (or one .dcm file of it) the folder's files."""
    path = Path(path).expanduser()
    if path.is_dir():
        return [path, *sorted(p for p in path.iterdir() if p.is_file() or p.is_symlink())]
    suffix = volume_suffix(path)
    if suffix == ".dcm":
        return volume_files(path.parent)
    if suffix in (".nrrd", ".nhdr", ".mha", ".mhd"):
        return [path, *detached_data_files(path)]
    return [path]


def detached_data_files(path: str | os.PathLike) -> list[Path]:
    """The data files an NRRD (``data file:``) or MetaImage (``ElementDataFile =``) header names,
    joined to the header's folder; empty when the voxels are in the file itself.

    Every form counts (one file, a LIST, a numbered pattern), in a ``.nrrd`` or ``.mha`` file as
    well: those may name a data file elsewhere too.
    """
    path = Path(path).expanduser()
    return [path.parent / name for name in _data_file_names(path)]


def check_self_contained(path: str | os.PathLike, root: str | os.PathLike) -> None:
    """Refuse ``path`` when a file it reads lies outside ``root`` (absolute, "..", or through a link).

    Uploads and server paths use it: a header may otherwise name any file on the server (such as
    /etc/passwd) as its voxel data, and the app would show it and export it back.
    """
    path = Path(path).expanduser()
    base = os.path.realpath(root)

    def inside(file: str | os.PathLike) -> bool:
        real = os.path.realpath(file)
        return real == base or real.startswith(base.rstrip(os.sep) + os.sep)

    if not inside(path):
        raise XDiffusionError(f"{path}: outside the folders it may be read from: refused")
    if path.is_dir() or volume_suffix(path) == ".dcm":
        for file in volume_files(path):
            if not inside(file):
                raise XDiffusionError(f"{path}: {file.name} links to a file outside the folder: refused")
        return
    for name in _data_file_names(path):
        if not inside(path.parent / name):
            raise XDiffusionError(f"{path} names the data file {name!r}, which lies outside the files it came "
                                  "with: refused (give a header together with its data file)")


def _data_file_names(path: Path) -> list[str]:
    """The data file names as an NRRD or MetaImage header writes them (nothing for other files)."""
    if volume_suffix(path) not in (".nrrd", ".nhdr", ".mha", ".mhd"):
        return []
    try:
        with open(path, "rb") as stream:
            head = stream.read(_HEADER_BYTES)
    except OSError:
        return []  # reading it will say what is wrong
    lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
    if head.startswith(b"NRRD"):
        for number, line in enumerate(lines[1:], start=1):
            if not line.strip():
                return []  # the header ends: the voxels follow in this file
            key, colon, value = line.partition(":")
            if line.startswith("#") or not colon or value.startswith("="):  # comment, or a key:=value pair
                continue
            if key.strip().lower() in ("data file", "datafile"):
                return _listed_names(path, value.strip(), lines[number + 1:])
        return []
    for number, line in enumerate(lines):
        key, equals, value = line.partition("=")
        if equals and key.strip().lower() == "elementdatafile":
            value = value.strip()
            return [] if value.upper() == "LOCAL" else _listed_names(path, value, lines[number + 1:])
    return []


def data_encoding(path: str | os.PathLike) -> str | None:
    """How an NRRD or MetaImage header says its voxels are stored: "raw", "gzip" (MetaImage's
    CompressedData too), "bzip2", "ascii" or "hex"; None for other files or an encoding not given."""
    path = Path(path).expanduser()
    if volume_suffix(path) not in (".nrrd", ".nhdr", ".mha", ".mhd"):
        return None
    try:
        with open(path, "rb") as stream:
            head = stream.read(_HEADER_BYTES)
    except OSError:
        return None
    lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
    if head.startswith(b"NRRD"):
        names = {"raw": "raw", "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2", "ascii": "ascii",
                 "txt": "ascii", "text": "ascii", "hex": "hex"}
        for line in lines[1:]:
            if not line.strip():
                return None
            key, colon, value = line.partition(":")
            if colon and not value.startswith("=") and key.strip().lower() == "encoding":
                return names.get(value.strip().lower())
        return None
    fields = {}
    for line in lines:
        key, equals, value = line.partition("=")
        if equals:
            fields[key.strip().lower()] = value.strip().lower()
        if key.strip().lower() == "elementdatafile":
            break
    if fields.get("compresseddata") == "true":
        return "gzip"
    return "ascii" if fields.get("binarydata") == "false" else "raw"


def _listed_names(path: Path, value: str, rest: list[str]) -> list[str]:
    """One data file name, a ``LIST`` (the names on the lines after it) or the names of a
    ``<format> <min> <max> <step> [...]`` pattern."""
    parts = value.split()
    if parts[:1] == ["LIST"]:
        names = [name.strip() for name in rest if name.strip()]
    elif "%" in value and len(parts) >= 4:
        try:
            first, last, step = (int(p) for p in parts[1:4])
            if step == 0 or abs((last - first) // step) > _MAX_DATA_FILES:
                raise ValueError("too many files")
            names = [parts[0] % i for i in range(first, last + (1 if step > 0 else -1), step)]
        except (TypeError, ValueError):
            raise XDiffusionError(f"{path}: cannot tell which data files its header names ({value[:80]!r})") from None
    else:
        names = [value]
    if len(names) > _MAX_DATA_FILES:
        raise XDiffusionError(f"{path}: its header names more than {_MAX_DATA_FILES} data files")
    return names
