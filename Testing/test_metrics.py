"""Metrics against hand-computed values (XDiffusionLib.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from XDiffusionLib.errors import XDiffusionError
from XDiffusionLib.metrics import (
    NO_WEIGHTS_MESSAGE,
    brain_volume_mm3,
    dice_per_label,
    error_by_distance,
    lpips_per_plane,
    mean_error_by_distance,
    pearson_r,
    psnr_all,
    psnr_paper,
    psnr_unit,
    random_pair_psnr,
    sharpness_ratio,
    ssim_per_plane,
    ssim_slices,
)
from XDiffusionLib.metrics.sharpness import scored_pairs


def _volume(shape=(16, 16, 16), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape)


# --------------------------------------------------------------------------- PSNR


def test_psnr_paper_known_mse():
    gt = np.zeros((4, 4, 4))
    gt[0, 0, 0] = 2.0  # max(gt) = 2
    pred = gt + 0.2  # constant error 0.2 -> MSE 0.04
    assert psnr_paper(gt, pred) == pytest.approx(10 * math.log10(4 / 0.04))  # 20 dB
    assert psnr_paper(gt, pred) == pytest.approx(20.0)


def test_psnr_paper_masked_uses_masked_voxels_only():
    gt = np.full((2, 2, 2), 1.0)
    gt[0, 0, 0] = 4.0
    pred = gt.copy()
    pred[1] += 0.5  # error only in the second half
    mask = np.zeros_like(gt, dtype=bool)
    mask[0] = True
    assert psnr_paper(gt, pred, mask) == math.inf  # masked half is perfect
    mask[1, 0, 0] = True  # 5 voxels, one with error 0.5: MSE 0.05, peak 4
    assert psnr_paper(gt, pred, mask) == pytest.approx(10 * math.log10(16 / 0.05))
    # Peak comes from the masked voxels: without the bright voxel the peak is 1.
    mask2 = np.zeros_like(mask)
    mask2[1, 0, 0] = mask2[0, 1, 1] = True  # errors 0.5 and 0 -> MSE 0.125
    assert psnr_paper(gt, pred, mask2) == pytest.approx(10 * math.log10(1 / 0.125))


def test_psnr_unit_clips_both_to_unit_range():
    gt = np.array([0.0, 0.5, 1.0, 1.0]).reshape(1, 2, 2)
    pred = np.array([-0.3, 0.4, 1.7, 1.0]).reshape(1, 2, 2)  # clipped -> [0, 0.4, 1, 1]: only 0.1 error
    assert psnr_unit(gt, pred) == pytest.approx(10 * math.log10(1 / (0.01 / 4)))
    # gt outside [0, 1] is clipped too.
    assert psnr_unit(gt * 3 - 1, np.clip(gt * 3 - 1, 0, 1)) == math.inf


def test_identical_volumes_give_inf_and_bad_input_errors():
    v = _volume()
    assert psnr_paper(v, v) == math.inf and psnr_unit(v, v) == math.inf
    with pytest.raises(XDiffusionError, match="shape"):
        psnr_paper(v, v[:-1])
    with pytest.raises(XDiffusionError, match="positive ground-truth maximum"):
        psnr_paper(-v, v)
    with pytest.raises(XDiffusionError, match="no voxels"):
        psnr_paper(v, v, np.zeros(v.shape, bool))
    with pytest.raises(XDiffusionError, match="NaN"):
        psnr_paper(v, np.full(v.shape, np.nan))


def test_psnr_all_keeps_convention_names():
    gt = np.zeros((3, 3, 3))
    gt[1, 1, 1] = 200.0
    pred = gt + 20.0  # unit range from gt: 0..200 -> error 0.1 in unit units
    result = psnr_all(gt, pred)
    assert set(result) == {"psnr_paper", "psnr_unit"}
    assert result["psnr_paper"] == pytest.approx(10 * math.log10(200**2 / 400))
    # Clipping at 1 removes the error of the peak voxel: 26 of 27 voxels keep error 0.1.
    assert result["psnr_unit"] == pytest.approx(10 * math.log10(1 / (0.01 * 26 / 27)))


def test_random_pair_psnr_all_ordered_pairs():
    a = np.ones((2, 2, 2))
    b = np.ones((2, 2, 2)) * 2
    # (a as gt, b): peak 1, MSE 1 -> 0 dB. (b as gt, a): peak 2, MSE 1 -> 10 log10 4.
    mean, std = random_pair_psnr([a, b])
    expected = [0.0, 10 * math.log10(4)]
    assert mean == pytest.approx(np.mean(expected)) and std == pytest.approx(np.std(expected))
    mean_drawn, _ = random_pair_psnr([a, b, a * 3], n_pairs=50, seed=1)
    assert math.isfinite(mean_drawn)
    with pytest.raises(XDiffusionError, match="at least 2"):
        random_pair_psnr([a])
    with pytest.raises(XDiffusionError, match="shape"):
        random_pair_psnr([a, np.ones((3, 3, 3))])


# --------------------------------------------------------------------------- SSIM


def _reference_ssim_2d(x: np.ndarray, y: np.ndarray, L: float, mask: np.ndarray | None = None) -> float:
    """Brute-force SSIM: explicit 11x11 Gaussian window at every fully inside position (where ``mask`` holds)."""
    r = 5
    offsets = np.arange(-r, r + 1)
    w = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 1.5**2))
    w /= w.sum()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    values = []
    for i in range(r, x.shape[0] - r):
        for j in range(r, x.shape[1] - r):
            if mask is not None and not mask[i, j]:
                continue
            px, py = x[i - r : i + r + 1, j - r : j + r + 1], y[i - r : i + r + 1, j - r : j + r + 1]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            values.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_identical_is_one():
    v = _volume((13, 14, 15))
    result = ssim_per_plane(v, v)
    assert set(result) == {"axial", "coronal", "sagittal"}
    assert all(value == pytest.approx(1.0) for value in result.values())


def test_ssim_constant_images_closed_form():
    # Constant slices: variances are 0, so SSIM = (2ab + C1) / (a^2 + b^2 + C1) exactly.
    a, b, L = 0.5, 0.7, 1.0
    gt, pred = np.full((12, 12, 12), a), np.full((12, 12, 12), b)
    c1 = (0.01 * L) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    result = ssim_per_plane(gt, pred, data_range=L)
    assert all(value == pytest.approx(expected, rel=1e-12) for value in result.values())
    with pytest.raises(XDiffusionError, match="data range"):
        ssim_per_plane(gt, pred)  # constant gt has no range of its own


def test_ssim_matches_brute_force_window_on_random_slices():
    rng = np.random.default_rng(3)
    gt = rng.random((3, 16, 18))
    pred = 0.8 * gt + 0.2 * rng.random(gt.shape) + 0.05  # offset + noise: SSIM clearly below 1
    L = float(gt.max() - gt.min())
    per_slice = ssim_slices(gt, pred, axis=0)
    for index in range(3):
        assert per_slice[index] == pytest.approx(_reference_ssim_2d(gt[index], pred[index], L), rel=1e-9)
    assert per_slice.max() < 0.95
    # Other axes are the same computation on transposed slices.
    axis2 = ssim_slices(gt[:, :, :12].transpose(1, 2, 0).copy(), pred[:, :, :12].transpose(1, 2, 0).copy(), axis=2, data_range=L)
    assert axis2[0] == pytest.approx(_reference_ssim_2d(gt[0, :, :12], pred[0, :, :12], L), rel=1e-9)


def test_ssim_agrees_with_scikit_image_on_every_axis():
    """Cross-check with a well-kept library (issue 23 item 5): scikit-image's structural_similarity
    with the same choices (Gaussian window sigma 1.5, population statistics, one data range) gives
    the same mean SSIM per slice, on every axis, for float32 and float64 volumes."""
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    smooth = rng.normal(size=(20, 24, 18)).cumsum(axis=0)
    for dtype in (np.float32, np.float64):
        gt = smooth.astype(dtype)
        pred = gt + rng.normal(0, 0.5, gt.shape).astype(dtype)
        L = float(gt.max() - gt.min())
        for axis in range(3):
            ours = ssim_slices(gt, pred, axis)
            theirs = [structural_similarity(np.take(gt, n, axis), np.take(pred, n, axis), data_range=L,
                                            gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
                      for n in range(gt.shape[axis])]
            assert 0.2 < ours.mean() < 0.99
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


def test_ssim_per_plane_uses_the_right_axes():
    gt = _volume((11, 20, 30))
    pred = gt.copy()
    pred[:, :, 5] = 0  # ruins axial slice 5 only (axis 2 = axial)
    result = ssim_per_plane(gt, pred)
    axial = ssim_slices(gt, pred, 2)
    assert result["axial"] == pytest.approx(axial.mean())
    assert axial[5] < 0.5 and np.allclose(np.delete(axial, 5), 1.0)
    assert result["sagittal"] == pytest.approx(ssim_slices(gt, pred, 0).mean())
    with pytest.raises(XDiffusionError, match="smaller than"):
        ssim_per_plane(gt[:, :10], pred[:, :10])


def _ball_head(shape=(30, 30, 30), radius: float = 8.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured ball on a zero background, and its mask: the 'head' of the masked metrics."""
    grid = np.indices(shape).astype(np.float64)
    centre = (np.array(shape, dtype=np.float64) - 1) / 2
    head = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(axis=0)) < radius
    texture = np.random.default_rng(seed).random(shape)
    return head * (1.0 + texture), head


def test_head_ssim_identical_is_one_and_drops_for_a_blur():
    from scipy.ndimage import gaussian_filter

    gt, head = _ball_head()
    same = ssim_per_plane(gt, gt, mask=head)
    assert all(same[f"head_{plane}"] == pytest.approx(1.0) for plane in ("axial", "coronal", "sagittal"))
    blurred = gaussian_filter(gt, 1.5)
    result = ssim_per_plane(gt, blurred, mask=head)
    for plane in ("axial", "coronal", "sagittal"):
        # The whole slice is mostly exact background, which hides the blur; the head does not.
        assert result[f"head_{plane}"] < 0.5 < result[plane]
    assert result["axial"] == pytest.approx(ssim_per_plane(gt, blurred)["axial"])  # unmasked value unchanged


def test_head_ssim_ignores_the_background():
    gt, head = _ball_head(radius=7.0)
    grid = np.indices(gt.shape)
    far = np.sqrt(((grid - 14.5) ** 2).sum(axis=0)) > 7.0 + 6  # beyond the 11x11 window's reach of the head
    noisy = gt + far * np.random.default_rng(1).random(gt.shape)
    result = ssim_per_plane(gt, noisy, mask=head)
    assert result["head_axial"] == pytest.approx(1.0) and result["axial"] < 0.9


def test_masked_ssim_slices_match_brute_force_and_skip_empty_slices():
    gt, head = _ball_head((12, 22, 24), radius=8.0)
    pred = 0.7 * gt + 0.3 * np.random.default_rng(2).random(gt.shape) * head
    L = float(gt.max() - gt.min())
    per_slice = ssim_slices(gt, pred, axis=0, mask=head)
    for index in range(12):
        expected = _reference_ssim_2d(gt[index], pred[index], L, head[index])
        assert per_slice[index] == pytest.approx(expected, rel=1e-9)
    empty = head.copy()
    empty[0] = False  # a slice without head voxels has no score and is skipped in the plane's mean
    per_slice = ssim_slices(gt, pred, axis=0, mask=empty)
    assert math.isnan(per_slice[0]) and np.isfinite(per_slice[1:]).all()
    assert ssim_per_plane(gt, pred, mask=empty)["head_sagittal"] == pytest.approx(per_slice[1:].mean())
    with pytest.raises(XDiffusionError, match="mask shape"):
        ssim_slices(gt, pred, axis=0, mask=head[:, :, :10])


# --------------------------------------------------------------------------- through-plane sharpness


def _layered_head(shape=(24, 24, 64)) -> tuple[np.ndarray, np.ndarray]:
    """A head whose structure changes along axis 2 (layers ~6 slices apart), with in-plane texture."""
    x, y, z = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    head = ((x - 11.5) / 10) ** 2 + ((y - 11.5) / 10) ** 2 + ((z - 31.5) / 30) ** 2 < 1.0
    values = 100 + 40 * np.sin(2 * np.pi * z / 6 + 0.4 * x) * np.cos(0.3 * y) + 10 * np.sin(0.7 * x + 0.2 * z)
    return head * values, head


def _linear_between(volume: np.ndarray, indices) -> np.ndarray:
    """Linear interpolation along axis 2 between the given slices only (a cross-fade)."""
    z = np.arange(volume.shape[2])
    known = np.asarray(indices)
    upper = np.clip(np.searchsorted(known, z), 1, len(known) - 1)
    lower = upper - 1
    t = np.clip((z - known[lower]) / (known[upper] - known[lower]), 0.0, 1.0)
    return volume[:, :, known[lower]] * (1 - t) + volume[:, :, known[upper]] * t


def test_sharpness_is_one_for_identical_and_low_for_a_cross_fade():
    from scipy.ndimage import gaussian_filter1d

    gt, head = _layered_head()
    indices = (2, 18, 34, 50, 63)  # 16 slices apart
    assert sharpness_ratio(gt, gt, head, 2, indices) == 1.0
    faded = _linear_between(gt, indices)
    assert np.array_equal(faded[:, :, list(indices)], gt[:, :, list(indices)])  # exact on the inputs
    far_apart = sharpness_ratio(gt, faded, head, 2, indices)
    assert 0.0 < far_apart < 0.6
    dense = tuple(range(2, 64, 3))  # 3 slices apart: the cross-fade follows the layers more closely
    assert far_apart < sharpness_ratio(gt, _linear_between(gt, dense), head, 2, dense) < 1.0
    blurred = gaussian_filter1d(gt, 2.0, axis=2)
    assert sharpness_ratio(gt, blurred, head, 2, indices) < 0.6


def test_sharpness_hand_computed_and_counted_pairs():
    gt = np.broadcast_to(2.0 * np.arange(8), (3, 3, 8)).copy()  # differences of 2 along axis 2
    pred = gt / 2  # differences of 1
    everywhere = np.ones(gt.shape, dtype=bool)
    assert sharpness_ratio(gt, pred, everywhere, 2, (0, 7)) == pytest.approx(0.5)
    assert math.isnan(sharpness_ratio(gt, gt, everywhere, 1, (0,)))  # flat along axis 1: nothing to compare
    head = np.zeros(gt.shape, dtype=bool)
    head[1, 1, 3] = True
    pairs = scored_pairs(head, 2, (4, 5))
    # Pairs (2, 3) and (3, 4) touch the head voxel; (4, 5) would be between two inputs.
    assert pairs.shape == (3, 3, 7) and np.flatnonzero(pairs[1, 1]).tolist() == [2, 3] and pairs.sum() == 2
    both_inputs = scored_pairs(everywhere, 2, (4, 5))
    assert not both_inputs[:, :, 4].any() and both_inputs[:, :, [3, 5]].all()
    assert math.isnan(sharpness_ratio(gt, pred, everywhere, 2, range(8)))  # every slice an input


def test_sharpness_ignores_the_background():
    gt, head = _layered_head()
    indices = (2, 18, 34, 50, 63)
    noisy = gt + (~head) * np.random.default_rng(0).normal(0, 50, gt.shape)
    # Head pairs include the head's through-plane edge, so keep the noise off the slices next to it.
    near = np.zeros(gt.shape, dtype=bool)
    near[:, :, 1:] |= head[:, :, :-1]
    near[:, :, :-1] |= head[:, :, 1:]
    noisy = np.where(near | head, gt, noisy)
    assert sharpness_ratio(gt, noisy, head, 2, indices) == pytest.approx(1.0)


# --------------------------------------------------------------------------- LPIPS


def test_lpips_without_weights_refuses():
    v = _volume((32, 32, 32))
    with pytest.raises(XDiffusionError) as info:
        lpips_per_plane(v, v, None)
    assert str(info.value) == NO_WEIGHTS_MESSAGE
    assert "no backbone is downloaded" in NO_WEIGHTS_MESSAGE


def test_lpips_plumbing_with_random_weights(tmp_path):
    """PLUMBING ONLY: a randomly initialised AlexNet + heads saved to a temp file checks loading,
    shapes and per-plane bookkeeping. Its numbers mean nothing and are never reported."""
    import torch

    from XDiffusionLib.metrics.lpips_net import LPIPSNet

    torch.manual_seed(0)
    net = LPIPSNet("alexnet")
    state = {k: v.abs() if k.startswith("lin") else v for k, v in net.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(2, 2)  # extra torchvision keys are ignored
    path = tmp_path / "alex_random_plumbing.pth"
    torch.save(state, path)

    gt = _volume((32, 32, 32), seed=1)
    result = lpips_per_plane(gt, gt, str(path))
    assert set(result) == {"axial", "coronal", "sagittal"}
    assert all(value == 0.0 for value in result.values())
    noisy = gt + 0.3 * _volume((32, 32, 32), seed=2)
    noisy_result = lpips_per_plane(gt, noisy, str(path))
    assert all(value > 0.0 for value in noisy_result.values())
    # Zero linear heads: the distance must vanish, so the heads are really loaded and used.
    zero_heads = {k: torch.zeros_like(v) if k.startswith("lin") else v for k, v in state.items()}
    torch.save(zero_heads, tmp_path / "zero_heads.pth")
    assert all(value == 0.0 for value in lpips_per_plane(gt, noisy, str(tmp_path / "zero_heads.pth")).values())


def test_lpips_weight_file_errors(tmp_path):
    import torch

    from XDiffusionLib.metrics.lpips_net import LPIPSNet

    v = _volume((32, 32, 32))
    with pytest.raises(XDiffusionError, match="does not exist"):
        lpips_per_plane(v, v, str(tmp_path / "missing.pth"))
    state = LPIPSNet("alexnet").state_dict()
    del state["lin3.model.1.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(XDiffusionError, match="lacks lin3.model.1.weight"):
        lpips_per_plane(v, v, str(tmp_path / "partial.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(XDiffusionError, match="cannot be read"):
        lpips_per_plane(v, v, str(tmp_path / "junk.pth"))
    torch.save(LPIPSNet("alexnet").state_dict(), tmp_path / "ok.pth")
    with pytest.raises(XDiffusionError, match="too small"):
        lpips_per_plane(v[:, :, :20], v[:, :, :20], str(tmp_path / "ok.pth"))


def test_lpips_vgg_layout_is_recognised(tmp_path):
    import torch

    from XDiffusionLib.metrics.lpips_net import LPIPSNet, load_lpips

    torch.save(LPIPSNet("vgg16").state_dict(), tmp_path / "vgg_random_plumbing.pth")
    assert load_lpips(str(tmp_path / "vgg_random_plumbing.pth")).architecture == "vgg16"


# --------------------------------------------------------------------------- volumes, overlap, correlation


def test_brain_volume_with_anisotropic_spacing():
    array = np.zeros((4, 5, 6))
    array[:2, :3, :1] = 1.0  # 6 voxels above 0
    array[3, 4, 5] = 0.2  # above 0, below 0.5
    assert brain_volume_mm3(array, (2.0, 2.0, 3.0)) == pytest.approx(7 * 12.0)
    assert brain_volume_mm3(array, (2.0, 2.0, 3.0), threshold=0.5) == pytest.approx(6 * 12.0)
    with pytest.raises(XDiffusionError, match="spacing"):
        brain_volume_mm3(array, (1.0, 0.0, 1.0))


def test_dice_on_tiny_arrays():
    gt = np.array([[0, 1, 1, 2], [0, 0, 2, 2]])
    pred = np.array([[0, 1, 0, 2], [1, 0, 2, 0]])
    # label 1: gt 2 voxels, pred 2, overlap 1 -> 0.5; label 2: gt 3, pred 2, overlap 2 -> 0.8
    assert dice_per_label(gt, pred) == {1: pytest.approx(0.5), 2: pytest.approx(0.8)}
    # A label absent from both maps scores 1.0 by definition; a label missed completely scores 0.
    assert dice_per_label(gt, pred, labels=[3]) == {3: 1.0}
    assert dice_per_label(gt, np.zeros_like(gt), labels=[1]) == {1: 0.0}
    with pytest.raises(XDiffusionError, match="shape"):
        dice_per_label(gt, pred[:, :3])


def test_pearson_r():
    x = np.arange(10.0)
    assert pearson_r(x, 3 * x + 2) == pytest.approx(1.0)
    assert pearson_r(x, -0.5 * x) == pytest.approx(-1.0)
    # Hand-computed: dx = (-1, 0, 1), dy = (-1, 1, 0): sum dx*dy = 1, sum dx^2 = sum dy^2 = 2 -> r = 0.5
    assert pearson_r([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    with pytest.raises(XDiffusionError, match="constant"):
        pearson_r(x, np.ones(10))


# --------------------------------------------------------------------------- slice errors


def test_error_by_distance_distances_and_errors():
    gt = np.ones((3, 2, 7))
    pred = gt.copy()
    for k in range(7):
        pred[:, :, k] += 0.1 * k  # error grows with the slice index along axis 2
    rows = error_by_distance(gt, pred, axis=2, input_indices=[1, 5])
    assert [row["distance"] for row in rows] == [1, 0, 1, 2, 1, 0, 1]
    assert [row["index"] for row in rows] == list(range(7))
    assert rows[3]["mse"] == pytest.approx(0.09)
    assert rows[3]["psnr_paper"] == pytest.approx(10 * math.log10(1 / 0.09))
    assert rows[0]["psnr_paper"] == math.inf  # slice 0 is exact
    grouped = mean_error_by_distance(rows, peak=1.0)
    assert [g["distance"] for g in grouped] == [0, 1, 2]
    assert [g["n_slices"] for g in grouped] == [2, 4, 1]
    assert grouped[0]["mse"] == pytest.approx((0.01 + 0.25) / 2)
    with pytest.raises(XDiffusionError, match="outside"):
        error_by_distance(gt, pred, axis=2, input_indices=[7])
