"""Start a reconstruction away from the caller's thread, follow it, cancel it.

One class for every host:
- ``"slicer"``: inside 3D Slicer (``slicer.app`` exists), ``slicer.util.launchConsoleProcess`` runs
  ``PythonSlicer -m XDiffusionLib.worker`` in Slicer's own Python environment;
- ``"subprocess"``: anywhere else, ``subprocess.Popen`` with the current interpreter;
- ``"inprocess"``: the same run in a thread of this process (no model isolation; for hosts that
  cannot start processes). Cancel stops it at the next progress report.
``"auto"`` picks "slicer" inside Slicer, else "subprocess".

Each job owns a private folder from ``tempfile.mkdtemp``: the input volume and the request go in,
the outputs come out; the folder is removed when the job fails or is cancelled, and after the
results are read. Progress arrives through ``poll()`` (non-blocking, call it from a GUI timer) or
``wait()``. A process is ended with its whole process group (Windows: ``taskkill /T``).
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import XDiffusionError
from ..io.volume import Volume
from .protocol import INPUT_NAME, REQUEST_NAME, JobSettings, Request, decode, error_message, write_request

MODES = ("auto", "slicer", "subprocess", "inprocess")
RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder that holds XDiffusionLib
_LOG_LINES = 40


@dataclass(frozen=True)
class WorkerResult:
    reconstruction: Volume
    uncertainty: Volume | None


def in_slicer() -> bool:
    """Whether this runs inside the Slicer application (not just with Slicer's libraries)."""
    slicer = sys.modules.get("slicer")
    return slicer is not None and getattr(slicer, "app", None) is not None


class WorkerJob:
    """One running reconstruction. States: running -> done | failed | cancelled."""

    def __init__(self, workdir: Path, settings: JobSettings):
        self.workdir = workdir
        self.settings = settings
        self.state = RUNNING
        self.fraction = 0.0
        self.message = "starting"
        self.error: str | None = None
        self.outputs: dict[str, str] = {}
        self.log: deque[str] = deque(maxlen=_LOG_LINES)
        self._queue: queue.Queue = queue.Queue()
        self._cancel_requested = threading.Event()
        self._error_reported: str | None = None

    # Subclasses start the work and end it.
    def _stop(self) -> None:
        raise NotImplementedError

    def _join(self, timeout: float | None) -> None:
        raise NotImplementedError

    @property
    def finished(self) -> bool:
        return self.state != RUNNING

    def poll(self) -> list[dict[str, Any]]:
        """Messages that arrived since the last call (non-blocking); updates state and progress."""
        messages = []
        while True:
            try:
                message = self._queue.get_nowait()
            except queue.Empty:
                break
            messages.append(message)
            self._handle(message)
        return messages

    def wait(self, timeout: float | None = None) -> str:
        """Block until the job ends (or ``timeout`` seconds pass); returns the state."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while self.state == RUNNING:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            try:
                message = self._queue.get(timeout=0.1 if remaining is None else min(0.1, remaining))
            except queue.Empty:
                continue
            self._handle(message)
        return self.state

    def cancel(self) -> None:
        """Stop the run; on return the job is cancelled (or had already ended) and its folder is gone."""
        if self.state != RUNNING:
            return
        self._cancel_requested.set()
        self._stop()
        self._join(timeout=30.0)
        self.poll()
        if self.state == RUNNING:
            self.state = CANCELLED
            self.message = "cancelled"
        self._remove_workdir()

    def result(self) -> WorkerResult:
        """The reconstruction (and uncertainty) of a finished job; the job's folder is removed after reading."""
        if self.state == RUNNING:
            self.wait()
        if self.state == CANCELLED:
            raise XDiffusionError("the reconstruction was cancelled")
        if self.state == FAILED:
            raise XDiffusionError(self.error or "the reconstruction failed")
        try:
            reconstruction = _read_output(self.outputs["reconstruction"])
            uncertainty = _read_output(self.outputs["uncertainty"]) if "uncertainty" in self.outputs else None
        except KeyError:
            raise XDiffusionError("the worker reported no reconstruction file") from None
        finally:
            self._remove_workdir()
        return WorkerResult(reconstruction, uncertainty)

    def close(self) -> None:
        """Cancel if still running and remove the job's folder."""
        if self.state == RUNNING:
            self.cancel()
        self._remove_workdir()

    # Internals ---------------------------------------------------------------------------------

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "progress":
            self.fraction = float(message.get("fraction", self.fraction))
            self.message = str(message.get("message", ""))
        elif kind == "log":
            if message.get("message"):
                self.log.append(str(message["message"]))
        elif kind == "error":
            self._error_reported = str(message.get("message", "the reconstruction failed"))
        elif kind == "done":
            self.outputs = dict(message.get("outputs", {}))
        elif kind == "exit":
            self._finish(message.get("returncode"))

    def _finish(self, returncode) -> None:
        if self._cancel_requested.is_set():
            self.state, self.message = CANCELLED, "cancelled"
        elif returncode == 0 and self.outputs and self._error_reported is None:
            self.state, self.fraction, self.message = DONE, 1.0, "finished"
            return
        else:
            self.state = FAILED
            self.error = self._error_reported or self._crash_reason(returncode)
            self.message = "failed"
        self._remove_workdir()

    def _crash_reason(self, returncode) -> str:
        if isinstance(returncode, int) and returncode < 0:
            how = f"was killed by signal {-returncode}"
            if -returncode == getattr(signal, "SIGKILL", 9):
                how += " (often: out of memory)"
        else:
            how = f"stopped with exit code {returncode}"
        last = next((line for line in reversed(self.log) if line.strip()), "")
        return f"the reconstruction process {how} without a result" + (f"; last output: {last[:200]}" if last else "")

    def _remove_workdir(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def _read_output(path: str) -> Volume:
    # Our own files: read as they are (an uncertainty of all zeros is a valid result, which the
    # user-input reader read_volume would reject as "constant").
    import SimpleITK as sitk

    from ..io.readers import image_to_volume

    try:
        return image_to_volume(sitk.ReadImage(str(path)))
    except RuntimeError as error:
        raise XDiffusionError(f"{path}: cannot read the worker's output ({str(error).strip().splitlines()[-1][:160]})") from None


class _ProcessJob(WorkerJob):
    def __init__(self, workdir: Path, settings: JobSettings, process: subprocess.Popen):
        super().__init__(workdir, settings)
        self.process = process
        self._reader = threading.Thread(target=self._read, name="xdiffusion-worker-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self.process.stdout
        try:
            for line in iter(stream.readline, ""):
                self._queue.put(decode(line))
        except (ValueError, OSError, UnicodeDecodeError):
            pass  # stream closed under us (process killed)
        finally:
            returncode = self.process.wait()
            self._queue.put({"type": "exit", "returncode": returncode})

    def _stop(self) -> None:
        kill_process_tree(self.process)

    def _join(self, timeout: float | None) -> None:
        self._reader.join(timeout)


class _ThreadJob(WorkerJob):
    def __init__(self, workdir: Path, settings: JobSettings, request: Request):
        super().__init__(workdir, settings)
        self._thread = threading.Thread(target=self._run, args=(request,), name="xdiffusion-worker", daemon=True)
        self._thread.start()

    def _run(self, request: Request) -> None:
        from .run import Cancelled, describe_failure, run_request

        returncode = 0
        try:
            run_request(request, self._queue.put, should_stop=self._cancel_requested.is_set)
        except Cancelled:
            returncode = 1
        except XDiffusionError as error:
            self._queue.put(error_message(describe_failure(error)))
            returncode = 2
        except BaseException as error:  # noqa: BLE001 - reported as the job's error
            self._queue.put(error_message(describe_failure(error)))
            returncode = 1
        self._queue.put({"type": "exit", "returncode": returncode})

    def _stop(self) -> None:
        pass  # the run checks the cancel flag at its next progress report

    def _join(self, timeout: float | None) -> None:
        self._thread.join(timeout)


def kill_process_tree(process: subprocess.Popen, grace: float = 3.0) -> None:
    """End ``process`` and everything in its process group: terminate, then kill after ``grace`` s."""
    if process.poll() is not None:
        return
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False)
    else:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                # The worker leads its own process group (see __main__), so this reaches its children too.
                os.killpg(process.pid, sig)
            except (ProcessLookupError, PermissionError):
                try:
                    process.send_signal(sig)
                except ProcessLookupError:
                    pass
            try:
                process.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()


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
        from ..io import write_volume

        settings = settings.check()
        workdir = Path(tempfile.mkdtemp(prefix="xdiffusion-"))
        try:
            input_path = write_volume(volume, workdir / INPUT_NAME)
            request = Request(str(input_path), str(workdir), settings)
            request_path = write_request(request, workdir / REQUEST_NAME)
            if self.mode == "inprocess":
                return _ThreadJob(workdir, settings, request)
            return _ProcessJob(workdir, settings, self._launch(request_path))
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
        command = self.command(request_path)
        if self.mode == "slicer":
            import slicer.util

            update = self._environment_update(slicer.util.startupEnvironment())
            return slicer.util.launchConsoleProcess(command, useStartupEnvironment=True, updateEnvironment=update)
        environment = dict(os.environ)
        environment.update(self._environment_update(environment))
        return subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, encoding="utf-8", errors="replace", env=environment,
            start_new_session=os.name != "nt",
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0) if os.name == "nt" else 0,
        )
