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
from .volume import Grid, Volume

# A header naming more data files than this is refused rather than listed (a pattern can name millions).
_MAX_DATA_FILES = 100_000
_HEADER_BYTES = 1 << 20

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


def image_to_array(image: sitk.Image, dtype: np.dtype | type | None = np.float32) -> np.ndarray:
    """Voxels of a 3D SimpleITK image as a C-contiguous ``array[i, j, k]`` (ITK's view is [k, j, i])."""
    view = sitk.GetArrayViewFromImage(image)
    return np.ascontiguousarray(view.transpose(2, 1, 0), dtype=dtype)


def grid_from_image(image: sitk.Image) -> Grid:
    """The Grid (shape, spacing, LPS origin, direction columns) of a 3D SimpleITK image."""
    return Grid(
        shape=image.GetSize(),
        spacing=image.GetSpacing(),
        origin=image.GetOrigin(),
        direction=np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3),
    )


def image_to_volume(image: sitk.Image) -> Volume:
    """A 3D scalar SimpleITK image as a float32 Volume (no input checks: for images made in code)."""
    return Volume(image_to_array(image, np.float32), grid_from_image(image))


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


def _read_3d_image(path: str | os.PathLike, volume_index: int | None,
                   within: str | os.PathLike | None = None, max_voxels: int | None = None) -> tuple[sitk.Image, str]:
    """Read ``path`` as one 3D scalar image; also return how to name it in messages."""
    path = Path(path).expanduser()
    if not path.exists():
        raise XDiffusionError(f"{path}: no such file or folder")
    if within is not None:
        check_self_contained(path, within)
    if path.is_dir():
        files, label = _dicom_series_files(path, None)
        return _finish(_execute_series(files, label), label, volume_index), label
    suffix = volume_suffix(path)
    if suffix is None:
        raise XDiffusionError(
            f"{path}: unsupported file type; read {', '.join(READ_SUFFIXES)} files or a DICOM series folder"
        )
    if suffix == ".dcm":
        files, label = _dicom_series_files(path.parent, path)
        return _finish(_execute_series(files, label), label, volume_index), label

    fmt, io_name = FORMATS[suffix]
    label = str(path)
    reader = sitk.ImageFileReader()
    reader.SetImageIO(io_name)
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise XDiffusionError(f"{label} is not a readable {fmt} file ({_itk_reason(error)})") from None
    _check_dimensions(label, reader.GetDimension(), reader.GetSize(), reader.GetNumberOfComponents(), volume_index)
    _check_voxel_count(label, reader.GetSize()[:3], max_voxels)
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
        raise XDiffusionError(f"{label} is truncated or corrupt: not a readable {fmt} file ({_itk_reason(error)})") from None
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
    import nibabel

    proxy = nibabel.load(str(path)).dataobj
    if not np.issubdtype(np.dtype(proxy.dtype), np.floating):
        return np.zeros(1, dtype=np.float32)
    values = np.asanyarray(proxy)
    if values.ndim == 4:
        values = values[..., volume_index or 0]
    return values


def _check_nifti_complete(path: Path, label: str) -> None:
    import nibabel

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


def _dicom_series_files(folder: Path, member: Path | None) -> tuple[list[str], str]:
    """File names (in slice order) of the one DICOM series in ``folder`` (or the one holding ``member``)."""
    label = str(member if member is not None else folder)
    if not any(p.is_file() for p in folder.iterdir()):
        raise XDiffusionError(f"{label}: the folder is empty; give a volume file or a folder holding one DICOM series")
    # ITK prints a warning of its own on stderr for a folder without DICOM; the error below says it.
    warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        series = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError as error:
        raise XDiffusionError(f"{label}: cannot scan for DICOM files ({_itk_reason(error)})") from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)
    if not series:
        raise XDiffusionError(f"{label}: no DICOM series found")
    if member is not None:
        target = os.path.realpath(member)
        for uid in series:
            files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
            if target in {os.path.realpath(f) for f in files}:
                return files, label
        raise XDiffusionError(f"{label} is not a readable DICOM image")
    if len(series) > 1:
        raise XDiffusionError(
            f"{label} holds {len(series)} DICOM series ({', '.join(series)}): put one series per folder "
            "or give one .dcm file of the series to read"
        )
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])), label


def _check_series_geometry(files: list[str], label: str) -> None:
    """Refuse a series ITK would put on a wrong grid: ITK takes one spacing (from the first slices)
    and the slices' orientation, so uneven gaps (1 mm then 3 mm) and a gantry tilt (each slice
    shifted in its own plane) come out up to centimetres off, silently."""
    positions, normal = [], None
    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
            position = [float(v) for v in reader.GetMetaData("0020|0032").split("\\")]
            orientation = [float(v) for v in reader.GetMetaData("0020|0037").split("\\")]
        except (RuntimeError, ValueError):
            return  # no explicit geometry to check against: ITK's own rules apply
        if len(position) != 3 or len(orientation) != 6:
            return
        if normal is None:
            normal = np.cross(orientation[:3], orientation[3:])
            if not np.linalg.norm(normal) > 0.5:
                return
            normal = normal / np.linalg.norm(normal)
        positions.append(position)
    if len(positions) < 3:
        return
    points = np.asarray(positions)
    along = points @ normal
    order = np.argsort(along)
    points, along = points[order], along[order]
    gaps = np.diff(along)
    step = float(np.median(gaps))
    tolerance = max(0.01, 0.01 * abs(step))
    if np.max(np.abs(gaps - step)) > tolerance:
        raise XDiffusionError(f"{label}: the slices are unevenly spaced ({gaps.min():.3g} to {gaps.max():.3g} mm "
                              "apart): it would be read on a wrong grid; resample the series to even spacing first")
    shift = (points - points[0]) - np.outer(along - along[0], normal)
    drift = float(np.linalg.norm(shift, axis=1).max())
    if drift > tolerance:
        raise XDiffusionError(f"{label}: the slices are sheared (gantry tilt: the last slice is shifted {drift:.3g} mm "
                              "in its own plane): it would be read without the tilt; resample the series first")


def _execute_series(files: list[str], label: str) -> sitk.Image:
    _check_series_geometry(files, label)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise XDiffusionError(f"{label}: cannot read the DICOM series ({_itk_reason(error)})") from None


def _itk_reason(error: Exception) -> str:
    """The informative last line of an ITK exception, without source paths and object addresses."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(("Exception thrown", "/", "Reason: Success")) or ".cxx:" in line:
            continue
        reason = re.sub(r"\w+\(0x[0-9a-fA-F]+\): ", "", line.split("ERROR: ", 1)[-1])
        return reason[:160]
    return "ITK could not read it"


def header_slice_thickness(path: str | os.PathLike) -> float | None:
    """The acquired slice thickness in mm that the file's header states (DICOM SliceThickness,
    0018,0050, of the series' first file), or None: other formats do not keep it, and the caller
    then assumes the slice spacing."""
    path = Path(path).expanduser()
    if path.is_dir():
        files, _ = _dicom_series_files(path, None)
    elif volume_suffix(path) == ".dcm":
        files, _ = _dicom_series_files(path.parent, path)
    else:
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    try:
        reader.ReadImageInformation()
        value = float(reader.GetMetaData("0018|0050").strip()) if reader.HasMetaDataKey("0018|0050") else None
    except (RuntimeError, ValueError):
        return None  # unreadable or malformed: the slice spacing is the safer guess than failing
    return value if value is not None and np.isfinite(value) and value > 0 else None
