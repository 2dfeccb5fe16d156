"""The maps beside a reconstruction (``XDiffusionLib.maps``): one sign and one set of colours for the
evaluation figures and the Slicer and web views."""

from __future__ import annotations

import numpy as np
from PIL import Image

from XDiffusionLib import maps
from XDiffusionLib.evaluation.figures import case_figure
from XDiffusionLib.inputs import SliceInput
from XDiffusionLib.io.volume import Volume


def test_difference_is_real_minus_generated():
    real = np.full((2, 2, 2), 10.0)
    generated = np.full((2, 2, 2), 4.0)
    shown = maps.difference(real, generated)
    assert shown.dtype == np.float32
    np.testing.assert_array_equal(shown, 6.0)


def test_difference_colours_are_dark_at_zero_blue_below_red_above():
    colours = maps.ramp(maps.DIFFERENCE_COLOURS, 257)
    low, middle, high = colours[0], colours[128], colours[-1]
    assert low[2] > low[0] + 0.3  # blue: the reconstruction too bright
    assert high[0] > high[2] + 0.3  # red to yellow: the reconstruction too dark
    # Dark at 0, yet not the viewer's black background, so the slice's extent stays visible.
    assert 0.02 < middle.max() < 0.1
    brightness = colours.mean(axis=1)
    assert np.all(np.diff(brightness[:129]) <= 1e-9) and np.all(np.diff(brightness[128:]) >= -1e-9)


def test_uncertainty_colours_rise_from_black():
    colours = maps.ramp(maps.UNCERTAINTY_COLOURS)
    np.testing.assert_array_equal(colours[0], 0.0)
    assert np.all(np.diff(colours.mean(axis=1)) >= -1e-9)


def test_windows_never_collapse_to_zero():
    assert maps.symmetric_limit(np.zeros((3, 3))) == 1.0
    assert maps.upper_limit(np.zeros((3, 3))) == 1.0
    sparse = np.zeros(1000)
    sparse[0] = -7.0  # under the 99.5th percentile: the maximum is used
    assert maps.symmetric_limit(sparse) == 7.0
    values = np.arange(1001.0)
    assert maps.upper_limit(values) == np.percentile(values, 99.5)
    assert maps.symmetric_limit(-values) == np.percentile(values, 99.5)


def _reds_and_blues(path) -> tuple[int, int]:
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=float)
    red = int((rgb[..., 0] > rgb[..., 2] + 60).sum())
    blue = int((rgb[..., 2] > rgb[..., 0] + 40).sum())
    return red, blue


def test_evaluation_figure_shows_a_too_dark_reconstruction_in_red(tmp_path):
    """The figure's difference has the viewers' sign (it was reconstruction - truth: the other way)."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, 32)] * 3, indexing="ij")
    truth = 100.0 * (x**2 + y**2 + z**2 < 0.7).astype(np.float32)
    inputs = SliceInput.from_volume(Volume.from_array(truth), "axial", [16])
    too_dark = _reds_and_blues(case_figure(truth, 0.5 * truth, inputs, "too dark", tmp_path / "dark.png"))
    too_bright = _reds_and_blues(case_figure(truth, 1.5 * truth, inputs, "too bright", tmp_path / "bright.png"))
    # The colour bar is the same in both figures; the panels make the difference.
    assert too_dark[0] > too_bright[0] + 5000, (too_dark, too_bright)
    assert too_bright[1] > too_dark[1] + 5000, (too_dark, too_bright)
