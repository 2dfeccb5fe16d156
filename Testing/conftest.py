"""Shared pytest fixtures: small synthetic volumes with awkward geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from XDiffusionLib.io.volume import Volume


def rotation(angles_deg: tuple[float, float, float]) -> np.ndarray:
    """Right-handed rotation (det +1) from x, y, z Euler angles in degrees."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def smooth_array(shape: tuple[int, int, int], seed: int = 0, noise: float = 0.5) -> np.ndarray:
    """A smooth, non-symmetric float32 pattern (values about 60..175) plus Gaussian noise of sd ``noise``."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*[np.linspace(0.0, 1.0, n) for n in shape], indexing="ij")
    values = 100 + 40 * np.sin(2.1 * i + 0.3) * np.cos(1.7 * j) + 25 * k**2 + 10 * i * j
    return (values + rng.normal(0, noise, shape)).astype(np.float32)


# Whole modules that drive a browser or worker processes: marked slow here, so `make test-fast`
# (pytest -m "not slow") leaves them out without a mark on each of their tests.
SLOW_MODULES = {
    "test_web_app.py": "drives the browser app in Chromium",
    "test_web_warm.py": "starts warm worker processes",
    "test_worker.py": "starts worker processes",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def volume_factory():
    """``make(shape, spacing, origin, direction, seed)`` -> Volume; defaults are oblique and anisotropic."""

    def make(
        shape=(12, 10, 8),
        spacing=(0.9, 1.3, 2.0),
        origin=(-20.5, 13.25, 7.0),
        direction=None,
        seed: int = 0,
    ) -> Volume:
        direction = rotation((20.0, -10.0, 35.0)) if direction is None else np.asarray(direction, dtype=float)
        return Volume.from_array(smooth_array(tuple(shape), seed), spacing, origin, direction)

    return make


@pytest.fixture
def oblique_volume(volume_factory) -> Volume:
    """12x10x8 float32 volume, spacing 0.9x1.3x2.0 mm, oblique direction, non-zero origin."""
    return volume_factory()


@pytest.fixture(scope="session", autouse=True)
def private_onnx_cache(tmp_path_factory):
    """Exported ONNX graphs go to a folder of this test run, never to the user's cache (worker
    subprocesses inherit it)."""
    import os

    previous = os.environ.get("XDIFFUSION_CACHE")
    os.environ["XDIFFUSION_CACHE"] = str(tmp_path_factory.mktemp("xdiffusion-cache"))
    yield Path(os.environ["XDIFFUSION_CACHE"])
    if previous is None:
        os.environ.pop("XDIFFUSION_CACHE", None)
    else:
        os.environ["XDIFFUSION_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny randomly initialised compact model folder (side 16), shared by the worker, web-app and demo tests."""
    from model_helpers import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny")
