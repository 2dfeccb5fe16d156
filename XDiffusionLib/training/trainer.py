"""The training loop (paper eq. 2) on HuggingFace Accelerate: CPU, one GPU or many, same code.

- Loss: MSE between the model output and epsilon or v (``config.prediction_type``) at a uniform
  random timestep, for cross-sections at random (R, d) with classifier-free-guidance dropout of
  the condition (``drop_condition`` with the config's probabilities).
- AdamW, linear warmup then cosine decay (diffusers' schedule), gradient clipping, EMA weights.
- Randomness: every random number of step ``s`` on rank ``r`` comes from a generator seeded by
  (seed, s, r), so a resumed run draws exactly the batches the uninterrupted run would have.
  Data parallel: each rank draws its own batch; gradients are averaged by DDP.
- Checkpoints (``checkpoints.py``) every ``checkpoint_every`` steps and at the end; the EMA weights go
  to ``RUN_DIR/final`` in ``save_pretrained`` format (what ``xdiffusion reconstruct --model`` loads).
- Logs: ``train_log.csv`` (step, loss, lr, steps_per_s), ``validation.csv`` + ``validation.png``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object
from diffusers.optimization import get_cosine_schedule_with_warmup
from tqdm.auto import tqdm

from ..errors import XDiffusionError
from ..io.atomic import write_json_atomic
from ..model.checkpoint import load_pretrained, save_pretrained
from ..model.factory import build_denoiser
from ..sampling.schedulers import make_scheduler
from . import checkpoints
from .anchor_bank import load_or_build
from .config import TrainConfig
from .csv_log import append_row, truncate_after
from .data import VolumeDataset, find_volume_sources
from .ema import EMA
from .examples import ExampleSettings, sample_batch, sample_residual_batch
from .validation import Validator, load_validation_volumes

TRAIN_LOG = "train_log.csv"
TRAIN_LOG_FIELDS = ("step", "loss", "lr", "steps_per_s")
FINAL_DIR = "final"
STATE_FORMAT = 1


@dataclass
class RunSpec:
    """Everything a run needs: where it writes, what it learns from, and how."""

    run_dir: Path
    model_config: object  # XDiffusionConfig
    train_config: TrainConfig
    data: list[str]
    val_data: list[str] = field(default_factory=list)
    resume_from: Path | None = None
    progress: bool = True
    init_from: Path | None = None  # a model folder whose weights start the run (fine-tuning)


def training_noise_scheduler(config):
    """The forward process of eq. 2 (betas, alphas): the DDPM scheduler every sampler shares."""
    return make_scheduler("ddpm", config)


def diffusion_loss(model, scheduler, target: torch.Tensor, condition, generator: torch.Generator, prediction_type: str,
                   start_fraction: float = 1.0) -> torch.Tensor:
    """Eq. 2: || goal - model(x_t, t, c) ||^2 with goal = epsilon or v, epsilon ~ N(0, I), t uniform over
    the part of the schedule sampling uses (``start_fraction`` of it, from the clean end)."""
    batch = target.shape[0]
    noise = torch.randn(target.shape, generator=generator, dtype=torch.float32).to(target.device)
    high = max(1, int(round(scheduler.config.num_train_timesteps * float(start_fraction))))
    timesteps = torch.randint(0, high, (batch,), generator=generator).to(target.device)
    noisy = scheduler.add_noise(target, noise, timesteps)
    if prediction_type == "epsilon":
        goal = noise
    elif prediction_type == "v_prediction":
        goal = scheduler.get_velocity(target, noise, timesteps)
    else:
        raise XDiffusionError(f"unknown prediction_type {prediction_type!r}")
    prediction = model(noisy, timesteps, condition)
    return F.mse_loss(prediction.float(), goal.float())


def weights_sha256(model: torch.nn.Module) -> str:
    """Hash of every tensor of the model's state dict (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(checkpoints.step_seed(seed, step, rank))


class Trainer:
    """One training run. ``Trainer(spec, dataset).run()`` returns the final model folder."""

    def __init__(self, spec: RunSpec, dataset: VolumeDataset, val_volumes: Sequence | None = None) -> None:
        self.spec = spec
        self.config = spec.model_config
        self.tc = spec.train_config
        self.dataset = dataset
        self.run_dir = Path(spec.run_dir)
        # Accelerate needs cpu=True to pick the gloo backend for multi-process CPU runs.
        self.accelerator = Accelerator(mixed_precision=self.tc.mixed_precision, cpu=not torch.cuda.is_available())
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes

        torch.manual_seed(self.tc.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
        model = build_denoiser(self.config)
        if spec.init_from is not None and spec.resume_from is None:
            pretrained, _ = load_pretrained(spec.init_from)  # checksums verified, shapes checked
            model.load_state_dict(pretrained.state_dict(), strict=True)
        self.ema = EMA(model, self.tc.ema_decay)
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=self.tc.lr,
            betas=(self.tc.adam_beta1, self.tc.adam_beta2),
            eps=self.tc.adam_eps,
            weight_decay=self.tc.weight_decay,
        )
        # Stepped by hand once per optimizer step (a prepared scheduler steps once per process).
        # Warmup is capped at a tenth of the run so short runs still reach the peak rate.
        warmup = min(self.tc.warmup_steps, self.tc.steps // 10)
        self.lr_scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, self.tc.steps)
        self.step = 0
        self._scaler_state = None
        if spec.resume_from is not None:
            self._load(Path(spec.resume_from), model, optimizer)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        if self._scaler_state and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(self._scaler_state)
        self.noise_scheduler = training_noise_scheduler(self.config)
        self.settings = ExampleSettings(
            k_max=self.tc.k_max,
            plane_weights=self.tc.plane_weights,
            so3_fraction=self.tc.so3_fraction,
            foreground_depth_fraction=self.tc.foreground_depth_fraction,
        )
        self.validator = None
        if val_volumes and self.tc.validate_every > 0:
            self.validator = Validator(val_volumes, self.tc, self.run_dir)

    # --- state -----------------------------------------------------------------------------------

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def _load(self, folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        meta = json.loads((folder / checkpoints.STATE_JSON).read_text())
        weights = checkpoints.load_tensors(folder / "model.safetensors")
        model.load_state_dict(weights, strict=True)
        ema_weights = checkpoints.load_tensors(folder / checkpoints.EMA_FILE)
        self.ema.load_shadow(ema_weights, meta["ema"]["num_updates"])
        tensors = checkpoints.load_tensors(folder / checkpoints.STATE_TENSORS)
        optimizer.load_state_dict(checkpoints.unflatten_optimizer_state(tensors, meta["optimizer"]))
        self.lr_scheduler.load_state_dict(meta["lr_scheduler"])
        checkpoints.restore_rng_state(tensors, self.rank)
        self._scaler_state = meta.get("grad_scaler")
        self.step = int(meta["step"])

    def _state_meta(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "step": self.step,
            "seed": self.tc.seed,
            "world_size": self.world,
            "train_config": self.tc.to_dict(),
            "data_sources": [str(p) for p in self.dataset.sources],
            "val_data": [str(p) for p in self.spec.val_data],
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "ema": {"decay": self.ema.decay, "num_updates": self.ema.num_updates},
            # fp16 loss scaling (GPU runs with --mixed-precision fp16); floats and ints only
            "grad_scaler": self.accelerator.scaler.state_dict() if self.accelerator.scaler is not None else None,
        }

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step-XXXXXX`` (main process; every rank must call: RNG states are gathered)."""
        rng = gather_object([checkpoints.rng_state_tensors(self.rank)])
        # Data-parallel ranks must hold identical weights; a checkpoint records each rank's hash.
        hashes = gather_object([weights_sha256(self.unwrapped)])
        if not self.accelerator.is_main_process:
            return None
        if len(set(hashes)) > 1:
            warnings.warn(f"data-parallel ranks hold different weights at step {self.step}: {hashes}")
        model = self.unwrapped
        optimizer_tensors, optimizer_meta = checkpoints.flatten_optimizer_state(self.optimizer.state_dict())
        meta = self._state_meta()
        meta["optimizer"] = optimizer_meta
        meta["rank_weight_sha256"] = hashes
        tensors = dict(optimizer_tensors)
        for per_rank in rng:
            tensors.update(per_rank)

        def fill(tmp: Path) -> None:
            save_pretrained(model, self.config, tmp / "weights")
            for name in ("model.safetensors", "config.json"):
                os.replace(tmp / "weights" / name, tmp / name)
            (tmp / "weights").rmdir()
            checkpoints.save_tensors_atomic(self.ema.averaged_state_dict(model), tmp / checkpoints.EMA_FILE)
            checkpoints.save_tensors_atomic(tensors, tmp / checkpoints.STATE_TENSORS)
            write_json_atomic(tmp / checkpoints.STATE_JSON, meta, sort_keys=True)

        return checkpoints.write_checkpoint(self.run_dir, self.step, fill, self.tc.keep_last)

    def ema_model(self) -> torch.nn.Module:
        """A CPU copy of the model holding the EMA weights, in eval mode."""
        model = build_denoiser(self.config)
        model.load_state_dict({k: v.cpu() for k, v in self.ema.averaged_state_dict(self.unwrapped).items()})
        return model.eval()

    def save_final(self) -> Path:
        return save_pretrained(self.ema_model(), self.config, self.run_dir / FINAL_DIR)

    # --- loop ------------------------------------------------------------------------------------

    def train_step(self) -> float:
        """One optimizer step (``self.step`` + 1); returns this rank's loss."""
        step = self.step + 1
        generator = step_generator(self.tc.seed, step, self.rank)
        device = self.accelerator.device
        if self.config.target == "residual":
            target, condition = sample_residual_batch(self.dataset, self.tc.batch_size, generator, self.config, self.settings)
        else:
            target, condition = sample_batch(self.dataset, self.tc.batch_size, generator, self.config, self.settings)
        # The profile's hooks (model.denoiser.Denoiser): latent profiles (paper) bring their own
        # guidance dropout and learn in their VAE's latent space; pixel profiles keep the defaults.
        condition = self.unwrapped.drop_condition(condition, generator)
        self.model.train()
        target, condition = target.to(device), condition.to(device)
        with torch.no_grad():
            target = self.unwrapped.encode(target)
        loss = diffusion_loss(
            self.model, self.noise_scheduler, target, condition, generator, self.config.prediction_type,
            self.config.start_fraction,
        )
        self.accelerator.backward(loss)
        if self.tc.grad_clip > 0:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.tc.grad_clip)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.unwrapped)
        self.step = step
        return float(loss.detach())

    def run(self, stop_after: int | None = None) -> Path | None:
        """Train to ``steps``; returns ``RUN_DIR/final``.

        ``stop_after`` N: stop after N steps of this invocation (time-sliced jobs), with a
        checkpoint there and no final model; returns None then. ``--resume`` continues exactly.
        """
        acc = self.accelerator
        stop_at = self.tc.steps if stop_after is None else min(self.tc.steps, self.step + int(stop_after))
        main = acc.is_main_process
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            truncate_after(self.run_dir / TRAIN_LOG, self.step)
            if self.validator is not None:
                self.validator.truncate(self.step)
        acc.wait_for_everyone()
        bar = None
        if main and self.spec.progress:
            bar = tqdm(total=self.tc.steps, initial=self.step, desc="training", unit="step", dynamic_ncols=True)
        window_start, window_steps, window_loss = time.perf_counter(), 0, 0.0
        while self.step < stop_at:
            loss = self.train_step()
            window_steps += 1
            window_loss += loss
            last = self.step == stop_at
            if self.step % self.tc.log_every == 0 or last:
                mean_loss = acc.reduce(torch.tensor([window_loss / window_steps], device=acc.device), "mean").item()
                rate = window_steps / max(time.perf_counter() - window_start, 1e-9)
                lr = self.lr_scheduler.get_last_lr()[0]
                if main:
                    append_row(self.run_dir / TRAIN_LOG, TRAIN_LOG_FIELDS, [self.step, f"{mean_loss:.6g}", f"{lr:.6g}", f"{rate:.4g}"])
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean_loss:.4f}", steps_per_s=f"{rate:.2f}")
                window_start, window_steps, window_loss = time.perf_counter(), 0, 0.0
                if not math.isfinite(mean_loss):
                    raise XDiffusionError(f"training diverged at step {self.step} (loss {mean_loss}): lower --lr")
            if bar is not None:
                bar.update(1)
            if self.step % self.tc.checkpoint_every == 0 or last:
                self.save_checkpoint()
            if self.validator is not None and (self.step % self.tc.validate_every == 0 or self.step == self.tc.steps):
                if main:
                    self.validator.run(self.ema_model(), self.config, self.step)
                acc.wait_for_everyone()
                window_start = time.perf_counter()  # validation time is not training speed
        if bar is not None:
            bar.close()
        if self.step < self.tc.steps:
            return None
        final = self.save_final() if main else self.run_dir / FINAL_DIR
        acc.wait_for_everyone()
        return final


def train(spec: RunSpec, stop_after: int | None = None) -> Path | None:
    """Load the data, build the trainer and run it; returns ``RUN_DIR/final``.

    All reading (and every check that can fail on the user's input) happens before the run
    folder is created.
    """
    tc, config = spec.train_config, spec.model_config
    if tc.validate_every > 0 and max(tc.val_slices) > config.max_slices:
        raise XDiffusionError(f"validation uses K = {max(tc.val_slices)} input slices but the model takes at most {config.max_slices}")
    if config.target == "residual":
        dataset = load_or_build(spec.run_dir, find_volume_sources(spec.data), config, tc.anchors_per_volume, tc.seed,
                                progress=spec.progress)
    else:
        dataset = VolumeDataset(spec.data, spec.model_config.side, progress=spec.progress)
    val_volumes = load_validation_volumes(spec.val_data, spec.train_config) if spec.train_config.validate_every > 0 else []
    return Trainer(spec, dataset, val_volumes).run(stop_after)
