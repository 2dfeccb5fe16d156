"""DICOM series: finding the one series of a folder (or of one of its files), refusing a series
ITK would put on a wrong grid, reading it, and the slice thickness its header states.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import XDiffusionError
from .formats import volume_suffix
from .images import itk_reason


def series_files(folder: Path, member: Path | None) -> tuple[list[str], str]:
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
        raise XDiffusionError(f"{label}: cannot scan for DICOM files ({itk_reason(error)})") from None
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


def read_series(files: list[str], label: str) -> sitk.Image:
    _check_series_geometry(files, label)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise XDiffusionError(f"{label}: cannot read the DICOM series ({itk_reason(error)})") from None


def header_slice_thickness(path: str | os.PathLike) -> float | None:
    """The acquired slice thickness in mm that the file's header states (DICOM SliceThickness,
    0018,0050, of the series' first file), or None: other formats do not keep it, and the caller
    then assumes the slice spacing."""
    path = Path(path).expanduser()
    if path.is_dir():
        files, _ = series_files(path, None)
    elif volume_suffix(path) == ".dcm":
        files, _ = series_files(path.parent, path)
    else:
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None  # unreadable: the slice spacing is the safer guess than failing
    return slice_thickness_value(reader.GetMetaData("0018|0050")) if reader.HasMetaDataKey("0018|0050") else None


def slice_thickness_value(text: str | None) -> float | None:
    """A DICOM SliceThickness as the header writes it ("6.5", "6.50000 ") in mm, or None when it is
    missing or malformed (the caller then assumes the slice spacing). Also what 3D Slicer's DICOM
    database returns for the tag."""
    try:
        value = float(str(text).strip())
    except ValueError:
        return None
    return value if np.isfinite(value) and value > 0 else None
