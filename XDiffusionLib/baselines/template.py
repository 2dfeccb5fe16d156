"""Baseline ``template``: the head prior alone, with the input slices pasted in.

The prior (``baselines.head_prior``) is the shipped ICBM152 2009c head template with scalp, placed
and deformed onto the input slices and given their per-tissue contrast; a user atlas file (or a
Volume) works too. Where the template's field of view ends (below the neck) the baseline shows the
inputs' background: it has nothing to say there.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import XDiffusionError
from ..inputs import SliceInput
from ..io.volume import Volume
from .head_prior import HeadPriorFit, HeadTemplate, fit_head_prior, shipped_head_template


# The prior is deterministic and costs seconds; the template baseline, the anchor and the model fit it
# to the same inputs in one evaluation case, so the last few fits are kept (read-only arrays).
_FITS: OrderedDict[tuple, HeadPriorFit] = OrderedDict()
_KEPT_FITS = 2


def _inputs_key(template: HeadTemplate, inputs: SliceInput, deform: bool) -> tuple:
    digest = hashlib.sha1(np.ascontiguousarray(inputs.slices, dtype=np.float32).tobytes()).hexdigest()
    return (id(template), deform, inputs.plane, tuple(inputs.indices), tuple(inputs.grid.shape),
            tuple(np.round(inputs.grid.spacing, 6)), digest)


def cached_fit(template: HeadTemplate, inputs: SliceInput, deform: bool) -> HeadPriorFit:
    """``fit_head_prior`` for these inputs, reused while it is among the last ``_KEPT_FITS``."""
    key = _inputs_key(template, inputs, deform)
    if key in _FITS:
        _FITS.move_to_end(key)
        return _FITS[key]
    fit = fit_head_prior(template, inputs, deform=deform)
    for array in (fit.prior, fit.tissues, fit.coverage):
        array.setflags(write=False)
    _FITS[key] = fit
    while len(_FITS) > _KEPT_FITS:
        _FITS.popitem(last=False)
    return fit


class TemplateBaseline:
    """Baseline ``template``. ``atlas``: None (the shipped head template), a file path, or a Volume."""

    name = "template"

    def __init__(self, atlas: str | Path | Volume | None = None, deform: bool = True) -> None:
        if isinstance(atlas, (str, Path)) and not Path(atlas).expanduser().exists():
            raise XDiffusionError(f"template atlas {atlas} does not exist")
        self._atlas = Path(atlas).expanduser() if isinstance(atlas, (str, Path)) else atlas
        self._loaded: HeadTemplate | None = None
        self.deform = bool(deform)

    def template(self) -> HeadTemplate:
        """The template in use (loaded once)."""
        if self._loaded is None:
            if self._atlas is None:
                self._loaded = shipped_head_template()
            elif isinstance(self._atlas, Volume):
                self._loaded = HeadTemplate.from_volume(self._atlas)
            else:
                from ..io.readers import read_volume  # SimpleITK: only when an atlas file is read

                self._loaded = HeadTemplate.from_volume(read_volume(str(self._atlas)))
        return self._loaded

    def validate(self, inputs: SliceInput) -> None:
        """Loads (and caches) the template, so an unreadable atlas fails before any work."""
        self.template()

    def fit(self, inputs: SliceInput) -> HeadPriorFit:
        """The head prior for these inputs (not yet holding the input slices)."""
        return cached_fit(self.template(), inputs, self.deform)

    def reconstruct(self, inputs: SliceInput) -> Volume:
        prior = self.fit(inputs).prior
        return Volume(inputs.paste_into(np.asarray(prior, dtype=np.float32)), inputs.grid)
