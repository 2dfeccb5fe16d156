"""Baselines: geometry, exact inputs, and the behaviour each one promises."""

from __future__ import annotations

import numpy as np
import pytest

from XDiffusionLib.baselines import BASELINES, TemplateBaseline
from XDiffusionLib.io.volume import Volume
from XDiffusionLib.inputs import PLANE_AXIS, SliceInput
from XDiffusionLib.methods import get_method

# Canonical RAS+ axes in ITK's LPS world: axis 0 -> R (-x), axis 1 -> A (-y), axis 2 -> S (+z).
RAS = np.diag([-1.0, -1.0, 1.0])


def blob(shape, centre, radii, spacing=(1.0, 1.0, 1.0), gain=1.0, offset=0.0) -> np.ndarray:
    """Head-like phantom: a bright ellipsoid with a darker core and a smooth left-right asymmetry."""
    axes = [np.arange(n) * s for n, s in zip(shape, spacing)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    r = np.sqrt(((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2)
    inside = np.clip(1.0 - r, 0.0, None)
    values = 100.0 * (r < 1.0) * (0.6 + 0.4 * np.cos(3.0 * r)) + 30.0 * inside * (x - centre[0]) / radii[0]
    return (gain * np.clip(values, 0.0, None) + offset * (r < 1.0)).astype(np.float32)


def phantom_template() -> Volume:
    return Volume.from_array(blob((32, 32, 32), (15.5, 15.5, 15.5), (11.0, 13.0, 10.0)), direction=RAS)


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def make_method(name: str):
    return TemplateBaseline(atlas=phantom_template()) if name == "template" else get_method(name)


def test_registry_names():
    # "anchor" is the residual model's deterministic start, registered for ablation.
    assert set(BASELINES) == {"nearest", "linear", "cubic", "template", "anchor"}
    for name in ("nearest", "linear", "cubic"):
        assert get_method(name).name == name


@pytest.mark.parametrize("name", ["nearest", "linear", "cubic", "template"])
@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
@pytest.mark.parametrize("indices", [(9,), (14, 3), (2, 7, 12, 16)])
def test_output_is_on_the_input_grid_and_keeps_the_inputs(name, plane, indices):
    array = blob((18, 20, 17), (9.0, 11.0, 9.0), (8.0, 9.0, 7.0), spacing=(1.0, 1.1, 1.2), gain=2.0)
    volume = Volume.from_array(array, spacing=(1.0, 1.1, 1.2), origin=(3.0, -4.0, 5.0), direction=RAS)
    inputs = SliceInput.from_volume(volume, plane, indices)
    out = make_method(name).reconstruct(inputs)
    assert out.grid.same_geometry(volume.grid)
    assert out.array.dtype == np.float32
    assert np.isfinite(out.array).all()
    axis = PLANE_AXIS[plane]
    for index in indices:
        np.testing.assert_array_equal(np.take(out.array, index, axis=axis), np.take(array, index, axis=axis))


def profile_volume(values: np.ndarray, axis: int, shape=(6, 7, 8)) -> Volume:
    """A volume whose slices along ``axis`` are constant images of ``values`` plus a fixed in-plane pattern."""
    shape = list(shape)
    shape[axis] = len(values)
    pattern = np.random.default_rng(1).normal(0, 1, [s for a, s in enumerate(shape) if a != axis])
    array = np.expand_dims(pattern, axis) + np.expand_dims(values, tuple(a for a in range(3) if a != axis))
    return Volume.from_array(array.astype(np.float32), direction=RAS)


@pytest.mark.parametrize("plane", ["axial", "sagittal"])
def test_nearest_picks_the_nearest_slice_and_lower_on_ties(plane):
    axis = PLANE_AXIS[plane]
    volume = profile_volume(np.arange(12, dtype=np.float64) * 10.0, axis)
    out = get_method("nearest").reconstruct(SliceInput.from_volume(volume, plane, (8, 2)))
    expected_source = [2, 2, 2, 2, 2, 2, 8, 8, 8, 8, 8, 8]  # slice 5 is 3 away from both: the lower wins
    for position, source in enumerate(expected_source):
        np.testing.assert_array_equal(np.take(out.array, position, axis=axis), np.take(volume.array, source, axis=axis))


def test_linear_is_exact_on_a_linear_profile_and_constant_outside():
    axis = 1
    values = 3.0 + 2.5 * np.arange(16)
    volume = profile_volume(values, axis)
    out = get_method("linear").reconstruct(SliceInput.from_volume(volume, "coronal", (2, 9, 14)))
    np.testing.assert_allclose(np.take(out.array, range(2, 15), axis=axis), np.take(volume.array, range(2, 15), axis=axis),
                               rtol=0, atol=1e-4)
    for position in (0, 1):
        np.testing.assert_array_equal(np.take(out.array, position, axis=axis), np.take(volume.array, 2, axis=axis))
    np.testing.assert_array_equal(np.take(out.array, 15, axis=axis), np.take(volume.array, 14, axis=axis))


def test_one_slice_makes_every_interpolation_nearest_and_two_make_cubic_linear():
    volume = profile_volume(np.sin(np.linspace(0, 3, 10)) * 50, 2)
    one = SliceInput.from_volume(volume, "axial", (4,))
    reference = get_method("nearest").reconstruct(one).array
    for name in ("linear", "cubic"):
        np.testing.assert_array_equal(get_method(name).reconstruct(one).array, reference)
    two = SliceInput.from_volume(volume, "axial", (1, 8))
    np.testing.assert_array_equal(get_method("cubic").reconstruct(two).array, get_method("linear").reconstruct(two).array)


def test_input_order_does_not_matter():
    volume = profile_volume(np.cos(np.linspace(0, 4, 20)) * 30, 0)
    for name in ("nearest", "linear", "cubic"):
        a = get_method(name).reconstruct(SliceInput.from_volume(volume, "sagittal", (3, 10, 17))).array
        b = get_method(name).reconstruct(SliceInput.from_volume(volume, "sagittal", (17, 3, 10))).array
        np.testing.assert_array_equal(a, b)


def test_cubic_beats_linear_on_a_smooth_profile():
    z = np.linspace(0.0, 1.0, 40)
    values = 100 * (0.3 + z - 1.4 * z**2 + 0.9 * z**3) + 20 * np.sin(2.5 * z)
    volume = profile_volume(values, 2)
    inputs = SliceInput.from_volume(volume, "axial", (0, 10, 20, 30, 39))
    linear = mse(get_method("linear").reconstruct(inputs).array, volume.array)
    cubic = mse(get_method("cubic").reconstruct(inputs).array, volume.array)
    assert cubic < 0.5 * linear


def test_cubic_does_not_overshoot_a_step():
    values = np.where(np.arange(30) < 15, 0.0, 100.0)
    volume = profile_volume(values, 2, shape=(3, 3, 30))
    volume = volume.with_array(np.broadcast_to(values, volume.shape).astype(np.float32))
    out = get_method("cubic").reconstruct(SliceInput.from_volume(volume, "axial", (0, 6, 12, 18, 24, 29))).array
    assert out.min() >= 0.0 and out.max() <= 100.0


def test_template_beats_nearest_on_a_shifted_scaled_head():
    # Target: the template phantom 20% larger, shifted, on an anisotropic grid, on another intensity scale.
    spacing = (1.25, 1.0, 1.5)
    shape = (30, 40, 26)
    target = blob(shape, (17.0, 21.0, 19.0), (13.2, 15.6, 12.0), spacing=spacing, gain=3.0, offset=20.0)
    volume = Volume.from_array(target, spacing=spacing, origin=(10.0, 20.0, -5.0), direction=RAS)
    for plane, indices in (("axial", (12,)), ("coronal", (21,)), ("axial", (7, 12, 18))):
        inputs = SliceInput.from_volume(volume, plane, indices)
        template = TemplateBaseline(atlas=phantom_template()).reconstruct(inputs).array
        nearest = get_method("nearest").reconstruct(inputs).array
        assert mse(template, target) < 0.5 * mse(nearest, target), (plane, indices)


def test_template_background_stays_the_inputs_background_when_they_show_scalp():
    # The inputs show a bright scalp shell that the brain-only template lacks: the template's flat
    # background then covers the inputs' background AND the scalp. A mean over both painted every
    # empty voxel grey (issue 8); the median keeps it at the inputs' background.
    shape = (32, 32, 32)
    brain = blob(shape, (15.5, 15.5, 15.5), (11.0, 13.0, 10.0))
    x, y, z = np.meshgrid(*[np.arange(n) - 15.5 for n in shape], indexing="ij")
    r = np.sqrt((x / 13.0) ** 2 + (y / 15.0) ** 2 + (z / 12.0) ** 2)
    head = np.where((r > 0.9) & (r < 1.0), 90.0, brain).astype(np.float32)
    volume = Volume.from_array(head, direction=RAS)
    inputs = SliceInput.from_volume(volume, "axial", (15,))
    out = TemplateBaseline(atlas=phantom_template()).reconstruct(inputs).array
    corners = out[:3, :3, :]
    assert float(np.abs(corners).max()) < 1.0, "background outside the head is the inputs' background (0)"


def test_template_atlas_that_does_not_exist_is_a_clear_error(tmp_path):
    from XDiffusionLib.errors import XDiffusionError

    with pytest.raises(XDiffusionError, match="missing.nii.gz"):
        TemplateBaseline(atlas=tmp_path / "missing.nii.gz")
