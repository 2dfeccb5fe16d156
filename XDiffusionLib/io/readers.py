"""Read volumes from NIfTI, NRRD, MetaImage and DICOM series with one reader: SimpleITK.

Using ITK for every format keeps geometry in one convention (LPS, ``Grid`` docs) whatever the
file stores (NIfTI's RAS qform/sform is converted by ITK). Every problem with the user's file is
an ``XDiffusionError`` whose one-line message names the file and the problem.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import XDiffusionError
from .data_files import check_self_contained, data_encoding, detached_data_files
from .dicom import read_series, series_files
from .formats import FORMATS, READ_SUFFIXES, volume_suffix
from .images import grid_from_image, image_to_array, itk_reason
from .volume import Volume

# Moved to their own modules (issue 23); still importable from here for older callers.
from .data_files import detached_data_files, volume_files  # noqa: E402,F401  isort: skip
from .dicom import header_slice_thickness  # noqa: E402,F401  isort: skip
from .formats import is_volume_file  # noqa: E402,F401  isort: skip
from .images import image_to_volume  # noqa: E402,F401  isort: skip


class MultiVolumeError(XDiffusionError):
    """A 4D or multi-component file read without choosing one of its volumes.

    The message names the command line's choice (``--volume N``); callers without that option
    (the browser app, the worker) show ``without_option()`` instead.
    """

    def __init__(self, label: str, what: str, count: int):
        self.label, self.what, self.count = label, what, count
        super().__init__(f"{label} {what}; pick one with volume_index / --volume N (0..{count - 1})")

    def without_option(self) -> XDiffusionError:
        return XDiffusionError(f"{self.label} {self.what}: a single 3D volume is needed; "
                               f"save the one you want (0..{self.count - 1}) as a file of its own")


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
    stored = _nifti_stored_values(Path(path).expanduser(), volume_index) if volume_suffix(path) in (".nii", ".nii.gz") else array
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
    _check_dimensions(label, reader.GetDimension(), reader.GetSize(), reader.GetNumberOfComponents(), volume_index)
    _check_voxel_count(label, reader.GetSize()[:3], max_voxels)
    _check_spacing(label, reader.GetSpacing()[:3])
    if fmt in ("NRRD", "MetaImage"):
        _check_data_size(path, label, reader)
    if fmt == "NIfTI":
        # ITK fills a truncated NIfTI with zeros without complaint, so check the length ourselves.
        _check_nifti_complete(path, label)
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


# A 3D volume larger than this is refused before its voxels are read (a small compressed file can
# declare gigabytes): 2x a 1024^3 head at float32 is 8 GB. Callers serving others pass less.
MAX_VOXELS = 1 << 30


def _check_voxel_count(label: str, size, max_voxels: int | None) -> None:
    limit = MAX_VOXELS if max_voxels is None else int(max_voxels)
    count = 1
    for extent in size:
        count *= int(extent)
    if count > limit:
        raise XDiffusionError(f"{label}: {'x'.join(str(int(e)) for e in size)} voxels ({count:,}) is more than "
                              f"the {limit:,} voxels a volume may have here")


# Most bytes one byte of a data file can become when decompressed (deflate's limit is 1032:1).
_MAX_GZIP_RATIO = 1032


def _check_data_size(path: Path, label: str, reader: sitk.ImageFileReader) -> None:
    """Refuse an NRRD/MetaImage header declaring more voxel bytes than its data file(s) can hold,
    before ITK allocates the image (a tiny file can declare gigabytes). bzip2 is not bounded here."""
    encoding = data_encoding(path)
    kind = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    bits = re.search(r"(\d+)-bit", kind)
    if encoding is None or bits is None:
        return
    voxels = reader.GetNumberOfComponents() * (2 if kind.startswith("complex") else 1)
    for extent in reader.GetSize():
        voxels *= int(extent)
    needed = {"raw": voxels * int(bits.group(1)) // 8, "hex": voxels * int(bits.group(1)) // 4, "ascii": voxels,
              "gzip": -(-voxels * int(bits.group(1)) // 8 // _MAX_GZIP_RATIO)}.get(encoding)
    files = detached_data_files(path) or [path]
    try:
        available = sum(file.stat().st_size for file in files)
    except OSError:
        return  # a missing data file: reading it says so
    if needed is not None and available < needed:
        named = files[0] if len(files) == 1 else f"its {len(files)} data files"
        raise XDiffusionError(f"{label}: its header declares {'x'.join(str(int(e)) for e in reader.GetSize())} "
                              f"voxels ({encoding}), at least {needed:,} bytes, but {named} holds {available:,}: "
                              "truncated or a wrong header")


# Voxel spacing a scan may have, in mm: outside this a header is wrong (1e-30 or 1e30 mm), and the
# geometry built from it would overflow or divide by nearly zero. The one home of this bound.
SPACING_RANGE_MM = (1e-3, 1e3)


def _check_spacing(label: str, spacing) -> None:
    low, high = SPACING_RANGE_MM
    values = [float(s) for s in spacing]
    if not all(low <= s <= high for s in values):  # NaN fails too
        raise XDiffusionError(f"{label}: voxel spacing {' x '.join(f'{s:g}' for s in values)} mm is outside "
                              f"{low:g}..{high:g} mm: the header is wrong")


def _check_dimensions(label: str, dimension: int, size, components: int, volume_index: int | None) -> None:
    """Refuse 2D and >4D images and ambiguous 4D ones before reading any voxels."""
    size = tuple(int(s) for s in size)
    if dimension == 2:
        raise XDiffusionError(f"{label} is a 2D image ({'x'.join(map(str, size))}): a 3D volume is needed")
    if dimension not in (3, 4):
        raise XDiffusionError(f"{label} has {dimension} dimensions: a 3D volume is needed")
    n_volumes = (size[3] if dimension == 4 else 1) * components
    if dimension == 4 and components > 1:
        raise XDiffusionError(f"{label} is 4D with {components}-component voxels: not supported, save one 3D volume")
    if volume_index is None:
        if n_volumes > 1:
            what = f"is 4D with {n_volumes} volumes" if dimension == 4 else f"has {n_volumes} values per voxel"
            raise MultiVolumeError(label, what, n_volumes)
    elif not 0 <= volume_index < n_volumes:
        raise XDiffusionError(
            f"{label}: volume index {volume_index} is out of range; it holds {n_volumes} volume"
            f"{'s' if n_volumes != 1 else ''} (0..{n_volumes - 1})"
        )
    spatial = size[:3]
    if min(spatial) < 2:
        raise XDiffusionError(f"{label} is 2D (size {'x'.join(map(str, spatial))}): a 3D volume is needed")


def _finish(image: sitk.Image, label: str, volume_index: int | None) -> sitk.Image:
    """Reduce a checked image to the chosen 3D scalar volume."""
    # Series readers have no information step, so check here too (cheap when already checked).
    _check_dimensions(label, image.GetDimension(), image.GetSize(), image.GetNumberOfComponentsPerPixel(), volume_index)
    _check_spacing(label, image.GetSpacing()[:3])
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


def _nifti_stored_values(path: Path, volume_index: int | None) -> np.ndarray:
    """The NIfTI voxel values as stored (float types only; integers cannot hold NaN or Inf)."""
    import nibabel  # heavy import, needed only when a NIfTI file is read

    proxy = nibabel.load(str(path)).dataobj
    if not np.issubdtype(np.dtype(proxy.dtype), np.floating):
        return np.zeros(1, dtype=np.float32)
    values = np.asanyarray(proxy)
    if values.ndim == 4:
        values = values[..., volume_index or 0]
    return values


def _check_nifti_complete(path: Path, label: str) -> None:
    import nibabel  # heavy import, needed only when a NIfTI file is read

    try:
        proxy = nibabel.load(str(path)).dataobj
        expected = int(proxy.offset) + int(np.prod(proxy.shape)) * np.dtype(proxy.dtype).itemsize
    except Exception as error:  # nibabel raises many types for a bad header
        raise XDiffusionError(f"{label} is not a readable NIfTI file ({type(error).__name__}: {error})") from None
    if path.name.lower().endswith(".gz"):
        # Stream through the whole gzip member: detects a cut-off stream and CRC errors too.
        available = 0
        try:
            with gzip.open(path, "rb") as stream:
                while chunk := stream.read(1 << 22):
                    available += len(chunk)
        except (EOFError, OSError, gzip.BadGzipFile) as error:
            raise XDiffusionError(f"{label} is truncated or corrupt: {error}") from None
    else:
        available = path.stat().st_size
    if available < expected:
        raise XDiffusionError(f"{label} is truncated: {available} bytes of data where the header promises {expected}")


