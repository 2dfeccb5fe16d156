"""Training: checkpoint state without pickle, EMA, examples, exact resume, data parallel, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from XDiffusionLib.errors import XDiffusionError
from XDiffusionLib.training import state as ckpt
from XDiffusionLib.training.config import TrainConfig, train_profile
from XDiffusionLib.training.ema import EMA

REPO = Path(__file__).resolve().parents[1]


# --- checkpoint state ----------------------------------------------------------------------------

def _adam_pair():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    return model, optimizer


def _adam_step(model, optimizer, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 4, generator=g)
    loss = model(x).pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def test_optimizer_state_round_trips_through_tensors_and_json(tmp_path):
    model, optimizer = _adam_pair()
    for seed in range(3):
        _adam_step(model, optimizer, seed)
    tensors, meta = ckpt.flatten_optimizer_state(optimizer.state_dict())
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    ckpt.save_tensors_atomic(tensors, tmp_path / "opt.safetensors")
    ckpt.write_json_atomic(tmp_path / "opt.json", meta)  # JSON, no pickle

    model2, optimizer2 = _adam_pair()
    model2.load_state_dict(model.state_dict())
    restored = ckpt.unflatten_optimizer_state(
        ckpt.load_tensors(tmp_path / "opt.safetensors"), json.loads((tmp_path / "opt.json").read_text())
    )
    optimizer2.load_state_dict(restored)
    assert optimizer2.param_groups[0]["betas"] == (0.8, 0.95)
    _adam_step(model, optimizer, 10)
    _adam_step(model2, optimizer2, 10)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_rng_states_round_trip_as_uint8_tensors():
    tensors = ckpt.rng_state_tensors(rank=0)
    assert all(t.dtype == torch.uint8 for t in tensors.values())
    expected_torch, expected_numpy = torch.rand(3), np.random.rand(3)
    torch.rand(7), np.random.rand(7)
    ckpt.restore_rng_state(tensors, rank=0)
    assert torch.equal(torch.rand(3), expected_torch)
    assert np.array_equal(np.random.rand(3), expected_numpy)


def test_checkpoint_is_atomic_and_keeps_the_last_k(tmp_path):
    def fill(folder: Path) -> None:
        ckpt.write_json_atomic(folder / ckpt.STATE_JSON, {"step": 1})

    for step in (1, 2, 3):
        ckpt.write_checkpoint(tmp_path, step, fill, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000002", "step-000003"]

    def broken(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        ckpt.write_checkpoint(tmp_path, 4, broken, keep_last=2)
    names = sorted(p.name for p in (tmp_path / ckpt.CHECKPOINTS).iterdir())
    assert names == ["step-000002", "step-000003"]  # no step-4, no leftover temp folder
    assert ckpt.resolve_resume(tmp_path).name == "step-000003"
    with pytest.raises(XDiffusionError, match="no checkpoint"):
        ckpt.resolve_resume(tmp_path / "elsewhere")


def test_step_seeds_differ_by_step_and_rank_and_repeat():
    seeds = {ckpt.step_seed(0, s, r) for s in range(1, 50) for r in range(4)}
    assert len(seeds) == 49 * 4
    assert ckpt.step_seed(3, 7, 1) == ckpt.step_seed(3, 7, 1)


# --- EMA -------------------------------------------------------------------------------------------

def test_ema_follows_the_warmup_decay_and_loads_into_the_model():
    model = torch.nn.Linear(3, 1)
    ema = EMA(model, decay=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # first decay min(0.9, 1/10) = 0.1
    assert torch.allclose(ema.shadow_tensors()["weight"], start + 0.9)
    for _ in range(200):
        ema.update(model)
    assert ema.current_decay() == pytest.approx(0.9)
    averaged = ema.averaged_state_dict(model)
    assert set(averaged) == set(model.state_dict())
    assert torch.allclose(averaged["weight"], model.weight, atol=1e-6)


# --- settings -------------------------------------------------------------------------------------

def test_train_config_rejects_bad_values():
    with pytest.raises(XDiffusionError, match="--steps"):
        TrainConfig(steps=0)
    with pytest.raises(XDiffusionError, match="mixed-precision"):
        TrainConfig(mixed_precision="fp8")
    with pytest.raises(XDiffusionError, match="unknown profile"):
        train_profile("huge")
    config = TrainConfig(steps=5)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
