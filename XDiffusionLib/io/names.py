"""File names made from user text (case names, method names, uploaded file names): the one sanitiser."""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def safe_file_name(text: str, fallback: str = "case", max_length: int = 120) -> str:
    """``text`` as one harmless file name: runs of characters other than letters, digits and
    ``._+-`` (path separators included) replaced by "_", never hidden (no leading dot), never empty
    (``fallback``), at most ``max_length`` characters."""
    base = _UNSAFE.sub("_", str(text or "")).lstrip("._").rstrip("_")
    return base[:max_length] or fallback
