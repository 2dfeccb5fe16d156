"""One reconstruction request, start to finish: read input, reconstruct, write outputs, report.

Shared by the worker process (``python -m XDiffusionLib.worker``) and the launcher's in-process
mode, so both behave the same. ``emit`` receives protocol messages (see ``messages``);
``should_stop`` is polled at every progress report and ends the run with ``Cancelled``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from ..errors import XDiffusionError, describe_system_error
from ..io.data_files import volume_files
from ..io.outputs import check_outputs
from ..sampling.result import write_result
from .messages import OUTPUT_NAMES, Request, done_message, progress_message

Emit = Callable[[dict[str, Any]], None]

# Share of the progress bar before and after the sampling itself.
_LOADED = 0.05
_SAMPLED = 0.95


class Cancelled(Exception):
    """The caller asked the run to stop."""


def run_request(request: Request, emit: Emit, should_stop: Callable[[], bool] = lambda: False) -> dict[str, str]:
    """Run ``request``; returns the written outputs {name: path} after emitting ``done``."""
    # SimpleITK: loaded when a request runs (the launcher imports this module inside Slicer at startup).
    from ..io.readers import MultiVolumeError, read_volume

    settings = request.settings.check()  # the sampling settings' types and values too (settings.py)
    # The command line's output checks, before any work: the worker never replaces its input nor
    # any existing file (callers give it a fresh folder), and an unwritable folder fails now.
    output_dir = Path(request.output_dir)
    targets = [output_dir / OUTPUT_NAMES["reconstruction"], output_dir / OUTPUT_NAMES["uncertainty"]]
    check_outputs(targets, inputs=volume_files(request.input_path),
                  overwrite_hint="the worker writes only new files, give it an empty output folder")

    def report(fraction: float, message: str) -> None:
        if should_stop():
            raise Cancelled()
        emit(progress_message(fraction, message))

    report(0.0, "reading the input volume")
    try:
        volume = read_volume(request.input_path)
    except MultiVolumeError as error:  # the worker has no --volume to choose with
        raise error.without_option() from None
    # A warm worker (the web app's) imported PyTorch before the request came: only the model's files load now.
    report(0.01, "loading the model" if "torch" in sys.modules else "loading PyTorch and the model")
    from ..sampling.reconstructor import reconstruct_volume  # torch: only now, after the input was read

    def sampling_progress(fraction: float, message: str = "") -> None:
        report(_LOADED + (_SAMPLED - _LOADED) * min(max(float(fraction), 0.0), 1.0), message or "sampling")

    if settings.thick_slices is not None:  # all acquired slices onto a finer grid: the library's one workflow
        from ..sampling.thick_slices import reconstruct_thick_slices  # as reconstruct_volume

        result = reconstruct_thick_slices(volume, settings.thick_slices["factor"],
                                          thickness=settings.thick_slices.get("thickness"),
                                          model_dir=settings.model_dir, progress=sampling_progress, **settings.options)
    else:
        result = reconstruct_volume(
            volume,
            settings.plane,
            list(settings.indices),
            model_dir=settings.model_dir,
            progress=sampling_progress,
            **settings.options,
        )
    report(_SAMPLED, "writing the results")
    # What the uncertainty means travels in its header (NRRD keys): the launcher reads it back.
    written = write_result(result, targets[0], targets[1])
    outputs = {"reconstruction": str(written[0]), "uncertainty": str(written[1])}
    report(1.0, "finished")
    emit(done_message(outputs))
    return outputs


def describe_failure(error: BaseException) -> str:
    """One line for the user: our own errors as they are, the rest with their kind."""
    if isinstance(error, XDiffusionError):
        return str(error)
    if isinstance(error, (MemoryError, OSError)):
        return describe_system_error(error)
    name = type(error).__name__
    if name == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch here
        return "the GPU ran out of memory: use fewer views or samples, or choose device 'cpu'"
    text = str(error).strip().splitlines()
    return f"unexpected {name}: {text[0] if text else 'no message'}"
