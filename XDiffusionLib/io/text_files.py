"""Small text files users hand us (slice-index lists, CSV manifests): read whole, or one clear line."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import XDiffusionError


def read_user_text(path: str | os.PathLike, what: str) -> str:
    """The UTF-8 text of ``path`` (a byte-order mark is dropped), or one line naming the file and
    why it is not ``what`` (e.g. "a CSV manifest"): unreadable, not text, or binary."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise XDiffusionError(f"{path}: not {what} (not UTF-8 text)") from None
    except OSError as error:
        raise XDiffusionError(f"{path}: cannot read it ({error.strerror or error})") from None
    if "\0" in text:
        raise XDiffusionError(f"{path}: not {what} (it holds binary data)")
    return text
