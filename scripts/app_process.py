"""Start `xdiffusion app` in a process of its own on a free local port and wait until it answers:
the one start-up used by the tools that drive the running app (scripts/web_screenshot.py,
bench/web_memory.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120


def start_app(model: str | None, log_path: Path, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """The app's process and its URL; SystemExit with the log's end if it does not start."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "XDiffusionLib.app.cli", "app", "--port", str(port), *extra]
    if model:
        command += ["--model", model]
    process = subprocess.Popen(command, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, cwd=REPO,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            urllib.request.urlopen(url + "/status", timeout=10).read()
            return process, url
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise SystemExit(f"the app did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
