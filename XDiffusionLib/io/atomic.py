"""Putting fully written files and folders in place in one step, so readers never see half of one.

Everything is first written under a temporary name next to its final place (same file system, so
``os.replace`` is one atomic rename). Temporary names are hidden (they start with ".") and carry
the writer's process id and host: readers that scan folders skip hidden names
(``io.readers.is_volume_file``), and the next writer in the same folder removes the leftovers of a
writer that was killed (its process is gone), so nothing a reader could mistake for data stays.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

_MARK = ".xdpart-"
# This host's tag: a process id means something only on the host that wrote it (shared folders).
_HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]
_TEMPORARY = re.compile(r"^\..*" + re.escape(_MARK) + r"(\d+)-([0-9a-f]{8})-")


def _prefix(final: Path) -> str:
    return f".{final.name}{_MARK}{os.getpid()}-{_HOST}-"


def temporary_file(final: str | os.PathLike, suffix: str = "") -> Path:
    """A new empty hidden file next to ``final`` to write ``final``'s content into; ``suffix``
    ends its name (writers that pick the format by the name need the real suffix)."""
    final = Path(final)
    handle, name = tempfile.mkstemp(dir=final.parent, prefix=_prefix(final), suffix=suffix)
    os.close(handle)
    return Path(name)


@contextmanager
def atomic_file(final: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """The one way to write a file in place: yields a hidden temporary next to ``final`` to write;
    when the block ends normally it replaces ``final`` in one rename (readable by all, like any
    other output), and on any error it is removed, leaving ``final`` as it was."""
    final = Path(final)
    temporary = temporary_file(final, suffix or "".join(final.suffixes[-2:]))
    try:
        yield temporary
        os.chmod(temporary, 0o644)  # mkstemp makes owner-only files
        os.replace(temporary, final)
    except BaseException:
        remove_quietly(temporary)
        raise


def write_atomic(path: str | os.PathLike, write: Callable[[Any], None], binary: bool = False) -> Path:
    """``path`` whole or not at all: ``write(handle)`` fills the temporary file (text: UTF-8, no
    newline translation, for csv) that then replaces ``path``."""
    with atomic_file(path) as temporary:
        mode = {"mode": "wb"} if binary else {"mode": "w", "newline": "", "encoding": "utf-8"}
        with open(temporary, **mode) as handle:
            write(handle)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_file(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any, **dump_options) -> Path:
    """``data`` as indented JSON ending in a newline, written in place in one step."""
    import json

    return write_text_atomic(path, json.dumps(data, indent=2, **dump_options) + "\n")


def temporary_directory(final: str | os.PathLike) -> Path:
    """A new empty hidden folder next to ``final`` to build ``final`` in."""
    final = Path(final)
    return Path(tempfile.mkdtemp(dir=final.parent, prefix=_prefix(final)))


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries in ``folder`` whose writer (a process on this host) has ended; returns them."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or match.group(2) != _HOST or _process_alive(int(match.group(1))):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue  # another writer is cleaning up too, or it is not ours to remove
        removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists (another user's process) or we cannot tell: keep its files
    return True


def remove_quietly(path: str | os.PathLike) -> None:
    """Remove a temporary file or folder if it is still there."""
    path = Path(path)
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError:
        pass  # already gone, or not ours to remove


def replace_directory(ready: Path, final: Path) -> Path:
    """Move the complete folder ``ready`` to ``final`` (same file system), replacing any folder there."""
    if final.exists():
        # A folder cannot be renamed over a non-empty one: move the old one aside first.
        old = temporary_directory(final)
        os.replace(final, old / final.name)
        os.replace(ready, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(ready, final)
    return final
