"""Read volumes from NIfTI, NRRD, MetaImage and DICOM series with one reader: SimpleITK.

Using ITK for every format keeps geometry in one convention (LPS, ``Grid`` docs) whatever the
file stores (NIfTI's RAS qform/sform is converted by ITK). Every problem with the user's file is
an ``XDiffusionError`` whose one-line message names the file and the problem. What a header may
declare is checked before any voxel is read (``header_checks``); a NIfTI file's stored values and
length are checked with nibabel (``nifti``), where ITK hides them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import XDiffusionError
from .data_files import check_self_contained
from .dicom import read_series, series_files
from .formats import FORMATS, READ_SUFFIXES, volume_suffix
from .header_checks import check_data_size, check_dimensions, check_spacing, check_voxel_count
from .images import grid_from_image, image_to_array, itk_reason
from .nifti import check_nifti_complete, nifti_stored_values
from .volume import Volume

# Moved to their own modules (issue 23); still importable from here for older callers.
from .header_checks import MAX_VOXELS, SPACING_RANGE_MM, MultiVolumeError  # noqa: E402,F401  isort: skip
from .data_files import detached_data_files, volume_files  # noqa: E402,F401  isort: skip
from .dicom import header_slice_thickness  # noqa: E402,F401  isort: skip
from .formats import is_volume_file  # noqa: E402,F401  isort: skip
from .images import image_to_volume  # noqa: E402,F401  isort: skip


def read_volume(path: str | os.PathLike, volume_index: int | None = None, *,
                within: str | os.PathLike | None = None, max_voxels: int | None = None) -> Volume:
    """Read a 3D scalar volume as float32 ``array[i, j, k]`` with its full geometry.

    ``path`` is a .nii/.nii.gz/.nrrd/.nhdr/.mha/.mhd file, a DICOM folder holding one series, or
    one .dcm file of a series (the whole series is read). ``volume_index`` picks one volume of a
    4D file (or one component of a multi-component file). ``within``: every file the volume
    reads (a header's data files included, links followed) must lie inside this folder
    (``check_self_contained``), checked before any voxel is read. ``max_voxels``: refuse a file
    whose header declares more voxels (default ``MAX_VOXELS``), before they are decompressed.
    Raises XDiffusionError for a missing, unreadable, truncated, 2D, 4D (without
    ``volume_index``: ``MultiVolumeError``), non-finite or constant input.
    """
    image, label = _read_3d_image(path, volume_index, within, max_voxels)
    array = image_to_array(image, np.float32)
    # ITK's NIfTI reader turns NaN voxels into 0 silently, so look at the stored values themselves.
    stored = nifti_stored_values(Path(path).expanduser(), volume_index) if volume_suffix(path) in (".nii", ".nii.gz") else array
    if not np.isfinite(stored).all():
        n_nan = int(np.isnan(stored).sum())
        n_inf = int(np.isinf(stored).sum())
        parts = [f"{n} {kind} voxel{'s' if n != 1 else ''}" for n, kind in ((n_nan, "NaN"), (n_inf, "infinite")) if n]
        raise XDiffusionError(f"{label} has {' and '.join(parts)}: fix or mask them before reconstruction")
    low, high = float(array.min()), float(array.max())
    if low == high:
        raise XDiffusionError(f"{label} is constant (every voxel is {low:g}): it holds no image")
    return Volume(array, grid_from_image(image))


def read_labelmap(path: str | os.PathLike, volume_index: int | None = None, *,
                  within: str | os.PathLike | None = None) -> Volume:
    """Read an integer label map (int32 ``array[i, j, k]``); an empty (all zero) map is allowed."""
    image, label = _read_3d_image(path, volume_index, within)
    raw = image_to_array(image, None)
    if raw.dtype.kind == "f":
        if not np.isfinite(raw).all():
            raise XDiffusionError(f"{label} has NaN or infinite voxels: not a label map")
        if not np.array_equal(raw, np.round(raw)):
            raise XDiffusionError(f"{label} holds non-integer values: not a label map")
    elif raw.dtype.kind not in "iub":
        raise XDiffusionError(f"{label} has voxel type {raw.dtype}: not a label map")
    if raw.size and (raw.min() < np.iinfo(np.int32).min or raw.max() > np.iinfo(np.int32).max):
        raise XDiffusionError(f"{label} has labels outside the 32-bit integer range")
    return Volume(raw.astype(np.int32), grid_from_image(image))


def _read_3d_image(path: str | os.PathLike, volume_index: int | None,
                   within: str | os.PathLike | None = None, max_voxels: int | None = None) -> tuple[sitk.Image, str]:
    """Read ``path`` as one 3D scalar image; also return how to name it in messages."""
    path = Path(path).expanduser()
    if not path.exists():
        raise XDiffusionError(f"{path}: no such file or folder")
    if within is not None:
        check_self_contained(path, within)
    if path.is_dir():
        files, label = series_files(path, None)
        return _finish(read_series(files, label), label, volume_index), label
    suffix = volume_suffix(path)
    if suffix is None:
        raise XDiffusionError(
            f"{path}: unsupported file type; read {', '.join(READ_SUFFIXES)} files or a DICOM series folder"
        )
    if suffix == ".dcm":
        files, label = series_files(path.parent, path)
        return _finish(read_series(files, label), label, volume_index), label

    fmt, io_name = FORMATS[suffix]
    label = str(path)
    reader = sitk.ImageFileReader()
    reader.SetImageIO(io_name)
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise XDiffusionError(f"{label} is not a readable {fmt} file ({itk_reason(error)})") from None
    check_dimensions(label, reader.GetDimension(), reader.GetSize(), reader.GetNumberOfComponents(), volume_index)
    check_voxel_count(label, reader.GetSize()[:3], max_voxels)
    check_spacing(label, reader.GetSpacing()[:3])
    if fmt in ("NRRD", "MetaImage"):
        check_data_size(path, label, reader)
    if fmt == "NIfTI":
        # ITK fills a truncated NIfTI with zeros without complaint, so check the length ourselves.
        check_nifti_complete(path, label)
    if reader.GetDimension() == 4:
        # Read only the chosen volume of a 4D file (the 4th axis collapses away).
        reader.SetExtractSize([*reader.GetSize()[:3], 0])
        reader.SetExtractIndex([0, 0, 0, volume_index or 0])
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise XDiffusionError(f"{label} is truncated or corrupt: not a readable {fmt} file ({itk_reason(error)})") from None
    if reader.GetDimension() == 4:
        return image, label  # already the one chosen (checked) volume
    return _finish(image, label, volume_index), label


def _finish(image: sitk.Image, label: str, volume_index: int | None) -> sitk.Image:
    """Reduce a checked image to the chosen 3D scalar volume."""
    # Series readers have no information step, so check here too (cheap when already checked).
    check_dimensions(label, image.GetDimension(), image.GetSize(), image.GetNumberOfComponentsPerPixel(), volume_index)
    check_spacing(label, image.GetSpacing()[:3])
    index = volume_index or 0
    if image.GetNumberOfComponentsPerPixel() > 1:
        image = sitk.VectorIndexSelectionCast(image, index)
    if image.GetDimension() == 4:
        size = list(image.GetSize())
        extractor = sitk.ExtractImageFilter()
        extractor.SetSize(size[:3] + [0])
        extractor.SetIndex([0, 0, 0, index])
        extractor.SetDirectionCollapseToStrategy(sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX)
        image = extractor.Execute(image)
    return image
