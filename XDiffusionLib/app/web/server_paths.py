"""Paths on the server that the page may name: only inside the folders the operator chose.

``xdiffusion app --data-root DIR`` (repeatable; default: the shipped samples and the folder the
app was started in) names them. A path from the page (a volume, or a model folder) is taken as
it is when absolute, and looked up in each data folder in turn when relative; after following
every link it must lie inside one of them. Everything else gets one and the same refusal,
whether it exists or not, so the page cannot probe the server's files. What is inside the data
folders is the operator's choice to show: there, "no such file" and "not a volume" are told apart.
Whatever the found volume reads must stay inside its data folder too (a header's data file,
a DICOM folder's links: ``io.readers.check_self_contained``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ...data.samples import SAMPLES_DIR
from ...errors import XDiffusionError


def default_data_roots() -> list[Path]:
    """Where the page may open server paths when no ``--data-root`` is given: the shipped samples
    and the current folder."""
    return [SAMPLES_DIR.resolve(), Path.cwd().resolve()]


class DataRoots:
    """The data folders of one app (resolved once, links followed)."""

    def __init__(self, roots: Sequence[str | os.PathLike]):
        self.roots = [Path(os.path.realpath(Path(root).expanduser())) for root in roots]

    def refusal(self, text: str) -> XDiffusionError:
        return XDiffusionError(f"{text}: not available; this app opens server files only inside its data folders "
                               "(the operator chooses them with xdiffusion app --data-root)")

    def root_of(self, path: str | os.PathLike) -> Path | None:
        """The data folder holding ``path`` once every link is followed, or None."""
        real = Path(os.path.realpath(Path(path).expanduser()))
        return next((root for root in self.roots if real == root or root in real.parents), None)

    def resolve(self, text: str) -> tuple[Path, Path]:
        """(path, its data folder) for a path typed in the page, else the one refusal."""
        text = str(text or "").strip()
        if not text or "\0" in text:
            raise self.refusal(text)
        given = Path(text).expanduser()
        candidates = [given] if given.is_absolute() else [root / given for root in self.roots]
        inside = [(c, root) for c in candidates if (root := self.root_of(c)) is not None]
        if not inside:
            raise self.refusal(text)
        # A relative path: the first data folder that holds it (else the first one, which says "no such file").
        return next(((c, root) for c, root in inside if os.path.lexists(c)), inside[0])

    def resolve_model(self, text: str) -> Path:
        """A model folder typed in the page: inside a data folder, and so are the files it holds."""
        folder, _ = self.resolve(text)
        for file in (folder / "config.json", folder / "model.safetensors"):
            if os.path.lexists(file) and self.root_of(file) is None:
                raise self.refusal(text)
        return folder


class ModelFolders:
    """The model folder a run uses: the app's own (``default``: ``--model`` or the shipped one), or
    with server paths one the page names inside the data folders."""

    def __init__(self, default: str | None, data_roots: DataRoots, allow_server_paths: bool):
        self.default = default
        self.data_roots = data_roots
        self.allow_server_paths = bool(allow_server_paths)

    def for_run(self, text) -> str | None:
        """The folder for a run, from the page's model field ``text``."""
        text = str(text or "").strip()
        if not self.allow_server_paths or not text:
            return self.default  # without server paths the page cannot choose (whatever it sends)
        if self.default and os.path.realpath(Path(text).expanduser()) == os.path.realpath(self.default):
            return self.default
        return str(self.data_roots.resolve_model(text))
