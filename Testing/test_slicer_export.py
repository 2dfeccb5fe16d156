"""Export: NIfTI/NRRD files and a DICOM pseudo-MRI series that reads back with the right geometry
and cannot be mistaken for an acquisition (read back with SimpleITK and pydicom)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import rotation, smooth_array
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from XDiffusionLib.errors import XDiffusionError
from XDiffusionLib.io import read_volume
from XDiffusionLib.io.volume import Volume
from XDiffusionLib.slicer.export import (
    SERIES_DESCRIPTION,
    Provenance,
    export_dicom_series,
    export_volume,
)

PROVENANCE = Provenance("axial", (2, 5), "/models/tiny", {"steps": 2, "views": 1}, "T1 head")


def oblique_volume() -> Volume:
    return Volume.from_array(smooth_array((12, 10, 8)), (0.9, 1.3, 2.0), (-20.5, 13.25, 7.0),
                             rotation((20.0, -10.0, 35.0)))


def read_series(folder) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder))
    reader.SetFileNames(names)
    return reader.Execute()


def source_dicom(path) -> Dataset:
    """A minimal MR file standing for the input's own DICOM."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "P123"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.SeriesNumber = 3
    ds.Modality = "MR"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
    ds.save_as(path, enforce_file_format=True)
    return ds


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_volume_files_keep_geometry(tmp_path, suffix):
    volume = oblique_volume()
    path = export_volume(volume, tmp_path / f"out{suffix}")
    back = read_volume(path)
    assert back.grid.same_geometry(volume.grid, tol=1e-4)
    np.testing.assert_allclose(back.array, volume.array, rtol=1e-6)


def test_dicom_series_geometry_and_values_read_back(tmp_path):
    volume = oblique_volume()
    files = export_dicom_series(volume, tmp_path / "series", PROVENANCE)
    assert len(files) == volume.shape[2] and all(f.is_file() for f in files)
    assert not [p for p in tmp_path.iterdir() if p.name != "series"]  # no temporary folder left
    image = read_series(tmp_path / "series")
    assert image.GetSize() == volume.shape
    np.testing.assert_allclose(image.GetSpacing(), volume.spacing, atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), volume.origin, atol=1e-6)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), volume.direction, atol=1e-6)
    values = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    slope = float(pydicom.dcmread(files[0]).RescaleSlope)
    assert np.abs(values - volume.array).max() <= slope  # 16-bit quantisation
    assert np.abs(values - volume.array).max() < 1e-3 * np.ptp(volume.array)


def test_dicom_header_says_what_it_is(tmp_path):
    files = export_dicom_series(oblique_volume(), tmp_path / "series", PROVENANCE)
    datasets = [pydicom.dcmread(f) for f in files]
    first = datasets[0]
    assert list(first.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert first.SeriesDescription == SERIES_DESCRIPTION == "AI-generated pseudo-MRI (X-Diffusion) - not for diagnosis"
    assert first.ContentQualification == "RESEARCH" and first.BurnedInAnnotation == "NO"
    for text in (first.DerivationDescription, first.ImageComments):
        assert "axial" in text and "[2, 5]" in text and "steps 2" in text
        assert "model tiny;" in text and "/models" not in text  # a server path never leaves the computer
    assert "not for diagnosis" in first.ImageComments
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert [int(ds.InstanceNumber) for ds in datasets] == list(range(1, len(datasets) + 1))
    assert not any(element.tag.is_private for ds in datasets for element in ds)
    # per-slice geometry: positions step along the slice axis by the spacing
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    steps = np.diff(positions, axis=0)
    np.testing.assert_allclose(np.linalg.norm(steps, axis=1), 2.0, atol=1e-6)
    assert float(first.SliceThickness) == 2.0
    assert [float(v) for v in first.PixelSpacing] == [1.3, 0.9]  # row spacing (j), column spacing (i)


def test_dicom_keeps_the_source_study_with_new_series(tmp_path):
    source = source_dicom(tmp_path / "source.dcm")
    files = export_dicom_series(oblique_volume(), tmp_path / "series", PROVENANCE, source=tmp_path / "source.dcm")
    ds = pydicom.dcmread(files[0])
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.PatientID == "P123" and str(ds.PatientName) == "Doe^Jane"
    assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert ds.SOPInstanceUID != source.SOPInstanceUID
    assert int(ds.SeriesNumber) == 9003
    # without a source: a new study unless one is given
    alone = pydicom.dcmread(export_dicom_series(oblique_volume(), tmp_path / "alone", PROVENANCE)[0])
    assert alone.StudyInstanceUID != source.StudyInstanceUID
    given = pydicom.dcmread(export_dicom_series(oblique_volume(), tmp_path / "given", PROVENANCE,
                                                study_instance_uid=source.StudyInstanceUID)[0])
    assert given.StudyInstanceUID == source.StudyInstanceUID


def test_dicom_refuses_to_mix_into_an_existing_folder(tmp_path):
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "other.txt").write_text("keep me")
    with pytest.raises(XDiffusionError, match="already exists and is not an empty folder"):
        export_dicom_series(oblique_volume(), tmp_path / "series", PROVENANCE)
    assert [p.name for p in (tmp_path / "series").iterdir()] == ["other.txt"]
    (tmp_path / "empty").mkdir()
    assert len(export_dicom_series(oblique_volume(), tmp_path / "empty", PROVENANCE)) == 8
    with pytest.raises(XDiffusionError, match="DICOM source .* not found"):
        export_dicom_series(oblique_volume(), tmp_path / "new", PROVENANCE, source=tmp_path / "missing.dcm")
    assert not (tmp_path / "new").exists()


def test_provenance_round_trips_through_node_attributes():
    attributes = PROVENANCE.to_attributes()
    assert Provenance.from_attributes(attributes.get) == PROVENANCE
    with pytest.raises(XDiffusionError, match="not an XDiffusion reconstruction"):
        Provenance.from_attributes({}.get)


# ------------------------------------------------------------------------------ pydicom 2.4
#
# Slicer 5.4 to 5.10 bundle pydicom 2.4 (5.12 has 3.x), whose save_as has no enforce_file_format.
# The export runs in a subprocess with pydicom 2.4 first on its path; the files are read back here.

REPO = Path(__file__).resolve().parents[1]
PYDICOM_24_CACHE = REPO / "Testing" / "artifacts" / "pydicom-2.4"

EXPORT_WITH_PYDICOM_24 = """
import json, sys
import numpy as np
import pydicom
from XDiffusionLib.io.volume import Volume
from XDiffusionLib.slicer.export import Provenance, export_dicom_series

assert pydicom.__version__.startswith("2.4."), pydicom.__version__
g = json.loads(sys.argv[2])
volume = Volume.from_array(np.load(sys.argv[1]), g["spacing"], g["origin"], np.array(g["direction"]))
provenance = Provenance("axial", (2, 5), "/models/tiny", {"steps": 2, "views": 1}, "T1 head")
files = export_dicom_series(volume, sys.argv[3], provenance, source=sys.argv[4])
first = pydicom.dcmread(files[0])
print(json.dumps({"version": pydicom.__version__, "files": len(files), "study": first.StudyInstanceUID,
                  "image_type": list(first.ImageType), "preamble": first.preamble == b"\\0" * 128}))
"""


@pytest.fixture(scope="session")
def pydicom_24() -> Path:
    """A folder holding pydicom 2.4 (installed from PyPI once, kept in the git-ignored Testing/artifacts)."""
    if (PYDICOM_24_CACHE / "pydicom" / "__init__.py").is_file():
        return PYDICOM_24_CACHE
    PYDICOM_24_CACHE.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".pydicom-2.4-", dir=PYDICOM_24_CACHE.parent))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(staging),
                           "pydicom==2.4.*"], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.fail(f"could not install pydicom 2.4 from PyPI: {done.stderr.strip()[-300:]}")
    try:
        os.replace(staging, PYDICOM_24_CACHE)
    except OSError:  # another test run put it there first
        shutil.rmtree(staging, ignore_errors=True)
    return PYDICOM_24_CACHE


def test_dicom_series_with_pydicom_2_4_as_in_slicer_5_4_to_5_10(tmp_path, pydicom_24):
    volume = oblique_volume()
    source = source_dicom(tmp_path / "source.dcm")
    np.save(tmp_path / "array.npy", volume.array)
    grid = {"shape": list(volume.shape), "spacing": list(volume.spacing), "origin": list(volume.origin),
            "direction": np.asarray(volume.direction).tolist()}
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pydicom_24), str(REPO)]))
    done = subprocess.run([sys.executable, "-c", EXPORT_WITH_PYDICOM_24, str(tmp_path / "array.npy"),
                           json.dumps(grid), str(tmp_path / "series"), str(tmp_path / "source.dcm")],
                          capture_output=True, text=True, timeout=300, env=environment, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["version"].startswith("2.4.") and report["files"] == volume.shape[2]
    assert report["preamble"] and report["image_type"][:2] == ["DERIVED", "SECONDARY"]
    assert report["study"] == source.StudyInstanceUID
    # read back here (pydicom 3, SimpleITK): same files as pydicom 3 writes
    image = read_series(tmp_path / "series")
    np.testing.assert_allclose(image.GetOrigin(), volume.origin, atol=1e-6)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), volume.direction, atol=1e-6)
    values = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    assert np.abs(values - volume.array).max() < 1e-3 * np.ptp(volume.array)
    first = pydicom.dcmread(sorted((tmp_path / "series").iterdir())[0])
    assert first.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert first.SeriesDescription == SERIES_DESCRIPTION and "model tiny;" in first.DerivationDescription


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_uncertainty_files_carry_their_level(tmp_path, suffix):
    from XDiffusionLib.uncertainty.intervals import calibrated_info

    volume = oblique_volume()
    path = export_volume(volume, tmp_path / f"unc{suffix}", uncertainty=calibrated_info(0.9))
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    if suffix == ".nii.gz":  # one 80-character field
        import nibabel

        assert "90% interval half-width" in nibabel.load(str(path)).header["descrip"].item().decode()
    else:
        assert reader.GetMetaData("XDiffusion_uncertainty_level") == "0.9"
        assert "intensity units" in reader.GetMetaData("XDiffusion_uncertainty_units")
    back = read_volume(path)
    assert back.grid.same_geometry(volume.grid, tol=1e-4)
    np.testing.assert_allclose(back.array, volume.array, rtol=1e-6)


def test_dicom_uncertainty_series_says_its_level(tmp_path):
    from XDiffusionLib.uncertainty.intervals import calibrated_info

    files = export_dicom_series(oblique_volume(), tmp_path / "unc", PROVENANCE, uncertainty=calibrated_info(0.9))
    first = pydicom.dcmread(files[0])
    assert first.SeriesDescription == "XDiffusion uncertainty (90% interval) - not for diagnosis"
    assert "level 0.9" in first.ImageComments and "intensity units" in first.ImageComments
    assert "not for diagnosis" in first.ImageComments and "axial" in first.DerivationDescription


def header_of(path) -> dict[str, str]:
    """Every header key of a volume file (NIfTI: its ``descrip``), read back with SimpleITK."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return {key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys()}


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_every_export_says_inside_what_it_is(tmp_path, suffix):
    """Issue 22 item 1: the file itself (not only its name) says AI-generated, not for diagnosis;
    the uncertainty its level and units. One home: ``uncertainty.marking.file_metadata``."""
    from XDiffusionLib.uncertainty.intervals import UNCALIBRATED, calibrated_info
    from XDiffusionLib.uncertainty.marking import NOT_FOR_DIAGNOSIS, file_metadata

    volume = oblique_volume()
    recon = header_of(export_volume(volume, tmp_path / f"recon{suffix}"))
    difference = header_of(export_volume(volume, tmp_path / f"diff{suffix}", what="difference"))
    calibrated = header_of(export_volume(volume, tmp_path / f"unc{suffix}", uncertainty=calibrated_info(0.9)))
    spread = header_of(export_volume(volume, tmp_path / f"spread{suffix}", uncertainty=UNCALIBRATED))
    if suffix == ".nii.gz":  # NIfTI keeps one 80-character field
        assert "AI-generated pseudo-MRI" in recon["descrip"] and "NOT FOR DIAGNOSIS" in recon["descrip"]
        assert "difference" in difference["descrip"] and "not for diagnosis" in difference["descrip"]
        assert "90% interval half-width" in calibrated["descrip"] and "intensity units" in calibrated["descrip"]
        assert "not calibrated" in spread["descrip"] and "intensity units" in spread["descrip"]
    else:
        for header, what in ((recon, "reconstruction"), (difference, "difference"), (calibrated, "uncertainty")):
            assert header["XDiffusion_notice"] == NOT_FOR_DIAGNOSIS and header["XDiffusion_content"] == what
        assert calibrated["XDiffusion_uncertainty_level"] == "0.9"
        assert "intensity units" in calibrated["XDiffusion_uncertainty_units"]
        assert spread["XDiffusion_uncertainty"] == "view spread (std)"
    # The uncertainty cannot be written without what it means; an unknown output is one line.
    with pytest.raises(XDiffusionError, match="level and units"):
        file_metadata("uncertainty")
    with pytest.raises(XDiffusionError, match="unknown output 'mask'"):
        file_metadata("mask")


def test_naming_a_custom_model_in_an_export_loads_no_torch(tmp_path, tiny_model):
    """Issue 22 item 11: the DICOM export of a custom model names it by the SHA-256 of its weights;
    Slicer's GUI process computed that through model.checkpoint, which imports torch (a second
    copy of the checksum in model/calibration.py shows it needs none). A fresh process exports the
    series and must not have loaded torch."""
    code = (
        "import sys; from XDiffusionLib.io.volume import Volume; import numpy as np\n"
        "from XDiffusionLib.slicer.export import Provenance, export_dicom_series\n"
        "volume = Volume.from_array(np.arange(60, dtype='float32').reshape(5, 4, 3))\n"
        f"export_dicom_series(volume, {str(tmp_path / 'series')!r}, Provenance('axial', (1,), {str(tiny_model)!r}))\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False"]
    from XDiffusionLib.model.checkpoint import weights_checksum

    first = pydicom.dcmread(sorted((tmp_path / "series").iterdir())[0])
    assert f"model tiny (weights sha256 {weights_checksum(tiny_model)})" in first.DerivationDescription
