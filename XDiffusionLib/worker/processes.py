"""Ending a worker run's whole process tree, on every platform.

``PythonSlicer`` is a launcher that runs ``python-real`` as its child and forwards no signal, and the
worker leaves the launcher's process group (``os.setsid`` in ``__main__``), so signalling the
launcher's group is not enough: the descendants of the started process and every process whose
command line names a marker (the job's request file, found even after the launcher is gone) are
signalled with their process groups, SIGTERM then SIGKILL (Windows: ``taskkill /T``). The process
table comes from ``/proc`` where there is one, else from ``ps``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


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
