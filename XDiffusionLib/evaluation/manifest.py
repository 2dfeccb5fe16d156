"""The cases of a batch reconstruction: a folder of volumes, or a CSV manifest (format in docs/cohorts.md).

A manifest is a CSV file with a header row; the columns, in any order (names are case-insensitive):

- ``path`` (required): the input volume file or DICOM folder, relative to the manifest's folder
  (or absolute);
- ``plane``: ``axial``, ``coronal`` or ``sagittal`` (empty: the command's ``--plane``);
- ``slices``: the input slice indices, canonical RAS+ indices separated by spaces or semicolons;
  or ``k``: how many slices, chosen by the evaluation protocol (bin centres over the head); one of
  the two per row (both empty: the command's ``--indices`` / ``--k``);
- ``output`` (optional): the output file name inside the output folder (``.nii.gz`` added when
  it has no volume suffix); default ``<input name>_xdiffusion.nii.gz``.

Blank lines and lines starting with ``#`` are skipped. Every row is checked before any work
starts (``read_manifest``): each problem gives one line naming the manifest line and the problem,
and all of them are reported together. For files (not DICOM folders) the volume's header is read
to check the slice indices and K against its size.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import SimpleITK as sitk

from ..errors import XDiffusionError
from ..inputs import PLANE_AXIS
from ..io.formats import FORMATS, WRITE_SUFFIXES, volume_suffix
from ..io.text_files import read_user_text
from ..io.volume import Grid
from ..transforms.orientation import Reorientation
from .cases import find_cases, folder_volumes

COLUMNS = ("path", "plane", "slices", "k", "output")
OUTPUT_SUFFIX = "_xdiffusion.nii.gz"
_MAX_SHOWN = 20  # errors listed before "... and N more"


@dataclass(frozen=True)
class BatchCase:
    """One reconstruction of a batch: where it came from (``row``), its input and its output name."""

    row: str  # "manifest.csv line 3" or the input's path: how messages name it
    source: str  # the input as the manifest wrote it (for a folder: its path inside the folder)
    path: Path
    plane: str
    slices: tuple[int, ...] | None
    k: int | None
    output: str  # relative to the output folder, POSIX separators


@dataclass(frozen=True)
class Defaults:
    """The command's ``--plane``, ``--indices`` and ``--k``, used where a row leaves them empty."""

    plane: str | None = None
    slices: tuple[int, ...] | None = None
    k: int | None = None
    all_slices: bool = False  # --all-slices: every acquired slice; rows give no plane, slices or k


def case_name(path: Path) -> str:
    suffix = volume_suffix(path)
    return path.name[: -len(suffix)] if suffix and not path.is_dir() else path.name


def read_manifest(manifest: str | os.PathLike, defaults: Defaults, volume_index: int | None = None,
                  max_slices: int | None = None) -> list[BatchCase]:
    """Every row of ``manifest`` as a checked case; all bad rows in one error, one line each."""
    manifest = Path(manifest).expanduser()
    text = read_user_text(manifest, "a CSV manifest")
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise XDiffusionError(f"{manifest}: the manifest is empty (it needs a header row: {','.join(COLUMNS)})")
    header_line, header = lines[0]
    columns = [c.strip().lower() for c in next(csv.reader([header]))]
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise XDiffusionError(f"{manifest} line {header_line}: unknown column {unknown[0]!r} in the header "
                              f"(columns: {', '.join(COLUMNS)})")
    if "path" not in columns:
        raise XDiffusionError(f"{manifest} line {header_line}: the header has no 'path' column "
                              f"(columns: {', '.join(COLUMNS)})")
    if len(set(columns)) != len(columns):
        raise XDiffusionError(f"{manifest} line {header_line}: a column is named twice in the header")
    if len(lines) == 1:
        raise XDiffusionError(f"{manifest}: the manifest has a header but no rows")
    base = manifest.parent
    cases: list[BatchCase] = []
    errors: list[str] = []
    for number, line in lines[1:]:
        label = f"{manifest} line {number}"
        cells = next(csv.reader([line]))
        if len(cells) > len(columns):
            errors.append(f"{label}: {len(cells)} cells but the header has {len(columns)} columns")
            continue
        row = dict(zip(columns, (c.strip() for c in cells)))
        try:
            cases.append(_row_case(label, row, base, defaults))
        except XDiffusionError as error:
            errors.append(str(error))
    errors += check_cases(cases, volume_index, max_slices)
    _raise_all(errors)
    return cases


def folder_cases(folder: str | os.PathLike, defaults: Defaults, volume_index: int | None = None,
                 max_slices: int | None = None) -> list[BatchCase]:
    """Every volume in ``folder`` (as ``xdiffusion evaluate --data`` finds them), with the command's plane and slices."""
    folder = Path(folder).expanduser()
    if not folder_volumes(folder):
        raise XDiffusionError(f"--inputs {folder}: the folder holds no volume files (.nii, .nii.gz, .nrrd, .mha, DICOM)")
    if defaults.plane is None and not defaults.all_slices:
        raise XDiffusionError("--inputs is a folder: give --plane (and --indices or --k) for its volumes")
    # The same cases, names and order as `xdiffusion evaluate --data FOLDER` (clashing names made unique).
    cases = [_row_case(str(source.path), {"path": str(source.path), "output": source.name + OUTPUT_SUFFIX},
                       folder, defaults) for source in find_cases([str(folder)], volume_index)]
    _raise_all(check_cases(cases, volume_index, max_slices))
    return cases


def _raise_all(errors: list[str]) -> None:
    if errors:
        shown = errors[:_MAX_SHOWN]
        if len(errors) > _MAX_SHOWN:
            shown.append(f"... and {len(errors) - _MAX_SHOWN} more problems")
        raise XDiffusionError("\n".join(shown))


def _row_case(label: str, row: dict[str, str], base: Path, defaults: Defaults) -> BatchCase:
    given = row.get("path", "")
    if not given:
        raise XDiffusionError(f"{label}: the path is empty")
    path = Path(given).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.exists():
        raise XDiffusionError(f"{label}: {given}: no such file or folder (paths are relative to {base})")
    if not path.is_dir() and volume_suffix(path) is None:
        raise XDiffusionError(f"{label}: {given}: not a volume file (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd, "
                              ".dcm) or DICOM folder")
    if defaults.all_slices:  # the plane and the slices are the scan's own
        given_fields = [name for name in ("plane", "slices", "k") if row.get(name)]
        if given_fields:
            raise XDiffusionError(f"{label}: --all-slices takes every acquired slice: leave '{given_fields[0]}' empty")
        return BatchCase(label, _source(given, path, base), path, "", None, None,
                         _output_name(label, row.get("output", ""), path))
    plane = row.get("plane") or defaults.plane
    if not plane:
        raise XDiffusionError(f"{label}: no plane: fill the 'plane' column or give --plane")
    if plane.lower() not in PLANE_AXIS:
        raise XDiffusionError(f"{label}: unknown plane {plane!r}: choose one of {', '.join(PLANE_AXIS)}")
    plane = plane.lower()
    slices_text, k_text = row.get("slices", ""), row.get("k", "")
    if slices_text and k_text:
        raise XDiffusionError(f"{label}: both 'slices' ({slices_text}) and 'k' ({k_text}) are given: give one of them")
    slices: tuple[int, ...] | None = None
    k: int | None = None
    if slices_text:
        tokens = [t for t in re.split(r"[\s;,]+", slices_text) if t]
        bad = next((t for t in tokens if not re.fullmatch(r"[+-]?\d+", t)), None)
        if bad is not None:
            raise XDiffusionError(f"{label}: slices {slices_text!r}: {bad!r} is not a slice index (integers only)")
        slices = tuple(int(t) for t in tokens)
        if len(set(slices)) != len(slices):
            raise XDiffusionError(f"{label}: slices {slices_text!r} repeat a slice")
    elif k_text:
        if not re.fullmatch(r"\+?\d+", k_text) or int(k_text) < 1:
            raise XDiffusionError(f"{label}: k {k_text!r}: the number of input slices must be a whole number >= 1")
        k = int(k_text)
    elif defaults.slices is not None:
        slices = tuple(defaults.slices)
    elif defaults.k is not None:
        k = defaults.k
    else:
        raise XDiffusionError(f"{label}: no input slices: fill 'slices' or 'k', or give --indices or --k")
    return BatchCase(label, _source(given, path, base), path, plane, slices, k,
                     _output_name(label, row.get("output", ""), path))


def _source(given: str, path: Path, base: Path) -> str:
    return given if path != Path(given).expanduser() or not path.is_absolute() else os.path.relpath(path, base)


def _output_name(label: str, given: str, path: Path) -> str:
    if not given:
        return case_name(path) + OUTPUT_SUFFIX
    parts = PurePosixPath(given.replace("\\", "/"))
    if parts.is_absolute() or PureWindowsPath(given).drive or ".." in parts.parts or any(
            p.startswith(".") for p in parts.parts):
        raise XDiffusionError(f"{label}: output {given!r} must be a name inside the output folder "
                              "(no absolute path, no '..', no hidden name)")
    suffix = volume_suffix(given)
    if suffix is None:
        return parts.as_posix() + ".nii.gz"
    if suffix not in WRITE_SUFFIXES:
        raise XDiffusionError(f"{label}: output {given!r}: cannot write {suffix} files; use one of {', '.join(WRITE_SUFFIXES)}")
    return parts.as_posix()


def check_cases(cases: list[BatchCase], volume_index: int | None, max_slices: int | None) -> list[str]:
    """Problems across rows (repeated outputs) and against each volume's header (sizes); one line each."""
    errors: list[str] = []
    seen: dict[str, str] = {}
    for case in cases:
        key = case.output.lower()
        if key in seen:
            errors.append(f"{case.row}: output {case.output} is also the output of {seen[key]}: give each row its own "
                          "'output' name")
        else:
            seen[key] = case.row
    for case in cases:
        if case.slices is None and case.k is None:
            continue  # --all-slices: planned per volume by the command
        count = len(case.slices) if case.slices is not None else case.k
        if max_slices is not None and count > max_slices:
            errors.append(f"{case.row}: {count} input slices: this model takes at most {max_slices}")
            continue
        try:
            shape = canonical_shape(case.path, volume_index)
        except XDiffusionError as error:
            errors.append(f"{case.row}: {error}")
            continue
        if shape is None:
            continue  # a DICOM series: its size is checked when the case runs
        depth = shape[PLANE_AXIS[case.plane]]
        if case.slices is not None:
            outside = [i for i in case.slices if not 0 <= i < depth]
            if outside:
                errors.append(f"{case.row}: slice index {outside[0]} is outside {case.path.name}, whose {case.plane} "
                              f"indices run 0..{depth - 1}")
        elif case.k > depth:
            errors.append(f"{case.row}: k {case.k} is larger than the {depth} {case.plane} slices of {case.path.name}")
    return errors


def canonical_shape(path: Path, volume_index: int | None = None) -> tuple[int, int, int] | None:
    """The canonical (RAS+) shape of a volume file from its header alone; None for DICOM."""
    grid = header_grid(path, volume_index)
    return None if grid is None else Reorientation.for_grid(grid).canonical.shape


def header_grid(path: Path, volume_index: int | None = None):
    """The voxel grid (``io.volume.Grid``) of a volume file from its header alone; None for DICOM."""
    suffix = volume_suffix(path)
    if path.is_dir() or suffix == ".dcm":
        return None
    fmt, io_name = FORMATS[suffix]
    reader = sitk.ImageFileReader()
    reader.SetImageIO(io_name)
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise XDiffusionError(f"{path} is not a readable {fmt} file") from None
    dimension, size = reader.GetDimension(), reader.GetSize()
    if dimension == 4:
        if volume_index is None:
            raise XDiffusionError(f"{path} is 4D ({size[3]} volumes): pick one with --volume N")
        if not 0 <= volume_index < size[3]:
            raise XDiffusionError(f"{path}: --volume {volume_index} is outside its {size[3]} volumes")
    elif dimension != 3:
        raise XDiffusionError(f"{path} is {dimension}D, not a 3D volume")
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(dimension, dimension)[:3, :3]
    return Grid(tuple(size[:3]), tuple(reader.GetSpacing()[:3]), tuple(reader.GetOrigin()[:3]), direction)


__all__ = ["BatchCase", "COLUMNS", "Defaults", "canonical_shape", "case_name", "folder_cases", "header_grid",
           "read_manifest"]
