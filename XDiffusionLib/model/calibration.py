"""The interval calibration table beside a model's weights (``uncertainty_calibration.json``).

The table (``uncertainty.intervals``) belongs to one set of weights and one set of sampling
settings: it records the weights' SHA-256 (``weights_sha256`` of ``model.safetensors``, as
``checkpoint.verify_checksums`` checks them), the config's inference fields (``residual_gain``,
``anchor_weight``: they change the output the interval was fitted around) and the SHA-256 of its own content, so an edited, truncated or
foreign table is refused at load with a one-line error naming the file. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..errors import XDiffusionError
from ..io.atomic import write_text_atomic
from .config import INFERENCE_FIELDS, XDiffusionConfig
from .files import CONFIG_NAME, WEIGHTS_NAME, weights_checksum
from ..uncertainty.intervals import DEFAULT_LEVEL, UNCALIBRATED, IntervalCalibration, UncertaintyInfo, calibrated_info
from ..uncertainty.scan_scale import scan_reference_of

CALIBRATION_NAME = "uncertainty_calibration.json"


def content_sha256(data: dict[str, Any]) -> str:
    """SHA-256 of the table without its ``sha256`` field, as canonical JSON (sorted keys, no spaces)."""
    body = {key: value for key, value in data.items() if key != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def _inference_fields(directory: Path) -> dict[str, Any]:
    """The folder's config's inference fields (``config.INFERENCE_FIELDS``; without a config, their
    values from before each field existed)."""
    path = directory / CONFIG_NAME
    if not path.is_file():
        return dict(INFERENCE_FIELDS)
    config = XDiffusionConfig.load_json(path).to_dict()
    return {key: config[key] for key in INFERENCE_FIELDS}


def save_calibration(table: IntervalCalibration, directory: str | os.PathLike) -> Path:
    """Write the table (bound to the folder's weights and inference fields, with its own checksum) atomically."""
    directory = Path(directory)
    data = table.to_dict()
    data["weights_sha256"] = weights_checksum(directory)
    data.update(_inference_fields(directory))
    data["sha256"] = content_sha256(data)
    return write_text_atomic(directory / CALIBRATION_NAME, json.dumps(data, indent=1) + "\n")


def load_calibration(directory: str | os.PathLike, required: bool = False) -> IntervalCalibration | None:
    """The folder's table; None when it has none and ``required`` is False (then the uncertainty
    stays the uncalibrated view spread). Missing-but-required, unreadable, edited, malformed or
    made for other weights: XDiffusionError naming the file."""
    path = Path(directory) / CALIBRATION_NAME
    regenerate = "regenerate it with scripts/calibrate_uncertainty.py"
    if not path.is_file():
        if required:
            raise XDiffusionError(f"{path}: missing interval calibration of the shipped model; {regenerate}")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise XDiffusionError(f"{path}: cannot read it ({error.strerror or error})") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise XDiffusionError(f"{path}: not valid JSON ({error}); {regenerate}") from None
    if not isinstance(data, dict) or "sha256" not in data:
        raise XDiffusionError(f"{path}: no checksum in the interval calibration; {regenerate}")
    if content_sha256(data) != data["sha256"]:
        raise XDiffusionError(f"{path}: does not match its recorded checksum (edited or corrupt); {regenerate}")
    weights = Path(directory) / WEIGHTS_NAME
    if weights.is_file() and data.get("weights_sha256") != weights_checksum(directory):
        raise XDiffusionError(f"{path}: calibrated for other weights than {weights}; {regenerate}")
    for key, value in _inference_fields(Path(directory)).items():  # a table from before a field: its old value
        if data.get(key, INFERENCE_FIELDS[key]) != value:
            raise XDiffusionError(f"{path}: calibrated for another {key} than {Path(directory) / CONFIG_NAME}'s; "
                                  f"{regenerate}")
    table = IntervalCalibration.from_dict(data, str(path))
    scan_reference_of(table.scan_reference, str(path))  # a malformed scan reference fails here, not mid-run
    return table


def uncertainty_info(directory: str | os.PathLike, level: float = DEFAULT_LEVEL) -> UncertaintyInfo:
    """What a reconstruction with the model in ``directory`` reports as its uncertainty: the
    calibrated interval when the folder has a valid table, else the view spread (a broken table
    fails the reconstruction itself, with its own error)."""
    try:
        table = load_calibration(directory)
    except XDiffusionError:
        return UNCALIBRATED
    return calibrated_info(level) if table is not None else UNCALIBRATED


__all__ = ["CALIBRATION_NAME", "uncertainty_info", "content_sha256", "load_calibration", "save_calibration"]
