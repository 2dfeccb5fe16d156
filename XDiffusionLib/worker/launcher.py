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
the outputs come out; the folder is removed when the job fails or is cancelled, and after the
results are read. Progress arrives through ``poll()`` (non-blocking, call it from a GUI timer) or
``wait()``. The output is read as UTF-8 with undecodable bytes replaced (a Windows code page or a
user name in a path must not stop the reader, or the progress freezes and the worker blocks on a
full pipe).

Ending a run ends every process of it (``kill_process_tree``). ``PythonSlicer`` is a launcher that
runs ``python-real`` as its child and forwards no signal, and the worker leaves the launcher's
process group (``os.setsid`` in ``__main__``), so signalling the launcher's group is not enough: the
process is started in a session of its own, and its descendants and every process whose command
line names the job's request file (found even after the launcher is gone) are signalled with
their process groups (Windows: ``taskkill /T``). Jobs still running when the host process exits are
ended the same way (``atexit``, registered by the first worker process, not on import: 3D Slicer
imports its modules at startup).
"""

from __future__ import annotations

import atexit
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import deque
from pathlib import Path
from typing import Any

from ..errors import XDiffusionError
from ..io.volume import Volume
from ..sampling.result import ReconstructionResult, read_result
from .messages import INPUT_NAME, REQUEST_NAME, JobSettings, Request, decode, error_message, write_request

MODES = ("auto", "slicer", "subprocess", "inprocess")
RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder that holds XDiffusionLib
_LOG_LINES = 40


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


class _ProcessJob(WorkerJob):
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


def kill_process_tree(process: subprocess.Popen, grace: float = 3.0, marker: str | None = None) -> None:
    """End ``process``, its descendants and (with ``marker``) every process whose command line
    contains ``marker``, each with its process group: terminate, then kill after ``grace`` s."""
    if os.name == "nt":
        if process.poll() is None:
            # No console window flashing up on every Cancel (Slicer is a GUI process).
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False,
                           creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    else:
        # Found before any signal: once the launcher is gone its children belong to init.
        targets = _job_processes(process, marker)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            targets |= _job_processes(process, marker)
            _signal_all(targets, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and _alive(targets, process):
                time.sleep(0.05)
            targets = _alive(targets, process)
            if not targets:
                break
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=grace)


def _job_processes(process: subprocess.Popen, marker: str | None) -> set[int]:
    table = _process_table()
    found = {process.pid} if process.poll() is None else set()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    stack = [process.pid]
    while stack:  # descendants, however deep
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    if marker:
        found |= {pid for pid, (_, command) in table.items() if marker in command}
    found.discard(os.getpid())
    return found


def _process_table() -> dict[int, tuple[int, str]]:
    """{pid: (parent pid, command line)} of the processes this user can see (zombies left out)."""
    table: dict[int, tuple[int, str]] = {}
    proc = Path("/proc")
    if (proc / "self" / "stat").exists():
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            except (OSError, IndexError):
                continue  # gone meanwhile
            if fields[0] != "Z":
                table[int(entry.name)] = (int(fields[1]), command)
        return table
    try:  # macOS and other Unix: ps
        listing = subprocess.run(["ps", "-A", "-ww", "-o", "pid=,ppid=,stat=,command="], capture_output=True,
                                 check=False, timeout=10).stdout.decode("utf-8", "replace")
    except (OSError, subprocess.SubprocessError):
        return table
    for line in listing.splitlines():
        parts = line.split(None, 3)
        if len(parts) >= 3 and parts[0].isdigit() and parts[1].isdigit() and not parts[2].startswith("Z"):
            table[int(parts[0])] = (int(parts[1]), parts[3] if len(parts) > 3 else "")
    return table


def _signal_all(pids: set[int], sig: int) -> None:
    own_group = os.getpgrp()
    groups = set()
    for pid in pids:
        try:
            groups.add(os.getpgid(pid))
        except (ProcessLookupError, PermissionError):
            pass
    for group in groups - {own_group}:  # never the group of the caller itself
        try:
            os.killpg(group, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _alive(pids: set[int], process: subprocess.Popen) -> set[int]:
    """Those of ``pids`` still running (``process`` itself is our child: polling reaps it)."""
    table = _process_table()
    return {pid for pid in pids if (process.poll() is None if pid == process.pid else pid in table)}


# Jobs whose process may still run: ended when the host process exits (Slicer quitting, a console
# closing), so no worker keeps computing, or keeps its folder, for nobody.
_LIVE_JOBS: "weakref.WeakSet[_ProcessJob]" = weakref.WeakSet()
_AT_EXIT: list = []  # the handler, once registered


def _track(job: "_ProcessJob") -> None:
    _LIVE_JOBS.add(job)
    if not _AT_EXIT:
        _AT_EXIT.append(atexit.register(_end_live_jobs))


def _end_live_jobs() -> None:
    for job in list(_LIVE_JOBS):
        if job.process.poll() is None:
            job._cancel_requested.set()
            kill_process_tree(job.process, grace=1.0, marker=str(job.workdir / REQUEST_NAME))
        job._remove_workdir()


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
        if self.mode == "slicer":
            import slicer.util

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
