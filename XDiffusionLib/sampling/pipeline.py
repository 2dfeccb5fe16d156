"""``XDiffusionPipeline``: sparse input slices -> a model-space volume (paper eq. 3 and §3.2).

For each of M samples and each of N views R_i = R_azim(360 deg * i / N) about the canonical
vertical axis (axis 2, I->S):
  1. all D depth planes d of R_i.X are denoised together from pure noise, each conditioned on
     c(x, d, R_i) (``model/conditioning.py``); the batch is cut into chunks only for the network
     evaluation, so the scheduler state and the random draws do not depend on the chunk size;
  2. the D generated sections are stacked: the view-conditional volume X_{R_i} (= R_i.X estimate);
  3. it is rotated back with R_i^T to the canonical cube.
The views are aggregated per voxel over the views that cover it by ``aggregate.ViewAggregator``
(same-size rotated cubes cut the corners of oblique views): ``mean`` = the paper's
X = 1/N sum_i R_i^T X_{R_i}, or ``max`` (the max-pool variant of the paper's Table V). Samples are
averaged; ``uncertainty`` is the per-voxel standard deviation across all views x samples (the
reconstructor turns it into a calibrated interval where the model has a calibration table).

The pipeline is built once per model (``model``, ``config``, a torch ``device``, the chunk size)
and called with the sampling settings of a run, a ``settings.ReconstructionSettings`` that checked
its values when it was made (views, steps, sampler, guidance, samples, seed, aggregate, strength);
the pipeline adds only the one check that needs the model: the strength against the model's
training range (``start_fraction``).

Residual models skip the network on sections whose anchor shows no head (``in_head``, the rule the
reconstructor also uses to mask the residual on the input grid): they keep a zero residual.

Determinism: every (sample, view) pair has its own torch.Generator seeded from (seed, sample,
view), so a seed fixes the output, whatever the chunk size.
Memory: on CUDA out-of-memory the chunk is halved and the evaluation retried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..errors import XDiffusionError
from ..geometry.rotation import azimuth_rotations, section_rotations
from ..geometry.sections import depth_index_to_normalised
from ..model.conditioning import Condition, ConditionBuilder, SparseCube, from_network, section_channel
from ..model.denoiser import DenoiserHooks, hooks_of
from ..model.config import XDiffusionConfig
from ..settings import DEFAULTS, ReconstructionSettings, check_device_name
from .aggregate import ViewAggregator
from .schedulers import make_scheduler

ACTIVE_LEVEL = 0.02  # anchor intensity (fraction of the inputs' range) at or below which there is no head
Progress = Callable[[float, str], None]


def in_head(anchor):
    """Where the anchor (intensities in [0, 1] of the inputs' range; numpy or torch) shows the head:
    the one rule for the residual's support, on the input grid (reconstructor) and per section (here)."""
    return anchor > ACTIVE_LEVEL


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The one resolution of a device setting: ``auto`` -> CUDA when available, else CPU; ``cuda``
    without CUDA is an error. ``XDiffusionReconstructor.device`` calls it once per reconstructor."""
    name = check_device_name(str(device))
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise XDiffusionError(f"device {name!r} requested but CUDA is not available: use --device cpu or auto")
    return torch.device(name)


def start_fraction(config: XDiffusionConfig, strength: float | None) -> float:
    """Where sampling starts on the noise schedule: ``strength`` (residual models, at most the
    model's ``start_fraction``: they never saw noisier inputs), else the model's own. The one check
    of a setting that needs the model; a volume-target model starts from pure noise and takes none."""
    if strength is None:
        return float(config.start_fraction)
    if config.target != "residual":
        raise XDiffusionError(f"strength {strength}: only residual models start part-way; this model starts from noise")
    if not 0.0 < float(strength) <= config.start_fraction:
        raise XDiffusionError(
            f"strength {strength} must lie in (0, {config.start_fraction}] for this model (its training range)"
        )
    return float(strength)


def view_generator(seed: int, sample: int, view: int) -> torch.Generator:
    """Independent, reproducible random stream for one (sample, view) pair."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, sample, view]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def _is_out_of_memory(error: BaseException) -> bool:
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom_type is not None and isinstance(error, oom_type)) or "out of memory" in str(error).lower()


@dataclass
class PipelineOutput:
    """Model-space results, all (S, S, S) on the CPU."""

    cube: torch.Tensor  # intensities in [0, 1]
    uncertainty: torch.Tensor  # std across views x samples, same units
    coverage: torch.Tensor  # how many view x sample volumes covered each voxel


class XDiffusionPipeline:
    """Runs a denoiser ``model(noisy, timesteps, cond)`` over views, depths and samples; a
    ``model.denoiser.Denoiser`` brings its own hooks (latent space, guidance's null condition)."""

    def __init__(
        self,
        model: torch.nn.Module | Callable,
        config: XDiffusionConfig,
        device: str | torch.device = "cpu",
        chunk_size: int | None = None,
        bf16: bool = False,
    ) -> None:
        """``device``: a torch device (``resolve_device`` turns a setting such as "auto" into one);
        ``chunk_size`` and ``bf16`` as in ``ReconstructionSettings``, which checks them."""
        self.config = config
        self.device = torch.device(device)
        self.model = model.to(self.device).eval() if isinstance(model, torch.nn.Module) else model
        self.hooks: DenoiserHooks = hooks_of(self.model)  # a profile's own hooks, or the pixel-space defaults
        if isinstance(model, torch.nn.Module) and self.device.type == "cpu":
            # Same numbers (within float rounding), ~10% faster convolutions on CPU (bench/cpu_limit.py).
            self.model = self.model.to(memory_format=torch.channels_last)
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.bf16 = bool(bf16) and self.device.type == "cuda"

    @torch.inference_mode()
    def __call__(
        self,
        sparse: SparseCube,
        settings: ReconstructionSettings = DEFAULTS,
        progress: Progress | None = None,
    ) -> PipelineOutput:
        """The cube from ``sparse`` under ``settings`` (its views, steps, sampler, guidance, samples,
        seed, aggregate and strength; the device and chunk size are the pipeline's own).
        ``progress(fraction, message)`` is called after every denoising step; raising from it cancels."""
        # 1. where sampling starts (the model's range) and what is sampled
        start = start_fraction(self.config, settings.strength)
        views, steps, samples = settings.views, settings.steps, settings.samples
        side = self.config.side
        builder = ConditionBuilder(sparse, self.config, device=self.device)
        residual = self.config.target == "residual"
        # 2. the views R_i and the section depths d
        if self.config.views_about == "input_normal":
            rotations = section_rotations(views, sparse.axis).to(torch.float32)
        else:
            rotations = azimuth_rotations(views).to(torch.float32)
        depths = depth_index_to_normalised(torch.arange(side, dtype=torch.float32), side)
        total = samples * views * steps
        done = 0

        # 3. every view of every sample: all sections denoised together, rotated back, aggregated
        views_seen = ViewAggregator(side, settings.aggregate)
        for m in range(samples):
            views_seen.start_sample()
            for i, R in enumerate(rotations):

                def step_done(k: int, m=m, i=i) -> None:
                    if progress is not None:
                        progress((done + k) / total, f"sample {m + 1}/{samples}, view {i + 1}/{views}, step {k}/{steps}")

                rotated = self.sample_view(builder, R, depths, view_generator(settings.seed, m, i), settings.sampler,
                                           steps, settings.guidance, step_done, start)
                done += steps
                views_seen.add_view(rotated, R)
            views_seen.end_sample()
        # 4. the aggregate in [0, 1] intensity units (residual models: their residual) and the spread
        spread = views_seen.std()
        if residual:
            # Residual models: network units are residual_scale x intensity units; no view = no change.
            scale = float(self.config.residual_scale)
            return PipelineOutput(cube=(views_seen.result(0.0) / scale).float(), uncertainty=(spread / scale).float(),
                                  coverage=views_seen.coverage.float())
        # Voxels no view covers (none with the identity view among them) read background (-1).
        result = views_seen.result(-1.0)
        # Network range spans 2 intensity units, so a std in network units halves in [0, 1] units.
        return PipelineOutput(
            cube=from_network(result).clamp(0.0, 1.0).float(),
            uncertainty=(spread * 0.5).float(),
            coverage=views_seen.coverage.float(),
        )

    def sample_view(
        self,
        builder: ConditionBuilder,
        R: torch.Tensor,
        depths: torch.Tensor,
        generator: torch.Generator,
        sampler: str,
        steps: int,
        guidance: float,
        step_done: Callable[[int], None] | None = None,
        start: float | None = None,
    ) -> torch.Tensor:
        """The view-conditional volume R.X (D, S, S) in network range: all depths sampled from noise
        (or, below ``start`` = 1, from part-way down the schedule)."""
        start = self.config.start_fraction if start is None else float(start)
        side = self.config.side
        # 1. the condition c(x, d, R) of every section of the view
        scheduler = make_scheduler(sampler, self.config)
        cond = builder(R.to(self.device), depths.to(self.device))
        # 2. the starting noise. Latent profiles (paper) denoise in their VAE latent space and decode at the end.
        latent_shape = self.hooks.latent_shape
        shape = tuple(latent_shape) if latent_shape is not None else (1, side, side)
        noise = torch.randn(depths.numel(), *shape, generator=generator)
        if self.config.noise_sharing > 0:
            # A share of the noise common to all sections of the view: neighbouring sections then
            # start alike, which removes the section-to-section streaks of independent noise.
            shared = torch.randn(1, *shape, generator=generator)
            a = float(self.config.noise_sharing)
            noise = (1.0 - a) ** 0.5 * noise + a ** 0.5 * shared
        noise = noise.to(self.device)
        # 3. the timesteps, and x at the first of them
        if start < 1.0:
            # Start part-way down the schedule from x_t = sqrt(1 - alpha_bar_t) * noise: the noisy
            # version of a zero residual, i.e. of the anchor itself (SDEdit / residual diffusion).
            total = max(int(steps), int(round(int(steps) / start)))
            scheduler.set_timesteps(total, device=self.device)
            timesteps = scheduler.timesteps[total - int(steps):]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(total - int(steps))
            x = scheduler.add_noise(torch.zeros_like(noise), noise, timesteps[:1].expand(noise.shape[0]))
        else:
            scheduler.set_timesteps(steps, device=self.device)
            timesteps = scheduler.timesteps
            x = noise * scheduler.init_noise_sigma
        # 4. residual models: only the sections that show the head go through the network
        active = self.active_sections(cond) if self.config.target == "residual" else None
        if active is not None and not bool(active.any()):
            if step_done is not None:
                for k in range(len(timesteps)):
                    step_done(k + 1)
            return torch.zeros(depths.numel(), side, side, device=self.device)
        if active is not None:
            x, cond = x[active], cond[active]
        # 5. the denoising loop (all sections in one batch, evaluated in chunks)
        for k, t in enumerate(timesteps):
            model_input = scheduler.scale_model_input(x, t)
            prediction = self.predict(model_input, t, cond, guidance)
            x = scheduler.step(prediction, t, x, generator=generator).prev_sample
            if step_done is not None:
                step_done(k + 1)  # may raise to cancel the run
        # 6. back to sections in network range (latents decoded; skipped sections keep a zero residual)
        if latent_shape is not None:
            x = self.hooks.decode(x).float()
        if active is not None:
            out = torch.zeros(depths.numel(), side, side, device=self.device)
            out[active] = x[:, 0].float()
            return out.clamp(-2.0, 2.0)
        return x[:, 0].clamp(-1.0, 1.0)

    def active_sections(self, cond: Condition) -> torch.Tensor:
        """(D,) bool: sections whose anchor shows the head (``in_head``); the rest keep a zero
        residual (no network evaluation spent on empty space). The anchor is read from the
        condition, the very section the network sees, so this costs no resampling of its own.

        It is the reconstructor's head rule (one mask on the input grid, for the residual, the
        spread and the interval) applied a second time, per section in model space. Deciding the
        sections from the input-grid mask instead would change which sections reach the network,
        hence every output number (the regression pins); kept until a model change moves them anyway."""
        anchor = from_network(cond.image[:, section_channel(self.config, "anchor")])
        return in_head(anchor.flatten(1).amax(dim=1))

    def predict(self, x: torch.Tensor, t: torch.Tensor, cond: Condition, guidance: float) -> torch.Tensor:
        """Model output for the whole batch, evaluated in chunks; halves the chunk on out-of-memory."""
        n = x.shape[0]
        outputs = []
        start = 0
        while start < n:
            size = min(self.chunk_size or n, n - start)
            try:
                out = self._guided(x[start : start + size], t, cond[start : start + size], guidance)
            except RuntimeError as error:
                if not _is_out_of_memory(error):
                    raise
                if size <= 1:
                    raise XDiffusionError(
                        f"out of memory on {self.device} even for one cross-section: try --device cpu"
                    ) from None
                self.chunk_size = max(1, size // 2)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            outputs.append(out)
            start += size
        return torch.cat(outputs)

    def _guided(self, x: torch.Tensor, t: torch.Tensor, cond: Condition, guidance: float) -> torch.Tensor:
        # Classifier-free guidance: conditional and unconditional branches share one batch.
        if guidance == 1.0:
            return self._evaluate(x, t, cond)
        both = self._evaluate(torch.cat([x, x]), t, Condition.cat([cond, self.hooks.null_condition(cond)]))
        conditional, unconditional = both.chunk(2)
        return unconditional + guidance * (conditional - unconditional)

    def _evaluate(self, x: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        timesteps = t.reshape(1).to(self.device).expand(x.shape[0])
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(x, timesteps, cond)
        return out.float()
