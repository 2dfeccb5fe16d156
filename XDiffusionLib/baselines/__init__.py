"""Non-learned baselines with the model's interface (SliceInput in, Volume out).

``BASELINES`` maps command-line names to classes; ``methods.get_method`` builds them.
"""

from .interpolation import CubicInterpolation, LinearInterpolation, NearestSlice
from .template import TemplateBaseline

BASELINES: dict = {
    "nearest": NearestSlice,
    "linear": LinearInterpolation,
    "cubic": CubicInterpolation,
    "template": TemplateBaseline,
}

__all__ = ["BASELINES", "CubicInterpolation", "LinearInterpolation", "NearestSlice", "TemplateBaseline"]
