"""The compact U-Net on ONNX Runtime (model/onnx_runtime.py): same numbers as torch, cached graphs."""

import dataclasses

import numpy as np
import pytest
import torch

from XDiffusionLib.errors import XDiffusionError
from XDiffusionLib.inputs import SliceInput
from XDiffusionLib.io.volume import Volume
from XDiffusionLib.model import onnx_runtime
from XDiffusionLib.model.checkpoint import load_pretrained
from XDiffusionLib.model.conditioning import ConditionBuilder, SparseCube
from XDiffusionLib.geometry.rotation import section_rotations
from XDiffusionLib.geometry.sections import depth_index_to_normalised
from XDiffusionLib.sampling.reconstructor import XDiffusionReconstructor
from XDiffusionLib.settings import ReconstructionSettings


def batch(config, size=5):
    g = torch.Generator().manual_seed(1)
    side = config.side
    cube = torch.rand(side, side, side, generator=g)
    anchor = cube if "anchor" in config.priors else None
    sparse = SparseCube.from_cube(cube, 2, [side // 2], anchor=anchor)
    depths = depth_index_to_normalised(torch.arange(size, dtype=torch.float32), side)
    cond = ConditionBuilder(sparse, config)(section_rotations(1, 2)[0].float(), depths)
    return torch.randn(size, 1, side, side, generator=g), torch.full((size,), 321), cond


def test_onnx_unet_gives_the_torch_numbers_at_any_batch(tiny_model, tmp_path):
    model, config = load_pretrained(tiny_model)
    fast = onnx_runtime.OnnxCompactDenoiser(model, onnx_runtime.export_unet(model, tmp_path / "unet.onnx"))
    bigger = dataclasses.replace(config, side=24)  # a model space other than the trained one
    for size, cfg in ((1, config), (5, config), (3, bigger)):  # exported at batch 2, side 16: both dynamic
        x, t, cond = batch(cfg, size)
        with torch.no_grad():
            expected = model(x, t, cond)
        got = fast(x, t, cond)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert not list(tmp_path.glob(".*"))  # written atomically: no temporary left


def test_graph_is_cached_per_weights_and_a_damaged_one_is_exported_again(tiny_model, private_onnx_cache, monkeypatch):
    model, _ = load_pretrained(tiny_model)
    first = onnx_runtime.on_onnx_runtime(model, "onnx", tiny_model)
    assert isinstance(first, onnx_runtime.OnnxCompactDenoiser) and first.graph.parent == private_onnx_cache / "onnx"
    calls = []
    real_export = onnx_runtime.export_unet
    monkeypatch.setattr(onnx_runtime, "export_unet", lambda *a: calls.append(a) or real_export(*a))
    again = onnx_runtime.on_onnx_runtime(model, "onnx", tiny_model)
    assert again.graph == first.graph and calls == []  # reused, not exported again
    first.graph.write_bytes(b"truncated")
    repaired = onnx_runtime.on_onnx_runtime(model, "onnx", tiny_model)
    assert len(calls) == 1 and repaired.graph.stat().st_size > 1000


def test_runtime_choice(tiny_model, monkeypatch):
    model, _ = load_pretrained(tiny_model)
    assert onnx_runtime.on_onnx_runtime(model, "torch", tiny_model) is model
    assert onnx_runtime.on_onnx_runtime(model, "auto", None) is model  # in-memory models keep torch
    assert isinstance(onnx_runtime.on_onnx_runtime(model, "onnx", None), onnx_runtime.OnnxCompactDenoiser)
    with pytest.raises(XDiffusionError, match="unknown runtime 'tensorrt'"):
        ReconstructionSettings(runtime="tensorrt")
    monkeypatch.setattr(onnx_runtime, "onnxruntime_available", lambda: False)
    assert onnx_runtime.on_onnx_runtime(model, "auto", tiny_model) is model
    with pytest.raises(XDiffusionError, match="needs the onnxruntime package"):
        onnx_runtime.on_onnx_runtime(model, "onnx", tiny_model)


def test_auto_falls_back_to_torch_with_a_warning_when_export_fails(tiny_model, monkeypatch, tmp_path):
    model, _ = load_pretrained(tiny_model)
    monkeypatch.setenv("XDIFFUSION_CACHE", str(tmp_path / "fresh"))

    def broken(*args):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(onnx_runtime, "export_unet", broken)
    with pytest.warns(RuntimeWarning, match="exporter exploded"):
        assert onnx_runtime.on_onnx_runtime(model, "auto", tiny_model) is model
    with pytest.raises(XDiffusionError, match=r"the onnx runtime failed \(exporter exploded\): use --runtime torch"):
        onnx_runtime.on_onnx_runtime(model, "onnx", tiny_model)


def test_reconstruction_is_the_same_on_both_runtimes(tiny_model):
    g = np.random.default_rng(0)
    volume = Volume.from_array(g.random((14, 12, 10)).astype(np.float32) * 100, spacing=(1.0, 1.2, 2.0))
    inputs = SliceInput.from_volume(volume, "axial", [3, 6])
    outputs = {}
    for runtime in ("torch", "onnx"):
        method = XDiffusionReconstructor(model_dir=tiny_model, device="cpu", views=2, steps=2, runtime=runtime)
        outputs[runtime] = method.reconstruct(inputs).array
        assert isinstance(method.pipeline.model, onnx_runtime.OnnxCompactDenoiser) == (runtime == "onnx")
    np.testing.assert_allclose(outputs["onnx"], outputs["torch"], atol=1e-3 * 100)
