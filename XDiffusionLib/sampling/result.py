"""``ReconstructionResult``: what a reconstruction hands every front end and every writer.

The volume, its uncertainty and ``info``, what that uncertainty means (``UncertaintyInfo``: the
calibrated interval half-width at its level, calibrated on this scan or on synthetic data only, or
the uncalibrated view spread). It is the one carrier of that meaning, from the reconstructor to
the files and the screens:

1. ``XDiffusionReconstructor``, ``reconstruct_volume`` and ``reconstruct_thick_slices`` make it;
2. ``write_result`` puts the volume and its uncertainty in place together, each saying inside the
   file what it is (``uncertainty.marking.file_metadata``: the uncertainty's level, units and
   calibration): the command line, ``reconstruct-batch`` and the worker write with it;
3. ``read_result`` reads such a pair back into a result, ``info`` from the uncertainty's header:
   the worker's launcher returns the run's own meaning to the Slicer module and the web app, which
   never derive it again from the model folder;
4. they keep it on the uncertainty node (``slicer.display.show_uncertainty``), where a redisplay and
   every export read it (``slicer.display.uncertainty_info_of``).

Torch-free: the launcher imports it inside Slicer before torch exists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import XDiffusionError
from ..io.volume import Volume
from ..uncertainty.intervals import UNCALIBRATED, IntervalEstimate, IntervalFeatures, UncertaintyInfo
from ..uncertainty.marking import file_metadata
from ..uncertainty.scan_scale import HeldOutFold


@dataclass(frozen=True)
class ReconstructionResult:
    """``uncertainty`` means what ``info`` says (``info.label``, ``info.level``, ``info.units``):
    the calibrated interval half-width, or the view spread when the model has no calibration."""

    volume: Volume
    uncertainty: Volume
    spread: Volume | None = None  # std across views x samples (intensity units), from the reconstructor
    interval: IntervalEstimate | None = None  # the calibrated interval at any table level
    info: UncertaintyInfo = UNCALIBRATED
    features: IntervalFeatures | None = None  # only with ``keep_features`` (calibration)
    folds: tuple[HeldOutFold, ...] | None = None  # leave-one-slice-out folds, only with ``keep_features``


def write_result(result: ReconstructionResult, output: str | os.PathLike,
                 uncertainty: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``result.volume`` to ``output`` and its uncertainty to ``uncertainty``, both or neither
    (``io.writers.write_volumes``), each marked with what it is; returns the two paths."""
    from ..io.writers import write_volumes  # SimpleITK: loaded when a file is written, not with the launcher

    written = write_volumes([(result.volume, output), (result.uncertainty, uncertainty)],
                            metadata=[file_metadata("reconstruction"), file_metadata("uncertainty", result.info)])
    return written[0], written[1]


def read_result(output: str | os.PathLike, uncertainty: str | os.PathLike) -> ReconstructionResult:
    """The result ``write_result`` wrote (a worker's own files, read as they are: an uncertainty of
    all zeros is a valid one, which ``io.read_volume`` would refuse as constant); ``info`` is what
    the uncertainty's header records, and a header that records nothing is an error."""
    volume, _ = _read(output)
    width, image = _read(uncertainty)
    if not image.HasMetaDataKey("XDiffusion_uncertainty"):
        raise XDiffusionError(f"{uncertainty}: the uncertainty does not say what it is (no XDiffusion_uncertainty key)")
    info = UncertaintyInfo.from_metadata(lambda key: image.GetMetaData(key) if image.HasMetaDataKey(key) else None)
    return ReconstructionResult(volume, width, info=info)


def _read(path: str | os.PathLike):
    # SimpleITK (io.images too), as in write_result
    import SimpleITK as sitk

    from ..io.images import image_to_volume

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise XDiffusionError(f"{path}: cannot read the worker's output ({str(error).strip().splitlines()[-1][:160]})") from None
    return image_to_volume(image), image


__all__ = ["ReconstructionResult", "read_result", "write_result"]
