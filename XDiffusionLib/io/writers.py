"""Write volumes to NIfTI, NRRD and MetaImage atomically, with their full geometry."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import XDiffusionError
from .readers import volume_suffix
from .volume import Volume

# Single-file formats only: a detached header (.nhdr, .mhd) names its data file, which an
# atomic rename of the header alone would break.
WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


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


def write_volume(volume: Volume, path: str | os.PathLike, dtype: np.dtype | type | None = None) -> Path:
    """Write ``volume`` to ``path`` (.nii, .nii.gz, .nrrd or .mha) and return the path.

    ``dtype`` converts the voxels first (integer types round and clip to their range); by default
    the array's own type is kept. The file appears complete or not at all: it is written to a
    temporary file in the same folder and renamed. Missing parent folders are created.
    """
    path = Path(path).expanduser()
    suffix = volume_suffix(path)
    if suffix not in WRITE_SUFFIXES:
        raise XDiffusionError(f"{path}: cannot write this file type; write one of {', '.join(WRITE_SUFFIXES)}")
    if path.is_dir():
        raise XDiffusionError(f"{path} is a folder: give a file name to write")
    parent = path.parent
    for ancestor in (parent, *parent.parents):
        if ancestor.exists() and not ancestor.is_dir():
            raise XDiffusionError(f"{path}: cannot write there, {ancestor} is a file, not a folder")
        if ancestor.exists():
            break
    image = volume_to_image(volume, dtype)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise XDiffusionError(f"{path}: cannot create folder {parent} ({error.strerror or error})") from None
    # The temporary name keeps the real suffix so ITK picks the same writer (and compression).
    try:
        handle, temp_name = tempfile.mkstemp(dir=parent, prefix=f".{path.name[: -len(suffix)]}.", suffix=suffix)
    except OSError as error:
        raise XDiffusionError(f"{path}: cannot write in {parent} ({error.strerror or error})") from None
    os.close(handle)
    try:
        # NIfTI .nii stays uncompressed by its suffix; NRRD and MHA get gzip-encoded data.
        sitk.WriteImage(image, temp_name, useCompression=suffix != ".nii")
        os.chmod(temp_name, 0o666 & ~_umask())
        os.replace(temp_name, path)
    except (RuntimeError, OSError) as error:
        _remove_quietly(temp_name)
        raise XDiffusionError(f"{path}: writing failed ({str(error).strip().splitlines()[-1][:160]})") from None
    except BaseException:
        _remove_quietly(temp_name)
        raise
    return path


def _cast(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "iu" and array.dtype.kind == "f":
        info = np.iinfo(dtype)
        return np.clip(np.rint(array), info.min, info.max).astype(dtype)
    return array.astype(dtype)


def _umask() -> int:
    # mkstemp creates 0600 files; give the final file the usual permissions instead. Read the
    # umask without os.umask(), which would change it for every thread for a moment.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _remove_quietly(name: str) -> None:
    try:
        os.remove(name)
    except OSError:
        pass
