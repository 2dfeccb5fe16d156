"""Non-learned baselines with the model's interface (SliceInput in, Volume out).

``BASELINES`` maps command-line names to classes; ``methods.get_method`` builds them.
"""

from .anchor import AnchorBaseline
from .interpolation import CubicInterpolation, LinearInterpolation, NearestSlice
from .template import TemplateBaseline

BASELINES: dict = {
    "nearest": NearestSlice,
    "linear": LinearInterpolation,
    "cubic": CubicInterpolation,
    "template": TemplateBaseline,
    # Not a baseline to beat: the model's own deterministic starting point, listed for ablation.
    "anchor": AnchorBaseline,
}

__all__ = ["AnchorBaseline", "BASELINES", "CubicInterpolation", "LinearInterpolation", "NearestSlice", "TemplateBaseline"]
