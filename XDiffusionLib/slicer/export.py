"""Export a reconstruction: NIfTI/NRRD files, or a DICOM series that says what it is.

The DICOM series is a derived, AI-generated pseudo-MRI and must never pass for an acquisition:
- ImageType DERIVED\\SECONDARY, ContentQualification RESEARCH, BurnedInAnnotation NO;
- new SeriesInstanceUID and SOPInstanceUIDs, always; the study (patient, StudyInstanceUID, frame of
  reference) is kept only when the source was DICOM, so the series files next to its source;
- SeriesDescription "AI-generated pseudo-MRI (X-Diffusion) - not for diagnosis";
- DerivationDescription and ImageComments record the input plane, slice indices, model and
  sampling settings (standard public tags, no private ones). The model is named by its folder's
  name and the SHA-256 of its weights (``Provenance.public``), never by its path on the computer
  that made it: exported files leave that computer.
Geometry is exact per slice: ImagePositionPatient, ImageOrientationPatient, PixelSpacing,
SliceThickness/SpacingBetweenSlices from the volume's LPS grid (DICOM patient coordinates are LPS,
like ``Volume``). Voxels are stored as 16-bit with RescaleSlope/Intercept. Works with pydicom 3 and with
pydicom 2.4, which Slicer 5.4 to 5.10 bundle. The series is written into
a temporary sibling folder and renamed into place: the folder appears complete or not at all.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import XDiffusionError
from ..io import write_volume
from ..io.atomic import remove_stale_temporaries, temporary_directory
from ..io.formats import WRITE_SUFFIXES
from ..io.volume import Volume
from ..model.files import WEIGHTS_NAME, weights_checksum
from ..uncertainty.intervals import UncertaintyInfo
from ..uncertainty.marking import NOT_FOR_DIAGNOSIS, file_metadata

SERIES_DESCRIPTION = NOT_FOR_DIAGNOSIS
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
# Node attributes that carry a reconstruction's provenance in the scene (saved with it).
ATTRIBUTE_PREFIX = "XDiffusion."
# Study-level attributes copied from a DICOM source (patient and study identity, frame of reference).
_FROM_SOURCE = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "IssuerOfPatientID",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
    "StudyDescription", "FrameOfReferenceUID",
)


@dataclass(frozen=True)
class Provenance:
    """How a reconstruction was made: written into the DICOM header and onto result nodes."""

    plane: str
    indices: tuple[int, ...]
    model: str
    settings: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def summary(self) -> str:
        settings = ", ".join(f"{k} {v}" for k, v in sorted(self.settings.items()))
        text = (f"X-Diffusion reconstruction from {len(self.indices)} {self.plane} input slice(s), "
                f"canonical RAS+ indices {list(self.indices)}"
                + (f", of {self.source}" if self.source else "")
                + f"; model {self.model}" + (f"; {settings}" if settings else "")
                + f"; XDiffusion {__version__}")
        return text

    def to_attributes(self) -> dict[str, str]:
        return {
            ATTRIBUTE_PREFIX + "plane": self.plane,
            ATTRIBUTE_PREFIX + "indices": json.dumps(list(self.indices)),
            ATTRIBUTE_PREFIX + "model": self.model,
            ATTRIBUTE_PREFIX + "settings": json.dumps(self.settings, sort_keys=True),
            ATTRIBUTE_PREFIX + "source": self.source,
        }

    def public(self) -> "Provenance":
        """The same with the model named as exports name it (``describe_model``)."""
        return replace(self, model=describe_model(self.model))

    @classmethod
    def from_attributes(cls, get) -> "Provenance":
        """From a node's attributes (``get`` = ``node.GetAttribute``); clear error on a non-XDiffusion node."""
        plane = get(ATTRIBUTE_PREFIX + "plane")
        if not plane:
            raise XDiffusionError("this volume is not an XDiffusion reconstruction: nothing records how it was made")
        return cls(
            plane=plane,
            indices=tuple(json.loads(get(ATTRIBUTE_PREFIX + "indices") or "[]")),
            model=get(ATTRIBUTE_PREFIX + "model") or "",
            settings=json.loads(get(ATTRIBUTE_PREFIX + "settings") or "{}"),
            source=get(ATTRIBUTE_PREFIX + "source") or "",
        )


def describe_model(model: str) -> str:
    """A model as exports name it: its folder's name and the SHA-256 of its weights, never the
    folder's path (which tells who ran it where). A path that no longer exists keeps only its last
    part; anything else (a description) stays as it is."""
    text = str(model or "")
    path = Path(text).expanduser()
    if text and path.is_dir() and (path / WEIGHTS_NAME).is_file():
        name = path.resolve().name
        try:
            return f"{name} (weights sha256 {weights_checksum(path)})"
        except XDiffusionError:
            return name
    if "/" in text or "\\" in text:
        return Path(text.replace("\\", "/").rstrip("/")).name or "model"
    return text


def export_target(target: str | os.PathLike, suffix: str) -> Path:
    """The file to write for a name typed in the save dialog: ``suffix`` (the chosen format's, e.g.
    ".nii.gz") is added when the name has no volume suffix the writer knows (Qt's own save dialog,
    used on Linux, does not add the filter's extension)."""
    target = Path(target)
    return target if target.name.lower().endswith(WRITE_SUFFIXES) else target.with_name(target.name + suffix)


def export_volume(volume: Volume, path: str | os.PathLike, uncertainty: UncertaintyInfo | None = None,
                  what: str | None = None) -> Path:
    """NIfTI (.nii/.nii.gz), NRRD (.nrrd) or MetaImage (.mha) file, written atomically, that says
    inside what it is (``uncertainty.marking.file_metadata``): ``what`` is "reconstruction" (the
    default), "difference" or "uncertainty"; for an uncertainty volume, ``uncertainty`` says what
    it means (label, level and units in the header: NRRD/MHA keys, NIfTI ``descrip``)."""
    what = what or ("uncertainty" if uncertainty is not None else "reconstruction")
    return write_volume(volume, path, metadata=file_metadata(what, uncertainty))


def uncertainty_series_description(info: UncertaintyInfo) -> str:
    """SeriesDescription (at most 64 characters) of an exported uncertainty series."""
    what = f"{info.level:.0%} interval" if info.calibrated else "view spread"
    return f"XDiffusion uncertainty ({what}) - not for diagnosis"[:64]


def read_source_dataset(source) -> "Any":
    """A pydicom Dataset from a Dataset, a .dcm file or a folder holding DICOM files (header only)."""
    import pydicom  # pydicom: loaded only when DICOM is exported (the panel imports this module)

    if source is None or isinstance(source, pydicom.Dataset):
        return source
    path = Path(source)
    candidates = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else []
    if not candidates:
        raise XDiffusionError(f"DICOM source {path} not found")
    for candidate in candidates:
        try:
            return pydicom.dcmread(candidate, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - try the next file; report once below
            continue
    raise XDiffusionError(f"DICOM source {path}: no readable DICOM file")


def export_dicom_series(volume: Volume, folder: str | os.PathLike, provenance: Provenance, source=None,
                        study_instance_uid: str | None = None, series_number: int | None = None,
                        uncertainty: UncertaintyInfo | None = None) -> list[Path]:
    """Write ``volume`` as a DICOM MR series into the new folder ``folder``; returns the files.

    ``source``: the input's DICOM (Dataset, file or folder) whose patient and study are kept;
    ``study_instance_uid``: the study to file into when no source dataset is at hand;
    ``uncertainty``: the volume is the reconstruction's uncertainty, described by this (its
    SeriesDescription, and ImageComments/DerivationDescription starting with its meaning and level).
    """
    from pydicom.uid import generate_uid  # pydicom, as in read_source_dataset

    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise XDiffusionError(f"{folder} already exists and is not an empty folder: choose a new folder")
    source_dataset = read_source_dataset(source)
    provenance = provenance.public()
    array = np.asarray(volume.array, dtype=np.float64)
    if not np.isfinite(array).all():
        raise XDiffusionError("the volume has NaN or infinite voxels: cannot write DICOM")
    stored, slope, intercept = _to_uint16(array)
    grid = volume.grid
    direction = np.asarray(grid.direction, dtype=np.float64)
    row, column = direction[:, 0], direction[:, 1]
    # Readers stack slices along row x column; for a left-handed grid that runs against k, and
    # they read the same voxels in the opposite slice order (same physical positions).
    normal = np.cross(row, column)
    now = datetime.datetime.now()
    series_uid = generate_uid()
    study_uid = study_instance_uid or (getattr(source_dataset, "StudyInstanceUID", None) if source_dataset else None)
    shared = {
        "StudyInstanceUID": study_uid or generate_uid(),
        "FrameOfReferenceUID": generate_uid(),
        "StudyDate": now.strftime("%Y%m%d"),
        "StudyTime": now.strftime("%H%M%S"),
        "PatientName": "",
        "PatientID": "",
    }
    if source_dataset is not None:
        for keyword in _FROM_SOURCE:
            if keyword in source_dataset:
                shared[keyword] = source_dataset.data_element(keyword).value
        if study_instance_uid:
            shared["StudyInstanceUID"] = study_instance_uid
    if series_number is None:
        base = getattr(source_dataset, "SeriesNumber", None) if source_dataset is not None else None
        series_number = (int(base) if base not in (None, "") else 0) + 9000

    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder.parent)  # an export that was killed half-way
    temp = temporary_directory(folder)
    try:
        files = []
        for k in range(grid.shape[2]):
            position = np.asarray(grid.origin) + direction @ (np.asarray(grid.spacing) * np.array([0.0, 0.0, k]))
            dataset = _slice_dataset(shared, series_uid, series_number, k, now, provenance)
            if uncertainty is not None:
                _describe_uncertainty(dataset, uncertainty, provenance)
            dataset.ImageOrientationPatient = [_ds(v) for v in (*row, *column)]
            dataset.ImagePositionPatient = [_ds(v) for v in position]
            dataset.SliceLocation = _ds(float(position @ normal))
            dataset.PixelSpacing = [_ds(grid.spacing[1]), _ds(grid.spacing[0])]
            dataset.SliceThickness = _ds(grid.spacing[2])
            dataset.SpacingBetweenSlices = _ds(grid.spacing[2])
            dataset.Rows, dataset.Columns = grid.shape[1], grid.shape[0]
            dataset.RescaleSlope, dataset.RescaleIntercept, dataset.RescaleType = _ds(slope), _ds(intercept), "US"
            low, high = intercept, intercept + slope * 65535.0
            dataset.WindowCenter = _ds((float(array.min()) + float(array.max())) / 2 if array.size else (low + high) / 2)
            dataset.WindowWidth = _ds(max(float(array.max() - array.min()), 1e-3))
            # DICOM rows run along j, columns along i: pixel[r, c] = array[c, r, k].
            dataset.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<u2").tobytes()
            path = temp / f"IMG{k + 1:04d}.dcm"
            _save(dataset, path)
            files.append(folder / path.name)
        if folder.exists():
            folder.rmdir()  # empty (checked above); a folder cannot be renamed over an existing one
        os.replace(temp, folder)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return files


def _describe_uncertainty(dataset, info: UncertaintyInfo, provenance: Provenance) -> None:
    meaning = (f"Uncertainty of an AI-generated pseudo-MRI: {info.label}, {info.units}"
               + (f", level {info.level:g}" if info.level is not None else "") + f". {info.description}. ")
    dataset.SeriesDescription = uncertainty_series_description(info)
    dataset.DerivationDescription = (meaning + provenance.summary())[:1024]
    dataset.ImageComments = ("Not an acquisition, not for diagnosis. " + meaning + provenance.summary())[:10240]


def _save(dataset, path: Path) -> None:
    """Write a conformant DICOM file (preamble, file meta) with pydicom 3 or 2.4 (Slicer 5.4-5.10
    bundle 2.4, whose ``save_as`` has no ``enforce_file_format``)."""
    import pydicom  # as in read_source_dataset

    if int(pydicom.__version__.split(".")[0]) >= 3:
        dataset.save_as(path, enforce_file_format=True)
    else:
        dataset.save_as(path, write_like_original=False)


def _slice_dataset(shared: dict, series_uid: str, series_number: int, k: int, now: datetime.datetime,
                   provenance: Provenance):
    # pydicom, as in read_source_dataset
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    for keyword, value in shared.items():
        setattr(ds, keyword, value)
    ds.ReferringPhysicianName = shared.get("ReferringPhysicianName", "")
    ds.PatientBirthDate = shared.get("PatientBirthDate", "")
    ds.PatientSex = shared.get("PatientSex", "")
    ds.StudyID = shared.get("StudyID", "")
    ds.AccessionNumber = shared.get("AccessionNumber", "")
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = SERIES_DESCRIPTION
    ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "XDiffusion (software)"
    ds.SoftwareVersions = __version__
    ds.InstanceNumber = k + 1
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ContentQualification = "RESEARCH"
    ds.BurnedInAnnotation = "NO"
    ds.DerivationDescription = provenance.summary()[:1024]
    ds.ImageComments = ("AI-generated pseudo-MRI: not an acquisition, not for diagnosis. " + provenance.summary())[:10240]
    ds.ScanningSequence = "RM"  # research mode: no real pulse sequence made these voxels
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "3D"
    ds.RepetitionTime = ""
    ds.EchoTime = ""
    ds.EchoTrainLength = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    return ds


def _to_uint16(array: np.ndarray) -> tuple[np.ndarray, float, float]:
    """16-bit values and (slope, intercept) with value = stored * slope + intercept."""
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if np.array_equal(array, np.round(array)) and low >= 0 and high <= 65535:
        return array.astype(np.uint16), 1.0, 0.0
    intercept = float(_ds(low))
    slope = float(_ds(max(high - intercept, 1e-6) / 65535.0))
    while intercept + slope * 65535.0 < high:  # the DS text rounded the slope down
        slope = float(_ds(slope * (1 + 1e-6)))
    stored = np.clip(np.round((array - intercept) / slope), 0, 65535).astype(np.uint16)
    return stored, slope, intercept


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters) for ``value``."""
    value = float(value)
    if value == 0.0:
        return "0"
    for digits in range(12, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.6e}"[:16]
