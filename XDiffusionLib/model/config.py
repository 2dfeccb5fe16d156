"""``XDiffusionConfig``: everything needed to rebuild a denoiser and its conditioning.

One config travels with the weights (``config.json`` next to ``model.safetensors``), so training,
inference and the checkpoint loader always agree on the model space side, the condition channels and
the noise schedule.

Choices for the compact (CPU) profile and why:
- ``prediction_type="v_prediction"``: the model predicts v = alpha*eps - sigma*x0. At high noise
  an epsilon model's x0 estimate (x_t - sigma*eps)/alpha divides by a tiny alpha, so the first few
  of a 10-step DPM-Solver++ run amplify its errors; v-prediction keeps the x0 estimate well
  conditioned at every noise level, which is what a few-step sampler lives on.
- ``beta_schedule="squaredcos_cap_v2"`` (cosine): pixel-space 64x64 images, where the linear
  schedule spends most steps at almost-clean images; cosine spreads the SNR evenly. The paper's
  1000 training steps are kept (``num_train_timesteps``).
- channels (16, 32, 64, 128), one ResNet per level, attention only at 8x8 and in the middle block:
  about 2.7M parameters, about 10 ms per 64x64 cross-section per step on 2 CPU cores.
- ``multislice="product"`` is the paper's reduction x = 1/(K-1) sum_j x_j*x_{j+1} (K=1: x itself);
  ``"attention"`` is a learned alternative (per-slice conv features + position embedding,
  softmax-pooled over slices with a pose query).
- ``priors``: volumes built from the input slices only and cut with the same (R, d) as the target,
  so the condition is spatially aligned with the section being denoised (see conditioning.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import XDiffusionError
from ..io.atomic import write_json_atomic
from ..records import check_record
from ..settings import ANCHOR_WEIGHT_RULES

PREDICTION_TYPES = ("epsilon", "v_prediction")
MULTISLICE_MODES = ("product", "attention", "none")
PRIOR_NAMES = ("linear", "distance", "template", "anchor")
TARGETS = ("volume", "residual")
VIEW_AXES = ("vertical", "input_normal")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
DROPOUT_KEYS = ("image", "pose", "all")
# Fields that change what the trained network is given or how its output is used, not the weights:
# ``checkpoint.replace_config`` may change them, ``train --init`` does not carry them over and an
# interval calibration table records them. Each with what a config file or table written before the
# field existed meant (such a model saw exactly that).
INFERENCE_FIELDS: dict[str, Any] = {"residual_gain": {}, "anchor_weight": "nearest"}


_MAX_GAIN = 4.0  # a residual amplified further would be the network's noise, not a correction


def _gain_table(table: Any) -> dict[str, float]:
    """``residual_gain`` checked and in canonical form: keys are whole numbers K >= 1 (as text, the
    JSON form), values gains in [0, _MAX_GAIN]."""
    if not isinstance(table, dict):
        raise XDiffusionError(f"config residual_gain {table!r} must map K (the smallest K of a range) to a gain")
    checked: dict[str, float] = {}
    for key, value in table.items():
        text = str(key).strip()
        if not text.isdigit() or int(text) < 1:
            raise XDiffusionError(f"config residual_gain key {key!r} must be a whole number K >= 1")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= _MAX_GAIN:
            raise XDiffusionError(f"config residual_gain[{key!r}] = {value!r} must be a number in [0, {_MAX_GAIN:g}]")
        checked[str(int(text))] = float(value)
    return dict(sorted(checked.items(), key=lambda item: int(item[0])))


_MAX_SIDE, _MAX_LEVELS, _MAX_LAYERS, _MAX_SLICES, _MAX_CHANNELS = 4096, 8, 16, 4096, 8192


@dataclass
class XDiffusionConfig:
    """Denoiser architecture, conditioning and noise schedule (serialised as ``config.json``)."""

    profile: str = "compact"
    side: int = 64
    block_out_channels: tuple[int, ...] = (16, 32, 64, 128)
    layers_per_block: int = 1
    attention_levels: tuple[int, ...] = (3,)
    attention_head_dim: int = 8
    norm_num_groups: int = 8
    prediction_type: str = "v_prediction"
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    max_slices: int = 32
    multislice: str = "product"
    multislice_channels: int = 8
    priors: tuple[str, ...] = ("linear", "distance")
    depth_frequencies: int = 8
    cond_dropout: dict[str, float] = field(default_factory=lambda: {"image": 0.05, "pose": 0.05, "all": 0.05})
    # What the denoiser generates: the whole section ("volume", the paper), or the residual from the
    # deterministic anchor (``baselines.anchor``), scaled by ``residual_scale`` into network range.
    target: str = "volume"
    residual_scale: float = 1.0
    # The generated residual is multiplied by a gain that depends on the number of input slices K:
    # {"1": 1.5, "5": 1.25} is 1.5 for K = 1-4 and 1.25 from K = 5 on (1 below the smallest key;
    # empty: 1 everywhere). Averaging views and samples shrinks the residual toward zero; a table is
    # selected on synthetic subjects (scripts/select_residual_gain.py). The shipped model has none.
    residual_gain: dict[str, float] = field(default_factory=dict)
    anchor_decay_inside_mm: float = 6.0
    anchor_decay_outside_mm: float = 6.0
    # How the anchor weighs interpolation between two inputs: "union" (smooth at the midpoints) or
    # "nearest" (the nearest input only: a cusp, i.e. a line, at every midpoint; models before v4).
    anchor_weight: str = ANCHOR_WEIGHT_RULES[0]
    # Sampling starts at this fraction of the noise schedule (1: pure noise; < 1: near the anchor),
    # and training draws timesteps from the same range.
    start_fraction: float = 1.0
    # 2.5D context: the priors are also cut this many sections on each side of the target section.
    context_sections: int = 0
    # Views turn about the vertical axis (the paper) or about the input slices' normal, so every
    # section crosses every input slice.
    views_about: str = "vertical"
    # Share of the initial noise common to all sections of a view (0: independent per section).
    noise_sharing: float = 0.0
    # Options only a non-compact profile reads (e.g. the paper profile's pretrained folder).
    profile_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        self.attention_levels = tuple(int(a) for a in self.attention_levels)
        self.priors = tuple(str(p) for p in self.priors)
        self.cond_dropout = {str(k): float(v) for k, v in dict(self.cond_dropout).items()}
        self.context_sections = int(self.context_sections)
        self.residual_gain = _gain_table(self.residual_gain)
        self.validate()

    def validate(self) -> None:
        levels = len(self.block_out_channels)
        if self.side < 8:
            raise XDiffusionError(f"config side {self.side} is too small: use at least 8")
        # Far beyond any model this code trains or runs: an edited config.json must not ask for
        # terabytes (the weights file's shapes are compared with the config's before building).
        for name, value, most in (("side", self.side, _MAX_SIDE), ("U-Net levels", levels, _MAX_LEVELS),
                                  ("layers_per_block", self.layers_per_block, _MAX_LAYERS),
                                  ("max_slices", self.max_slices, _MAX_SLICES),
                                  ("channels", max(self.block_out_channels, default=0), _MAX_CHANNELS),
                                  ("multislice_channels", self.multislice_channels, _MAX_CHANNELS),
                                  ("depth_frequencies", self.depth_frequencies, _MAX_CHANNELS)):
            if value > most:
                raise XDiffusionError(f"config {name} {value} is larger than any model this version runs (at most {most})")
        # Only a pixel-space U-Net runs on the S x S section itself (latent profiles resize it).
        if levels < 1 or (self.profile == "compact" and self.side % (2 ** (levels - 1))):
            raise XDiffusionError(
                f"config side {self.side} must be divisible by 2**{levels - 1} for {levels} U-Net levels"
            )
        for channels in self.block_out_channels:
            if channels % self.norm_num_groups:
                raise XDiffusionError(
                    f"config block_out_channels {list(self.block_out_channels)} must be multiples of "
                    f"norm_num_groups {self.norm_num_groups}"
                )
        for level in self.attention_levels:
            if not 0 <= level < levels:
                raise XDiffusionError(f"config attention level {level} outside 0..{levels - 1}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise XDiffusionError(
                f"config prediction_type {self.prediction_type!r}: choose one of {', '.join(PREDICTION_TYPES)}"
            )
        if self.multislice not in MULTISLICE_MODES:
            raise XDiffusionError(f"config multislice {self.multislice!r}: choose one of {', '.join(MULTISLICE_MODES)}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise XDiffusionError(f"config beta_schedule {self.beta_schedule!r}: choose one of {', '.join(BETA_SCHEDULES)}")
        unknown = [p for p in self.priors if p not in PRIOR_NAMES]
        if unknown or len(set(self.priors)) != len(self.priors):
            raise XDiffusionError(f"config priors {list(self.priors)}: each once, from {', '.join(PRIOR_NAMES)}")
        if self.target not in TARGETS:
            raise XDiffusionError(f"config target {self.target!r}: choose one of {', '.join(TARGETS)}")
        if self.anchor_weight not in ANCHOR_WEIGHT_RULES:
            raise XDiffusionError(f"config anchor_weight {self.anchor_weight!r}: choose one of {', '.join(ANCHOR_WEIGHT_RULES)}")
        if self.views_about not in VIEW_AXES:
            raise XDiffusionError(f"config views_about {self.views_about!r}: choose one of {', '.join(VIEW_AXES)}")
        if not 0.0 < self.start_fraction <= 1.0 or not 0.0 <= self.noise_sharing < 1.0:
            raise XDiffusionError("config start_fraction must lie in (0, 1] and noise_sharing in [0, 1)")
        if not self.residual_scale > 0 or self.anchor_decay_inside_mm <= 0 or self.anchor_decay_outside_mm <= 0:
            raise XDiffusionError("config residual_scale and the anchor decays must be positive")
        if int(self.context_sections) != self.context_sections or self.context_sections < 0:
            raise XDiffusionError(f"config context_sections {self.context_sections!r} must be an integer >= 0")
        if self.residual_gain and self.target != "residual":
            raise XDiffusionError("config residual_gain: only a residual model has a residual to scale")
        if (self.target == "residual") != ("anchor" in self.priors):
            raise XDiffusionError("config: a residual model needs the 'anchor' prior, and only a residual model uses it")
        if self.max_slices < 1 or self.num_train_timesteps < 2:
            raise XDiffusionError("config max_slices must be >= 1 and num_train_timesteps >= 2")
        bad = [k for k in self.cond_dropout if k not in DROPOUT_KEYS]
        if bad or any(not 0.0 <= v <= 1.0 for v in self.cond_dropout.values()) or sum(self.cond_dropout.values()) > 1.0:
            raise XDiffusionError(
                f"config cond_dropout {self.cond_dropout}: keys from {', '.join(DROPOUT_KEYS)}, "
                "probabilities in [0, 1] summing to at most 1"
            )

    def residual_gain_for(self, k: int) -> float:
        """The residual's gain with ``k`` input slices (``residual_gain``: the entry of the largest key <= k)."""
        chosen = [int(key) for key in self.residual_gain if int(key) <= int(k)]
        return float(self.residual_gain[str(max(chosen))]) if chosen else 1.0

    # Derived sizes shared by the conditioning and every profile.
    @property
    def image_channels(self) -> int:
        """Aligned prior channels in ``Condition.image`` (each prior at 1 + 2 * context_sections depths)."""
        return len(self.priors) * (1 + 2 * int(self.context_sections))

    @property
    def reduced_channels(self) -> int:
        """Channels the multi-slice reducer adds (product: 1, attention: ``multislice_channels``, none: 0)."""
        return {"product": 1, "attention": self.multislice_channels, "none": 0}[self.multislice]

    @property
    def pose_dim(self) -> int:
        """Length of ``Condition.pose``: rotation 6D, depth, plane one-hot, K_max positions, K_max mask."""
        return 6 + 1 + 3 + 2 * self.max_slices

    @property
    def in_channels(self) -> int:
        """Denoiser input channels: the noisy section, the priors and the reduced slices."""
        return 1 + self.image_channels + self.reduced_channels

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["block_out_channels"] = list(self.block_out_channels)
        data["attention_levels"] = list(self.attention_levels)
        data["priors"] = list(self.priors)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "XDiffusionConfig":
        check_record(data, cls, source, "config keys")
        try:
            return cls(**data)
        except XDiffusionError as error:
            raise XDiffusionError(f"{source}: {error}") from None
        except (TypeError, ValueError) as error:
            raise XDiffusionError(f"{source}: invalid config value ({error})") from None

    def save_json(self, path: str | os.PathLike) -> None:
        """Write atomically (temp file in the same folder, then rename)."""
        write_json_atomic(path, self.to_dict(), sort_keys=True)

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> "XDiffusionConfig":
        path = Path(path)
        if not path.is_file():
            raise XDiffusionError(f"{path}: config file not found")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise XDiffusionError(f"{path}: invalid JSON ({error})") from None
        if isinstance(data, dict):  # a file from before a field: what it meant then
            data = {**{key: value for key, value in INFERENCE_FIELDS.items() if key not in data}, **data}
        return cls.from_dict(data, source=str(path))
