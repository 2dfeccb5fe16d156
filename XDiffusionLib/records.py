"""Settings records read from JSON (model config, training config, worker job, sampling settings):
the one check of a record's shape, so every reader names the file and the stray keys the same way."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from .errors import XDiffusionError


def unknown_fields(cls: type, data: dict[str, Any]) -> list[str]:
    """The keys of ``data`` that are not fields of the dataclass ``cls``, sorted."""
    known = {f.name for f in fields(cls)}
    return sorted(set(data) - known)


def check_record(data: Any, cls: type, source: str, what: str) -> dict[str, Any]:
    """``data`` as the fields of ``cls``: refuse a non-object or unknown keys (``{source}: unknown {what} [...]``)."""
    if not isinstance(data, dict):
        raise XDiffusionError(f"{source}: expected a JSON object, got {type(data).__name__}")
    unknown = unknown_fields(cls, data)
    if unknown:
        raise XDiffusionError(f"{source}: unknown {what} {unknown}")
    return data
