"""Thick-slice scans onto a finer grid (issue 21): the plan, the slice profile, the library call, the CLI.

Tiny volumes and a tiny random model (S=16, max 4 input slices), as the other CLI tests use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from XDiffusionLib.app.cli import main
from XDiffusionLib.errors import XDiffusionError
from XDiffusionLib.io.readers import read_volume
from XDiffusionLib.io.volume import Grid, Volume
from XDiffusionLib.io.writers import write_volume
from XDiffusionLib.transforms.thick_slices import (as_acquired, enforce_slab_averages, is_thick_slice,
                                                   place_acquired, plan_thick_slices, slab_average, slab_matrix)
from model_helpers import save_tiny_model

SETTINGS = dict(views=1, steps=2, device="cpu")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


def thick_volume(shape=(14, 12, 4), spacing=(1.0, 1.0, 3.0)) -> Volume:
    i, j, k = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    array = (200 + 150 * np.sin(3 * i) * np.cos(2 * j) + 80 * np.cos(2 * k)).astype(np.float32)
    return Volume.from_array(array, spacing=spacing, origin=(2.0, -3.0, 4.0))


@pytest.fixture
def thick_file(tmp_path) -> Path:
    return write_volume(thick_volume(), tmp_path / "in" / "thick.nii.gz")


# ------------------------------------------------------------------------------------- the plan


def test_factor_puts_acquired_slice_i_at_fine_slice_i_times_n():
    volume = thick_volume()
    plan = plan_thick_slices(volume.grid, slice_factor=3)
    assert plan.grid.shape == (14, 12, 10) and plan.grid.spacing == pytest.approx((1.0, 1.0, 1.0))
    assert plan.grid.origin == volume.grid.origin and plan.fine_indices == (0, 3, 6, 9)
    fine = place_acquired(volume, plan)
    # same physical position: fine slice i*N is acquired slice i
    for i in range(4):
        np.testing.assert_allclose(plan.grid.index_to_physical @ [0, 0, 3 * i, 1],
                                   volume.grid.index_to_physical @ [0, 0, i, 1])
        np.testing.assert_array_equal(fine.array[:, :, 3 * i], volume.array[:, :, i])
    # the default: the in-plane spacing (1 mm) -> factor 3; a spacing that divides -> its factor
    assert plan_thick_slices(volume.grid).factor == 3
    assert plan_thick_slices(volume.grid, spacing=1.5).factor == 2
    assert is_thick_slice(volume.grid) and not is_thick_slice(thick_volume(spacing=(1, 1, 1)).grid)


def test_as_acquired_shows_each_fine_slice_its_nearest_acquired_slice():
    """What the web app shows beside a fine result: the thick slices as acquired, on the fine grid."""
    volume = thick_volume(shape=(6, 5, 4), spacing=(1.0, 1.0, 3.0))
    # the slice axis first, as a file may lie
    moved = Volume(np.moveaxis(volume.array, 2, 0).copy(), Grid((4, 6, 5), (3.0, 1.0, 1.0), volume.grid.origin, np.eye(3)))
    for source in (volume, moved):
        plan = plan_thick_slices(source.grid, slice_factor=3)
        shown = as_acquired(source, plan)
        assert shown.grid.same_geometry(plan.grid)
        along = np.moveaxis(shown.array, plan.axis, -1)
        acquired = np.moveaxis(source.array, plan.axis, -1)
        # fine slices 0 1 | 2 3 4 | 5 6 7 | 8 9: each the acquired slice whose centre is nearest
        for fine, nearest in enumerate([0, 0, 1, 1, 1, 2, 2, 2, 3, 3]):
            np.testing.assert_array_equal(along[..., fine], acquired[..., nearest])
    even = plan_thick_slices(volume.grid, slice_factor=2)  # halfway between two centres: the later slice
    np.testing.assert_array_equal(as_acquired(volume, even).array[:, :, 1], volume.array[:, :, 1])
    with pytest.raises(ValueError):
        as_acquired(thick_volume(shape=(6, 5, 5)), plan_thick_slices(volume.grid, slice_factor=3))


@pytest.mark.parametrize("thickness", [3.0, 1.5, 4.5, 0.01])
def test_data_consistency_each_slab_averages_to_its_acquired_slice(thickness):
    volume = thick_volume()
    plan = plan_thick_slices(volume.grid, slice_factor=4, thickness=thickness)
    assert np.allclose(slab_matrix(plan).sum(axis=1), 1.0)
    rough = np.random.default_rng(1).normal(100, 30, plan.grid.shape).astype(np.float32)
    consistent = enforce_slab_averages(rough, volume.array, plan)
    np.testing.assert_allclose(slab_average(consistent, plan), volume.array, atol=1e-3)
    # the correction is piecewise linear between slab centres: no jump (staircase) along the slice axis
    change = np.diff(consistent - rough, axis=2)
    assert np.abs(np.diff(change, axis=2)[:, :, [0, 1, 4, 5]]).max() < 1e-3  # straight within each interval
    if thickness == 0.01:  # a thin slice: the fine slice at i*N is the acquired slice
        np.testing.assert_allclose(consistent[:, :, ::4], volume.array, atol=1e-3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(slice_factor=400000), "slice factor 400000 would give 14x12x1200001 voxels (over 128 million): choose a smaller "
                               "factor or a larger spacing"),
    (dict(spacing=1.2), "spacing 1.2 mm does not divide the 3 mm between the acquired axial slices: choose 1.5 or 1 mm"),
    (dict(slice_factor=1), "slice factor must be a whole number of at least 2, got 1"),
    (dict(thickness=-1.0), "the slice thickness must be a positive number of millimetres, got -1.0"),
])
def test_bad_values_are_one_line(kwargs, message):
    with pytest.raises(XDiffusionError) as error:
        plan_thick_slices(thick_volume().grid, **kwargs)
    assert str(error.value) == message


def test_isotropic_input_is_one_line():
    with pytest.raises(XDiffusionError, match=r"^the volume's voxels are isotropic \(1x1x1 mm\): there are no thick"):
        plan_thick_slices(thick_volume(spacing=(1.0, 1.0, 1.0)).grid)


# --------------------------------------------------------------------------- the library call


def test_library_call_is_data_consistent_on_the_fine_grid(model_dir):
    from XDiffusionLib.sampling.thick_slices import reconstruct_thick_slices

    volume = thick_volume()
    result = reconstruct_thick_slices(volume, slice_factor=2, thickness=3.0, model_dir=model_dir, **SETTINGS)
    assert result.volume.grid.same_geometry(result.plan.grid) and result.uncertainty.grid.same_geometry(result.plan.grid)
    np.testing.assert_allclose(slab_average(result.volume.array, result.plan), volume.array, atol=1e-2)
    assert np.all(np.isfinite(result.volume.array))


def test_the_scans_own_check_reconstructs_the_volume_alone(monkeypatch):
    """Design issue 23: step 3's reconstruction at twice the spacing keeps only its volume, yet its
    calibrated interval (interval features, left-out folds) was computed too and thrown away; now
    only the result's own reconstruction computes one."""
    from test_residual_model import ExactResidual, residual_config
    from test_uncertainty import small_table

    from XDiffusionLib.sampling import reconstructor as module
    from XDiffusionLib.sampling.thick_slices import reconstruct_thick_slices

    computed = []  # K of every reconstruction that computed interval features
    features = module.interval_features

    def counting(*args):
        computed.append(args[0])
        return features(*args)

    monkeypatch.setattr(module, "interval_features", counting)
    config = residual_config()
    method = module.XDiffusionReconstructor(model=ExactResidual(config, 0.05), config=config, calibration=small_table(),
                                            **SETTINGS)
    volume = thick_volume(shape=(14, 12, 7))
    result = reconstruct_thick_slices(volume, slice_factor=2, thickness=3.0, reconstructor=method)
    assert result.share.checked and result.info.calibrated
    assert computed == [7]  # K = 7: the result's reconstruction; none for the 4 slices of the check


# ---------------------------------------------------------------------------------- the command


def test_cli_all_slices_writes_the_fine_grid(tmp_path, thick_file, model_dir, capsys):
    out = tmp_path / "out" / "fine.nii.gz"
    code = main(["reconstruct", str(thick_file), "--all-slices", "--slice-factor", "3", "--slice-thickness", "3",
                 "-o", str(out), "--model", str(model_dir), "--views", "1", "--steps", "2", "--device", "cpu",
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    fine, source = read_volume(out), read_volume(thick_file)
    spread = sitk.ReadImage(str(tmp_path / "out" / "fine_uncertainty.nii.gz"))  # all 0 is allowed: a random model
    assert fine.shape == spread.GetSize() == (14, 12, 10) and fine.spacing == pytest.approx((1.0, 1.0, 1.0))
    assert fine.origin == pytest.approx(source.origin)
    plan = plan_thick_slices(source.grid, slice_factor=3, thickness=3.0)
    np.testing.assert_allclose(slab_average(fine.array, plan), source.array, atol=1e-2)
    printed = capsys.readouterr().out
    assert "onto 1 mm slices (14x12x10 voxels)" in printed
    assert "100% generated by the model: not checked" in printed  # 4 acquired slices: none can be left out


@pytest.mark.parametrize("extra, volume, words", [
    (["--slice-factor", "400000"], None, "slice factor 400000 would give 14x12x1200001 voxels"),
    (["--spacing", "1.2"], None, "spacing 1.2 mm does not divide the 3 mm between the acquired axial slices"),
    ([], (1.0, 1.0, 1.0), "the volume's voxels are isotropic (1x1x1 mm)"),
    (["--slice-factor", "2", "--spacing", "1.5"], None, "give --slice-factor or --spacing, not both"),
])
def test_cli_bad_values_one_line_nothing_written(tmp_path, model_dir, capsys, extra, volume, words):
    source = write_volume(thick_volume(spacing=volume or (1.0, 1.0, 3.0)), tmp_path / "in" / "scan.nii.gz")
    out = tmp_path / "out"
    code = main(["reconstruct", str(source), "--all-slices", *extra, "-o", str(out / "fine.nii.gz"),
                 "--model", str(model_dir), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and words in err and len(err.splitlines()) == 1, err
    assert not out.exists() or not any(out.iterdir())


def test_cli_thick_options_need_all_slices(tmp_path, thick_file, model_dir, capsys):
    code = main(["reconstruct", str(thick_file), "--indices", "1", "--plane", "axial", "--slice-factor", "2",
                 "-o", str(tmp_path / "o.nii.gz"), "--model", str(model_dir)])
    assert code != 0 and capsys.readouterr().err.strip().endswith("--slice-factor needs --all-slices (a thick-slice "
                                                                    "scan onto a finer grid)")


def test_batch_all_slices(tmp_path, thick_file, model_dir, capsys):
    out = tmp_path / "batch"
    code = main(["reconstruct-batch", "--inputs", str(thick_file.parent), "--all-slices", "--slice-factor", "2",
                 "--out", str(out), "--model", str(model_dir), "--views", "1", "--steps", "2", "--device", "cpu",
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    fine = read_volume(out / "thick_xdiffusion.nii.gz")
    assert fine.shape == sitk.ReadImage(str(out / "thick_xdiffusion_uncertainty.nii.gz")).GetSize() == (14, 12, 7)
    assert "axial" in (out / "results.csv").read_text()
    bad = main(["reconstruct-batch", "--inputs", str(thick_file.parent), "--all-slices", "--spacing", "1.2",
                "--out", str(tmp_path / "bad"), "--model", str(model_dir), "--no-progress"])
    assert bad != 0 and "does not divide" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def test_batch_all_slices_takes_a_scan_longer_than_the_model_in_windows(tmp_path, model_dir, capsys):
    """Six acquired slices, a model of four: ``reconstruct --all-slices`` runs it in windows, and so
    must the batch (its check before any work refused it with the model's slice limit)."""
    source = write_volume(thick_volume(shape=(14, 12, 6)), tmp_path / "in" / "long.nii.gz")
    out = tmp_path / "batch"
    code = main(["reconstruct-batch", "--inputs", str(source.parent), "--all-slices", "--slice-factor", "2",
                 "--out", str(out), "--model", str(model_dir), "--views", "1", "--steps", "2", "--device", "cpu",
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert read_volume(out / "long_xdiffusion.nii.gz").shape == (14, 12, 11)


# ------------------------------------------------------------------------------- the evaluation


def test_evaluate_thick_slice_scores_both_protocols(tmp_path, model_dir, capsys):
    """``evaluate --thick-slice`` on a tiny isotropic volume: (a) simulated slabs, (b) leave-every-other-out."""
    rng = np.random.default_rng(0)
    i, j, k = np.meshgrid(*[np.linspace(0, 1, n) for n in (16, 16, 13)], indexing="ij")
    array = (100 + 80 * np.sin(4 * i) * np.cos(3 * j) + 40 * k + rng.normal(0, 1, i.shape)).astype(np.float32)
    source = write_volume(Volume.from_array(array, (1.0, 1.0, 1.0)), tmp_path / "data" / "iso.nii.gz")
    out = tmp_path / "eval"
    code = main(["evaluate", "--thick-slice", "--data", str(source), "--out", str(out), "--model", str(model_dir),
                 "--views", "1", "--steps", "2", "--device", "cpu", "--thickness-voxels", "3", "--gap-voxels", "1",
                 "--smore-steps", "2", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    import csv

    rows = list(csv.DictReader(open(out / "thick_slice.csv", encoding="utf-8")))
    assert {(r["protocol"], r["method"]) for r in rows} == {(p, m) for p in ("simulated", "leave-out")
                                                            for m in ("xdiffusion", "cubic", "pchip", "smore")}
    assert all(np.isfinite(float(r["psnr"])) and -1 <= float(r["ssim"]) <= 1 for r in rows)
    assert "| smore |" in (out / "thick_slice_summary.md").read_text()


def test_the_thick_slice_evaluation_scores_the_whole_volume_unless_cropped():
    """Scans longer than the model takes go through the workflow's windows, so the protocols no
    longer crop them to the model's slice limit; ``max_slabs`` still can, for a quick run."""
    from XDiffusionLib.evaluation.thick_slice import leave_out_case, simulated_case

    array = np.arange(8 * 8 * 41, dtype=np.float32).reshape(8, 8, 41)
    volume = Volume.from_array(array, (1.0, 1.0, 1.0))
    thick, plan, truth = simulated_case(volume, 2, 3, 1)
    assert thick.shape[2] == 11 and truth.shape[2] == 41 and plan.factor == 4
    thick, _, truth = simulated_case(volume, 2, 3, 1, max_slabs=4)
    assert thick.shape[2] == 4 and truth.shape[2] == 13
    kept, left_out, _ = leave_out_case(volume, 2)
    assert kept.shape[2] == 21 and left_out.shape[2] == 20
    kept, left_out, _ = leave_out_case(volume, 2, max_slabs=5)
    assert kept.shape[2] == 5 and left_out.shape[2] == 4
