"""``XDiffusionReconstructor``: the X-Diffusion method behind the common ``Reconstructor`` interface.

Input slices (``SliceInput``, canonical grid) -> model space -> pipeline -> back:
1. an ``IntensityNormalizer`` is fitted on the input slices only (leak-free) and maps them to [0, 1];
2. ``ModelSpace.for_grid`` fits the canonical grid into the model's S^3 cube; the slices become a
   ``SparseCube`` (their cube plane and normalised position);
3. ``XDiffusionPipeline`` generates the cube (N views x M samples, see pipeline.py);
4. the cube is resampled onto exactly ``inputs.grid``, mapped back to the inputs' intensities, and
   the input slices are pasted in unchanged;
5. the uncertainty: with the model's calibration table (``model.calibration``, residual models)
   the half-width of the calibrated interval at ``level`` (90% by default, ``uncertainty.intervals``):
   the truth lay within reconstruction +- that value for that share of non-input voxels inside the
   head of synthetic calibration subjects, rescaled for this scan from its input slices left out
   one at a time when K >= 2 and the table has a scan reference (``uncertainty.scan_scale``);
   without a table the std across views x samples. Either is 0 on the input slices (known) and in
   the inputs' intensity units; ``ReconstructionResult.info`` says which it is (label, level, units,
   calibrated on this scan or on synthetic data only) for displays and file metadata.

``reconstruct_volume`` does the same for a volume in any orientation: it reorients to canonical
RAS+ (``to_canonical``; indices are canonical indices), reconstructs, and inverts the
reorientation so the output lies on exactly the input volume's grid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import XDiffusionError
from ..io.volume import Volume
from ..inputs import SliceInput, check_intensity_volume, plane_axis
from ..settings import AGGREGATES, ReconstructionSettings
from ..uncertainty.intervals import (DEFAULT_LEVEL, UNCALIBRATED, IntervalCalibration, IntervalEstimate,
                                     IntervalFeatures, UncertaintyInfo, calibrated_info, interval_features, k_range)
from ..uncertainty.scan_scale import SYNTHETIC_ONLY, HeldOutFold, scan_reference_of, scan_scale
from .pipeline import ACTIVE_LEVEL, Progress


@dataclass(frozen=True)
class ReconstructionResult:
    """``uncertainty`` means what ``info`` says (``info.label``, ``info.level``, ``info.units``):
    the calibrated interval half-width, or the view spread when the model has no calibration."""

    volume: Volume
    uncertainty: Volume
    spread: Volume | None = None  # std across views x samples (intensity units), always
    interval: IntervalEstimate | None = None  # the calibrated interval at any table level
    info: UncertaintyInfo = UNCALIBRATED
    features: IntervalFeatures | None = None  # only with ``keep_features`` (calibration)
    folds: tuple[HeldOutFold, ...] | None = None  # leave-one-slice-out folds, only with ``keep_features``


class XDiffusionReconstructor:
    """The ``xdiffusion`` method: ``reconstruct(inputs) -> Volume`` on exactly ``inputs.grid``.

    ``model_dir`` is a folder from ``save_pretrained`` (default: the shipped weights). A ready
    ``model`` and ``config`` can be passed instead (training evaluation, tests). ``progress``
    (fraction, message) is called every denoising step; raising from it cancels the run.
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
        self._pipeline = None

    # ---- model, loaded on first use ---------------------------------------------------------

    def _directory(self) -> Path:
        from ..model.checkpoint import WEIGHTS_NAME, default_model_dir

        if self.model_dir is not None:
            return self.model_dir
        directory = default_model_dir()
        if not (directory / WEIGHTS_NAME).is_file():
            raise XDiffusionError(f"no shipped weights at {directory}: train a model or pass --model DIR")
        return directory

    @property
    def config(self):
        """The model's config (read from ``config.json`` alone, before any weights are loaded)."""
        if self._config is None:
            from ..model.checkpoint import _read_config

            directory = self._directory()
            if not directory.is_dir():
                raise XDiffusionError(f"{directory}: model folder not found")
            self._config = _read_config(directory)
        return self._config

    @property
    def calibration(self) -> IntervalCalibration | None:
        """The interval table: given, or the model folder's (required for the shipped model); None
        for a ready model without a table, a folder without one, or ``calibrated=False``."""
        if not self.calibrated:
            return None
        if self._calibration is None and not self._calibration_read:
            self._calibration_read = True
            if self._model is None or self.model_dir is not None:  # the model comes from a folder
                from ..model.calibration import load_calibration

                self._calibration = load_calibration(self._directory(), required=self.model_dir is None)
                if self._calibration is not None:
                    self._calibration.level_index(self.level)
        return self._calibration

    @property
    def pipeline(self):
        if self._pipeline is None:
            from .pipeline import XDiffusionPipeline, resolve_device

            device = resolve_device(self.settings.device)
            model_dir = None
            if self._model is None:
                from ..model.checkpoint import load_pretrained

                model_dir = self._directory()
                self._model, self._config = load_pretrained(model_dir, device)
            if device.type == "cpu":
                from ..model.onnx_runtime import on_onnx_runtime

                self._model = on_onnx_runtime(self._model, self.settings.runtime, model_dir)
            self._pipeline = XDiffusionPipeline(
                self._model, self._config, device, self.settings.chunk_size, self.settings.bf16
            )
        return self._pipeline

    # ---- the Reconstructor interface --------------------------------------------------------

    def validate(self, inputs: SliceInput) -> None:
        """Every check that needs no model run: raises XDiffusionError before any work."""
        from .pipeline import resolve_device

        resolve_device(self.settings.device)
        if not np.all(np.isfinite(inputs.slices)):
            raise XDiffusionError("the input slices contain NaN or infinite values: fix or mask the volume first")
        if len(inputs.indices) > self.config.max_slices:
            raise XDiffusionError(
                f"{len(inputs.indices)} input slices: this model takes at most {self.config.max_slices}"
            )

    def reconstruct(self, inputs: SliceInput) -> Volume:
        return self.reconstruct_with_uncertainty(inputs).volume

    def reconstruct_with_uncertainty(self, inputs: SliceInput) -> ReconstructionResult:
        from ..model.conditioning import SparseCube
        from ..transforms.intensity import IntensityNormalizer
        from ..transforms.model_space import ModelSpace

        self.validate(inputs)
        config = self.config
        if config.target == "residual":
            _ = self.calibration  # a missing or broken table fails before any work
            return self._reconstruct_residual(inputs)
        pipeline = self.pipeline
        normalizer = IntensityNormalizer().fit(inputs.slices)
        space = ModelSpace.for_grid(inputs.grid, config.side)
        template = self._template_cube(inputs, space, normalizer) if "template" in config.priors else None
        sparse = SparseCube.from_slice_input(inputs, space, normalizer, template)
        s = self.settings
        out = pipeline(
            sparse,
            views=s.views,
            steps=s.steps,
            sampler=s.sampler,
            guidance=s.guidance,
            samples=s.samples,
            seed=s.seed,
            aggregate=s.aggregate,
            progress=self.progress,
        )
        cube = out.cube.numpy()
        spread = out.uncertainty.numpy()
        intensities = np.asarray(normalizer.inverse(space.to_grid(cube)), dtype=np.float32)
        # The normaliser is linear: a std in [0, 1] units scales by its (high - low).
        scale = float(normalizer.inverse(np.float32(1.0)) - normalizer.inverse(np.float32(0.0)))
        uncertainty = np.clip(space.to_grid(spread), 0.0, None) * np.float32(scale)
        volume = Volume(inputs.paste_into(intensities), inputs.grid)
        known = SliceInput(inputs.grid, inputs.plane, inputs.indices, np.zeros_like(inputs.slices))
        return ReconstructionResult(volume, Volume(known.paste_into(uncertainty), inputs.grid))

    def _run_pipeline(self, sparse):
        s = self.settings
        return self.pipeline(
            sparse, views=s.views, steps=s.steps, sampler=s.sampler, guidance=s.guidance, samples=s.samples,
            seed=s.seed, aggregate=s.aggregate, progress=self.progress, strength=s.strength,
        )

    def _reconstruct_residual(self, inputs: SliceInput) -> ReconstructionResult:
        """Residual models: output = anchor (full resolution) + the model's residual (model space, upsampled).

        1. the anchor (``baselines.anchor``) is computed on the input grid from the input slices only;
        2. a zero-floor normaliser fitted on the input slices maps it into [0, 1] and into the cube;
        3. the pipeline generates the residual truth - anchor in the cube (views x samples);
        4. the residual is resampled onto the input grid and added to the anchor; intensities stay in
           the inputs' range, the input slices are pasted in unchanged.
        """
        from ..baselines.anchor import anchor_estimate
        from ..model.conditioning import SparseCube
        from ..transforms.intensity import IntensityNormalizer
        from ..transforms.model_space import ModelSpace

        config = self.config
        _ = self.pipeline  # load the model before the anchor's work, so a bad model fails first
        estimate = anchor_estimate(inputs, config.anchor_decay_inside_mm, config.anchor_decay_outside_mm)
        anchor = estimate.volume.array
        normalizer = IntensityNormalizer(zero_floor=True).fit(inputs.slices)
        space = ModelSpace.for_grid(inputs.grid, config.side)
        anchor_cube = np.asarray(normalizer.forward(space.to_cube(anchor, antialias=True)), dtype=np.float32)
        sparse = SparseCube.from_slice_input(inputs, space, normalizer, anchor=anchor_cube)
        out = self._run_pipeline(sparse)
        scale = float(normalizer.high - normalizer.low)
        # The residual never paints empty space: zero where the anchor shows no head (background is
        # 38-76% of a scan, and a faint residual there costs SSIM; chosen on synthetic validation).
        head = np.asarray(normalizer.forward(anchor)) > ACTIVE_LEVEL  # on the input grid
        residual = space.to_grid(out.cube.numpy()) * np.float32(scale) * head
        low, high = float(np.min(inputs.slices)), float(np.max(inputs.slices))
        volume = np.clip(anchor + residual, low, high).astype(np.float32)
        uncertainty = np.clip(space.to_grid(out.uncertainty.numpy()), 0.0, None) * np.float32(scale) * head
        known = SliceInput(inputs.grid, inputs.plane, inputs.indices, np.zeros_like(inputs.slices))
        spread = Volume(known.paste_into(uncertainty), inputs.grid)
        result = ReconstructionResult(Volume(inputs.paste_into(volume), inputs.grid), spread, spread)
        calibration = self.calibration
        if calibration is None and not self.keep_features:
            return result
        features = self._features(inputs, estimate, spread.array, scale)
        kept = features if self.keep_features else None
        reference = None if calibration is None else scan_reference_of(calibration.scan_reference)
        folds = None
        if self.keep_features or (reference is not None and len(inputs.indices) >= 2):
            from ..baselines.leave_one_out import held_out_folds

            folds = tuple(held_out_folds(inputs, estimate, scale, config.anchor_decay_inside_mm,
                                         config.anchor_decay_outside_mm))
        if calibration is None:
            return replace(result, features=kept, folds=folds)
        scan = SYNTHETIC_ONLY if folds is None else scan_scale(
            reference, len(inputs.indices), list(folds), calibration.coefficients[k_range(len(inputs.indices))])
        interval = calibration.estimate(features, scan.value)
        # Shown as 0 where the anchor shows no head, like the residual: the interval's floor out
        # there is not calibrated (coverage is scored inside the head) and drew a box around the head.
        shown = interval.halfwidth(self.level) * head
        return replace(result, uncertainty=Volume(shown.astype(np.float32), inputs.grid), interval=interval,
                       info=calibrated_info(self.level, scan.folds, scan.value), features=kept,
                       folds=folds if self.keep_features else None)

    @staticmethod
    def _features(inputs: SliceInput, estimate, spread: np.ndarray, scale: float) -> IntervalFeatures:
        from ..baselines.anchor import slice_distance_mm

        known = np.zeros(inputs.grid.shape[inputs.axis], dtype=bool)
        known[list(inputs.indices)] = True
        return interval_features(len(inputs.indices), inputs.axis, slice_distance_mm(inputs), known, spread,
                                 estimate.interpolation, estimate.template, estimate.volume.array, scale)

    @staticmethod
    def _template_cube(inputs: SliceInput, space, normalizer) -> np.ndarray:
        from ..baselines.template import TemplateBaseline

        fitted = TemplateBaseline().reconstruct(inputs)
        return np.asarray(normalizer.forward(space.to_cube(fitted.array)), dtype=np.float32)


def reconstruct_volume(
    volume: Volume,
    plane: str,
    indices,
    model_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    reconstructor: XDiffusionReconstructor | None = None,
    **settings,
) -> ReconstructionResult:
    """Reconstruct ``volume`` (any orientation) from its slices ``indices`` (canonical RAS+ indices) of ``plane``.

    Only the chosen slices are read from ``volume``; the result and its uncertainty lie on exactly
    ``volume.grid``.
    """
    from ..transforms.orientation import to_canonical

    if reconstructor is None:
        reconstructor = XDiffusionReconstructor(model_dir=model_dir, progress=progress, **settings)
    check_intensity_volume(volume)
    axis = plane_axis(plane)
    indices = [int(i) for i in indices]
    canonical, reorientation = to_canonical(volume)
    depth = canonical.shape[axis]
    if len(indices) > depth:
        raise XDiffusionError(f"{len(indices)} input slices but the volume has only {depth} {plane} slices")
    inputs = SliceInput.from_volume(canonical, plane, indices)
    result = reconstructor.reconstruct_with_uncertainty(inputs)
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
]
