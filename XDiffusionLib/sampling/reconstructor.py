"""``XDiffusionReconstructor``: the X-Diffusion method behind the common ``Reconstructor`` interface,
and ``reconstruct_volume``, the one door of a reconstruction for every front end.

``reconstruct_volume`` (a volume in any orientation, and the slices to start from):
1. refuses what is no MRI (a label map: ``inputs.check_intensity_volume``) before any work;
2. reorients to canonical RAS+ (``to_canonical``; slice indices are canonical indices) and keeps
   only the chosen slices (``SliceInput.from_volume``: no method sees the rest of the volume);
3. reconstructs them (``XDiffusionReconstructor.reconstruct_with_uncertainty``, below; with
   ``interval=False`` its volume alone, step 5 skipped);
4. inverts the reorientation, so the output lies on exactly the input volume's grid.
The model folder and the sampling settings go to the reconstructor, which checks them once
(``settings.ReconstructionSettings``): pass them to ``reconstruct_volume`` or build the
reconstructor yourself (to check them before reading anything, or to reuse a loaded model), never
both; ``progress`` belongs to the run.

``XDiffusionReconstructor.reconstruct_with_uncertainty`` (input slices on a canonical grid):
1. every check that needs no model run (``validate``), then the interval table and the model, so a
   missing or broken one fails before any work;
2. into model space, by the model's target (``config.target``):
   - ``volume``: the model generates the volume; an ``IntensityNormalizer`` fitted on the input
     slices only (leak-free) maps them to [0, 1] (and a template cube where the model takes one);
   - ``residual``: the model generates the residual truth - anchor (applied times the config's
     gain for this K, ``residual_gain``); the anchor
     (``baselines.anchor``) is computed on the input grid from the input slices alone, a zero-floor
     normaliser maps it to [0, 1], and where it shows the head (``pipeline.in_head``) is decided
     here, once, for the residual, the spread and the interval;
   ``ModelSpace.for_grid`` fits the canonical grid into the model's S^3 cube; the slices (and the
   prior) become a ``SparseCube``;
3. ``XDiffusionPipeline`` generates the cube (N views x M samples, see pipeline.py) under the
   reconstructor's ``ReconstructionSettings``;
4. the cube is resampled onto exactly ``inputs.grid`` and mapped back to the inputs' intensities
   (residual models: added to the anchor inside the head, clipped to the inputs' range); the input
   slices are pasted in unchanged, and the spread across views x samples is 0 on them;
5. the uncertainty: with the model's calibration table (``model.calibration``, residual models)
   the half-width of the calibrated interval at ``level`` (90% by default, ``uncertainty.intervals``):
   the truth lay within reconstruction +- that value for that share of non-input voxels inside the
   head of synthetic calibration subjects, rescaled for this scan from its input slices left out
   one at a time when K >= 2 and the table has a scan reference (``uncertainty.scan_scale``);
   without a table the spread. Either is 0 on the input slices (known) and in the inputs'
   intensity units; ``ReconstructionResult.info`` says which it is (label, level, units, calibrated
   on this scan or on synthetic data only), and every front end and writer takes it from there
   (``result.ReconstructionResult``). ``interval=False`` skips this step (no interval features, no
   left-out folds): the result's uncertainty is then the spread of step 4, as for a model without a
   table, and its volume is the same to the bit. ``reconstruct`` (a ``Volume`` alone) runs so, and
   so does a caller that keeps only the volume (the thick-slice workflow's check on the scan's own
   slices).
"""

from __future__ import annotations

import os
from dataclasses import replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from ..baselines.anchor import AnchorEstimate, anchor_estimate, slice_distance_mm
from ..baselines.leave_one_out import held_out_folds
from ..baselines.template import TemplateBaseline
from ..errors import XDiffusionError
from ..io.volume import Volume
from ..inputs import SliceInput, check_intensity_volume, plane_axis
from ..model.calibration import load_calibration
from ..model import checkpoint
from ..model.conditioning import SparseCube
from ..model.config import XDiffusionConfig
from ..model.onnx_runtime import on_onnx_runtime
from ..settings import AGGREGATES, ReconstructionSettings
from ..transforms.intensity import IntensityNormalizer
from ..transforms.model_space import ModelSpace
from ..transforms.orientation import to_canonical
from ..uncertainty.intervals import (DEFAULT_LEVEL, IntervalCalibration, IntervalFeatures, UncertaintyInfo,
                                     calibrated_info, interval_features, k_range)
from ..uncertainty.scan_scale import SYNTHETIC_ONLY, scan_reference_of, scan_scale
from .pipeline import PipelineOutput, Progress, XDiffusionPipeline, in_head, resolve_device, start_fraction
from .result import ReconstructionResult  # noqa: F401  (re-exported: its one home is result.py)


class _VolumeTarget:
    """Model space for a model that generates the volume itself (intensities in [0, 1]); no anchor,
    so no head mask and no interval."""

    def __init__(self, inputs: SliceInput, config: XDiffusionConfig) -> None:
        self.normalizer = IntensityNormalizer().fit(inputs.slices)
        self.space = ModelSpace.for_grid(inputs.grid, config.side)
        template = None
        if "template" in config.priors:
            fitted = TemplateBaseline().reconstruct(inputs)
            template = np.asarray(self.normalizer.forward(self.space.to_cube(fitted.array)), dtype=np.float32)
        self.sparse = SparseCube.from_slice_input(inputs, self.space, self.normalizer, template)

    def to_grid(self, out: PipelineOutput) -> tuple[np.ndarray, np.ndarray]:
        """(volume, spread) on the input grid in the inputs' intensity units, input slices not yet pasted in."""
        volume = np.asarray(self.normalizer.inverse(self.space.to_grid(out.cube.numpy())), dtype=np.float32)
        # The normaliser is linear: a std in [0, 1] units scales by its (high - low).
        scale = float(self.normalizer.inverse(np.float32(1.0)) - self.normalizer.inverse(np.float32(0.0)))
        spread = np.clip(self.space.to_grid(out.uncertainty.numpy()), 0.0, None) * np.float32(scale)
        return volume, spread


class _ResidualTarget:
    """Model space for a residual model: output = anchor (full resolution) + the model's residual
    (model space, upsampled), inside the head only."""

    def __init__(self, inputs: SliceInput, config: XDiffusionConfig) -> None:
        self.estimate = anchor_estimate(inputs, config.anchor_decay_inside_mm, config.anchor_decay_outside_mm,
                                        weight_rule=config.anchor_weight)
        anchor = self.estimate.volume.array
        self.normalizer = IntensityNormalizer(zero_floor=True).fit(inputs.slices)
        self.space = ModelSpace.for_grid(inputs.grid, config.side)
        anchor_cube = np.asarray(self.normalizer.forward(self.space.to_cube(anchor, antialias=True)), dtype=np.float32)
        self.sparse = SparseCube.from_slice_input(inputs, self.space, self.normalizer, anchor=anchor_cube)
        self.scale = float(self.normalizer.high - self.normalizer.low)
        # The model's residual, times the config's gain for this K: every view's output is
        # anchor + gain x its residual, so the spread across views scales by the gain too.
        self.gain = np.float32(config.residual_gain_for(len(inputs.indices)))
        # The residual never paints empty space: zero where the anchor shows no head (background is
        # 38-76% of a scan, and a faint residual there costs SSIM; chosen on synthetic validation).
        # Decided on the input grid (the cube's resampling blurs the head's edge into the background).
        self.head = in_head(np.asarray(self.normalizer.forward(anchor)))
        self.range = (float(np.min(inputs.slices)), float(np.max(inputs.slices)))

    def residual(self, out: PipelineOutput) -> np.ndarray:
        """The model's residual on the input grid in the inputs' units, before the gain."""
        return self.space.to_grid(out.cube.numpy()) * np.float32(self.scale) * self.head

    def to_grid(self, out: PipelineOutput) -> tuple[np.ndarray, np.ndarray]:
        """(volume, spread) on the input grid in the inputs' intensity units, input slices not yet pasted in."""
        low, high = self.range
        volume = np.clip(self.estimate.volume.array + self.gain * self.residual(out), low, high).astype(np.float32)
        units = np.float32(self.scale) * self.gain * self.head
        spread = np.clip(self.space.to_grid(out.uncertainty.numpy()), 0.0, None) * units
        return volume, spread


class XDiffusionReconstructor:
    """The ``xdiffusion`` method: ``reconstruct(inputs) -> Volume`` on exactly ``inputs.grid``.

    ``model_dir`` is a folder from ``save_pretrained`` (default: the shipped weights). A ready
    ``model`` and ``config`` can be passed instead (training evaluation, tests). ``settings`` are
    the fields of ``ReconstructionSettings`` (checked here, once). ``progress`` (fraction, message)
    is called every denoising step of ``reconstruct`` and as the steps around them begin (the
    anchor, the interval) (a run's own, given to ``reconstruct_with_uncertainty``, takes its
    place); raising from it cancels the run.
    """

    name = "xdiffusion"

    def __init__(
        self,
        model_dir: str | os.PathLike | None = None,
        progress: Progress | None = None,
        model=None,
        config=None,
        level: float = DEFAULT_LEVEL,
        calibration: IntervalCalibration | None = None,
        calibrated: bool = True,
        keep_features: bool = False,
        **settings,
    ) -> None:
        """``calibration``: a table to use instead of the model folder's; ``calibrated=False``:
        report the raw view spread (the calibration script's own runs); ``level``: one of the
        table's levels (``uncertainty.intervals.LEVELS``)."""
        self.settings = ReconstructionSettings.from_options(settings)
        self.level = float(level)
        self.calibrated = bool(calibrated)
        self.keep_features = bool(keep_features)
        self._calibration = calibration
        self._calibration_read = False
        if calibration is not None:
            calibration.level_index(self.level)
        if (model is None) != (config is None):
            raise ValueError("pass both model and config, or neither")
        self.progress = progress
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self._model = model
        self._config = config
        self._pipeline: XDiffusionPipeline | None = None

    # ---- model, loaded on first use ---------------------------------------------------------

    def _directory(self) -> Path:
        if self.model_dir is not None:
            return self.model_dir
        directory = checkpoint.default_model_dir()
        if not (directory / checkpoint.WEIGHTS_NAME).is_file():
            raise XDiffusionError(f"no shipped weights at {directory}: train a model or pass --model DIR")
        return directory

    @property
    def config(self) -> XDiffusionConfig:
        """The model's config (read from ``config.json`` alone, before any weights are loaded)."""
        if self._config is None:
            directory = self._directory()
            if not directory.is_dir():
                raise XDiffusionError(f"{directory}: model folder not found")
            self._config = checkpoint.read_config(directory)
        return self._config

    @cached_property
    def device(self) -> torch.device:
        """The settings' device, resolved once (``auto``: CUDA where there is one)."""
        return resolve_device(self.settings.device)

    @property
    def calibration(self) -> IntervalCalibration | None:
        """The interval table: given, or the model folder's (required for the shipped model); None
        for a ready model without a table, a folder without one, or ``calibrated=False``."""
        if not self.calibrated:
            return None
        if self._calibration is None and not self._calibration_read:
            self._calibration_read = True
            if self._model is None or self.model_dir is not None:  # the model comes from a folder
                self._calibration = load_calibration(self._directory(), required=self.model_dir is None)
                if self._calibration is not None:
                    self._calibration.level_index(self.level)
        return self._calibration

    @property
    def pipeline(self) -> XDiffusionPipeline:
        if self._pipeline is None:
            model_dir = None
            if self._model is None:
                model_dir = self._directory()
                self._model, self._config = checkpoint.load_pretrained(model_dir, self.device)
            if self.device.type == "cpu":
                self._model = on_onnx_runtime(self._model, self.settings.runtime, model_dir)
            self._pipeline = XDiffusionPipeline(
                self._model, self._config, self.device, self.settings.chunk_size, self.settings.bf16
            )
        return self._pipeline

    # ---- the Reconstructor interface --------------------------------------------------------

    def validate(self, inputs: SliceInput) -> None:
        """Every check that needs no model run: raises XDiffusionError before any work."""
        _ = self.device  # CUDA asked for where there is none
        if not np.all(np.isfinite(inputs.slices)):
            raise XDiffusionError("the input slices contain NaN or infinite values: fix or mask the volume first")
        if len(inputs.indices) > self.config.max_slices:
            raise XDiffusionError(
                f"{len(inputs.indices)} input slices: this model takes at most {self.config.max_slices}"
            )
        start_fraction(self.config, self.settings.strength)  # the strength against this model's range

    def reconstruct(self, inputs: SliceInput) -> Volume:
        """The volume alone: the interval (step 5) would be computed only to be thrown away."""
        return self.reconstruct_with_uncertainty(inputs, interval=False).volume

    def reconstruct_with_uncertainty(self, inputs: SliceInput, progress: Progress | None = None,
                                     interval: bool = True) -> ReconstructionResult:
        """The reconstruction of ``inputs``, its uncertainty and what that means (module docstring, steps 1-5).

        ``interval=False``: steps 1-4 only, for a caller that keeps the volume alone; the uncertainty
        is the view spread (``info`` says so) and ``features``/``folds`` stay None whatever
        ``keep_features`` says."""
        progress = progress if progress is not None else self.progress
        # 1. checks, then the interval table and the model: a missing or broken one fails before any work
        # (read even when step 5 is skipped: a volume-only run ahead of a full one, as the thick-slice
        # check is, must not do its work and then meet a broken table)
        self.validate(inputs)
        residual = self.config.target == "residual"
        calibration = self.calibration if residual else None
        pipeline = self.pipeline
        # 2. into model space: the target's normaliser, prior and condition, from the input slices only
        # (the anchor's head template takes seconds: the run says so rather than sit on its last words)
        _stage(progress, 0.0, "fitting the anchor (a head template) to the input slices" if residual
               else "preparing the input slices for the model")
        target = _ResidualTarget(inputs, self.config) if residual else _VolumeTarget(inputs, self.config)
        # 3. views x samples of the cube
        out = pipeline(target.sparse, self.settings, progress)
        # 4. back on the input grid; the input slices pasted in unchanged, where the spread is 0
        volume, spread = target.to_grid(out)
        known = SliceInput(inputs.grid, inputs.plane, inputs.indices, np.zeros_like(inputs.slices))
        spread = Volume(known.paste_into(spread), inputs.grid)
        result = ReconstructionResult(Volume(inputs.paste_into(volume), inputs.grid), spread, spread=spread)
        # 5. the calibrated interval in place of the spread, where there is a table and it is wanted
        if not interval or not residual or (calibration is None and not self.keep_features):
            return result
        _stage(progress, 1.0, "computing the uncertainty interval")
        return self._with_interval(result, inputs, target, calibration)

    def residual_parts(self, inputs: SliceInput) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
        """(anchor, residual before the gain, the inputs' range) on ``inputs.grid``, input slices not
        pasted in: a residual model's output is clip(anchor + gain x residual) to that range. What the
        gain is selected on (``scripts/select_residual_gain.py``)."""
        self.validate(inputs)
        if self.config.target != "residual":
            raise XDiffusionError("residual_parts: this model generates the volume itself, not a residual")
        target = _ResidualTarget(inputs, self.config)
        out = self.pipeline(target.sparse, self.settings, self.progress)
        return target.estimate.volume.array, target.residual(out), target.range

    def _with_interval(self, result: ReconstructionResult, inputs: SliceInput, target: _ResidualTarget,
                       calibration: IntervalCalibration | None) -> ReconstructionResult:
        config, k = self.config, len(inputs.indices)
        features = self._features(inputs, target.estimate, result.spread.array, target.scale)
        kept = features if self.keep_features else None
        reference = None if calibration is None else scan_reference_of(calibration.scan_reference)
        folds = None
        if self.keep_features or (reference is not None and k >= 2):
            folds = tuple(held_out_folds(inputs, target.estimate, target.scale, config.anchor_decay_inside_mm,
                                         config.anchor_decay_outside_mm, weight_rule=config.anchor_weight))
        if calibration is None:
            return replace(result, features=kept, folds=folds)
        scan = SYNTHETIC_ONLY if folds is None else scan_scale(reference, k, list(folds),
                                                               calibration.coefficients[k_range(k)])
        interval = calibration.estimate(features, scan.value)
        # Shown as 0 where the anchor shows no head, like the residual: the interval's floor out
        # there is not calibrated (coverage is scored inside the head) and drew a box around the head.
        shown = interval.halfwidth(self.level) * target.head
        return replace(result, uncertainty=Volume(shown.astype(np.float32), inputs.grid), interval=interval,
                       info=calibrated_info(self.level, scan.folds, scan.value), features=kept,
                       folds=folds if self.keep_features else None)

    @staticmethod
    def _features(inputs: SliceInput, estimate: AnchorEstimate, spread: np.ndarray, scale: float) -> IntervalFeatures:
        known = np.zeros(inputs.grid.shape[inputs.axis], dtype=bool)
        known[list(inputs.indices)] = True
        return interval_features(len(inputs.indices), inputs.axis, slice_distance_mm(inputs), known, spread,
                                 estimate.interpolation, estimate.template, estimate.volume.array, scale)


def _stage(progress: Progress | None, fraction: float, message: str) -> None:
    """Tell ``progress`` what the run does now, outside the denoising steps (raising from it cancels)."""
    if progress is not None:
        progress(fraction, message)


def reconstructor_for(reconstructor: XDiffusionReconstructor | None, model_dir: str | os.PathLike | None = None,
                      settings: dict | None = None) -> XDiffusionReconstructor:
    """``reconstructor``, or a new one for ``model_dir`` and ``settings``; both at once is a caller's
    error (they would be ignored). Shared by ``reconstruct_volume`` and ``reconstruct_thick_slices``."""
    if reconstructor is None:
        return XDiffusionReconstructor(model_dir=model_dir, **(settings or {}))
    given = (["model_dir"] if model_dir is not None else []) + sorted(settings or {})
    if given:
        raise TypeError(f"{', '.join(given)} given with a ready reconstructor, which has its own: "
                        "pass them to XDiffusionReconstructor instead")
    return reconstructor


def reconstruct_volume(
    volume: Volume,
    plane: str,
    indices,
    model_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    reconstructor: XDiffusionReconstructor | None = None,
    interval: bool = True,
    **settings,
) -> ReconstructionResult:
    """Reconstruct ``volume`` (any orientation) from its slices ``indices`` (canonical RAS+ indices) of ``plane``.

    Only the chosen slices are read from ``volume``; the result and its uncertainty lie on exactly
    ``volume.grid``. ``model_dir`` and ``settings`` (``ReconstructionSettings``' fields) build the
    reconstructor, or ``reconstructor`` is one built before (not both); ``progress(fraction,
    message)`` follows this run. ``interval=False``: for a caller that keeps only the volume (the
    same volume, bit for bit): no calibrated interval is computed and the uncertainty is the view
    spread (``reconstruct_with_uncertainty``).
    """
    reconstructor = reconstructor_for(reconstructor, model_dir, settings)
    # 1. refuse what is no MRI intensity volume, before any work
    check_intensity_volume(volume)
    # 2. canonical RAS+; only the chosen slices go on
    axis = plane_axis(plane)
    indices = [int(i) for i in indices]
    canonical, reorientation = to_canonical(volume)
    depth = canonical.shape[axis]
    if len(indices) > depth:
        raise XDiffusionError(f"{len(indices)} input slices but the volume has only {depth} {plane} slices")
    inputs = SliceInput.from_volume(canonical, plane, indices)
    # 3. the reconstruction on the canonical grid
    result = reconstructor.reconstruct_with_uncertainty(inputs, progress, interval=interval)
    # 4. back onto the input volume's grid
    return replace(
        result,
        volume=reorientation.invert(result.volume),
        uncertainty=reorientation.invert(result.uncertainty),
        spread=None if result.spread is None else reorientation.invert(result.spread),
        interval=None if result.interval is None else result.interval.mapped(reorientation.invert_array),
        features=None,  # per-slice profiles along a canonical axis: meaningless after reorientation
    )


__all__ = [
    "AGGREGATES",
    "ReconstructionResult",
    "ReconstructionSettings",
    "UncertaintyInfo",
    "XDiffusionReconstructor",
    "reconstruct_volume",
    "reconstructor_for",
]
