"""Start `xdiffusion app` in a process of its own on a free local port and wait until it answers:
the one start-up of everything that drives the running app (scripts/web_screenshot.py,
bench/web_memory.py, and the browser tests: Testing/test_web_app.py, which load this file)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120


class AppDidNotStart(RuntimeError):
    """The app exited, or did not answer /status in time; the message ends with its log's end."""


def launch_app(arguments: Sequence[str], log_path: Path, *, env: Mapping[str, str] | None = None,
               timeout_s: float = START_TIMEOUT_S, poll_s: float = 0.5) -> tuple[subprocess.Popen, str]:
    """``xdiffusion app --port PORT ARGUMENTS`` (its output in ``log_path``, ``env`` added to this
    process's environment) and its URL once /status answers; AppDidNotStart, the process killed,
    if it exits first or ``timeout_s`` passes."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "XDiffusionLib.app.cli", "app", "--port", str(port), *arguments]
    with open(log_path, "w") as log:  # the child keeps its own copy of the file
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url + "/status", timeout=10).read()
            return process, url
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AppDidNotStart(f"the app did not start:\n{log_path.read_text()[-3000:]}") from None
            time.sleep(poll_s)


def start_app(model: str | None, log_path: Path, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """The tools' start-up (the shipped model unless ``model``): SystemExit with the log's end if
    the app does not start, a tool's way of stopping with a message."""
    try:
        return launch_app([*extra, *(["--model", model] if model else [])], log_path)
    except AppDidNotStart as error:
        raise SystemExit(str(error)) from None
