"""How much the synthetic anatomy varies between subjects.

``DEFAULT`` is what the training, validation and calibration folders of versions 1-2 used (its
subjects stay identical). ``VARIED`` (issue 19, version 3's training data) widens it towards the
spread of real heads: head size 0.8-1.2 of the template, ventricles up to 8 mm larger, a second,
finer level of smooth deformation (gyral-scale shifts the coarse level cannot make), and one
hemisphere up to 6% larger than the other. Its extra draws come from a child generator, so the
default stream of random numbers is untouched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .deform import smooth_field


@dataclass(frozen=True)
class AnatomyRanges:
    scale_range: tuple[float, float] = (0.85, 1.15)
    ventricle_growth_max_mm: float = 5.0
    # Second deformation level: control grid of 10-14 points per axis, displacement up to this.
    fine_displacement_mm: float = 0.0
    # Largest relative size difference between the left and the right hemisphere.
    hemisphere_asymmetry: float = 0.0

    @property
    def extra(self) -> bool:
        """Whether subjects draw anything beyond the default anatomy."""
        return self.fine_displacement_mm > 0 or self.hemisphere_asymmetry > 0

    def params(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


DEFAULT = AnatomyRanges()
VARIED = AnatomyRanges((0.8, 1.2), 8.0, 3.0, 0.06)
PRESETS = {"default": DEFAULT, "varied": VARIED}

# Width (mm) of the smooth step between the hemispheres' scalings.
_MIDLINE_MM = 12.0


def vary_positions(rng: np.random.Generator, positions: np.ndarray, ranges: AnatomyRanges) -> tuple[np.ndarray, dict]:
    """Apply the fine deformation and the hemisphere asymmetry to sampled template positions
    (3, *shape), in mm from the template centre, RAS axes. Returns the new positions and what was drawn."""
    if not ranges.extra:
        return positions, {}
    child = np.random.default_rng(int(rng.integers(2**63)))
    out = positions.copy()
    n = int(child.integers(10, 15))
    std = float(child.uniform(0.0, ranges.fine_displacement_mm / 2.5))
    limit = ranges.fine_displacement_mm
    control = np.clip(child.normal(0.0, std, size=(3, n, n, n)), -limit, limit).astype(np.float32)
    out += smooth_field(control, positions.shape[1:])
    # Sampling x(1 - a tanh(x / w)) makes the side where a tanh > 0 larger; monotone for |a| < 0.5.
    a = float(child.uniform(-ranges.hemisphere_asymmetry, ranges.hemisphere_asymmetry))
    x = out[0]
    out[0] = x * (1.0 - np.float32(a) * np.tanh(x / np.float32(_MIDLINE_MM)))
    return out, {"fine_control_points": n, "fine_displacement_std_mm": round(std, 3),
                 "hemisphere_asymmetry": round(a, 4)}
