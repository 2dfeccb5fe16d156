"""Training settings (everything that is not the model's architecture) and the two profiles."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from ..errors import XDiffusionError
from ..model.config import XDiffusionConfig
from ..records import unknown_fields

MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Stored in every checkpoint's ``training_state.json`` so a resume continues alike."""

    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    mixed_precision: str = "no"
    # examples (paper eq. 2 + C.4): K in 1..k_max input slices along a random plane axis;
    # half the rotations uniform on SO(3), the rest about the vertical axis (inference views)
    k_max: int = 8
    plane_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # input plane axis 0, 1, 2 (sagittal, coronal, axial)
    so3_fraction: float = 0.5
    foreground_depth_fraction: float = 0.8
    # residual models: (cube, anchor) entries made per training volume (``anchor_bank``)
    anchors_per_volume: int = 4
    # bookkeeping
    checkpoint_every: int = 500
    keep_last: int = 3
    validate_every: int = 500
    log_every: int = 10
    # validation reconstructions (small settings)
    val_slices: tuple[int, ...] = (1, 5)
    val_views: int = 2
    val_steps: int = 10
    val_subjects: int = 2
    val_plane: str = "axial"

    def __post_init__(self) -> None:
        if int(self.steps) <= 0:
            raise XDiffusionError(f"--steps must be a positive number of steps, got {self.steps}")
        if int(self.batch_size) <= 0:
            raise XDiffusionError(f"--batch-size must be positive, got {self.batch_size}")
        if not float(self.lr) > 0:
            raise XDiffusionError(f"--lr must be positive, got {self.lr}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise XDiffusionError(
                f"--mixed-precision {self.mixed_precision!r} is unknown: choose one of {', '.join(MIXED_PRECISION)}"
            )
        if int(self.k_max) < 1:
            raise XDiffusionError(f"k_max must be at least 1, got {self.k_max}")
        if int(self.checkpoint_every) <= 0:
            raise XDiffusionError(f"--checkpoint-every must be positive, got {self.checkpoint_every}")
        if int(self.validate_every) < 0:
            raise XDiffusionError(f"--validate-every must be >= 0 (0 turns validation off), got {self.validate_every}")
        if not 0.0 <= float(self.so3_fraction) <= 1.0 or not 0.0 <= float(self.foreground_depth_fraction) <= 1.0:
            raise XDiffusionError("so3_fraction and foreground_depth_fraction must lie in [0, 1]")
        object.__setattr__(self, "val_slices", tuple(int(k) for k in self.val_slices))
        weights = tuple(float(w) for w in self.plane_weights)
        if len(weights) != 3 or min(weights) < 0 or sum(weights) <= 0:
            raise XDiffusionError(f"plane_weights must be 3 non-negative numbers, not all 0, got {list(self.plane_weights)}")
        object.__setattr__(self, "plane_weights", weights)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["val_slices"] = list(self.val_slices)
        data["plane_weights"] = list(self.plane_weights)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        unknown = unknown_fields(cls, data)
        if unknown:
            raise XDiffusionError(f"unknown training setting(s): {', '.join(unknown)}")
        return cls(**data)

    def with_overrides(self, **overrides: Any) -> "TrainConfig":
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


# Defaults per profile; the compact one is sized for a 2-core CPU, the paper one for a GPU.
TRAIN_PROFILES: dict[str, TrainConfig] = {
    "compact": TrainConfig(steps=2000, batch_size=16, lr=1e-3, warmup_steps=100, ema_decay=0.999,
                           checkpoint_every=250, validate_every=500),
    "paper": TrainConfig(steps=200_000, batch_size=32, lr=1e-4, warmup_steps=1000, ema_decay=0.9999,
                         checkpoint_every=5000, validate_every=5000, mixed_precision="bf16"),
}


# The compact profile's model: a residual denoiser over the anchor (see the README's Method section).
COMPACT_MODEL: dict[str, Any] = {
    "target": "residual",
    "priors": ("anchor", "linear", "distance"),
    "multislice": "none",
    "context_sections": 1,
    "residual_scale": 2.0,
    "start_fraction": 0.5,
    "views_about": "input_normal",
    "noise_sharing": 0.5,
    "profile_options": {"clip_sample": False},
}


def train_profile(name: str) -> TrainConfig:
    if name not in TRAIN_PROFILES:
        raise XDiffusionError(f"unknown profile {name!r}: choose one of {', '.join(TRAIN_PROFILES)}")
    return TRAIN_PROFILES[name]


def model_profile(name: str, side: int | None = None, overrides: dict[str, Any] | None = None):
    """The model config a profile trains: ``XDiffusionConfig(profile=name)`` plus ``side`` and overrides."""
    train_profile(name)  # same names, same error for an unknown one
    if name == "paper":
        from ..model.paper import paper_config  # torch: only for the paper profile

        base = paper_config()
    else:
        base = XDiffusionConfig(profile=name, **COMPACT_MODEL)
    overrides = dict(overrides or {})
    if "profile_options" in overrides:  # merged, so a partial override keeps the other options
        overrides["profile_options"] = {**base.profile_options, **overrides["profile_options"]}
    data = {**base.to_dict(), **overrides}
    if side is not None:
        data["side"] = int(side)
    data["profile"] = name
    return XDiffusionConfig.from_dict(data, source="--config")
