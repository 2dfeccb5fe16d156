"""What the caller and the worker process say to each other.

Files, all in one private temporary folder (``tempfile.mkdtemp``) that the caller owns:
- ``input.nrrd``: the input volume (full geometry);
- ``request.json``: ``{"protocol": 1, "input": ..., "output_dir": ..., "settings": {...}}``;
- outputs written by the worker into ``output_dir`` (``reconstruction.nrrd``, ``uncertainty.nrrd``).

Messages: one JSON object per line on the worker's stdout.
- ``{"type": "progress", "fraction": 0.0..1.0, "message": "..."}``
- ``{"type": "error", "message": "..."}``: the one-line reason the run failed (then exit code != 0);
- ``{"type": "done", "outputs": {"reconstruction": path, "uncertainty": path}}``.
Any other line (library logs, warnings; Slicer's launcher merges stderr into stdout) is a log line.

Everything here is plain Python (no torch): the Slicer side imports it before torch exists.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import XDiffusionError
from ..io.atomic import write_json_atomic
from ..inputs import plane_axis
from ..records import check_record
from ..settings import ReconstructionSettings

PROTOCOL_VERSION = 1
REQUEST_NAME = "request.json"
INPUT_NAME = "input.nrrd"
OUTPUT_NAMES = {"reconstruction": "reconstruction.nrrd", "uncertainty": "uncertainty.nrrd"}


@dataclass(frozen=True)
class JobSettings:
    """What to reconstruct and how: the inputs' ``plane`` and canonical ``indices``, the model
    (``model_dir`` None: the shipped default) and ``options``, the sampling settings passed as they
    are to ``reconstruct_volume`` (views, steps, sampler, guidance, samples, seed, device, ...);
    ``check`` checks their types and values (``settings.ReconstructionSettings.from_record``).
    ``thick_slices`` (``{"factor": N, "thickness": mm or None}``): the input is a thick-slice scan and
    every acquired slice goes onto a grid N times finer (``sampling.thick_slices``); ``plane`` and
    ``indices`` then record the acquired slices on that grid."""

    plane: str = "axial"
    indices: tuple[int, ...] = ()
    model_dir: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    thick_slices: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.indices, (str, bytes)) or not hasattr(self.indices, "__iter__"):
            raise ValueError(f"indices {self.indices!r}: expected a list of slice indices")
        object.__setattr__(self, "indices", tuple(_slice_index(i) for i in self.indices))
        if self.model_dir is not None:
            object.__setattr__(self, "model_dir", str(self.model_dir))
        object.__setattr__(self, "options", dict(self.options))

    def check(self) -> "JobSettings":
        """Itself, or a one-line XDiffusionError naming the bad setting (no torch needed)."""
        plane_axis(self.plane)  # an unknown plane fails here, with the one message for it
        if not self.indices:
            raise XDiffusionError("no input slices given: pick at least one slice index")
        if len(set(self.indices)) != len(self.indices):
            raise XDiffusionError(f"slice indices {list(self.indices)} repeat a slice")
        if any(i < 0 for i in self.indices):
            raise XDiffusionError(f"slice indices {list(self.indices)} include a negative index")
        reserved = {"volume", "plane", "indices", "model_dir", "progress", "reconstructor"} & set(self.options)
        if reserved:
            raise XDiffusionError(f"options {sorted(reserved)} are not sampling settings")
        ReconstructionSettings.from_record(self.options)  # their types and values, where they live
        if self.thick_slices is not None:
            thick = self.thick_slices
            if not isinstance(thick, dict) or set(thick) - {"factor", "thickness"} or "factor" not in thick:
                raise XDiffusionError(f"thick_slices {thick!r}: expected {{'factor': N, 'thickness': mm or null}}")
        return self

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["indices"] = list(self.indices)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "settings") -> "JobSettings":
        check_record(data, cls, source, "settings")
        if not isinstance(data.get("options", {}), dict):
            raise XDiffusionError(f"{source}: options must be a JSON object")
        try:
            return cls(**data).check()
        except (TypeError, ValueError) as error:
            raise XDiffusionError(f"{source}: {error}") from None


def _slice_index(value: Any) -> int:
    """``value`` as a slice index: an integer, or a float holding a whole number (3.0); anything
    else (1.5, "3", true, 1e400 which JSON reads as infinity) is a ValueError naming it."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    raise ValueError(f"slice index {value!r} is not a whole number")


@dataclass(frozen=True)
class Request:
    input_path: str
    output_dir: str
    settings: JobSettings = field(default_factory=JobSettings)

    def to_dict(self) -> dict[str, Any]:
        return {"protocol": PROTOCOL_VERSION, "input": self.input_path, "output_dir": self.output_dir,
                "settings": self.settings.to_dict()}


def write_request(request: Request, path: str | os.PathLike) -> Path:
    """Write ``request`` as JSON atomically (temporary file in the same folder, then rename)."""
    return write_json_atomic(path, request.to_dict())


def read_request(path: str | os.PathLike) -> Request:
    """Read and check a request file; any problem is a one-line XDiffusionError naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise XDiffusionError(f"{path}: request file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise XDiffusionError(f"{path}: not a readable JSON request ({error})") from None
    if not isinstance(data, dict):
        raise XDiffusionError(f"{path}: expected a JSON object")
    if data.get("protocol") != PROTOCOL_VERSION:
        raise XDiffusionError(f"{path}: protocol {data.get('protocol')!r}, this worker speaks {PROTOCOL_VERSION}")
    for key in ("input", "output_dir", "settings"):
        if key not in data:
            raise XDiffusionError(f"{path}: missing {key!r}")
    settings = JobSettings.from_dict(data["settings"], source=f"{path} settings")
    return Request(str(data["input"]), str(data["output_dir"]), settings)


# Messages ------------------------------------------------------------------------------------

def progress_message(fraction: float, message: str = "") -> dict[str, Any]:
    return {"type": "progress", "fraction": min(max(float(fraction), 0.0), 1.0), "message": str(message)}


def error_message(message: str) -> dict[str, Any]:
    return {"type": "error", "message": str(message)}


def done_message(outputs: dict[str, str]) -> dict[str, Any]:
    return {"type": "done", "outputs": {k: str(v) for k, v in outputs.items()}}


def encode(message: dict[str, Any]) -> str:
    """One line (no newline inside) for ``message``."""
    return json.dumps(message, separators=(",", ":"))


def decode(line: str) -> dict[str, Any]:
    """A protocol message, or ``{"type": "log", "message": line}`` for anything else on the stream."""
    text = line.rstrip("\r\n")
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict) and data.get("type") in ("progress", "error", "done"):
            return data
    return {"type": "log", "message": text}
