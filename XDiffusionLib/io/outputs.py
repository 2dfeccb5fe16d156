"""The one check every command runs on the files it is about to write, before any work.

``check_outputs`` refuses, each with one line naming the user's path:
- an output that is one of the inputs, whatever the spelling (relative, "..", symlinks, hard
  links): with or without ``--overwrite`` (writing it would destroy the input);
- two outputs that are one file;
- an output that already exists, unless ``overwrite`` (the command's ``--overwrite``) or an earlier
  run of the same command wrote it there, unchanged since (``OutputLedger``: its own files);
- an output that cannot be written: a file where a folder should be, or a folder that does not
  let us create files (read-only, no permission, read-only file system). Found now, not after
  the whole computation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import XDiffusionError
from .atomic import remove_quietly, temporary_file, write_json_atomic


def check_outputs(outputs: Sequence[str | os.PathLike], inputs: Iterable[str | os.PathLike] = (),
                  overwrite: bool = False, overwrite_hint: str = "pass --overwrite to replace it",
                  ours: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Refuse unsafe outputs (module docstring); returns them as Paths. ``ours``: files an earlier
    run of this command wrote (``OutputLedger.ours``), replaced without ``overwrite``."""
    paths = [Path(p).expanduser() for p in outputs]
    own = {os.path.realpath(p) for p in ours}
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
        if os.path.lexists(path) and not overwrite and os.path.realpath(path) not in own:
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


class OutputLedger:
    """Which files of an output folder a command wrote itself: a hidden ``.xdiffusion-outputs.json``
    there records each file's size and modification time when the command wrote it. A later run of
    the same command may replace those (its own results), not a file the user put there or changed
    since (a changed size or time no longer matches)."""

    NAME = ".xdiffusion-outputs.json"

    def __init__(self, folder: str | os.PathLike, command: str):
        self.folder, self.command = Path(folder).expanduser(), command

    def _entries(self) -> dict:
        try:
            data = json.loads((self.folder / self.NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # none yet, or unreadable: nothing counts as ours (the safe side)
        return data if isinstance(data, dict) else {}

    def ours(self) -> list[Path]:
        """The files this command wrote here and nobody changed since."""
        found = []
        for name, entry in self._entries().items():
            path = self.folder / name
            if isinstance(entry, dict) and entry.get("command") == self.command and _identity(path) == [
                    entry.get("size"), entry.get("mtime_ns")]:
                found.append(path)
        return found

    def record(self, paths: Iterable[str | os.PathLike]) -> None:
        """Note ``paths`` (inside the folder) as written by this command, as they are now."""
        entries = self._entries()
        for path in paths:
            identity = _identity(Path(path))
            if identity is not None:
                name = Path(os.path.relpath(Path(path), self.folder)).as_posix()
                entries[name] = {"command": self.command, "size": identity[0], "mtime_ns": identity[1]}
        write_json_atomic(self.folder / self.NAME, entries, sort_keys=True)


def _identity(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]
