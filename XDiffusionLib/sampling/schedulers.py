"""Noise schedulers from diffusers, all built from the model's ``XDiffusionConfig``.

- ``ddpm``: ancestral DDPM, the paper's sampler (1000 steps, eta 1).
- ``ddim``: deterministic DDIM (eta 0).
- ``dpmpp``: DPM-Solver++ (order 2, multistep), good samples in about 10-20 steps: the default.

The few-step samplers use ``timestep_spacing="trailing"`` so the first step starts at t = T-1
(pure noise) instead of skipping the noisiest part of the schedule, which matters with a cosine
schedule and 10 steps. Training uses ``make_scheduler("ddpm", config)`` for ``add_noise`` and
``get_velocity``: the same betas as every sampler.
"""

from __future__ import annotations

from ..model.config import XDiffusionConfig
from ..settings import SAMPLERS  # noqa: F401  (re-exported: the names, and their check, live in settings)


def make_scheduler(name: str, config: XDiffusionConfig):
    """A fresh diffusers scheduler ``name`` (one of ``SAMPLERS``, checked by ``ReconstructionSettings``)
    for ``config``'s noise schedule and prediction type."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler  # diffusers: slow to import, only when sampling

    common = dict(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        prediction_type=config.prediction_type,
    )
    # Pixel profiles clip x0 to the image range; latent profiles (paper) set clip_sample False.
    clip = bool(config.profile_options.get("clip_sample", True))
    builders = {
        "ddpm": lambda: DDPMScheduler(
            **common, clip_sample=clip, clip_sample_range=1.0, variance_type="fixed_small", timestep_spacing="trailing"
        ),
        "ddim": lambda: DDIMScheduler(
            **common, clip_sample=clip, clip_sample_range=1.0, set_alpha_to_one=True, timestep_spacing="trailing"
        ),
        "dpmpp": lambda: DPMSolverMultistepScheduler(
            **common, algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True, timestep_spacing="trailing"
        ),
    }
    return builders[name]()  # a name outside SAMPLERS is a caller's bug (KeyError): users' go through the settings
