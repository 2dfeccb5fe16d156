"""Putting a fully written folder in place in one step, so readers never see half of one."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def replace_directory(ready: Path, final: Path) -> Path:
    """Move the complete folder ``ready`` to ``final`` (same file system), replacing any folder there."""
    if final.exists():
        # A folder cannot be renamed over a non-empty one: move the old one aside first.
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
        os.replace(final, old / final.name)
        os.replace(ready, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(ready, final)
    return final
