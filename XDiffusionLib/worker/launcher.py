"""Start a reconstruction away from the caller's thread, follow it, cancel it.

One class for every host:
- ``"slicer"``: inside 3D Slicer (``slicer.app`` exists), ``PythonSlicer -m XDiffusionLib.worker``
  in Slicer's startup environment (``slicer.util.startupEnvironment``, what
  ``slicer.util.launchConsoleProcess`` uses; that function itself cannot start a new session and
  decodes the output strictly in the locale's encoding, so it is not used);
- ``"subprocess"``: anywhere else, the current interpreter;
- ``"inprocess"``: the same run in a thread of this process (no model isolation; for hosts that
  cannot start processes). Cancel stops it at the next progress report.
``"auto"`` picks "slicer" inside Slicer, else "subprocess".

Each job owns a private folder from ``tempfile.mkdtemp``: the input volume and the request go in,
the outputs come out. What follows a started run (its states, progress through ``poll()`` or
``wait()``, cancelling, reading the result, ending runs left when the host exits) is in ``jobs``;
ending a run's whole process tree (``kill_process_tree``) is in ``processes``. The process is
started in a session of its own so that ending it reaches everything it started. Both modules'
public names are importable from here too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import XDiffusionError
from ..io.volume import Volume
from .jobs import CANCELLED, DONE, FAILED, RUNNING, ProcessJob, ThreadJob, WorkerJob
from .messages import INPUT_NAME, REQUEST_NAME, JobSettings, Request, write_request
from .processes import kill_process_tree

MODES = ("auto", "slicer", "subprocess", "inprocess")
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder that holds XDiffusionLib

# The job's states and kinds live in ``jobs``, the process-tree ending in ``processes``; callers
# import them from here too (the launcher is the worker package's front door).
__all__ = ["MODES", "RUNNING", "DONE", "FAILED", "CANCELLED", "WorkerJob", "WorkerLauncher", "in_slicer",
           "kill_process_tree"]


def in_slicer() -> bool:
    """Whether this runs inside the Slicer application (not just with Slicer's libraries)."""
    slicer = sys.modules.get("slicer")
    return slicer is not None and getattr(slicer, "app", None) is not None


class WorkerLauncher:
    """Starts reconstruction jobs in the chosen ``mode`` (see the module docstring)."""

    def __init__(self, mode: str = "auto", python: str | None = None, environment: dict[str, str] | None = None):
        if mode not in MODES:
            raise XDiffusionError(f"unknown worker mode {mode!r}: choose one of {', '.join(MODES)}")
        if mode == "auto":
            mode = "slicer" if in_slicer() else "subprocess"
        self.mode = mode
        self.python = python
        self.environment = dict(environment or {})

    def start(self, volume: Volume, settings: JobSettings) -> WorkerJob:
        """Write ``volume`` and the request to a new private folder and start the run."""
        # SimpleITK: loaded when the first job starts, not when Slicer imports this module at startup.
        from ..io.writers import write_volume

        settings = settings.check()
        workdir = Path(tempfile.mkdtemp(prefix="xdiffusion-"))
        try:
            input_path = write_volume(volume, workdir / INPUT_NAME)
            request = Request(str(input_path), str(workdir), settings)
            request_path = write_request(request, workdir / REQUEST_NAME)
            if self.mode == "inprocess":
                return ThreadJob(workdir, settings, request)
            return ProcessJob(workdir, settings, self._launch(request_path))
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise

    def command(self, request_path: str | os.PathLike) -> list[str]:
        return [self._python(), "-m", "XDiffusionLib.worker", str(request_path)]

    def _python(self) -> str:
        if self.python:
            return self.python
        if self.mode == "slicer":
            found = shutil.which("PythonSlicer")
            if not found:
                raise XDiffusionError("PythonSlicer was not found on PATH: cannot start the reconstruction process")
            return found
        return sys.executable

    def _environment_update(self, base: dict[str, str]) -> dict[str, str]:
        paths = [_PACKAGE_ROOT] + [p for p in base.get("PYTHONPATH", "").split(os.pathsep) if p]
        update = {"PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
        update.update(self.environment)
        return update

    def _launch(self, request_path: Path) -> subprocess.Popen:
        if self.mode == "slicer":
            import slicer.util  # Slicer: this mode runs only inside the application

            environment = dict(slicer.util.startupEnvironment())  # Slicer's own paths left out
        else:
            environment = dict(os.environ)
        environment.update(self._environment_update(environment))
        windows = os.name == "nt"
        flags = (getattr(subprocess, "CREATE_NO_WINDOW", 0) | getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
                 if windows else 0)
        return subprocess.Popen(
            self.command(request_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=environment, start_new_session=not windows, creationflags=flags,
        )
