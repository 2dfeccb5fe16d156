"""The method registry: every slices-to-volume method by its command-line name.

The vocabulary the methods share (planes, ``SliceInput``, the ``Reconstructor`` interface) lives on
the ground floor in ``inputs.py``; this module sits above the baselines and the model and builds
them on demand.
"""

from __future__ import annotations

from typing import Callable

from .errors import XDiffusionError
from .inputs import Reconstructor

def _xdiffusion(**options) -> Reconstructor:
    # Imported on use: torch and diffusers load only when the model is asked for.
    from .sampling.reconstructor import XDiffusionReconstructor

    return XDiffusionReconstructor(**options)


def _registry() -> dict[str, Callable[..., Reconstructor]]:
    from .baselines import BASELINES  # scipy: loaded when a method is built, not with the command line

    return {**BASELINES, "xdiffusion": _xdiffusion}


def get_method(name: str, **options) -> Reconstructor:
    """Build a method by its command-line name (``nearest``, ``linear``, ``cubic``, ``template``, ``xdiffusion``)."""
    registry = _registry()
    if name not in registry:
        raise XDiffusionError(f"unknown method {name!r}: choose from {', '.join(registry)}")
    return registry[name](**options)
