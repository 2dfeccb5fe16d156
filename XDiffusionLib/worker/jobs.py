"""A running reconstruction as the caller sees it: its state, progress, log and result.

``WorkerJob`` is what ``WorkerLauncher.start`` returns (states: running -> done | failed |
cancelled); ``ProcessJob`` follows a worker process through its output (read as UTF-8 with
undecodable bytes replaced: a Windows code page or a user name in a path must not stop the reader,
or the progress freezes and the worker blocks on a full pipe), ``ThreadJob`` runs the same request
in a thread of this process. The job owns its private folder and removes it when it fails, is
cancelled, or after its results are read. Process jobs still running when the host process exits
are ended with their whole process tree (``atexit``, registered by the first one, not on import:
3D Slicer imports its modules at startup).
"""

from __future__ import annotations

import atexit
import queue
import shutil
import signal
import subprocess
import threading
import time
import weakref
from collections import deque
from pathlib import Path
from typing import Any

from ..errors import XDiffusionError
from ..sampling.result import ReconstructionResult, read_result
from .messages import REQUEST_NAME, JobSettings, Request, decode, error_message
from .processes import kill_process_tree
from .run import Cancelled, describe_failure, run_request

RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"
_LOG_LINES = 40


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

    def result(self) -> ReconstructionResult:
        """The reconstruction, its uncertainty and what that means (``info``, from the uncertainty's
        header: the run's own, as the reconstructor made it) of a finished job; the job's folder is
        removed after reading."""
        if self.state == RUNNING:
            self.wait()
        if self.state == CANCELLED:
            raise XDiffusionError("the reconstruction was cancelled")
        if self.state == FAILED:
            raise XDiffusionError(self.error or "the reconstruction failed")
        try:
            missing = [name for name in ("reconstruction", "uncertainty") if name not in self.outputs]
            if missing:
                raise XDiffusionError(f"the worker reported no {' and no '.join(missing)} file")
            return read_result(self.outputs["reconstruction"], self.outputs["uncertainty"])
        finally:
            self._remove_workdir()

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


class ProcessJob(WorkerJob):
    """A job run by a worker process: its output is read line by line in a thread."""

    def __init__(self, workdir: Path, settings: JobSettings, process: subprocess.Popen):
        super().__init__(workdir, settings)
        self.process = process
        _track(self)
        self._reader = threading.Thread(target=self._read, name="xdiffusion-worker-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self.process.stdout  # bytes: each line is decoded here, never strictly
        try:
            for raw in iter(stream.readline, b""):
                self._queue.put(decode(raw.decode("utf-8", errors="replace")))
        except (ValueError, OSError):
            pass  # stream closed under us (process killed)
        finally:
            returncode = self.process.wait()
            self._queue.put({"type": "exit", "returncode": returncode})

    def _stop(self) -> None:
        kill_process_tree(self.process, marker=str(self.workdir / REQUEST_NAME))

    def _join(self, timeout: float | None) -> None:
        self._reader.join(timeout)


class ThreadJob(WorkerJob):
    """A job run in a thread of this process (no model isolation); cancel takes effect at its next
    progress report."""

    def __init__(self, workdir: Path, settings: JobSettings, request: Request):
        super().__init__(workdir, settings)
        self._thread = threading.Thread(target=self._run, args=(request,), name="xdiffusion-worker", daemon=True)
        self._thread.start()

    def _run(self, request: Request) -> None:
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


# Jobs whose process may still run: ended when the host process exits (Slicer quitting, a console
# closing), so no worker keeps computing, or keeps its folder, for nobody.
_LIVE_JOBS: "weakref.WeakSet[ProcessJob]" = weakref.WeakSet()
_AT_EXIT: list = []  # the handler, once registered


def _track(job: "ProcessJob") -> None:
    _LIVE_JOBS.add(job)
    if not _AT_EXIT:
        _AT_EXIT.append(atexit.register(_end_live_jobs))


def _end_live_jobs() -> None:
    for job in list(_LIVE_JOBS):
        if job.process.poll() is None:
            job._cancel_requested.set()
            kill_process_tree(job.process, grace=1.0, marker=str(job.workdir / REQUEST_NAME))
        job._remove_workdir()
