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
from XDiffusionLib.io.atomic import write_json_atomic
from XDiffusionLib.training import checkpoints
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
    tensors, meta = checkpoints.flatten_optimizer_state(optimizer.state_dict())
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    checkpoints.save_tensors_atomic(tensors, tmp_path / "opt.safetensors")
    write_json_atomic(tmp_path / "opt.json", meta)  # JSON, no pickle

    model2, optimizer2 = _adam_pair()
    model2.load_state_dict(model.state_dict())
    restored = checkpoints.unflatten_optimizer_state(
        checkpoints.load_tensors(tmp_path / "opt.safetensors"), json.loads((tmp_path / "opt.json").read_text())
    )
    optimizer2.load_state_dict(restored)
    assert optimizer2.param_groups[0]["betas"] == (0.8, 0.95)
    _adam_step(model, optimizer, 10)
    _adam_step(model2, optimizer2, 10)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_rng_states_round_trip_as_uint8_tensors():
    tensors = checkpoints.rng_state_tensors(rank=0)
    assert all(t.dtype == torch.uint8 for t in tensors.values())
    expected_torch, expected_numpy = torch.rand(3), np.random.rand(3)
    torch.rand(7), np.random.rand(7)
    checkpoints.restore_rng_state(tensors, rank=0)
    assert torch.equal(torch.rand(3), expected_torch)
    assert np.array_equal(np.random.rand(3), expected_numpy)


def test_checkpoint_is_atomic_and_keeps_the_last_k(tmp_path):
    def fill(folder: Path) -> None:
        write_json_atomic(folder / checkpoints.STATE_JSON, {"step": 1})

    for step in (1, 2, 3):
        checkpoints.write_checkpoint(tmp_path, step, fill, keep_last=2)
    assert [p.name for p in checkpoints.list_checkpoints(tmp_path)] == ["step-000002", "step-000003"]

    def broken(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        checkpoints.write_checkpoint(tmp_path, 4, broken, keep_last=2)
    names = sorted(p.name for p in (tmp_path / checkpoints.CHECKPOINTS).iterdir())
    assert names == ["step-000002", "step-000003"]  # no step-4, no leftover temp folder
    assert checkpoints.resolve_resume(tmp_path).name == "step-000003"
    with pytest.raises(XDiffusionError, match="no checkpoint"):
        checkpoints.resolve_resume(tmp_path / "elsewhere")


def test_step_seeds_differ_by_step_and_rank_and_repeat():
    seeds = {checkpoints.step_seed(0, s, r) for s in range(1, 50) for r in range(4)}
    assert len(seeds) == 49 * 4
    assert checkpoints.step_seed(3, 7, 1) == checkpoints.step_seed(3, 7, 1)


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


def test_ema_has_diffusers_schedule_and_agrees_with_its_ema_model_to_rounding():
    """The hand-written EMA stays (training/ema.py says why): diffusers' EMAModel with the same
    decay follows the same schedule from the second update on (its first update copies the
    weights, decay 0; ours uses 0.1), and after a few dozen updates the two agree to rounding."""
    import warnings

    from diffusers.training_utils import EMAModel

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 4))
    ours = EMA(model, decay=0.99)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = EMAModel(model.parameters(), decay=0.99)
    noise = torch.Generator().manual_seed(1)
    for update in range(40):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=noise))
        expected = 0.0 if update == 0 else ours.current_decay()
        assert theirs.get_decay(theirs.optimization_step + 1) == pytest.approx(expected, abs=1e-12)
        ours.update(model)
        theirs.step(model.parameters())
    for mine, reference in zip(ours.shadow, theirs.shadow_params):
        assert torch.allclose(mine, reference, rtol=0, atol=1e-6)


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


# --- data, examples, training runs on tiny volumes -------------------------------------------------

TINY = {"block_out_channels": [8, 16], "attention_levels": [1], "max_slices": 8, "log_every": 1, "val_steps": 2,
        "val_subjects": 1}


def blob(shape, seed: int) -> np.ndarray:
    """A smooth ellipsoidal head-like volume with noise (also used by test_security_round_two)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    inside = (x / 0.8) ** 2 + (y / 0.7) ** 2 + (z / 0.75) ** 2 < 1
    values = 100 + 40 * np.sin(3 * x + seed) * y + 20 * z
    return (np.where(inside, values, 0) + rng.normal(0, 1, shape).clip(0)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from XDiffusionLib.io import write_volume
    from XDiffusionLib.io.volume import Volume

    folder = tmp_path_factory.mktemp("volumes")
    for i in range(3):
        volume = Volume.from_array(blob((20, 18, 14), i), spacing=(1.0, 1.2, 1.5))
        write_volume(volume, folder / f"subject_{i:04d}.nii.gz")
    write_volume(Volume.from_array((blob((20, 18, 14), 9) > 50).astype(np.float32)), folder / "subject_0000_labels.nii.gz")
    (folder / "manifest.json").write_text("{}")
    return folder


def _tiny_config(side: int = 16):
    """A tiny model of the paper's kind (generates whole sections): what ``sample_batch`` trains."""
    from XDiffusionLib.model.config import XDiffusionConfig

    return XDiffusionConfig(side=side, **{k: v for k, v in TINY.items() if k in
                                          ("block_out_channels", "attention_levels", "max_slices")})


def test_volume_sources_skip_label_maps_and_find_brats_flair(tmp_path, tiny_data):
    from XDiffusionLib.training.data import find_volume_sources

    found = find_volume_sources([tiny_data])
    assert [p.name for p in found] == [f"subject_{i:04d}.nii.gz" for i in range(3)]
    brats = tmp_path / "brats"
    for subject in ("BraTS_001", "BraTS_002"):
        (brats / subject).mkdir(parents=True)
        for kind in ("flair", "t1", "seg"):
            (brats / subject / f"{subject}_{kind}.nii.gz").write_bytes(b"")
    assert [p.name for p in find_volume_sources([brats])] == ["BraTS_001_flair.nii.gz", "BraTS_002_flair.nii.gz"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(XDiffusionError, match="empty.*no volumes"):
        find_volume_sources([tmp_path / "empty"])


def test_unreadable_volume_is_named(tmp_path):
    from XDiffusionLib.training.data import VolumeDataset

    (tmp_path / "broken.nii.gz").write_bytes(b"not a volume")
    with pytest.raises(XDiffusionError, match="broken.nii.gz"):
        VolumeDataset([tmp_path], side=16)


def test_dataset_cubes_are_unit_range_with_foreground_extents(tiny_data):
    from XDiffusionLib.training.data import VolumeDataset

    dataset = VolumeDataset([tiny_data], side=16)
    assert dataset.cubes.shape == (3, 16, 16, 16) and dataset.cubes.dtype == np.float32
    assert dataset.cubes.min() >= 0.0 and dataset.cubes.max() == pytest.approx(1.0)
    for volume in dataset.volumes:
        assert np.shares_memory(volume.cube, dataset.cubes)
        for axis, (low, high) in enumerate(volume.extent):
            profile = np.moveaxis(volume.cube, axis, 0).reshape(16, -1).max(1)
            assert 0 < low < high < 15 and profile[low] > 0.1 and profile[0] < 0.05
        assert np.abs(volume.points).max() <= 1.0


def test_sample_batch_is_deterministic_and_well_formed(tiny_data):
    from XDiffusionLib.training.data import VolumeDataset
    from XDiffusionLib.training.examples import ExampleSettings, sample_batch

    config = _tiny_config()
    dataset = VolumeDataset([tiny_data], side=16)
    settings = ExampleSettings(k_max=4)
    target, cond = sample_batch(dataset, 12, torch.Generator().manual_seed(3), config, settings)
    again, cond2 = sample_batch(dataset, 12, torch.Generator().manual_seed(3), config, settings)
    other, _ = sample_batch(dataset, 12, torch.Generator().manual_seed(4), config, settings)
    assert target.shape == (12, 1, 16, 16) and cond.image.shape == (12, 2, 16, 16)
    assert torch.equal(target, again) and torch.equal(cond.pose, cond2.pose) and torch.equal(cond.slices, cond2.slices)
    assert not torch.equal(target, other)
    assert target.min() >= -1.0 and target.max() <= 1.0
    counts = cond.slice_mask.sum(1)
    assert counts.min() >= 1 and counts.max() <= 4
    # most sections are drawn through the foreground: they are not empty
    assert (target.flatten(1).max(1).values > -0.9).float().mean() >= 0.5


def test_identity_section_at_an_input_slice_reproduces_that_slice(tiny_data):
    # Target and condition come from the same normalised cube: with R = identity, the target at
    # the depth of an axis-0 input slice is that input slice, and the linear prior equals it too.
    from XDiffusionLib.model.conditioning import from_network
    from XDiffusionLib.training.data import VolumeDataset
    from XDiffusionLib.training.examples import ExampleDraws, build_examples

    config = _tiny_config()
    dataset = VolumeDataset([tiny_data], side=16)
    depth = 2 * 7 / 15 - 1
    draws = ExampleDraws([1, 2], [0, 0], [[7], [4, 7, 11]], torch.eye(3).expand(2, 3, 3).clone(), torch.full((2,), depth))
    target, cond = build_examples(dataset, draws, config)
    assert torch.allclose(from_network(target[0, 0]), from_network(cond.slices[0, 0]), atol=1e-5)
    assert torch.allclose(from_network(target[1, 0]), from_network(cond.slices[1, 1]), atol=1e-5)
    assert torch.allclose(target[:, 0], cond.image[:, 0], atol=1e-5)  # linear prior = inputs at their planes
    assert from_network(target).max() == pytest.approx(1.0)  # normalised on its own input slices: clipped at 1


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    """``xdiffusion train`` arguments for the tiny model (also used by test_security_round_two)."""
    return ["train", "--data", str(data), "--profile", "compact", "--out", str(out), "--side", "16",
            "--batch-size", "3", "--checkpoint-every", "2", "--validate-every", "0", "--no-progress",
            "--config", json.dumps(TINY), *extra]


def _cli(argv: list[str]) -> int:
    from XDiffusionLib.app.cli import main

    return main(argv)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path, tiny_data):
    # 6 steps straight == 3 steps, stop, --resume, 3 more: bitwise-equal weights, EMA, optimizer state.
    assert _cli(train_args(tiny_data, tmp_path / "straight", "--steps", "6")) == 0
    assert _cli(train_args(tiny_data, tmp_path / "split", "--steps", "6", "--stop-after", "3")) == 0
    split = tmp_path / "split"
    assert not (split / "final").exists()
    assert [p.name for p in checkpoints.list_checkpoints(split)] == ["step-000002", "step-000003"]
    assert _cli(["train", "--out", str(split), "--resume", "--no-progress"]) == 0
    for name in ("model.safetensors", "ema.safetensors", "training_state.safetensors"):
        a = _tensors(tmp_path / "straight" / "checkpoints" / "step-000006" / name)
        b = _tensors(split / "checkpoints" / "step-000006" / name)
        assert set(a) == set(b)
        for key in a:
            if not key.startswith("rng."):  # global RNG states differ by process history; never used
                assert torch.equal(a[key], b[key]), (name, key)
    straight_log = (tmp_path / "straight" / "train_log.csv").read_text().splitlines()
    split_log = (split / "train_log.csv").read_text().splitlines()
    assert [r.split(",")[:3] for r in straight_log] == [r.split(",")[:3] for r in split_log]  # same losses and lr
    a, b = _tensors(split / "final" / "model.safetensors"), _tensors(tmp_path / "straight" / "final" / "model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    state = json.loads((split / "checkpoints" / "step-000006" / checkpoints.STATE_JSON).read_text())
    assert state["step"] == 6 and state["seed"] == 0 and len(state["data_sources"]) == 3


@pytest.mark.slow
def test_final_model_is_the_ema_and_reconstructs(tmp_path, tiny_data):
    from XDiffusionLib.inputs import SliceInput
    from XDiffusionLib.model.checkpoint import load_pretrained
    from XDiffusionLib.sampling.reconstructor import XDiffusionReconstructor
    from XDiffusionLib.training.validation import VALIDATION_FIELDS

    out = tmp_path / "run"
    assert _cli(train_args(tiny_data, out, "--steps", "4", "--validate-every", "2", "--val-data",
                            str(tiny_data / "subject_0001.nii.gz"))) == 0
    model, config = load_pretrained(out / "final")
    final = _tensors(out / "final" / "model.safetensors")
    ema = _tensors(out / "checkpoints" / "step-000004" / "ema.safetensors")
    raw = _tensors(out / "checkpoints" / "step-000004" / "model.safetensors")
    assert all(torch.equal(final[k], ema[k]) for k in final)
    assert any(not torch.equal(final[k], raw[k]) for k in final)
    from XDiffusionLib.io import read_volume

    volume = read_volume(tiny_data / "subject_0002.nii.gz")
    inputs = SliceInput.from_volume(volume, "axial", [7])
    result = XDiffusionReconstructor(model_dir=out / "final", views=1, steps=2).reconstruct(inputs)
    assert result.grid.same_geometry(volume.grid) and np.isfinite(result.array).all()
    import csv

    with open(out / "validation.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == VALIDATION_FIELDS
    assert sorted({(int(r["step"]), int(r["k"])) for r in rows if r["volume"] == "mean"}) == [(2, 1), (2, 5), (4, 1), (4, 5)]
    assert all(np.isfinite(float(r["psnr_paper"])) for r in rows)
    assert (out / "validation.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--profile", "huge"], "unknown profile"),
        (["--steps", "0"], "--steps"),
        (["--mixed-precision", "fp8"], "mixed-precision"),
        (["--config", "{\"no_such_key\": 1}"], "no_such_key"),
    ],
)
def test_bad_settings_fail_in_one_line_and_write_nothing(tmp_path, tiny_data, capsys, argv, message):
    out = tmp_path / "run"
    args = train_args(tiny_data, out, "--steps", "2")
    for flag, value in zip(argv[::2], argv[1::2]):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert _cli(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists()


def test_bad_paths_fail_in_one_line_and_write_nothing(tmp_path, tiny_data, capsys):
    existing_file = tmp_path / "file.txt"
    existing_file.write_text("x")
    assert _cli(train_args(tiny_data, existing_file, "--steps", "2")) == 2
    assert "existing file" in capsys.readouterr().err and existing_file.read_text() == "x"
    (tmp_path / "empty").mkdir()
    assert _cli(train_args(tmp_path / "empty", tmp_path / "run", "--steps", "2")) == 2
    assert "no volumes" in capsys.readouterr().err and not (tmp_path / "run").exists()
    assert _cli(["train", "--out", str(tmp_path / "run"), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_two_processes_train_data_parallel_with_identical_weights(tmp_path, tiny_data):
    import socket

    from XDiffusionLib.model.factory import build_denoiser

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(port), "-m", "XDiffusionLib.app.cli",
               *train_args(tiny_data, out, "--steps", "2")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    state = json.loads((out / "checkpoints" / "step-000002" / checkpoints.STATE_JSON).read_text())
    assert state["world_size"] == 2
    hashes = state["rank_weight_sha256"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    trained = _tensors(out / "checkpoints" / "step-000002" / "model.safetensors")
    torch.manual_seed(0)
    initial = build_denoiser(_tiny_config()).state_dict()
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)
    assert {"rng.rank0.torch", "rng.rank1.torch"} <= set(_tensors(out / "checkpoints" / "step-000002" / checkpoints.STATE_TENSORS))


@pytest.mark.slow  # a short training run: several seconds on a 2-core CPU
def test_checkpoint_ema_exports_as_a_loadable_model(tmp_path, tiny_data):
    from XDiffusionLib.model.checkpoint import load_pretrained

    out = tmp_path / "run"
    assert _cli(train_args(tiny_data, out, "--steps", "2")) == 0
    exported = checkpoints.export_ema_model(out / "checkpoints" / "step-000002", tmp_path / "ema-model")
    model, config = load_pretrained(exported)
    assert config.side == 16
    ema = _tensors(out / "checkpoints" / "step-000002" / "ema.safetensors")
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_init_starts_a_new_run_from_a_model_folders_weights(tmp_path, tiny_data):
    # Fine-tuning: --init takes a trained folder's weights and config (a --config key such as the
    # anchor's decays may change); the new run's first checkpoint moved away from them, not from noise.
    from dataclasses import replace

    from XDiffusionLib.model.checkpoint import read_config, replace_config

    base = tmp_path / "base"
    assert _cli(train_args(tiny_data, base, "--steps", "2")) == 0
    # A gain chosen for the base model's residual does not carry over to the new run's residual.
    replace_config(base / "final", replace(read_config(base / "final"), residual_gain={"1": 1.5}))
    tuned = tmp_path / "tuned"
    argv = ["train", "--init", str(base / "final"), "--data", str(tiny_data), "--out", str(tuned), "--steps", "1",
            "--batch-size", "3", "--checkpoint-every", "1", "--validate-every", "0", "--no-progress",
            "--lr", "1e-9", "--config", json.dumps({"anchor_decay_inside_mm": 5.0, "log_every": 1})]
    assert _cli(argv) == 0
    start = _tensors(base / "final" / "model.safetensors")
    after = _tensors(tuned / "checkpoints" / "step-000001" / "model.safetensors")
    assert set(start) == set(after)
    assert max(float((start[k] - after[k]).abs().max()) for k in start) < 1e-4  # lr 1e-9: one tiny step
    tuned_config = json.loads((tuned / "final" / "config.json").read_text())
    assert tuned_config["anchor_decay_inside_mm"] == 5.0 and tuned_config["residual_gain"] == {}


@pytest.mark.slow  # a short training run: several seconds on a 2-core CPU
def test_init_refuses_a_changed_network(tmp_path, tiny_data, capsys):
    base = tmp_path / "base"
    assert _cli(train_args(tiny_data, base, "--steps", "1")) == 0
    argv = ["train", "--init", str(base / "final"), "--data", str(tiny_data), "--out", str(tmp_path / "x"),
            "--steps", "1", "--no-progress", "--config", json.dumps({"side": 32})]
    assert _cli(argv) != 0
    assert "--init" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
