"""Volume reading and writing: geometry round trips, DICOM series, and every bad input."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest
import SimpleITK as sitk

from XDiffusionLib.data.samples import sample_path
from XDiffusionLib.errors import XDiffusionError
from XDiffusionLib.io import Grid, Volume, read_labelmap, read_volume, write_volume
from XDiffusionLib.io.writers import volume_to_image

# NIfTI stores spacing and the qform/sform in float32; NRRD and MetaImage write full precision.
GEOMETRY_TOL = {"nii.gz": 1e-5, "nii": 1e-5, "nrrd": 1e-12, "mha": 1e-12}


def assert_same_grid(a: Grid, b: Grid, tol: float) -> None:
    assert a.shape == b.shape
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=tol, atol=tol)
    np.testing.assert_allclose(a.origin, b.origin, rtol=tol, atol=tol)
    np.testing.assert_allclose(a.direction, b.direction, atol=tol)


def assert_one_line_error(excinfo, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.mark.parametrize("ext", sorted(GEOMETRY_TOL))
def test_write_read_round_trip_keeps_voxels_and_oblique_geometry(oblique_volume, tmp_path, ext):
    path = write_volume(oblique_volume, tmp_path / f"vol.{ext}")
    back = read_volume(path)
    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, oblique_volume.array)
    assert_same_grid(back.grid, oblique_volume.grid, GEOMETRY_TOL[ext])
    assert os.listdir(tmp_path) == [f"vol.{ext}"]  # no temporary file left behind


def test_array_axes_follow_itk_index_order(tmp_path):
    # array[i, j, k] must be ITK's pixel (i, j, k), not numpy's [k, j, i] view of it.
    array = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    path = write_volume(Volume.from_array(array), tmp_path / "order.nrrd")
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == (2, 3, 4)
    assert image.GetPixel(1, 2, 3) == array[1, 2, 3]
    np.testing.assert_array_equal(read_volume(path).array, array)


def test_physical_points_match_itk(oblique_volume, tmp_path):
    image = volume_to_image(oblique_volume)
    for index in [(0, 0, 0), (11, 9, 7), (3, 5, 2)]:
        expected = image.TransformIndexToPhysicalPoint(index)
        ours = oblique_volume.grid.index_to_physical @ np.array([*index, 1.0])
        np.testing.assert_allclose(ours[:3], expected, atol=1e-9)


def test_sample_kmeans_t1_geometry():
    volume = read_volume(sample_path("kmeans_t1"))
    assert volume.shape == (128, 128, 62)
    assert volume.spacing == (2.0, 2.0, 3.0)
    assert volume.array.dtype == np.float32 and volume.array.flags.c_contiguous
    # LSA: axis 0 towards L, axis 1 towards S, axis 2 towards A (LPS direction columns).
    np.testing.assert_allclose(volume.direction, [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-12)


def test_write_dtype_rounds_and_clips(oblique_volume, tmp_path):
    array = np.array(oblique_volume.array)
    array[0, 0, 0], array[1, 0, 0] = -5.0, 300.7
    path = write_volume(oblique_volume.with_array(array), tmp_path / "u8.nrrd", dtype=np.uint8)
    assert sitk.ReadImage(str(path)).GetPixelID() == sitk.sitkUInt8
    back = read_volume(path).array
    np.testing.assert_array_equal(back, np.clip(np.rint(array), 0, 255))


def test_write_creates_parent_folders_and_replaces(oblique_volume, tmp_path):
    path = tmp_path / "a" / "b" / "vol.mha"
    write_volume(oblique_volume, path)
    write_volume(oblique_volume.with_array(oblique_volume.array * 2), path)
    np.testing.assert_array_equal(read_volume(path).array, oblique_volume.array * 2)
    assert os.listdir(path.parent) == ["vol.mha"]


def test_labelmap_reads_integers_without_constant_check(tmp_path):
    labels = np.zeros((6, 5, 4), dtype=np.int16)
    path = write_volume(Volume.from_array(labels), tmp_path / "empty.nii.gz")
    assert read_labelmap(path).array.dtype == np.int32
    labels[2:4, 1:3, 1:3] = 7
    path = write_volume(Volume.from_array(labels), tmp_path / "seg.nrrd")
    np.testing.assert_array_equal(read_labelmap(path).array, labels)
    fractional = write_volume(Volume.from_array(labels + np.float32(0.25)), tmp_path / "frac.nrrd")
    with pytest.raises(XDiffusionError) as excinfo:
        read_labelmap(fractional)
    assert_one_line_error(excinfo, str(fractional), "non-integer")


# ---- 4D -------------------------------------------------------------------------------------


@pytest.fixture
def four_d_path(oblique_volume, tmp_path):
    frames = [volume_to_image(oblique_volume.with_array(oblique_volume.array + 10 * t)) for t in range(3)]
    path = tmp_path / "series4d.nii.gz"
    sitk.WriteImage(sitk.JoinSeries(frames), str(path))
    return path


def test_4d_without_index_names_the_choice(four_d_path):
    with pytest.raises(XDiffusionError) as excinfo:
        read_volume(four_d_path)
    assert_one_line_error(excinfo, f"{four_d_path} is 4D with 3 volumes", "--volume N (0..2)")


def test_4d_volume_index_selects_one_volume(four_d_path, oblique_volume):
    volume = read_volume(four_d_path, volume_index=2)
    np.testing.assert_allclose(volume.array, oblique_volume.array + 20, rtol=1e-6)
    assert_same_grid(volume.grid, oblique_volume.grid, 1e-5)
    with pytest.raises(XDiffusionError) as excinfo:
        read_volume(four_d_path, volume_index=3)
    assert_one_line_error(excinfo, str(four_d_path), "out of range", "0..2")


@pytest.mark.parametrize("ext", ["nhdr", "mhd"])
def test_detached_header_formats_read(oblique_volume, tmp_path, ext):
    path = tmp_path / f"vol.{ext}"
    sitk.WriteImage(volume_to_image(oblique_volume), str(path))
    assert len(os.listdir(tmp_path)) == 2  # header + data file
    back = read_volume(path)
    np.testing.assert_array_equal(back.array, oblique_volume.array)
    assert_same_grid(back.grid, oblique_volume.grid, 1e-12)


def test_multi_component_voxels_need_a_choice(oblique_volume, tmp_path):
    frames = [volume_to_image(oblique_volume.with_array(oblique_volume.array * (c + 1))) for c in range(3)]
    path = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.Compose(frames), str(path))
    with pytest.raises(XDiffusionError) as excinfo:
        read_volume(path)
    assert_one_line_error(excinfo, str(path), "3 values per voxel", "0..2")
    np.testing.assert_allclose(read_volume(path, volume_index=1).array, oblique_volume.array * 2)


# ---- bad inputs: one line naming the file -----------------------------------------------------


def test_2d_image_is_refused(tmp_path):
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(5, 6).astype(np.float32)), str(path))
    with pytest.raises(XDiffusionError) as excinfo:
        read_volume(path)
    assert_one_line_error(excinfo, str(path), "2D")


def test_single_slice_3d_file_is_refused(tmp_path):
    path = write_volume(Volume.from_array(np.random.rand(6, 5, 1).astype(np.float32)), tmp_path / "one.nrrd")
    with pytest.raises(XDiffusionError) as excinfo:
        read_volume(path)
    assert_one_line_error(excinfo, str(path), "2D (size 6x5x1)")


@pytest.mark.parametrize("ext", ["nrrd", "nii.gz", "nii", "mha"])
@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "infinite")])
def test_non_finite_voxels_are_refused(oblique_volume, tmp_path, bad, word, ext):
    # NIfTI included on purpose: ITK's NIfTI reader would hand back NaN as 0.
    array = np.array(oblique_volume.array)
    array[3, 4, 5] = bad
    array[0, 1, 2] = bad
    path = write_volume(oblique_volume.with_array(array), tmp_path / f"bad.{ext}")
    with pytest.raises(XDiffusionError) as excinfo:
        read_volume(path)
    assert_one_line_error(excinfo, str(path), f"2 {word} voxels")


def test_constant_volume_is_refused(tmp_path):
    path = write_volume(Volume.from_array(np.full((5, 5, 5), 3.5, np.float32)), tmp_path / "flat.mha")
    with pytest.raises(XDiffusionError) as excinfo:
        read_volume(path)
    assert_one_line_error(excinfo, str(path), "constant", "3.5")


@pytest.mark.parametrize("ext", ["nii.gz", "nii", "nrrd", "mha"])
def test_truncated_file_is_refused(oblique_volume, tmp_path, ext):
    path = write_volume(oblique_volume, tmp_path / f"full.{ext}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(XDiffusionError) as excinfo:
        read_volume(path)
    assert_one_line_error(excinfo, str(path))
    assert "truncated" in str(excinfo.value) or "not a readable" in str(excinfo.value)


def test_truncated_nifti_header_intact_data_short(oblique_volume, tmp_path):
    # Header complete, voxel data cut short, still a valid gzip stream: ITK alone would zero-fill.
    plain = write_volume(oblique_volume, tmp_path / "plain.nii").read_bytes()
    path = tmp_path / "short.nii.gz"
    path.write_bytes(gzip.compress(plain[:-40]))
    with pytest.raises(XDiffusionError) as excinfo:
        read_volume(path)
    assert_one_line_error(excinfo, str(path), "truncated")


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "noise.nii.gz"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(XDiffusionError) as excinfo:
        read_volume(path)
    assert_one_line_error(excinfo, str(path), "not a readable NIfTI file")


def test_missing_file_is_refused(tmp_path):
    path = tmp_path / "nothere.nii.gz"
    with pytest.raises(XDiffusionError) as excinfo:
        read_volume(path)
    assert_one_line_error(excinfo, str(path), "no such file")


def test_unsupported_extension_is_refused(oblique_volume, tmp_path):
    path = tmp_path / "vol.png"
    path.write_bytes(b"not really")
    with pytest.raises(XDiffusionError) as excinfo:
        read_volume(path)
    assert_one_line_error(excinfo, str(path), "unsupported file type")
    with pytest.raises(XDiffusionError) as excinfo:
        write_volume(oblique_volume, tmp_path / "out.png")
    assert_one_line_error(excinfo, "out.png", "cannot write this file type")
    with pytest.raises(XDiffusionError) as excinfo:
        write_volume(oblique_volume, tmp_path / "out.mhd")  # detached header: not atomic
    assert_one_line_error(excinfo, "out.mhd")
    assert sorted(os.listdir(tmp_path)) == ["vol.png"]


def test_output_parent_that_is_a_file_is_refused(oblique_volume, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    for path in (blocker / "vol.nrrd", blocker / "deeper" / "vol.nrrd"):
        with pytest.raises(XDiffusionError) as excinfo:
            write_volume(oblique_volume, path)
        assert_one_line_error(excinfo, str(path), "is a file")
    assert sorted(os.listdir(tmp_path)) == ["blocker"]
    assert blocker.read_text() == "a file"


def test_output_path_that_is_a_folder_is_refused(oblique_volume, tmp_path):
    folder = tmp_path / "dir.nrrd"
    folder.mkdir()
    with pytest.raises(XDiffusionError) as excinfo:
        write_volume(oblique_volume, folder)
    assert_one_line_error(excinfo, str(folder), "is a folder")
    assert os.listdir(folder) == []


def test_failed_write_leaves_old_file_and_no_temp(oblique_volume, tmp_path, monkeypatch):
    path = write_volume(oblique_volume, tmp_path / "keep.nrrd")

    def broken_write(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", broken_write)
    with pytest.raises(XDiffusionError) as excinfo:
        write_volume(oblique_volume.with_array(oblique_volume.array + 1), path)
    assert_one_line_error(excinfo, str(path), "disk full")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["keep.nrrd"]
    np.testing.assert_array_equal(read_volume(path).array, oblique_volume.array)


# ---- DICOM ------------------------------------------------------------------------------------


def write_dicom_series(volume: Volume, folder, series_uid: str) -> None:
    """Write ``volume`` (int16 voxels) as one DICOM file per k-slice with explicit geometry tags."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(volume_to_image(volume), sitk.sitkInt16)
    direction = volume.direction
    orientation = "\\".join(f"{v:.10f}" for v in (*direction[:, 0], *direction[:, 1]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(volume.shape[2]):
        slice_image = image[:, :, k]
        position = volume.grid.index_to_physical @ np.array([0, 0, k, 1.0])
        tags = {
            "0008|0060": "MR",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.10f}" for v in position[:3]),
            "0020|0037": orientation,
            "0028|0030": f"{volume.spacing[1]:.10f}\\{volume.spacing[0]:.10f}",  # row spacing \ column spacing
            "0018|0050": f"{volume.spacing[2]:.10f}",
        }
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(slice_image)


def test_dicom_series_folder_reads_with_geometry(volume_factory, tmp_path):
    volume = volume_factory(shape=(10, 9, 6), spacing=(0.8, 1.1, 2.5))
    volume = volume.with_array(np.rint(volume.array).astype(np.int16))
    folder = tmp_path / "series"
    write_dicom_series(volume, folder, "1.2.826.0.1.3680043.2.1125.7")
    back = read_volume(folder)
    np.testing.assert_array_equal(back.array, volume.array.astype(np.float32))
    assert_same_grid(back.grid, volume.grid, 1e-6)
    # One file of the series reads the whole series.
    one = read_volume(folder / "slice003.dcm")
    np.testing.assert_array_equal(one.array, back.array)


def test_dicom_folder_with_two_series_names_them(volume_factory, tmp_path):
    volume = volume_factory(shape=(6, 5, 3), spacing=(1.0, 1.0, 2.0))
    folder = tmp_path / "mixed"
    write_dicom_series(volume, folder / "a", "1.2.826.0.1.3680043.2.1125.11")
    write_dicom_series(volume, folder / "b", "1.2.826.0.1.3680043.2.1125.12")
    for sub in ("a", "b"):
        for name in os.listdir(folder / sub):
            os.replace(folder / sub / name, folder / f"{sub}_{name}")
        os.rmdir(folder / sub)
    with pytest.raises(XDiffusionError) as excinfo:
        read_volume(folder)
    assert_one_line_error(excinfo, str(folder), "2 DICOM series", "1125.11", "1125.12")
    a = read_volume(folder / "a_slice000.dcm")
    assert a.shape == (6, 5, 3)


def test_folder_without_dicom_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(XDiffusionError) as excinfo:
        read_volume(tmp_path)
    assert_one_line_error(excinfo, str(tmp_path), "no DICOM series")


def test_atomic_file_replaces_in_one_step_and_a_failure_leaves_the_old_file(tmp_path):
    from XDiffusionLib.io.atomic import atomic_file, write_atomic

    target = tmp_path / "table.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]
    write_atomic(target, lambda handle: handle.write("a,b\n1,2\n"))
    assert target.read_text() == "a,b\n1,2\n" and oct(target.stat().st_mode & 0o777) == "0o644"


def test_process_alive_reads_the_process_table_and_stale_temporaries_of_ended_writers_go(tmp_path):
    """Liveness from psutil (issue 23 item 6): this process and a running child are alive, an
    ended child is not, and a number naming no single process counts as alive (files kept)."""
    import subprocess
    import sys

    from XDiffusionLib.io.atomic import HOST_TAG, process_alive, remove_stale_temporaries

    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    try:
        assert process_alive(os.getpid()) and process_alive(running.pid)
        assert not process_alive(ended.pid)
        assert process_alive(0) and process_alive(-1)
        stale = tmp_path / f".out.nii.gz.xdpart-{ended.pid}-{HOST_TAG}-abc.nii.gz"
        live = tmp_path / f".out.nii.gz.xdpart-{running.pid}-{HOST_TAG}-def.nii.gz"
        other_host = tmp_path / f".out.nii.gz.xdpart-{ended.pid}-00000000-ghi.nii.gz"
        for path in (stale, live, other_host):
            path.write_text("partial")
        assert remove_stale_temporaries(tmp_path) == [stale]
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other_host.name])
    finally:
        running.kill()
        running.wait()


def test_one_file_name_sanitiser():
    from XDiffusionLib.io.names import safe_file_name

    assert safe_file_name("sub-01/T1w (run 2).nii.gz") == "sub-01_T1w_run_2_.nii.gz"
    assert safe_file_name("../../etc/passwd") == "etc_passwd"  # no separators, never hidden
    assert safe_file_name("...", fallback="upload") == "upload"
    assert len(safe_file_name("x" * 500)) == 120


@pytest.mark.parametrize("content, words", [
    (b"\xff\xfe1 2 3", "not UTF-8 text"),
    (b"1 2\x00 3", "it holds binary data"),
])
def test_user_text_files_refuse_non_text_in_one_line(tmp_path, content, words):
    from XDiffusionLib.app.commands.reconstruct import read_indices_file
    from XDiffusionLib.errors import XDiffusionError
    from XDiffusionLib.evaluation.manifest import Defaults, read_manifest

    path = tmp_path / "picks.txt"
    path.write_bytes(content)
    with pytest.raises(XDiffusionError, match=f"picks.txt: not a text file of slice indices \\({words}"):
        read_indices_file(str(path))
    with pytest.raises(XDiffusionError, match=f"picks.txt: not a CSV manifest \\({words}"):
        read_manifest(path, Defaults())


def test_io_is_split_by_idea_and_the_old_names_still_import():
    """io/readers.py split into formats, data_files, images and dicom (issue 23 item 4): the light
    modules load without SimpleITK, and every name callers used from ``io.readers`` or ``io``
    still imports, as the same object."""
    import subprocess
    import sys

    code = ("import sys; import XDiffusionLib.io.formats, XDiffusionLib.io.data_files; "
            "print('SimpleITK' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
    import XDiffusionLib.io as io
    from XDiffusionLib.io import data_files, dicom, formats, images, readers, writers

    for name in ("volume_suffix", "is_volume_file", "FORMATS", "READ_SUFFIXES"):
        assert getattr(readers, name) is getattr(formats, name) is getattr(io, name)
    for name in ("volume_files", "detached_data_files", "check_self_contained"):
        assert getattr(readers, name) is getattr(data_files, name) is getattr(io, name)
    assert readers.image_to_volume is images.image_to_volume is io.image_to_volume
    assert readers.image_to_array is images.image_to_array
    assert readers.header_slice_thickness is dicom.header_slice_thickness is io.header_slice_thickness
    assert writers.WRITE_SUFFIXES is formats.WRITE_SUFFIXES
    assert io.MultiVolumeError is readers.MultiVolumeError
