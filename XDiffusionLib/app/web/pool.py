"""The hub's session pool: one private session process per browser tab.

Each session is a process of ``session.py`` (its own Slicer scene and state, bound to 127.0.0.1 on
a free port it announces on stdout), started with a secret it must see on every request (its port
is open to every local program) and a folder of its own for its files, which the pool removes
whenever the process ends, however it ended. The folder's name carries the hub's process id, so a
later hub removes the folders of a hub that was killed (``sweep_session_folders``).

- One spare session is kept started, so a new tab does not wait for Slicer's libraries to load.
- At most ``max_sessions`` run at once (memory); ``full`` says when a further tab must wait.
- A tab's session stops ``session_timeout`` seconds after its last websocket closed (``expire_idle``);
  all stop with the hub (``close``), and a session whose hub vanished stops by itself (its stdin closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import XDiffusionError
from ...io.atomic import process_alive
from .origins import SESSION_KEY_ENV
from .session import READY_PREFIX

log = logging.getLogger("xdiffusion.hub")

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])  # the folder that holds XDiffusionLib
_FOLDER_PREFIX = "xdiffusion-web-"
_FOLDER_NAME = re.compile(re.escape(_FOLDER_PREFIX) + r"(\d+)-")


@dataclass(frozen=True)
class HubSettings:
    """How the hub listens (``host``, ``port``) and starts its sessions (everything else)."""

    host: str = "127.0.0.1"
    port: int = 8080
    model_dir: str | None = None
    max_upload_bytes: int = 512 << 20
    max_sessions: int = 4
    session_timeout: int = 60
    allow_server_paths: bool = True
    data_roots: tuple[str, ...] = ()
    start_timeout: float = 180.0
    worker_mode: str = "subprocess"
    spare_sessions: int = 1


@dataclass
class Session:
    token: str
    process: asyncio.subprocess.Process
    port: int = 0
    key: str = ""  # the secret the session's port requires on every request (``origins``)
    folder: Path | None = None  # its files, removed by the pool when it ends
    browsers: list = field(default_factory=list)  # its tab's open websockets (at most one kept)
    assigned: bool = False  # handed to a tab (not a spare)
    idle_since: float = 0.0  # monotonic time its last websocket closed (or it was handed out)
    tasks: list = field(default_factory=list)

    @property
    def sockets(self) -> int:
        return len(self.browsers)

    @property
    def alive(self) -> bool:
        return self.process.returncode is None


class SessionPool:
    def __init__(self, settings: HubSettings):
        self.settings = settings
        self.sessions: dict[str, Session] = {}  # by token, started and not ended
        self._starting = 0  # tabs waiting for their session
        self._spares: list[asyncio.Future] = []  # sessions being started or ready for the next tab
        self._background: list[asyncio.Task] = []
        # Every session process started and not yet ended, with its folder.
        self._processes: dict[asyncio.subprocess.Process, Path] = {}
        self._closing = False

    # -- counts ----------------------------------------------------------------------------------

    def assigned_count(self) -> int:
        return sum(s.alive and s.assigned for s in self.sessions.values())

    def spare_count(self) -> int:
        return sum(s.alive and not s.assigned for s in self.sessions.values())

    def full(self) -> bool:
        """Every session the hub may run is a tab's, or about to be."""
        return self.assigned_count() + self._starting >= self.settings.max_sessions

    def get(self, token: str) -> Session | None:
        """The tab's session of ``token``, if it runs."""
        session = self.sessions.get(token)
        return session if session is not None and session.alive and session.assigned else None

    # -- the hub's life --------------------------------------------------------------------------

    def open(self) -> None:
        """At the hub's start: remove what killed hubs left, start the idle watch and a spare."""
        sweep_session_folders()
        self._background.append(asyncio.ensure_future(self._expire_idle()))
        self._keep_spare()

    async def close(self) -> None:
        """Stop every session, spares and sessions still starting included."""
        self._closing = True
        for task in self._background:
            task.cancel()
        for spare in self._spares:
            spare.cancel()
        await asyncio.gather(*self._spares, *self._background, return_exceptions=True)
        await asyncio.gather(*(self.stop(s) for s in list(self.sessions.values())), return_exceptions=True)
        # Sessions still starting (a spare) have no Session entry yet.
        for process in list(self._processes):
            await self.stop(Session("", process))

    # -- handing sessions to tabs ----------------------------------------------------------------

    async def assign(self) -> Session:
        """A started session for a new tab (the spare when there is one), marked as the tab's."""
        self._starting += 1
        try:
            session = await self._take_session()
            session.assigned, session.idle_since = True, asyncio.get_running_loop().time()
        finally:
            self._starting -= 1
        self._keep_spare()
        return session

    def _keep_spare(self) -> None:
        """Start a spare session when there is none and the limit allows it."""
        if self._closing:
            return
        self._spares = [f for f in self._spares if not f.done() or (not f.cancelled() and not f.exception()
                                                                     and f.result().alive)]
        alive = sum(s.alive for s in self.sessions.values())
        starting = sum(not f.done() for f in self._spares)
        if len(self._spares) < self.settings.spare_sessions and alive + starting < self.settings.max_sessions:
            self._spares.append(asyncio.ensure_future(self.start_session()))

    async def _take_session(self) -> Session:
        """A started session for a new tab: the spare when there is one, else a new one."""
        while self._spares:
            spare = self._spares.pop(0)
            try:
                session = await spare
            except (XDiffusionError, asyncio.CancelledError):
                continue
            if session.alive:
                return session
        return await self.start_session()

    async def _expire_idle(self) -> None:
        """Stop every tab's session ``session_timeout`` seconds after its last websocket closed."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(5.0, self.settings.session_timeout / 4))
            now = loop.time()
            for session in list(self.sessions.values()):
                idle = now - session.idle_since
                if session.assigned and not session.sockets and idle > self.settings.session_timeout:
                    log.info("session %s idle for %ds: stopping it", session.token[:6], self.settings.session_timeout)
                    await self.stop(session)

    # -- processes -------------------------------------------------------------------------------

    def session_command(self, folder: Path | None = None) -> list[str]:
        s = self.settings
        command = [sys.executable, "-m", "XDiffusionLib.app.web.session", "--port", "0", "--timeout", "0",
                   "--watch-stdin", "--max-upload-bytes", str(s.max_upload_bytes),
                   "--worker-mode", s.worker_mode]
        if folder is not None:
            command += ["--workdir", str(folder)]
        if s.model_dir:
            command += ["--model", str(s.model_dir)]
        if s.allow_server_paths:
            command.append("--allow-server-paths")
            for root in s.data_roots:
                command += ["--data-root", str(root)]
        return command

    async def start_session(self) -> Session:
        environment = dict(os.environ)
        paths = [_PACKAGE_ROOT] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p]
        # The session's port is reachable by every local program and, through a browser, by every
        # web page: it serves only requests carrying this secret, which only the hub holds.
        key = secrets.token_urlsafe(32)
        environment.update({"PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1", SESSION_KEY_ENV: key})
        folder = Path(tempfile.mkdtemp(prefix=f"{_FOLDER_PREFIX}{os.getpid()}-"))
        try:
            process = await asyncio.create_subprocess_exec(
                *self.session_command(folder), stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.PIPE,
                env=environment, start_new_session=os.name != "nt")
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self._processes[process] = folder
        # Lower-case hex: trame's client lower-cases the websocket address the session gives it
        # (``session._session_manager_answer``), so the token must survive that.
        session = Session(secrets.token_hex(16), process, key=key, folder=folder)
        try:
            session.port = await asyncio.wait_for(self._read_port(process), self.settings.start_timeout)
        except (asyncio.TimeoutError, XDiffusionError) as error:
            await self.stop(session)
            raise XDiffusionError(f"the session process did not start: {error or 'timed out'}") from None
        session.tasks = [asyncio.ensure_future(self._drain(process)), asyncio.ensure_future(self._reap(session))]
        self.sessions[session.token] = session
        log.info("session %s started on port %d (pid %d)", session.token[:6], session.port, process.pid)
        return session

    @staticmethod
    async def _read_port(process) -> int:
        while True:
            line = await process.stdout.readline()
            if not line:
                code = await process.wait()
                raise XDiffusionError(f"it exited with code {code} (see the messages above)")
            text = line.decode("utf-8", "replace").strip()
            if text.startswith(READY_PREFIX):
                return int(text.split()[-1])
            if text:
                print(text, file=sys.stderr)

    @staticmethod
    async def _drain(process) -> None:
        # Keep the pipe flowing; the session's logs go to stderr, which the hub shares.
        while await process.stdout.read(1 << 16):
            pass

    async def _reap(self, session: Session) -> None:
        code = await session.process.wait()
        self._forget(session.process)  # also after a SIGKILL: its uploads do not outlive it
        log.info("session %s ended (exit code %s)", session.token[:6], code)
        self.sessions.pop(session.token, None)
        if not session.assigned:  # a spare died: start another
            self._keep_spare()

    async def stop(self, session: Session, grace: float = 8.0) -> None:
        process = session.process
        if process.returncode is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    if os.name != "nt":
                        os.killpg(process.pid, sig)
                    else:
                        process.kill()
                try:
                    await asyncio.wait_for(process.wait(), grace)
                    break
                except asyncio.TimeoutError:
                    continue
        self._forget(process)
        self.sessions.pop(session.token, None)

    def _forget(self, process) -> None:
        """An ended session process: remove its folder (uploaded volumes, results)."""
        folder = self._processes.pop(process, None)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def sweep_session_folders(parent: str | os.PathLike | None = None) -> list[Path]:
    """Remove the session folders (in the temporary folder) of hubs that have ended: a hub killed
    with SIGKILL could not remove its sessions' uploads. Returns what was removed."""
    parent = Path(parent or tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        match = _FOLDER_NAME.match(entry.name)
        if match and entry.is_dir(follow_symlinks=False) and not process_alive(int(match.group(1))):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed
