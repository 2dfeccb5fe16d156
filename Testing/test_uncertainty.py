"""Calibrated intervals (uncertainty.intervals), their table beside the weights (model.calibration),
their use by the reconstructor, the coverage metrics and report, and the tumour segmentation used
by the hallucination check."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from XDiffusionLib.baselines.foreground import head_mask
from XDiffusionLib.errors import XDiffusionError
from XDiffusionLib.io.volume import Volume
from XDiffusionLib.metrics.coverage import interval_coverage, rank_correlation, result_coverage, scored_mask
from XDiffusionLib.metrics.lesion import dice, invented_regions, segment_anomaly, segment_tumour, tumour_window
from XDiffusionLib.model.calibration import CALIBRATION_NAME, load_calibration, save_calibration, uncertainty_info
from XDiffusionLib.uncertainty.intervals import (DISTANCE_EDGES_MM, FEATURES, K_EDGES, KNOTS_MM, LEVELS, UNCALIBRATED,
                                                 IntervalCalibration, UncertaintyInfo, calibrated_info,
                                                 conformal_quantile, distance_bins, fit_calibration, k_range,
                                                 profile_at)


def test_conformal_quantile_is_the_finite_sample_rank():
    scores = np.arange(1, 100, dtype=float)  # n = 99: rank ceil(100 * 0.9) = 90
    assert conformal_quantile(scores, 0.9) == 90.0
    assert conformal_quantile(np.array([3.0, 1.0]), 0.9) == 3.0  # rank beyond n: the largest
    with pytest.raises(XDiffusionError):
        conformal_quantile(np.array([]), 0.9)


def test_k_ranges_and_distance_bins():
    assert [k_range(k) for k in (1, 2, 4, 5, 9, 10, 19, 20, 31)] == [0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert distance_bins(np.array([0.5, 2.5, 2.6, 39.0, 41.0, 200.0])).tolist() == [0, 0, 1, 4, 5, 5]


def synthetic_samples(n: int, seed: int) -> dict[str, np.ndarray]:
    """|error| = s(x) |N(0, 1)| with s growing with the spread and the disagreement features."""
    rng = np.random.default_rng(seed)
    features = rng.uniform(0, 1, size=(n, len(FEATURES)))
    design = np.column_stack([np.ones(n), features])
    true_scale = 0.02 + 0.1 * features[:, 0] + 0.05 * features[:, 1]
    ks = rng.choice([1, 3, 5, 10, 31], size=n)
    return {"design": design, "abs_error": np.abs(rng.normal(size=n)) * true_scale, "k": ks,
            "distance_mm": rng.uniform(0, 60, size=n)}


def test_fitted_table_covers_fresh_samples_at_every_level_and_width_follows_the_error():
    table = fit_calibration(synthetic_samples(20000, 0), synthetic_samples(40000, 1))
    assert np.all(table.coefficients >= 0) and table.coefficients[:, 1].min() > 0.05  # spread found
    test = synthetic_samples(40000, 2)
    scale = np.maximum(np.einsum("ij,ij->i", test["design"],
                                 table.coefficients[[k_range(k) for k in test["k"]]]), 1e-3)
    ranges = np.array([k_range(k) for k in test["k"]])
    for index, level in enumerate(LEVELS):
        q = np.empty(ranges.size)
        for r in np.unique(ranges):  # the quantiles at the knots, joined linearly in distance
            q[ranges == r] = profile_at(test["distance_mm"][ranges == r], KNOTS_MM, table.quantiles[r, :, index])
        assert abs(np.mean(test["abs_error"] <= q * scale) - level) < 0.02
    assert rank_correlation(scale, test["abs_error"]) > 0.3


def test_features_see_where_the_volume_bends_along_the_input_axis_and_beside_edges():
    from XDiffusionLib.uncertainty.intervals import interval_features

    z = np.arange(24, dtype=np.float32)
    ramp = np.broadcast_to(2.0 * z, (12, 12, 24)).copy()  # straight along the input axis (2)
    bent = np.broadcast_to(np.where(z < 12, 0.0, 3.0 * (z - 12)), (12, 12, 24)).astype(np.float32)  # a kink at 12
    parts = dict(distance_mm=np.zeros(24), known=np.zeros(24, bool), spread=np.zeros_like(ramp))

    def features(volume, axis=2):
        return interval_features(5, axis, interpolation=volume, template=volume, anchor=volume, value_range=10.0, **parts)

    assert np.abs(features(ramp).curvature[:, :, 2:-2]).max() < 1e-5  # interpolation follows a straight line
    bends = features(bent).curvature[6, 6]
    assert bends[11:14].min() > 0.05 and bends[:8].max() < 1e-3 and bends[17:].max() < 1e-3
    # Along another axis the same volume is flat: the curvature is the input axis's.
    assert np.abs(features(bent, axis=0).curvature).max() < 1e-5
    step = np.zeros((24, 12, 12), np.float32)
    step[12:] = 10.0
    edge = features(step, axis=1).edge[:, 6, 6]
    assert edge[10] > 0.05 and edge[14] > 0.05 and edge[2] < 1e-3  # misplaced by a voxel or two: still near


def small_table() -> IntervalCalibration:
    n_k, n_d = len(K_EDGES), len(DISTANCE_EDGES_MM) + 1
    coefficients = np.tile([0.01, 1.0, 0.5] + [0.0] * (len(FEATURES) - 2), (n_k, 1))
    quantiles = np.tile(np.linspace(1.0, 2.0, len(LEVELS)), (n_k, n_d, 1)) * np.arange(1, n_d + 1)[None, :, None]
    return IntervalCalibration(coefficients, quantiles, np.full((n_k, n_d), 500), info={"data": "test"})


def weights_folder(tmp_path, value: float = 1.0):
    from safetensors.torch import save_file

    save_file({"w": torch.full((3,), value)}, str(tmp_path / "model.safetensors"))
    return tmp_path


def test_table_round_trips_and_every_corruption_is_refused(tmp_path):
    folder = weights_folder(tmp_path)
    assert load_calibration(folder) is None
    with pytest.raises(XDiffusionError, match="missing interval calibration"):
        load_calibration(folder, required=True)
    path = save_calibration(small_table(), folder)
    table = load_calibration(folder, required=True)
    np.testing.assert_allclose(table.quantiles, small_table().quantiles)
    assert uncertainty_info(folder) == calibrated_info(0.9)
    data = json.loads(path.read_text())
    data["quantiles"][0][0][0] = 9.0  # edited by hand
    path.write_text(json.dumps(data))
    with pytest.raises(XDiffusionError, match=f"{CALIBRATION_NAME}: does not match its recorded checksum"):
        load_calibration(folder)
    assert uncertainty_info(folder) == UNCALIBRATED
    path.write_text("{not json")
    with pytest.raises(XDiffusionError, match="not valid JSON"):
        load_calibration(folder)
    save_calibration(small_table(), folder)
    weights_folder(tmp_path, 2.0)  # other weights in the same folder
    with pytest.raises(XDiffusionError, match="calibrated for other weights"):
        load_calibration(folder)


def test_a_table_is_bound_to_the_configs_residual_gain(tmp_path):
    from XDiffusionLib.model.config import XDiffusionConfig

    folder = weights_folder(tmp_path)
    config = XDiffusionConfig(target="residual", priors=("anchor", "linear", "distance"), residual_gain={"1": 1.5})
    config.save_json(folder / "config.json")
    save_calibration(small_table(), folder)
    assert load_calibration(folder) is not None
    XDiffusionConfig(target="residual", priors=("anchor", "linear", "distance"),
                     residual_gain={"1": 1.25}).save_json(folder / "config.json")
    with pytest.raises(XDiffusionError, match="calibrated for another residual_gain"):
        load_calibration(folder)


def test_a_table_is_bound_to_the_configs_anchor_weight(tmp_path):
    # The anchor rule changes the output the interval is fitted around; a table from before the rule
    # was made with the nearest-input weight, and holds only for a model that still uses it.
    import json

    from XDiffusionLib.model.calibration import CALIBRATION_NAME, content_sha256
    from XDiffusionLib.model.config import XDiffusionConfig

    folder = weights_folder(tmp_path)
    residual = dict(target="residual", priors=("anchor", "linear", "distance"))
    XDiffusionConfig(**residual, anchor_weight="union").save_json(folder / "config.json")
    save_calibration(small_table(), folder)
    assert json.loads((folder / CALIBRATION_NAME).read_text())["anchor_weight"] == "union"
    assert load_calibration(folder) is not None
    XDiffusionConfig(**residual, anchor_weight="nearest").save_json(folder / "config.json")
    with pytest.raises(XDiffusionError, match="calibrated for another anchor_weight"):
        load_calibration(folder)
    old = json.loads((folder / CALIBRATION_NAME).read_text())
    del old["anchor_weight"]
    old["sha256"] = content_sha256(old)
    (folder / CALIBRATION_NAME).write_text(json.dumps(old))
    assert load_calibration(folder) is not None  # a table from before the rule: the nearest rule's
    XDiffusionConfig(**residual, anchor_weight="union").save_json(folder / "config.json")
    with pytest.raises(XDiffusionError, match="calibrated for another anchor_weight"):
        load_calibration(folder)


def test_malformed_table_fields_are_named():
    data = small_table().to_dict()
    data["quantiles"] = data["quantiles"][:2]
    with pytest.raises(XDiffusionError, match="shapes"):
        IntervalCalibration.from_dict(data, "t.json")
    data = small_table().to_dict()
    data["coefficients"][0][1] = -1.0
    with pytest.raises(XDiffusionError, match="t.json: malformed interval calibration"):
        IntervalCalibration.from_dict(data, "t.json")
    with pytest.raises(XDiffusionError, match="format"):
        IntervalCalibration.from_dict({"format": "other"}, "t.json")


def test_reconstructor_reports_the_calibrated_halfwidth_or_the_spread():
    from test_residual_model import ExactResidual, head, residual_config

    from XDiffusionLib.inputs import SliceInput
    from XDiffusionLib.sampling.reconstructor import XDiffusionReconstructor

    # A phantom of a real head's size (154 x 179 x 160 mm): the head prior is placed at physical
    # size, so on a half-size phantom its scalp would fill the "empty" corners.
    volume = head(spacing=(8.0, 8.0, 10.0))
    inputs = SliceInput.from_volume(volume, "axial", [6, 13])
    config = residual_config()
    plain = XDiffusionReconstructor(model=ExactResidual(config, 0.1), config=config, views=2, steps=2, device="cpu")
    spread = plain.reconstruct_with_uncertainty(inputs)
    assert spread.info == UNCALIBRATED and spread.interval is None
    assert np.array_equal(spread.uncertainty.array, spread.spread.array)
    calibrated = XDiffusionReconstructor(model=ExactResidual(config, 0.1), config=config, views=2, steps=2,
                                         device="cpu", calibration=small_table())
    result = calibrated.reconstruct_with_uncertainty(inputs)
    assert np.array_equal(result.volume.array, spread.volume.array)  # the interval never changes the volume
    assert result.info.calibrated and result.info.level == 0.9 and "90% interval" in result.info.label
    width = result.uncertainty.array
    shown = width > 0  # the head; outside it the uncalibrated floor is shown as 0
    np.testing.assert_array_equal(width[shown], result.interval.halfwidth(0.9)[shown])
    corners = (slice(0, 2), slice(0, 2), slice(None))  # empty space, far outside the phantom head
    assert np.all(width[corners] == 0) and result.interval.halfwidth(0.9)[corners].max() > 0
    assert np.all(width[:, :, [6, 13]] == 0) and width[12, 14, 9] > 0  # known slices are exact
    full = result.interval.halfwidth(0.9)
    assert np.all(result.interval.halfwidth(0.5) <= full) and np.all(full <= result.interval.halfwidth(0.95))
    # Farther from the inputs, a farther distance bin: the test table's quantiles grow with the bin.
    assert full[12, 14, 19] > full[12, 14, 7]
    # In any orientation (reconstruct_volume reorients and back) the interval stays the uncertainty.
    from XDiffusionLib.sampling.reconstructor import reconstruct_volume

    tilted = Volume.from_array(volume.array[::-1].copy(), volume.spacing, (0.0, 0.0, 0.0), np.diag([-1.0, 1.0, 1.0]))
    back = reconstruct_volume(tilted, "axial", [6, 13], reconstructor=calibrated)
    shown = back.uncertainty.array > 0
    np.testing.assert_array_equal(back.uncertainty.array[shown], back.interval.halfwidth(0.9)[shown])
    assert shown.sum() == (width > 0).sum()
    assert back.spread.grid.same_geometry(tilted.grid) and back.info == result.info
    with pytest.raises(XDiffusionError, match="level 0.42"):
        XDiffusionReconstructor(model=ExactResidual(config, 0.1), config=config, calibration=small_table(), level=0.42)


def test_the_volume_alone_computes_no_interval_and_is_the_same_volume(monkeypatch):
    """Design issue 23: ``reconstruct`` (a Volume) and the thick-slice check kept only the volume of a
    full run, whose interval features and leave-one-slice-out folds were computed and thrown away."""
    from test_residual_model import ViewDependentResidual, head, residual_config

    from XDiffusionLib.inputs import SliceInput
    from XDiffusionLib.sampling import reconstructor as module

    volume = head(spacing=(8.0, 8.0, 10.0))
    inputs = SliceInput.from_volume(volume, "axial", [6, 13])
    config = residual_config()
    # keep_features: the full run computes both the features and the folds
    method = module.XDiffusionReconstructor(model=ViewDependentResidual(config, -0.05), config=config, views=2,
                                            steps=2, device="cpu", calibration=small_table(), keep_features=True)
    full = method.reconstruct_with_uncertainty(inputs)
    assert full.interval is not None and full.features is not None and full.folds is not None
    full_volume = module.reconstruct_volume(volume, "axial", [6, 13], reconstructor=method)

    def refuse(*args, **kwargs):
        raise AssertionError("the volume alone computed the interval")

    monkeypatch.setattr(module, "interval_features", refuse)
    monkeypatch.setattr(module, "held_out_folds", refuse)
    np.testing.assert_array_equal(method.reconstruct(inputs).array, full.volume.array)
    stages = []
    alone = module.reconstruct_volume(volume, "axial", [6, 13], reconstructor=method, interval=False,
                                      progress=lambda fraction, message: stages.append(message))
    np.testing.assert_array_equal(alone.volume.array, full_volume.volume.array)
    assert "computing the uncertainty interval" not in stages
    # What it carries is said truly: the view spread, uncalibrated; nothing kept for calibration.
    assert alone.interval is None and alone.info == UNCALIBRATED and alone.folds is None
    assert float(alone.spread.array.max()) > 0 and np.array_equal(alone.uncertainty.array, alone.spread.array)


def test_coverage_counts_non_input_voxels_inside_the_head():
    truth = np.zeros((10, 10, 10), np.float32)
    truth[2:8, 2:8, 2:8] = 100.0
    truth[4:6, 4:6, 4:6] = 0.0  # a dark hole inside the head still counts
    head = head_mask(truth)
    assert head[5, 5, 5] and not head[0, 0, 0]
    mask = scored_mask(head, 2, [3])
    assert not mask[:, :, 3].any() and mask[5, 5, 5]
    prediction = truth + np.where(np.arange(10)[None, None, :] < 5, 1.0, 5.0).astype(np.float32)
    scores = interval_coverage(truth, prediction, lambda a: np.full(truth.shape, 2.0 * a), mask, (0.5, 0.9), 0.9)
    # |error| 1 everywhere for k < 5 (inside a width of 1.8 or 1.0), 5 beyond (outside both).
    expected = float(mask[:, :, :5].sum()) / mask.sum()
    assert scores["coverage"] == pytest.approx(expected) and scores["coverage_0.5"] == pytest.approx(expected)
    assert np.isnan(scores["width_error_spearman"])  # a constant width says nothing about the error

    class Interval:
        levels = (0.9,)

        @staticmethod
        def halfwidth(level):
            return np.abs(prediction - truth) * 1.5  # wider exactly where the error is

    scored = result_coverage(truth, prediction, Interval, mask, 0.9)
    assert scored["coverage"] == 1.0 and scored["width_error_spearman"] == pytest.approx(1.0) and scored["level"] == 0.9
    assert scored["scan_scale"] == 1.0  # an interval without a scan scale: the synthetic table alone


def test_coverage_report_and_calibration_figure(tmp_path):
    from XDiffusionLib.evaluation.coverage_report import coverage_rows, format_coverage_markdown, write_coverage

    rows = [{"case": c, "method": "xdiffusion", "k": k, "level": 0.9, "coverage": 0.88, "width_error_spearman": 0.4,
             "mean_halfwidth": 10.0, "median_abs_error": 4.0, "voxels": 100.0, "scan_scale": 1.0,
             **{f"coverage_{a:g}": a - 0.02 for a in LEVELS}} for c in ("a", "b") for k in (1, 5)]
    rows.append({"case": "a", "method": "linear", "k": 1})  # no interval: not in the coverage table
    table = coverage_rows(rows)
    assert len(table) == 6 and [r["case"] for r in table[-2:]] == ["mean", "mean"]
    assert "| xdiffusion | 1 | 90% | 88.0% |" in format_coverage_markdown(rows)
    written = write_coverage(tmp_path, rows, figures=True)
    assert [p.name for p in written] == ["coverage.csv", "calibration.png"]
    assert written[1].read_bytes()[:4] == b"\x89PNG"
    assert write_coverage(tmp_path / "none", rows[-1:], figures=True) == [] and format_coverage_markdown(rows[-1:]) == ""


def test_tumour_segmentation_finds_a_bright_ball_and_invented_regions_need_both_departures():
    grid = np.indices((30, 30, 30)).astype(np.float32)
    ball = ((grid - 15) ** 2).sum(axis=0) < 25
    truth = np.where(ball, 200.0, 100.0).astype(np.float32)
    brain = np.ones(truth.shape, bool)
    window = tumour_window(truth, ball)
    assert window == (200.0, 200.0)
    assert dice(segment_tumour(truth, window, brain, 10), ball) == 1.0
    assert dice(segment_tumour(np.full_like(truth, 100.0), window, brain, 10), ball) == 0.0
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    healthy = np.full_like(truth, 100.0)  # the same head without the ball
    assert dice(segment_anomaly(truth, healthy, brain, 50.0, 10), ball) == 1.0
    assert not segment_anomaly(healthy + 20.0, healthy, brain, 50.0, 10).any()  # small departures are no tumour
    invented = truth.copy()
    invented[2:8, 2:8, 2:8] = 300.0  # a new compact structure, absent from the truth and the anchor
    assert invented_regions(invented, truth, truth, brain, 50.0, 20) == (1, 216)
    assert invented_regions(invented, truth, invented, brain, 50.0, 20)[0] == 0  # the anchor had it: not invented


def test_result_info_is_exposed_for_the_web_app():
    from XDiffusionLib.sampling.reconstructor import ReconstructionResult

    volume = Volume.from_array(np.zeros((2, 2, 2), np.float32))
    result = ReconstructionResult(volume, volume)
    assert result.info is UNCALIBRATED and not result.info.calibrated
    metadata = calibrated_info(0.9).metadata()
    assert metadata["XDiffusion_uncertainty_level"] == "0.9" and len(metadata["descrip"]) <= 80


@pytest.mark.slow  # a calibrated evaluation run: several seconds on a 2-core CPU
def test_evaluate_reports_coverage_for_a_calibrated_model(tmp_path):
    import csv

    from test_residual_model import head, residual_config

    from XDiffusionLib.app.cli import main
    from XDiffusionLib.io.writers import write_volume
    from XDiffusionLib.model.checkpoint import save_pretrained
    from XDiffusionLib.model.factory import build_denoiser

    torch.manual_seed(0)
    config = residual_config()
    model_dir = save_pretrained(build_denoiser(config).eval(), config, tmp_path / "model")
    save_calibration(small_table(), model_dir)
    data = write_volume(head(), tmp_path / "case.nii.gz")
    out = tmp_path / "eval"
    assert main(["evaluate", "--data", str(data), "--method", "xdiffusion", "linear", "--model", str(model_dir),
                 "--slices", "1", "3", "--views", "1", "--steps", "1", "--no-progress", "--out", str(out)]) == 0
    with open(out / "coverage.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["case"], r["method"], r["k"]) for r in rows] == [("case", "xdiffusion", "1"), ("case", "xdiffusion", "3"),
                                                               ("mean", "xdiffusion", "1"), ("mean", "xdiffusion", "3")]
    assert all(0.0 <= float(r["coverage"]) <= 1.0 and float(r["level"]) == 0.9 for r in rows)
    assert "Calibrated interval" in (out / "summary.md").read_text()
    assert (out / "calibration.png").read_bytes()[:4] == b"\x89PNG"


def test_the_shipped_model_requires_its_table_and_ships_a_valid_one(tmp_path, monkeypatch):
    from XDiffusionLib.model import checkpoint
    from XDiffusionLib.sampling.reconstructor import XDiffusionReconstructor

    shipped = load_calibration(checkpoint.default_model_dir(), required=True)  # valid, bound to the shipped weights
    assert shipped.counts.sum() > 0 and "seed 13" in shipped.info["data"]
    monkeypatch.setattr(checkpoint, "default_model_dir", lambda: weights_folder(tmp_path))
    with pytest.raises(XDiffusionError, match="missing interval calibration of the shipped model"):
        XDiffusionReconstructor().calibration
    assert XDiffusionReconstructor(model_dir=tmp_path).calibration is None  # a user's folder may have none
    assert XDiffusionReconstructor(calibrated=False).calibration is None


# ---- issue 24: the interval calibrated on the scan itself, smooth in distance ---------------------

def cylinder_folds(noise: float, seed: int):
    """Leave-one-slice-out folds of a phantom that is constant along the slice axis, with a perfect
    prior: a fold's error is the scan's noise alone, so it scales exactly with ``noise``."""
    from XDiffusionLib.baselines.anchor import AnchorEstimate
    from XDiffusionLib.baselines.head_prior import HeadPriorFit
    from XDiffusionLib.baselines.leave_one_out import held_out_folds
    from XDiffusionLib.inputs import SliceInput

    yy, xx = np.mgrid[:24, :24]
    disc = np.where((yy - 12) ** 2 + (xx - 12) ** 2 < 81, 110.0, 10.0).astype(np.float32)
    clean = np.repeat(disc[:, :, None], 30, axis=2)
    noisy = clean + np.float32(noise) * np.random.default_rng(seed).standard_normal(clean.shape).astype(np.float32)
    volume = Volume.from_array(noisy, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    inputs = SliceInput.from_volume(volume, "axial", [3, 9, 15, 21, 27])
    prior = HeadPriorFit(clean, np.zeros(clean.shape, np.uint8), np.ones(clean.shape, bool), "head", 1.0, False)
    estimate = AnchorEstimate(volume, clean, clean, np.zeros(30, np.float32), prior)
    return held_out_folds(inputs, estimate, 100.0, 6.0, 6.0)


def test_leave_one_out_scale_recovers_a_known_error_inflation():
    from XDiffusionLib.uncertainty.scan_scale import SHRINK, fit_scan_reference, fold_statistic, scan_scale

    coefficients = np.array([1.0] + [0.0] * len(FEATURES))  # s(x) = 1: the statistic is the error itself
    reference_folds = [fold for seed in range(6) for fold in cylinder_folds(2.0, seed)]  # "synthetic" scans
    assert len(reference_folds) == 30 and all(f.abs_error.size > 200 for f in reference_folds)
    assert {f.distance_mm for f in reference_folds} == {12.0}  # 6 slices of 2 mm to the nearest other input
    reference = fit_scan_reference(np.full(30, 5), np.array([f.distance_mm for f in reference_folds]),
                                   np.array([fold_statistic(f, coefficients) for f in reference_folds]))
    rougher = scan_scale(reference, 5, cylinder_folds(5.0, 99), coefficients)  # 2.5 times the noise
    assert rougher.folds == 5 and rougher.value == pytest.approx(2.5 ** SHRINK, rel=0.1)  # half-way in log scale
    alike = scan_scale(reference, 5, cylinder_folds(2.0, 98), coefficients)
    assert alike.value == pytest.approx(1.0, rel=0.1)
    assert scan_scale(reference, 1, [], coefficients).folds == 0  # one input slice: nothing to leave out
    assert scan_scale(None, 5, cylinder_folds(5.0, 99), coefficients).value == 1.0  # a table without reference


def test_table_with_scan_scales_covers_fresh_samples_of_inflated_scans():
    def samples(n, seed):
        data = synthetic_samples(n, seed)
        rng = np.random.default_rng(seed + 100)
        inflation = rng.choice([0.5, 1.0, 2.0], size=n)  # per "scan", known to the interval as its lambda
        return {**data, "abs_error": data["abs_error"] * inflation, "scan_scale": inflation}

    table = fit_calibration(samples(20000, 0), samples(40000, 1), scan_reference={"anything": 1})
    assert table.scan_reference == {"anything": 1}
    test = samples(40000, 2)
    scale = np.maximum(np.einsum("ij,ij->i", test["design"], table.coefficients[[k_range(k) for k in test["k"]]]), 1e-3)
    ranges = np.array([k_range(k) for k in test["k"]])
    for index, level in enumerate(LEVELS):
        q = np.empty(ranges.size)
        for r in np.unique(ranges):
            q[ranges == r] = profile_at(test["distance_mm"][ranges == r], KNOTS_MM, table.quantiles[r, :, index])
        covered = test["abs_error"] <= q * scale * test["scan_scale"]
        assert abs(covered.mean() - level) < 0.02
        for lam in (0.5, 2.0):  # every inflation is covered alike, not only on average
            assert abs(covered[test["scan_scale"] == lam].mean() - level) < 0.03


def test_interval_width_varies_continuously_with_distance():
    from XDiffusionLib.uncertainty.intervals import IntervalFeatures

    table = small_table()  # quantiles 1x, 2x, ... 6x from one distance bin to the next: steps before issue 24
    distance = np.arange(0.0, 80.0, 0.05)
    zeros = np.zeros((1, 1, distance.size), np.float32)
    features = IntervalFeatures(3, distance, 2, zeros, zeros, zeros, zeros, zeros, 1.0, np.zeros(distance.size, bool))
    width = table.estimate(features).halfwidth(0.9)[0, 0]
    q = table.quantiles[k_range(3), :, LEVELS.index(0.9)] * 0.01  # s(x) = the intercept 0.01
    steepest = np.max(np.abs(np.diff(q)) / np.diff(KNOTS_MM))
    assert np.max(np.abs(np.diff(width))) <= steepest * 0.05 * 1.001  # no jump anywhere, bin edges included
    for edge in DISTANCE_EDGES_MM:
        i = int(round(edge / 0.05))
        assert abs(width[i + 1] - width[i - 1]) <= 2 * steepest * 0.05 * 1.001
    np.testing.assert_allclose(width[[int(round(k / 0.05)) for k in KNOTS_MM[:-1]]], q[:-1], rtol=1e-5)
    np.testing.assert_allclose(width, np.interp(distance, KNOTS_MM, q), rtol=1e-5)
    doubled = table.estimate(features, scan_scale=2.0).halfwidth(0.9)[0, 0]
    np.testing.assert_allclose(doubled, 2.0 * width, rtol=1e-6)


def test_one_input_slice_falls_back_to_the_synthetic_table_and_the_metadata_say_so(tmp_path):
    from dataclasses import replace

    from test_residual_model import ExactResidual, head, residual_config

    from XDiffusionLib.inputs import SliceInput
    from XDiffusionLib.io.writers import write_volume
    from XDiffusionLib.sampling.reconstructor import XDiffusionReconstructor
    from XDiffusionLib.uncertainty.scan_scale import ScanReference
    from XDiffusionLib.sampling.result import read_result, write_result

    n_k = len(K_EDGES)
    reference = ScanReference(np.zeros(n_k), np.zeros(n_k), np.ones(n_k, dtype=np.int64)).to_dict()
    table = replace(small_table(), scan_reference=reference)
    config = residual_config()
    method = XDiffusionReconstructor(model=ExactResidual(config, 0.1), config=config, views=1, steps=1, device="cpu",
                                     calibration=table)
    volume = head()
    one = method.reconstruct_with_uncertainty(SliceInput.from_volume(volume, "axial", [10]))
    assert one.info.calibrated and one.info.scan_folds == 0 and one.interval.scan_scale == 1.0
    assert one.info.metadata()["XDiffusion_uncertainty_calibration"] == "synthetic only"
    assert "synthetic calibration only" in one.info.label and "synthetic calibration only" in one.info.legend
    three = method.reconstruct_with_uncertainty(SliceInput.from_volume(volume, "axial", [4, 10, 16]))
    assert three.info.scan_folds == 3 and three.interval.scan_scale == three.info.scan_scale > 0
    metadata = three.info.metadata()
    assert metadata["XDiffusion_uncertainty_calibration"] == "calibrated on this scan (leave-one-slice-out, 3 folds)"
    assert "calibrated on this scan" in three.info.label and len(metadata["descrip"]) <= 79
    assert UncertaintyInfo.from_metadata(metadata.get) == three.info  # what Slicer nodes and file headers keep
    # The worker's file header carries it to the Slicer module and the web page (their colour bars).
    back = read_result(*write_result(three, tmp_path / "reconstruction.nrrd", tmp_path / "uncertainty.nrrd"))
    assert back.info == three.info and np.array_equal(back.uncertainty.array, three.uncertainty.array)
    assert np.array_equal(back.volume.array, three.volume.array)
    # A file that does not say what it is is refused, never given a meaning from elsewhere.
    bare = write_volume(three.uncertainty, tmp_path / "bare.nrrd")
    with pytest.raises(XDiffusionError, match="bare.nrrd: the uncertainty does not say what it is"):
        read_result(tmp_path / "reconstruction.nrrd", bare)
    assert UncertaintyInfo.from_metadata({"XDiffusion_uncertainty_level": "0.9"}.get) == calibrated_info(0.9)  # old files
    # Without a scan reference (a table made before issue 24) every K is synthetic only.
    plain = XDiffusionReconstructor(model=ExactResidual(config, 0.1), config=config, views=1, steps=1, device="cpu",
                                    calibration=small_table())
    assert plain.reconstruct_with_uncertainty(SliceInput.from_volume(volume, "axial", [4, 10, 16])).info == calibrated_info(0.9)


def test_tables_of_earlier_formats_are_refused_and_a_bad_scan_reference_is_named(tmp_path):
    data = small_table().to_dict()
    for version in (1, 2):  # fitted to other features: their coefficients would scale the wrong columns
        old = dict(data, version=version)
        with pytest.raises(XDiffusionError, match=f"format version {version}: this code reads version 3 only.*"
                                                  f"calibrate_uncertainty"):
            IntervalCalibration.from_dict(old)
    data["scan_reference"] = {"intercept": [0.0], "slope": [0.0], "folds": [1]}
    folder = weights_folder(tmp_path)
    from dataclasses import replace

    save_calibration(replace(small_table(), scan_reference=data["scan_reference"]), folder)
    with pytest.raises(XDiffusionError, match="malformed scan reference"):
        load_calibration(folder)


def test_pchip_at_a_few_positions_matches_the_full_fill():
    """Leave-one-out folds interpolate three slices from a window of nodes: the same values."""
    from XDiffusionLib.baselines.interpolation import cubic_at, pchip_fill
    from XDiffusionLib.inputs import SliceInput

    rng = np.random.default_rng(3)
    volume = Volume.from_array(rng.random((6, 5, 60)).astype(np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    for _ in range(40):
        indices = sorted(rng.choice(60, int(rng.integers(3, 25)), replace=False).tolist())
        inputs = SliceInput.from_volume(volume, "axial", indices)
        full = pchip_fill(inputs).array
        centre = int(rng.integers(0, 60))
        positions = np.unique(np.clip([centre - 1, centre, centre + 1], 0, 59))
        free = ~np.isin(positions, indices)
        assert np.array_equal(cubic_at(inputs, positions)[free], np.moveaxis(full[:, :, positions], 2, 0)[free])
