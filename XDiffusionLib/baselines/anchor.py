"""The anchor: the best deterministic estimate of the volume from the input slices alone.

X-Diffusion's denoiser here does not generate a volume from pure noise; it generates the residual
from this anchor (``sampling/pipeline.py``), so the model starts at the anchor's quality and the
output keeps the input grid's full resolution (the model-space residual is added on top).

anchor = w * interpolation + (1 - w) * fitted template

- ``interpolation``: monotone cubic (PCHIP) along the slice axis for K >= 3, linear for K = 2,
  the slice itself for K = 1 (``baselines.interpolation``); exact on the input slices.
- ``fitted template``: the head prior (``baselines.head_prior``: a head template with scalp placed
  and deformed onto the inputs, at their per-tissue contrast), which knows where a head is in 3D
  away from the inputs. Where the template's field of view ends (below the neck) it knows nothing:
  there the interpolation is used between the inputs, and beyond them it fades into the inputs'
  background with the outside decay.
- ``w``: the interpolation's weight per slice, 1 on the inputs, so the interpolation is trusted
  next to the inputs and the template far from them. Each input vouches for the slices near it with
  ``exp(-d / decay)`` (``d``: distance in mm to that input). Between two inputs (rule ``"union"``)
  the weight is the chance that either neighbour vouches, ``w_l + w_r - w_l * w_r``: it is smooth at
  the midpoint and stays high when the inputs are close (thin gaps: interpolation beats any
  template there). The earlier rule (``"nearest"``: the nearest input alone, what models trained
  before the rule existed saw) has a cusp at every midpoint, and the cusp multiplies the difference
  between interpolation and template into a line across coronal and sagittal views at each midpoint.
  Beyond the outermost input interpolation can only repeat a slice: ``decay_outside_mm`` there.

The decays were chosen on synthetic validation subjects (never on the held-out MRI): see the
README's Method section for the measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import XDiffusionError
from ..io.volume import Volume
from ..inputs import SliceInput
from ..settings import ANCHOR_WEIGHT_RULES
from .head_prior import HeadPriorFit
from .interpolation import linear_fill, nearest_fill, pchip_fill
from .template import TemplateBaseline

DEFAULT_DECAY_INSIDE_MM = 6.0
DEFAULT_DECAY_OUTSIDE_MM = 6.0
DEFAULT_WEIGHT_RULE = ANCHOR_WEIGHT_RULES[0]


def interpolation_weight(inputs: SliceInput, decay_inside_mm: float = DEFAULT_DECAY_INSIDE_MM,
                         decay_outside_mm: float = DEFAULT_DECAY_OUTSIDE_MM,
                         rule: str = DEFAULT_WEIGHT_RULE) -> np.ndarray:
    """(depth,) weight of the interpolation per slice along the input axis (1 on the inputs)."""
    if rule not in ANCHOR_WEIGHT_RULES:
        raise XDiffusionError(f"anchor weight rule {rule!r}: choose one of {', '.join(ANCHOR_WEIGHT_RULES)}")
    distance = slice_distance_mm(inputs)
    inside = inside_inputs(inputs)
    decay = np.where(inside, float(decay_inside_mm), float(decay_outside_mm))
    weight = np.exp(-distance / decay)
    if rule == "union" and len(inputs.indices) > 1:
        positions = np.arange(inputs.grid.shape[inputs.axis], dtype=np.float64)
        spacing = float(inputs.grid.spacing[inputs.axis])
        ordered = np.sort(np.asarray(inputs.indices, dtype=np.float64))
        right = np.clip(np.searchsorted(ordered, positions), 1, len(ordered) - 1)
        w_left = np.exp(-(positions - ordered[right - 1]) * spacing / float(decay_inside_mm))
        w_right = np.exp(-(ordered[right] - positions) * spacing / float(decay_inside_mm))
        weight = np.where(inside, w_left + w_right - w_left * w_right, weight)
    return weight.astype(np.float32)


def inside_inputs(inputs: SliceInput) -> np.ndarray:
    """(depth,) True for slices between the first and the last input slice (inclusive)."""
    positions = np.arange(inputs.grid.shape[inputs.axis])
    return (positions >= min(inputs.indices)) & (positions <= max(inputs.indices))


def slice_distance_mm(inputs: SliceInput) -> np.ndarray:
    """(depth,) distance in mm from each slice along the input axis to the nearest input slice."""
    depth = inputs.grid.shape[inputs.axis]
    spacing = float(inputs.grid.spacing[inputs.axis])
    positions = np.arange(depth, dtype=np.float64)
    indices = np.asarray(inputs.indices, dtype=np.float64)
    return np.abs(positions[:, None] - indices[None, :]).min(axis=1) * spacing


def interpolate(inputs: SliceInput) -> Volume:
    """Slice-axis interpolation of the inputs: PCHIP (K >= 3), linear (K = 2), the slice itself (K = 1)."""
    count = len(inputs.indices)
    if count == 1:
        return nearest_fill(inputs)
    if count == 2:
        return linear_fill(inputs)
    return pchip_fill(inputs)


def along_axis(values: np.ndarray, axis: int) -> np.ndarray:
    """A (depth,) profile shaped to broadcast along ``axis`` of a 3D array."""
    shape = [1, 1, 1]
    shape[axis] = -1
    return np.asarray(values).reshape(shape)


@dataclass
class AnchorEstimate:
    """The anchor and the parts it was blended from (all on ``inputs.grid``)."""

    volume: Volume
    interpolation: np.ndarray
    template: np.ndarray
    weight: np.ndarray  # (depth,) interpolation weight per slice along the input axis
    prior: HeadPriorFit | None = None  # the head prior fit (inputs not pasted): leave-one-out folds reuse it

    @property
    def coverage(self) -> np.ndarray | None:
        """Where the head prior has a field of view (None: everywhere)."""
        return None if self.prior is None else self.prior.coverage


def voxel_weight(inputs: SliceInput, weight: np.ndarray, coverage: np.ndarray | None) -> np.ndarray:
    """The per-slice weight broadcast to the grid, 1 between the inputs where the template has no
    field of view (the neck below it): there the inputs are all the anchor knows."""
    w = along_axis(weight, inputs.axis)
    if coverage is None or coverage.all():
        return w
    inside = along_axis(inside_inputs(inputs), inputs.axis)
    return np.where(~coverage & inside, np.float32(1.0), w).astype(np.float32)


def blend(inputs: SliceInput, interpolated: np.ndarray, fitted: np.ndarray, weight: np.ndarray,
          coverage: np.ndarray | None = None) -> np.ndarray:
    """The anchor from its parts (module docstring); the input slices pasted in exactly."""
    w = voxel_weight(inputs, weight, coverage)
    return inputs.paste_into(w * interpolated + (1.0 - w) * fitted)


def anchor_estimate(inputs: SliceInput, decay_inside_mm: float = DEFAULT_DECAY_INSIDE_MM,
                    decay_outside_mm: float = DEFAULT_DECAY_OUTSIDE_MM,
                    template: TemplateBaseline | None = None,
                    weight_rule: str = DEFAULT_WEIGHT_RULE) -> AnchorEstimate:
    """The blend of interpolation and the fitted template (module docstring), input slices exact."""
    template = template if template is not None else TemplateBaseline()
    prior = template.fit(inputs)
    fitted = inputs.paste_into(np.asarray(prior.prior, dtype=np.float32))
    interpolated = np.asarray(interpolate(inputs).array, dtype=np.float32)
    weight = interpolation_weight(inputs, decay_inside_mm, decay_outside_mm, weight_rule)
    volume = Volume(blend(inputs, interpolated, fitted, weight, prior.coverage), inputs.grid)
    return AnchorEstimate(volume, interpolated, fitted, weight, prior)


class AnchorBaseline:
    """Method ``anchor``: the deterministic anchor alone (the model without its diffusion residual)."""

    name = "anchor"

    def __init__(self, decay_inside_mm: float = DEFAULT_DECAY_INSIDE_MM,
                 decay_outside_mm: float = DEFAULT_DECAY_OUTSIDE_MM, atlas=None,
                 weight_rule: str = DEFAULT_WEIGHT_RULE) -> None:
        self.decay_inside_mm = float(decay_inside_mm)
        self.decay_outside_mm = float(decay_outside_mm)
        self.weight_rule = weight_rule
        self._template = TemplateBaseline(atlas)

    def validate(self, inputs: SliceInput) -> None:
        self._template.validate(inputs)

    def reconstruct(self, inputs: SliceInput) -> Volume:
        return anchor_estimate(inputs, self.decay_inside_mm, self.decay_outside_mm, self._template,
                               self.weight_rule).volume
