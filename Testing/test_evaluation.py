"""Evaluation protocol and ``xdiffusion evaluate``: tables, figures, leak-free indices, bad input."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from XDiffusionLib.app.cli import main
from XDiffusionLib.errors import XDiffusionError
from XDiffusionLib.evaluation import protocol
from XDiffusionLib.evaluation.cases import find_cases
from XDiffusionLib.evaluation.report import CASE_COLUMNS, SUMMARY_COLUMNS
from XDiffusionLib.io import read_volume, write_volume
from XDiffusionLib.io.volume import Volume

RAS = np.diag([-1.0, -1.0, 1.0])
SHAPE = (24, 26, 20)  # canonical: 20 axial slices


def head(shape=SHAPE, seed: int = 0) -> np.ndarray:
    """Smooth head-like phantom on a zero background: an ellipsoid with slowly varying inner structure."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt((x / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 0.75) ** 2)
    inside = r < 1.0
    values = inside * (80 + 40 * np.cos(2.0 * x + 0.5) * np.sin(1.5 * y + 0.3) + 30 * z)
    return (values + inside * rng.normal(0, 0.5, shape)).astype(np.float32)


@pytest.fixture
def data_dir(tmp_path):
    folder = tmp_path / "data"
    write_volume(Volume.from_array(head(seed=0), spacing=(1.0, 1.0, 1.5), direction=RAS), folder / "case_a.nii.gz")
    write_volume(Volume.from_array(head(seed=1), spacing=(1.2, 1.0, 1.0), direction=RAS), folder / "case_b.nrrd")
    return folder


@pytest.fixture
def atlas(tmp_path):
    path = tmp_path / "atlas.nii.gz"
    write_volume(Volume.from_array(head((30, 32, 28), seed=2), spacing=(1.0, 1.0, 1.0), direction=RAS), path)
    return path


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]


@pytest.mark.slow  # every baseline with figures: several seconds on a 2-core CPU
def test_evaluate_all_baselines_writes_tables_figures_and_protocol(data_dir, atlas, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main(["evaluate", "--data", str(data_dir / "case_a.nii.gz"), "--method", "nearest", "linear", "cubic", "template",
               "--atlas", str(atlas), "--slices", "1", "3", "--plane", "axial", "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "PSNR paper (dB)" in printed
    for method in ("nearest", "linear", "cubic", "template"):
        assert method in printed

    header, rows = read_csv(out / "cases.csv")
    assert tuple(header) == CASE_COLUMNS
    assert len(rows) == 4 * 2
    assert {r["case"] for r in rows} == {"case_a"}
    for row in rows:
        assert 5.0 < float(row["psnr_paper"]) < 80.0
        assert 0.0 < float(row["ssim_axial"]) <= 1.0
        assert len(row["indices"].split()) == int(row["k"])
        assert float(row["psnr_paper_noninput"]) <= float(row["psnr_paper"]) + 1e-6
        assert float(row["seconds"]) >= 0.0
        head_planes = [float(row[f"head_ssim_{plane}"]) for plane in ("axial", "coronal", "sagittal")]
        assert all(0.0 < value < 1.0 for value in head_planes)
        assert float(row["head_ssim"]) == pytest.approx(np.mean(head_planes), abs=1e-4)
        assert 0.0 <= float(row["sharpness_through_plane"]) < 1.0  # every baseline is smoother than the truth
    by_key = {(r["method"], r["k"]): r for r in rows}
    assert float(by_key[("linear", "3")]["psnr_paper"]) >= float(by_key[("nearest", "3")]["psnr_paper"])
    assert float(by_key[("linear", "3")]["psnr_paper"]) > float(by_key[("linear", "1")]["psnr_paper"])
    # One input slice: every interpolation is the nearest-slice copy, constant along the axis.
    assert by_key[("linear", "1")]["psnr_paper"] == by_key[("nearest", "1")]["psnr_paper"]
    assert float(by_key[("linear", "1")]["sharpness_through_plane"]) == 0.0
    assert float(by_key[("linear", "3")]["sharpness_through_plane"]) > 0.0

    header, summary = read_csv(out / "summary.csv")
    assert tuple(header) == SUMMARY_COLUMNS
    assert [(r["method"], r["k"], r["n"]) for r in summary] == [
        (m, k, "1") for m in ("nearest", "linear", "cubic", "template") for k in ("1", "3")]
    linear3 = next(r for r in summary if r["method"] == "linear" and r["k"] == "3")
    assert linear3["psnr_paper_mean"] == by_key[("linear", "3")]["psnr_paper"]
    for column in ("head_ssim", "head_ssim_axial", "head_ssim_coronal", "head_ssim_sagittal", "sharpness_through_plane"):
        assert linear3[f"{column}_mean"] == by_key[("linear", "3")][column]

    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert len(pngs) == 4 * 2 + 1 and "case_a_template_k3.png" in pngs
    assert (out / "figures" / "case_a_error_by_distance.png").stat().st_size > 1000  # paper Fig. XV, one per case
    markdown = (out / "summary.md").read_text().splitlines()
    assert markdown[0].startswith("| method | K=1 PSNR | K=1 non-input | K=1 SSIM | K=3 PSNR")
    linear_line = next(line for line in markdown if line.startswith("| linear |"))
    assert f"{float(linear3['psnr_paper_mean']):.2f}" in linear_line
    # the best value of each column is bold, and only that one
    best3 = max((r for r in summary if r["k"] == "3"), key=lambda r: float(r["psnr_paper_mean"]))["method"]
    for line in markdown[2:markdown.index("")]:  # the first table
        cell = line.split("|")[5].strip()  # K=3 PSNR
        assert cell.startswith("**") == line.startswith(f"| {best3} |"), line
    head_header = next(line for line in markdown[2:] if line.startswith("| method |"))
    assert head_header.startswith("| method | K=1 head SSIM | K=1 sharpness | K=3 head SSIM | K=3 sharpness |")
    start = markdown.index(head_header) + 2
    head_lines = [line for line in markdown[start:start + 4]]  # one line per method
    assert all(line.startswith("| ") for line in head_lines)
    closest = min((r for r in summary if r["k"] == "3"), key=lambda r: abs(float(r["sharpness_through_plane_mean"]) - 1))
    for line in head_lines:
        assert line.split("|")[5].strip().startswith("**") == line.startswith(f"| {closest['method']} |"), line
    assert (out / "psnr_vs_k.png").stat().st_size > 1000
    record = json.loads((out / "protocol.json").read_text())
    assert record["plane"] == "axial" and record["k"] == [1, 3]
    assert record["protocol_version"] == protocol.PROTOCOL_VERSION >= 2
    assert {"head_ssim", "sharpness_through_plane"} <= set(record["metrics"]) and "head_rule" in record
    assert record["cases"][0]["indices"]["1"] == [int(by_key[("nearest", "1")]["indices"])]
    assert not list(out.glob(".*.xdpart-*"))  # no temporary files left behind (the hidden output ledger stays)


def test_metrics_do_not_depend_on_the_file_orientation(tmp_path):
    array = head(seed=3)
    canonical = Volume.from_array(array, spacing=(1.0, 1.1, 1.3), origin=(5.0, -3.0, 2.0), direction=RAS)
    # The same voxels stored L->R flipped and as LPS-ordered axes, with the origin moved to match.
    flipped = Volume.from_array(array[::-1, ::-1, :].copy(), spacing=(1.0, 1.1, 1.3),
                                origin=(5.0 - 23 * 1.0, -3.0 - 25 * 1.1, 2.0), direction=np.eye(3))
    write_volume(canonical, tmp_path / "ras.nii.gz")
    write_volume(flipped, tmp_path / "lps.nii.gz")
    out = tmp_path / "eval"
    assert main(["evaluate", "--data", str(tmp_path / "ras.nii.gz"), str(tmp_path / "lps.nii.gz"), "--method", "linear",
                 "--slices", "3", "--plane", "sagittal", "--out", str(out), "--no-figures", "--no-progress"]) == 0
    _, rows = read_csv(out / "cases.csv")
    first, second = rows
    for column in ("indices", "psnr_paper", "psnr_unit", "ssim_axial", "ssim_sagittal", "head_ssim_coronal",
                   "sharpness_through_plane"):
        assert first[column] == second[column]
    assert not (out / "figures").exists()


@pytest.mark.parametrize("plane, axis", [("coronal", 1), ("sagittal", 0)])
def test_evaluate_with_coronal_and_sagittal_inputs_scores_along_their_axis(data_dir, tmp_path, plane, axis):
    out = tmp_path / "eval"
    assert main(["evaluate", "--data", str(data_dir / "case_a.nii.gz"), "--method", "linear", "--slices", "3",
                 "--plane", plane, "--out", str(out), "--no-figures", "--no-progress"]) == 0
    _, rows = read_csv(out / "cases.csv")
    (row,) = rows
    assert row["plane"] == plane and 0.0 < float(row["head_ssim"]) < 1.0
    truth = protocol.canonical_case(read_volume(data_dir / "case_a.nii.gz")).array
    indices = tuple(int(i) for i in row["indices"].split())
    # The sharpness is measured along the plane's own axis: a perfect output along it scores 1.
    assert protocol.score(truth, truth, plane, indices)["sharpness_through_plane"] == 1.0
    assert 0.0 < float(row["sharpness_through_plane"]) < 1.0
    assert json.loads((out / "protocol.json").read_text())["plane_axis"] == axis


def test_given_indices_are_used_for_every_case(data_dir, tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", "--data", str(data_dir), "--method", "nearest", "--indices", "4", "15",
                 "--out", str(out), "--no-figures", "--no-progress"]) == 0
    _, rows = read_csv(out / "cases.csv")
    assert [r["case"] for r in rows] == ["case_a", "case_b"]
    assert [r["indices"] for r in rows] == ["4 15", "4 15"] and all(r["k"] == "2" for r in rows)
    _, summary = read_csv(out / "summary.csv")
    assert len(summary) == 1 and summary[0]["n"] == "2"
    values = [float(r["psnr_paper"]) for r in rows]
    assert float(summary[0]["psnr_paper_mean"]) == pytest.approx(np.mean(values), abs=1e-3)
    assert float(summary[0]["psnr_paper_std"]) == pytest.approx(np.std(values), abs=1e-3)


@pytest.mark.parametrize("args, value", [
    (["--plane", "diagonal"], "diagonal"),
    (["--method", "nearest", "magic"], "magic"),
    (["--indices", "3", "99"], "99"),
    (["--slices", "1", "50"], "50"),
    (["--method", "linear", "--model", "somewhere"], "--model"),
])
def test_bad_arguments_fail_with_one_line_and_write_nothing(data_dir, tmp_path, capsys, args, value):
    out = tmp_path / "eval"
    rc = main(["evaluate", "--data", str(data_dir), "--out", str(out), "--no-progress", *args])
    assert rc != 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and value in err
    assert not out.exists()


def test_extra_metrics_volume_error_and_correlation_across_cases(data_dir, tmp_path):
    from XDiffusionLib.baselines.foreground import head_mask

    write_volume(Volume.from_array(head((20, 22, 24), seed=3), spacing=(1.1, 0.9, 1.3), direction=RAS),
                 data_dir / "case_c.nii.gz")
    out = tmp_path / "eval"
    assert main(["evaluate", "--data", str(data_dir), "--method", "nearest", "linear", "--slices", "3",
                 "--extra-metrics", "volume", "--out", str(out), "--no-figures", "--no-progress"]) == 0
    _, cases = read_csv(out / "extra_metrics_cases.csv")
    assert len(cases) == 6  # 3 cases x 2 methods
    truth = read_volume(data_dir / "case_a.nii.gz")
    expected_ml = head_mask(truth.array).sum() * np.prod(truth.spacing) / 1000.0
    row = next(r for r in cases if r["case"] == "case_a" and r["method"] == "nearest")
    assert float(row["volume_true_ml"]) == pytest.approx(expected_ml, rel=1e-3)
    error = 100 * (float(row["volume_reconstructed_ml"]) - float(row["volume_true_ml"])) / float(row["volume_true_ml"])
    assert float(row["volume_error_pct"]) == pytest.approx(error, abs=1e-3)
    _, summary = read_csv(out / "extra_metrics.csv")
    assert {(r["method"], r["n"]) for r in summary} == {("nearest", "3"), ("linear", "3")}
    for r in summary:  # three head sizes: reconstructed volumes follow the true ones
        assert 0.9 < float(r["volume_pearson_r"]) <= 1.0 and 0 < float(r["volume_abs_error_pct_mean"]) < 100
    assert "## Extra metrics" in (out / "summary.md").read_text()


def test_random_pair_floor_on_one_grid_and_refused_across_grids(tmp_path):
    from XDiffusionLib.metrics.psnr import psnr_paper

    same = tmp_path / "same"
    truths = [head(seed=s) for s in (0, 1)]
    truths[1] = truths[1] * 0.8  # two "subjects" on one grid
    for n, array in enumerate(truths):
        write_volume(Volume.from_array(array, spacing=(1.0, 1.0, 1.0), direction=RAS), same / f"s{n}.nii.gz")
    out = tmp_path / "eval"
    assert main(["evaluate", "--data", str(same), "--method", "nearest", "--slices", "2", "--extra-metrics", "random_pair",
                 "--out", str(out), "--no-figures", "--no-progress"]) == 0
    floor = json.loads((out / "random_pair.json").read_text())
    pairs = [psnr_paper(truths[0], truths[1]), psnr_paper(truths[1], truths[0])]  # canonical = these arrays (RAS)
    assert floor["psnr_paper_mean"] == pytest.approx(np.mean(pairs), abs=1e-3)
    assert not (out / "extra_metrics_cases.csv").exists() and "Random-pair floor" in (out / "summary.md").read_text()
    write_volume(Volume.from_array(head((20, 22, 24), seed=3), direction=RAS), same / "other_grid.nii.gz")
    mixed = tmp_path / "mixed"
    assert main(["evaluate", "--data", str(same), "--method", "nearest", "--slices", "2", "--extra-metrics", "random_pair",
                 "--out", str(mixed), "--no-figures", "--no-progress"]) == 0
    assert "different grids" in json.loads((mixed / "random_pair.json").read_text())["skipped"]


@pytest.mark.parametrize("args, words", [
    (["--extra-metrics", "fid"], "unknown extra metric 'fid'"),
    (["--extra-metrics", "lpips"], "LPIPS needs backbone weights"),
    (["--extra-metrics", "lpips", "--lpips-weights", "nowhere.pth"], "nowhere.pth: no such file"),
    (["--lpips-weights", "w.pth"], "only used by --extra-metrics lpips"),
])
def test_extra_metrics_refuse_bad_requests_in_one_line(data_dir, tmp_path, capsys, args, words):
    out = tmp_path / "eval"
    assert main(["evaluate", "--data", str(data_dir), "--method", "nearest", "--out", str(out), "--no-progress", *args]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and not out.exists()


def test_output_folder_that_is_a_file_is_refused(data_dir, tmp_path, capsys):
    out = tmp_path / "results.txt"
    out.write_text("keep me")
    rc = main(["evaluate", "--data", str(data_dir), "--out", str(out), "--method", "nearest", "--no-progress"])
    assert rc != 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "results.txt" in err
    assert out.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "results.txt"]


def test_missing_data_is_refused(tmp_path, capsys):
    rc = main(["evaluate", "--data", str(tmp_path / "nowhere.nii.gz"), "--out", str(tmp_path / "eval"), "--no-progress"])
    assert rc != 0 and "nowhere.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()


def test_choose_indices_spreads_bin_centres_over_the_foreground():
    array = np.zeros((4, 4, 40), dtype=np.float32)
    array[:, :, 10:30] = 1.0  # foreground extent: slices 10..29
    assert protocol.choose_indices(array, "axial", 1) == (20,)  # middle (19.5 rounds up)
    assert protocol.choose_indices(array, "axial", 2) == (15, 25)
    assert protocol.choose_indices(array, "axial", 4) == (12, 17, 22, 27)
    twenty = protocol.choose_indices(array, "axial", 20)
    assert twenty == tuple(range(10, 30))  # every foreground slice, none repeated
    wider = protocol.choose_indices(array, "axial", 25)  # more than the extent: the whole axis
    assert len(set(wider)) == 25 and min(wider) >= 0 and max(wider) <= 39
    with pytest.raises(XDiffusionError, match="41"):
        protocol.choose_indices(array, "axial", 41)


def test_score_counts_non_input_slices_separately():
    gt = head()
    pred = gt.copy()
    pred[:, :, 5] += 10.0  # error only on slice 5
    both = protocol.score(gt, pred, "axial", (5,))
    assert math.isinf(both["psnr_paper_noninput"])  # the only error sits on the input slice
    assert math.isfinite(both["psnr_paper"])
    elsewhere = protocol.score(gt, pred, "axial", (6,))
    assert elsewhere["psnr_paper_noninput"] < elsewhere["psnr_paper"]
    assert set(both) == set(protocol.METRIC_COLUMNS)


def test_score_head_ssim_and_sharpness_look_inside_the_head_only():
    from scipy.ndimage import gaussian_filter1d

    from XDiffusionLib.baselines.foreground import head_mask

    gt = head()
    indices = (4, 15)
    exact = protocol.score(gt, gt, "axial", indices)
    assert exact["head_ssim"] == pytest.approx(1.0) and exact["sharpness_through_plane"] == 1.0
    outside = ~head_mask(gt)
    noisy = gt + outside * np.random.default_rng(0).normal(0, 5, gt.shape).astype(np.float32)
    # Background noise ruins whole-slice SSIM far more than head SSIM (only the head's rim sees it).
    scores = protocol.score(gt, noisy, "axial", indices)
    assert 1.0 - scores["head_ssim_axial"] < 0.5 * (1.0 - scores["ssim_axial"])
    blurred = protocol.score(gt, gaussian_filter1d(gt, 2.0, axis=2), "axial", indices)
    assert blurred["sharpness_through_plane"] < 0.9
    # A mask passed in is the one used (the runner computes it once per case).
    assert protocol.score(gt, noisy, "axial", indices, head_mask(gt)) == scores


def test_find_cases_prefers_brats_flair_and_skips_label_maps(tmp_path, capsys):
    brats = tmp_path / "brats" / "BraTS20_Training_001"
    for kind in ("flair", "t1", "seg"):
        write_volume(Volume.from_array(head(seed=4), direction=RAS), brats / f"BraTS20_Training_001_{kind}.nii.gz")
    cases = find_cases([str(tmp_path / "brats")])
    assert [c.name for c in cases] == ["BraTS20_Training_001_flair"]

    mixed = tmp_path / "mixed"
    labels = (head(seed=5) > 90).astype(np.float32) * 3
    write_volume(Volume.from_array(head(seed=5), direction=RAS), mixed / "t1.nii.gz")
    write_volume(Volume.from_array(labels, direction=RAS), mixed / "mask.nii.gz")
    out = tmp_path / "eval"
    assert main(["evaluate", "--data", str(mixed), "--method", "nearest", "--out", str(out),
                 "--no-figures", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "skipping mask" in err
    # The default K list is the paper's (1 3 5 10 31), less what this thin volume cannot hold.
    assert "K=31 left out of the default list: t1 has only" in err
    _, rows = read_csv(out / "cases.csv")
    assert {r["case"] for r in rows} == {"t1"} and [r["k"] for r in rows] == ["1", "3", "5", "10"]
    # Named explicitly, a label map is an error instead.
    assert main(["evaluate", "--data", str(mixed / "mask.nii.gz"), "--method", "nearest",
                 "--out", str(tmp_path / "eval2"), "--no-progress"]) != 0
    assert "label map" in capsys.readouterr().err
    assert not (tmp_path / "eval2").exists()


def test_samples_keyword_names_the_heldout_samples_only():
    from XDiffusionLib.data.samples import samples_with_role

    names = [c.name for c in find_cases(["samples"])]
    assert names == [s.name for s in samples_with_role("heldout")]
    assert "icbm152_t1" not in names


def test_xdiffusion_method_gets_the_model_folder(data_dir, tmp_path, capsys):
    import torch

    from XDiffusionLib.model.checkpoint import save_pretrained
    from XDiffusionLib.model.config import XDiffusionConfig
    from XDiffusionLib.model.factory import build_denoiser

    torch.manual_seed(0)
    config = XDiffusionConfig(side=16, block_out_channels=(8, 16), attention_levels=(1,), max_slices=2, depth_frequencies=4)
    model_dir = save_pretrained(build_denoiser(config).eval(), config, tmp_path / "model")
    out = tmp_path / "eval"
    args = ["evaluate", "--data", str(data_dir / "case_a.nii.gz"), "--method", "xdiffusion", "--model", str(model_dir),
            "--no-figures", "--no-progress", "--out", str(out)]
    # The model's own check (at most 2 input slices) runs before anything is written.
    assert main([*args, "--slices", "3"]) != 0
    assert "at most 2" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--slices", "2"]) == 0
    _, rows = read_csv(out / "cases.csv")
    assert [(r["method"], r["k"]) for r in rows] == [("xdiffusion", "2")]
    assert math.isfinite(float(rows[0]["psnr_paper"]))
    record = json.loads((out / "protocol.json").read_text())
    assert record["methods"]["xdiffusion"]["options"]["model_dir"] == str(model_dir)
    assert "torch" in record["versions"]


def test_extra_metric_lpips_with_local_weights_fills_every_plane(tmp_path):
    """Plumbing only (random backbone weights, as in test_metrics): the columns and their means."""
    import torch

    from XDiffusionLib.metrics.lpips_net import LPIPSNet

    torch.manual_seed(0)
    net = LPIPSNet("alexnet")
    weights = tmp_path / "alex_random_plumbing.pth"
    torch.save({k: v.abs() if k.startswith("lin") else v for k, v in net.state_dict().items()}, weights)
    data = tmp_path / "data"
    for seed in (0, 1):
        write_volume(Volume.from_array(head((32, 32, 32), seed=seed), direction=RAS), data / f"c{seed}.nii.gz")
    out = tmp_path / "eval"
    assert main(["evaluate", "--data", str(data), "--method", "nearest", "--slices", "3", "--extra-metrics", "lpips",
                 "--lpips-weights", str(weights), "--out", str(out), "--no-figures", "--no-progress"]) == 0
    _, cases = read_csv(out / "extra_metrics_cases.csv")
    _, summary = read_csv(out / "extra_metrics.csv")
    for plane in ("axial", "coronal", "sagittal"):
        values = [float(r[f"lpips_{plane}"]) for r in cases]
        assert all(v > 0 for v in values)  # nearest-slice copies differ from the truth
        assert float(summary[0][f"lpips_{plane}_mean"]) == pytest.approx(np.mean(values), abs=1e-3)


def test_thick_slice_evaluation_skips_a_label_map_in_its_folder(tmp_path, capsys):
    """``evaluate --thick-slice --data FOLDER`` leaves a label map found in the folder out, as every
    evaluation does (the shipped samples hold one: the README's command died on it after scoring it
    as a scan); a label map named on the command line is one line."""
    from XDiffusionLib.app.cli import main
    from XDiffusionLib.io.writers import write_volume

    i, j, k = np.meshgrid(*[np.linspace(0, 1, n) for n in (16, 16, 13)], indexing="ij")
    array = (100 + 80 * np.sin(4 * i) * np.cos(3 * j) + 40 * k).astype(np.float32)
    write_volume(Volume.from_array(array, (1.0, 1.0, 1.0)), tmp_path / "data" / "head.nii.gz")
    labels = write_volume(Volume.from_array((array > 120).astype(np.float32) * 2, (1.0, 1.0, 1.0)),
                          tmp_path / "data" / "labels.nii.gz")
    out = tmp_path / "eval"
    code = main(["evaluate", "--thick-slice", "--data", str(tmp_path / "data"), "--out", str(out),
                 "--method", "cubic", "pchip"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "skipping labels: a label map" in captured.err
    cases = {row["case"] for row in csv.DictReader(open(out / "thick_slice.csv", encoding="utf-8"))}
    assert cases == {"head"}
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["thick_slice_head.png"]  # the views across the slabs
    code = main(["evaluate", "--thick-slice", "--data", str(labels), "--out", str(tmp_path / "eval2"),
                 "--method", "cubic"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "labels.nii.gz" in err and "label map" in err
    assert not (tmp_path / "eval2").exists()
