"""Baseline ``template``: the head prior alone, with the input slices pasted in.

The prior (``baselines.head_prior``) is the shipped ICBM152 2009c head template with scalp, placed
and deformed onto the input slices and given their per-tissue contrast; a user atlas file (or a
Volume) works too. Where the template's field of view ends (below the neck) the baseline shows the
inputs' background: it has nothing to say there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import XDiffusionError
from ..inputs import SliceInput
from ..io.volume import Volume
from .head_prior import HeadPriorFit, HeadTemplate, fit_head_prior, shipped_head_template


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
                from ..io import read_volume

                self._loaded = HeadTemplate.from_volume(read_volume(str(self._atlas)))
        return self._loaded

    def validate(self, inputs: SliceInput) -> None:
        """Loads (and caches) the template, so an unreadable atlas fails before any work."""
        self.template()

    def fit(self, inputs: SliceInput) -> HeadPriorFit:
        """The head prior for these inputs (not yet holding the input slices)."""
        return fit_head_prior(self.template(), inputs, deform=self.deform)

    def reconstruct(self, inputs: SliceInput) -> Volume:
        prior = self.fit(inputs).prior
        return Volume(inputs.paste_into(np.asarray(prior, dtype=np.float32)), inputs.grid)
