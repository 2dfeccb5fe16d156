"""Write volumes to NIfTI, NRRD and MetaImage atomically, with their full geometry."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import XDiffusionError
from .atomic import (check_complete, current_umask, remove_quietly, remove_stale_temporaries, temporary_file,
                     write_failed)
from .formats import WRITE_SUFFIXES, volume_suffix
from .volume import Volume


def volume_to_image(volume: Volume, dtype: np.dtype | type | None = None) -> sitk.Image:
    """A SimpleITK image with the volume's voxels (``array[i, j, k]``) and geometry."""
    array = np.asarray(volume.array)
    if dtype is not None:
        array = _cast(array, np.dtype(dtype))
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype == np.float16:
        array = array.astype(np.float32)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)), isVector=False)
    grid = volume.grid
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(tuple(float(v) for v in np.asarray(grid.direction).reshape(-1)))
    return image


def write_volume(volume: Volume, path: str | os.PathLike, dtype: np.dtype | type | None = None,
                 metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``volume`` to ``path`` (.nii, .nii.gz, .nrrd or .mha) and return the path.

    ``dtype`` converts the voxels first (integer types round and clip to their range); by default
    the array's own type is kept. The file appears complete or not at all: it is written to a
    hidden temporary file in the same folder, checked to be whole and renamed (``io.atomic``); a
    short write (a full disk) is a one-line error naming ``path``. Missing parent folders
    are created. An existing file is replaced: commands refuse that first (``io.outputs``).
    ``metadata``: text key-value pairs for the header (``add_metadata``).
    """
    return write_volumes([(volume, path)], dtype, [metadata])[0]


def add_metadata(image: sitk.Image, metadata: Mapping[str, str] | None) -> sitk.Image:
    """Text key-value pairs into the file header: NRRD and MetaImage keep every key (``key:=value``
    in NRRD); NIfTI has one 80-character ``descrip`` field, filled from the ``descrip`` key."""
    for key, value in (metadata or {}).items():
        image.SetMetaData(str(key), str(value))
    return image


def write_volumes(items: Sequence[tuple[Volume, str | os.PathLike]], dtype: np.dtype | type | None = None,
                  metadata: Sequence[Mapping[str, str] | None] | None = None) -> list[Path]:
    """Write several volumes that belong together (a result and its uncertainty): every file is
    written to its temporary first and only then are they all renamed into place, so an error or
    an interrupt leaves none of them (and no temporary). Returns the paths. ``metadata``: one
    mapping (or None) per item, for its header (``add_metadata``)."""
    targets = [check_volume_path(path) for _, path in items]
    metadata = list(metadata) if metadata is not None else [None] * len(items)
    if len(metadata) != len(items):
        raise ValueError(f"{len(metadata)} metadata entries for {len(items)} volumes")
    images = [add_metadata(volume_to_image(volume, dtype), extra) for (volume, _), extra in zip(items, metadata)]
    for path in targets:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise XDiffusionError(f"{path}: cannot create folder {path.parent} ({error.strerror or error})") from None
    for parent in dict.fromkeys(path.parent for path in targets):
        remove_stale_temporaries(parent)  # leftovers of a writer that was killed
    temporaries: list[Path] = []
    current, current_temporary = targets[0], None
    try:
        for image, path in zip(images, targets):
            current, current_temporary = path, None
            # The temporary name keeps the real suffix so ITK picks the same writer (and compression).
            temporaries.append(temporary_file(path, suffix=volume_suffix(path) or ""))
            current_temporary = temporaries[-1]
            # NIfTI .nii stays uncompressed by its suffix; NRRD and MHA get gzip-encoded data.
            sitk.WriteImage(image, str(temporaries[-1]), useCompression=volume_suffix(path) != ".nii")
            # ITK's NIfTI writer reports a full disk on stderr only and returns: check the file.
            check_complete(temporaries[-1], path)
            if volume_suffix(path) in (".nii", ".nii.gz") and image.HasMetaDataKey("descrip"):
                set_nifti_description(temporaries[-1], image.GetMetaData("descrip"))
            os.chmod(temporaries[-1], 0o666 & ~current_umask())
        # The first one (the main result) last: once it is there, everything is.
        for temporary, path in reversed(list(zip(temporaries, targets))):
            current, current_temporary = path, None  # a failed rename is no short write
            os.replace(temporary, path)
    except (RuntimeError, OSError) as error:
        # ITK's NRRD and MetaImage writers raise on a full disk, in their own words.
        if current_temporary is not None:
            raise write_failed(current, current_temporary, error) from None
        reason = (getattr(error, "strerror", None) or str(error).strip().splitlines()[-1])[:160]
        raise XDiffusionError(f"{current}: writing failed ({reason})") from None
    finally:
        for temporary in temporaries:
            remove_quietly(temporary)
    return targets


def set_nifti_description(path: Path, text: str) -> None:
    """Write ``text`` (ASCII, cut to 79 characters) into the ``descrip`` field of a NIfTI-1/2 file in
    place; ITK's NIfTI writer does not take it from the metadata. Only those 80 header bytes change."""
    raw = text.encode("ascii", "replace")[:79]
    compressed = str(path).endswith(".gz")
    data = bytearray(gzip.decompress(Path(path).read_bytes()) if compressed else Path(path).read_bytes())
    size = int.from_bytes(data[:4], "little")
    offset = {348: 148, 540: 240}.get(size)
    if offset is None:
        raise XDiffusionError(f"{path}: not a NIfTI-1 or NIfTI-2 header")
    data[offset:offset + 80] = raw + b"\0" * (80 - len(raw))
    Path(path).write_bytes(gzip.compress(bytes(data), compresslevel=6) if compressed else bytes(data))


def check_volume_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path if a volume can be written there (a writable suffix, not a folder, no file
    in the way of its folder), else a one-line XDiffusionError naming it."""
    path = Path(path).expanduser()
    if volume_suffix(path) not in WRITE_SUFFIXES:
        raise XDiffusionError(f"{path}: cannot write this file type; write one of {', '.join(WRITE_SUFFIXES)}")
    if path.is_dir():
        raise XDiffusionError(f"{path} is a folder: give a file name to write")
    for ancestor in (path.parent, *path.parent.parents):
        if ancestor.exists() and not ancestor.is_dir():
            raise XDiffusionError(f"{path}: cannot write there, {ancestor} is a file, not a folder")
        if ancestor.exists():
            break
    return path


def _cast(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "iu" and array.dtype.kind == "f":
        info = np.iinfo(dtype)
        return np.clip(np.rint(array), info.min, info.max).astype(dtype)
    return array.astype(dtype)
