"""The one check every command runs on the files it is about to write, before any work.

``check_outputs`` refuses, each with one line naming the user's path:
- an output that is one of the inputs, whatever the spelling (relative, "..", symlinks, hard
  links): with or without ``--overwrite`` (writing it would destroy the input);
- two outputs that are one file;
- an output that already exists, unless ``overwrite`` (the command's ``--overwrite``);
- an output that cannot be written: a file where a folder should be, or a folder that does not
  let us create files (read-only, no permission, read-only file system). Found now, not after
  the whole computation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import XDiffusionError
from .atomic import remove_quietly, temporary_file


def check_outputs(outputs: Sequence[str | os.PathLike], inputs: Iterable[str | os.PathLike] = (),
                  overwrite: bool = False, overwrite_hint: str = "pass --overwrite to replace it") -> list[Path]:
    """Refuse unsafe outputs (module docstring); returns them as Paths."""
    paths = [Path(p).expanduser() for p in outputs]
    sources = [Path(p).expanduser() for p in inputs]
    for path in paths:
        for source in sources:
            if same_file(path, source):
                shown = "" if os.path.abspath(path) == os.path.abspath(source) else f" ({source})"
                raise XDiffusionError(f"{path} is the input{shown}: writing it would destroy the input, "
                                      "choose another output file")
    for n, path in enumerate(paths):
        for other in paths[n + 1:]:
            if same_file(path, other):
                raise XDiffusionError(f"{path} and {other} are the same file: give each output its own name")
    for path in paths:
        if path.is_dir():
            raise XDiffusionError(f"{path} is a folder: give a file name to write")
        if os.path.lexists(path) and not overwrite:
            raise XDiffusionError(f"{path} already exists: {overwrite_hint}, or choose another name")
        check_writable(path)
    return paths


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name one file (links and other spellings included; either may be missing)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where they would be
        return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def check_writable(path: str | os.PathLike) -> None:
    """Refuse ``path`` now if a file cannot be created there: the nearest existing folder above it
    must be a folder in which a file can really be created (tried, then removed: permission bits
    do not tell for root, read-only mounts or ACLs)."""
    path = Path(path).expanduser()
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise XDiffusionError(f"{path}: cannot write there, {folder} is a file, not a folder")
    try:
        probe = temporary_file(folder / path.name)
    except OSError as error:
        raise XDiffusionError(f"{path}: cannot write in {folder} ({error.strerror or error})") from None
    remove_quietly(probe)
