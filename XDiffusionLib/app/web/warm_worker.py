"""A reconstruction worker process started and warmed before the user presses Reconstruct.

A cold worker spends its first seconds (tens of seconds on a busy machine) importing PyTorch and
diffusers, loading the weights and the anchor's template, while the page sits at "loading PyTorch
and the model". ``WarmLauncher`` starts the next worker as soon as the session starts (and again
after each run): the process does a tiny reconstruction with the session's model, so every import,
the weights' files and the template are in memory, writes a ready file, then waits on its stdin
for the path of a request. A run then goes to that process; it behaves exactly like ``python -m
XDiffusionLib.worker REQUEST.json`` from there on (the same protocol, progress, cancel and kill).
When there is no warm process (it failed, or a run is already using it) the run starts a cold one.
A waiting process ends when its stdin closes, so it never outlives its session.

``python -m XDiffusionLib.app.web.warm_worker --ready FILE [--model DIR]`` is the process itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ...io.volume import Volume
from ...worker.__main__ import main as worker_main
from ...worker.launcher import WorkerLauncher, kill_process_tree

log = logging.getLogger("xdiffusion.web")


class WarmLauncher(WorkerLauncher):
    """A ``WorkerLauncher`` (subprocess mode) that hands runs to a pre-started, warmed process."""

    def __init__(self, model_dir: str | None = None, python: str | None = None):
        super().__init__("subprocess", python=python)
        self.model_dir = model_dir
        self._folder = Path(tempfile.mkdtemp(prefix="xdiffusion-warm-"))
        self._process: subprocess.Popen | None = None
        self._ready: Path | None = None
        self._count = 0
        self.used_warm = False  # whether the last run went to a warm process

    def warm(self) -> None:
        """Start a warm process unless one is alive (waiting or warming up)."""
        if self._process is not None and self._process.poll() is None:
            return
        self._count += 1
        self._ready = self._folder / f"ready-{self._count}"
        command = [self._python(), "-m", "XDiffusionLib.app.web.warm_worker", "--ready", str(self._ready)]
        if self.model_dir:
            command += ["--model", str(self.model_dir)]
        environment = dict(os.environ)
        environment.update(self._environment_update(environment))
        # Its warm-up chatter goes to a file: nobody reads the pipe before a run, and a full pipe
        # would block the process.
        with open(self._folder / f"warm-{self._count}.log", "wb") as chatter:
            self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=chatter, env=environment, start_new_session=True)
        log.info("warming a reconstruction worker (pid %d)", self._process.pid)

    @property
    def is_warm(self) -> bool:
        """A process is waiting with everything loaded."""
        return (self._process is not None and self._process.poll() is None and self._ready is not None
                and self._ready.exists())

    @property
    def warm_pid(self) -> int | None:
        return self._process.pid if self.is_warm else None

    def _launch(self, request_path: Path) -> subprocess.Popen:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            try:
                process.stdin.write(f"{request_path}\n".encode("utf-8"))
                process.stdin.close()
            except OSError:
                process = None
            else:
                self.used_warm = True
                log.info("reconstruction in the warm worker process (pid %d)", process.pid)
                return process  # still warming up: it reads the request once it is ready
        self.used_warm = False
        log.info("no warm worker: starting a new reconstruction process")
        return super()._launch(request_path)

    def close(self) -> None:
        """End the waiting process (a running job is the job's to end) and remove the ready files."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            kill_process_tree(process, grace=1.0)
        shutil.rmtree(self._folder, ignore_errors=True)


def _warm_up(model_dir: str | None) -> None:
    """One tiny reconstruction: imports, weights, template and kernels, all loaded once."""
    # torch: only this warm worker process loads it, not the session that imports this module
    from ...sampling.reconstructor import reconstruct_volume

    i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in (20, 20, 16)], indexing="ij")
    head = np.where(i**2 + j**2 + k**2 < 0.7, 100.0 + 20.0 * i, 0.0).astype(np.float32)
    reconstruct_volume(Volume.from_array(head, (8.0, 8.0, 8.0)), "axial", [8], model_dir=model_dir, views=1, steps=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m XDiffusionLib.app.web.warm_worker")
    parser.add_argument("--ready", required=True, help="file written once everything is loaded")
    parser.add_argument("--model", default=None, help="model folder (default: the shipped weights)")
    args = parser.parse_args(argv)
    # Until the request comes, stdout belongs to nobody: a library's print must not reach the
    # protocol stream the session reads later (stderr is a log file until then).
    protocol = os.dup(1)
    os.dup2(2, 1)
    try:
        _warm_up(args.model)
    except Exception as error:  # noqa: BLE001 - a cold run reports the real problem itself
        print(f"warm-up failed ({type(error).__name__}: {error}); the run will load everything itself",
              file=sys.stderr)
    Path(args.ready).write_text(str(os.getpid()))
    line = sys.stdin.readline()
    if not line.strip():
        return 0  # the session ended without a run
    # From here on exactly a cold worker: stdout the protocol, stderr into the same pipe.
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(protocol, 1)
    os.dup2(protocol, 2)
    os.close(protocol)
    return worker_main([line.strip()])


if __name__ == "__main__":
    sys.exit(main())
