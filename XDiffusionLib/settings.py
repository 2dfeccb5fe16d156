"""Sampling settings of one reconstruction: the one home of their names, defaults, choices and checks.

Torch-free, so the command line, the web app, the worker protocol and the Slicer module derive
their fields and defaults from here without importing the model. ``ReconstructionSettings`` is
what ``sampling.reconstructor.XDiffusionReconstructor`` runs with.

Defaults (views, steps) fit the shipped residual model: it starts near its anchor, so 4
DPM-Solver++ steps per view suffice (see the README's Method section and the model card).
"""

from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import XDiffusionError
from .records import unknown_fields

SAMPLERS = ("dpmpp", "ddim", "ddpm")  # the default first
AGGREGATES = ("mean", "max")
DEVICES = ("auto", "cpu", "cuda")
# How the network runs on a CPU: "auto" = ONNX Runtime where installed (same numbers, faster;
# model/onnx_runtime.py), "torch" = torch eager, "onnx" = ONNX Runtime or an error.
RUNTIMES = ("auto", "torch", "onnx")
# The anchor's interpolation weight between two inputs (baselines.anchor), fixed per model by its
# config's ``anchor_weight``; the default first.
ANCHOR_WEIGHT_RULES = ("union", "nearest")
MAX_VIEWS = 64
MAX_STEPS = 1000
MAX_SAMPLES = 16
# Classifier-free guidance: 1 = none; far above ~10 the samples saturate into noise, a typo's value.
MAX_GUIDANCE = 20.0
# Model evaluations (views x steps x samples, twice with guidance) above which a run takes more
# than a few minutes on a CPU: the web page asks before starting one.
LONG_RUN_EVALUATIONS = 2000


def model_evaluations(views: int, steps: int, samples: int, guidance: float) -> int:
    """How many network evaluations a run makes per generated slice group (its cost)."""
    return int(views) * int(steps) * int(samples) * (1 if float(guidance) == 1.0 else 2)


def check_sampler(name: str) -> str:
    if name not in SAMPLERS:
        raise XDiffusionError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}")
    return name


def check_aggregate(name: str) -> str:
    if name not in AGGREGATES:
        raise XDiffusionError(f"unknown aggregation {name!r}: choose one of {', '.join(AGGREGATES)}")
    return name


def check_device_name(name: str) -> str:
    if str(name) not in DEVICES and not str(name).startswith("cuda:"):
        raise XDiffusionError(f"unknown device {name!r}: choose one of {', '.join(DEVICES)}")
    return str(name)


@dataclass(frozen=True)
class ReconstructionSettings:
    """Sampling settings of one reconstruction (the flags of ``xdiffusion reconstruct``)."""

    views: int = 4
    steps: int = 4
    sampler: str = "dpmpp"
    guidance: float = 1.0
    samples: int = 1
    seed: int = 0
    device: str = "auto"
    aggregate: str = "mean"
    chunk_size: int | None = None
    bf16: bool = False
    # Residual models: fraction of the noise schedule sampling starts from (None: the model's own).
    strength: float | None = None
    runtime: str = "auto"

    def __post_init__(self) -> None:
        check_sampler(self.sampler)
        check_aggregate(self.aggregate)
        check_device_name(self.device)
        if self.runtime not in RUNTIMES:
            raise XDiffusionError(f"unknown runtime {self.runtime!r}: choose one of {', '.join(RUNTIMES)}")
        for name, limit in (("views", MAX_VIEWS), ("steps", MAX_STEPS), ("samples", MAX_SAMPLES)):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or int(value) < 1:
                raise XDiffusionError(f"{name} must be a positive integer, got {value!r}")
            if int(value) > limit:
                raise XDiffusionError(f"{name} {value} is above the limit of {limit}")
        if not math.isfinite(self.guidance) or self.guidance < 0:
            raise XDiffusionError(f"guidance must be a finite number >= 0, got {self.guidance!r}")
        if self.guidance > MAX_GUIDANCE:
            raise XDiffusionError(f"guidance {self.guidance:g} is above the limit of {MAX_GUIDANCE:g} (1 = no guidance)")
        if self.strength is not None and not (math.isfinite(self.strength) and 0.0 < self.strength <= 1.0):
            raise XDiffusionError(f"strength must lie in (0, 1], got {self.strength!r}")
        if self.chunk_size is not None and int(self.chunk_size) < 1:
            raise XDiffusionError(f"chunk size must be at least 1, got {self.chunk_size!r}")

    @classmethod
    def from_options(cls, options: dict) -> "ReconstructionSettings":
        unknown = unknown_fields(cls, options)
        if unknown:
            known = sorted(f.name for f in fields(cls))
            raise XDiffusionError(f"unknown reconstruction settings {unknown}: choose from {', '.join(known)}")
        return cls(**options)

    @classmethod
    def from_record(cls, options: dict) -> "ReconstructionSettings":
        """``from_options`` for values read from JSON (a worker request): a value of the wrong type
        (``{"views": "many"}``, ``{"bf16": "yes"}``) is refused first, with one line naming it."""
        hints = typing.get_type_hints(cls)
        for item in fields(cls):
            if item.name not in options:
                continue
            value = options[item.name]
            allowed = typing.get_args(hints[item.name]) or (hints[item.name],)
            if not any(_has_type(value, kind) for kind in allowed):
                names = " or ".join(_TYPE_WORDS.get(kind, kind.__name__) for kind in allowed)
                raise XDiffusionError(f"setting {item.name!r} must be {names}, got {value!r}")
        return cls.from_options(options)

    def to_dict(self) -> dict:
        return asdict(self)


_TYPE_WORDS = {int: "a whole number", float: "a number", str: "a string", bool: "true or false", type(None): "null"}


def _has_type(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


DEFAULTS = ReconstructionSettings()
