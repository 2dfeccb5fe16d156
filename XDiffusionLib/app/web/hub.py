"""The front server of ``xdiffusion app``: one private session process per browser tab.

trame keeps a single state per server and mirrors it to every connected client, so two tabs on
one trame server would overwrite each other's volume, slices and results. The hub therefore
listens on the one public address and, for every tab that opens ``/``, starts a session process
(``session.py``, its own Slicer scene and state, bound to 127.0.0.1 on a free port) and sends
the tab to ``/s/<token>/``; everything under that prefix (page, websocket, uploads, downloads) is
forwarded to that tab's process.

Only the app's own page starts sessions (each costs a process and most of a GB): ``GET /`` only
returns a small page that asks for one with ``POST /session``, carrying a signed start token from
that page in a custom header. Any web page can make a browser send background GETs (and simple
POSTs) to the app, but it can neither read the token nor send the header without the app's
consent, and the hub also refuses requests whose ``Origin`` or ``Sec-Fetch-Site`` say they come
from another site; the same check guards every websocket and every non-GET request. No hub page
may be framed by another site. Consequences, by design:
- a reload keeps its session; a second tab, or a duplicated one, gets a new session (and if a
  second tab ever does join a session, the older tab is disconnected: one live tab per session);
- a crashed or stopped session only affects its own tab (its URL then says so, with a link);
- at most ``max_sessions`` run at once (memory); a further tab gets a clear "busy" page;
- one spare session is kept started, so a new tab does not wait for Slicer's libraries to load;
- a session stops ``session_timeout`` seconds after its tab closed (the hub counts its websockets);
  all stop with the hub, and a session whose hub vanished stops by itself (its stdin closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import html
import logging
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from ...errors import XDiffusionError
from ...io.atomic import process_alive
from .origins import (SESSION_KEY_ENV, SESSION_KEY_HEADER, changes_something, is_loopback, request_is_local,
                      same_site, short_path)
from .session import FAVICON, READY_PREFIX
from .transfer import megabytes

log = logging.getLogger("xdiffusion.hub")

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])  # the folder that holds XDiffusionLib
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade", "host"}
_RELOAD_GRACE_S = 3.0
START_HEADER = "X-XDiffusion-Start"  # carries the start token; a custom header needs CORS consent
_START_TOKEN_S = 600.0  # a landing page's token starts a session within this many seconds
# On every hub answer: no framing by other sites (a framed landing page would start sessions) and
# no session address in the Referer of a link followed from the page.
# Each session's files (uploads, exports, its worker's temporaries) live in one folder the hub makes
# and removes when the session ends, however it ended; the name carries the hub's process id so a
# later hub can remove the folders of a hub that was killed.
_FOLDER_PREFIX = "xdiffusion-web-"
_FOLDER_NAME = re.compile(re.escape(_FOLDER_PREFIX) + r"(\d+)-")
_SECURITY_HEADERS = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'",
                     "Referrer-Policy": "same-origin", "X-Content-Type-Options": "nosniff"}


@dataclass
class Session:
    token: str
    process: asyncio.subprocess.Process
    port: int = 0
    key: str = ""  # the secret the session's port requires on every request (``origins``)
    folder: Path | None = None  # its files, removed by the hub when it ends
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


@dataclass(frozen=True)
class HubSettings:
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


class Hub:
    def __init__(self, settings: HubSettings):
        self.settings = settings
        self.sessions: dict[str, Session] = {}
        self._client: aiohttp.ClientSession | None = None
        self._starting = 0
        self._spares: list[asyncio.Future] = []  # sessions being started or ready for the next tab
        self._background: list[asyncio.Task] = []
        # Every session process started and not yet ended, with its folder.
        self._processes: dict[asyncio.subprocess.Process, Path] = {}
        self._closing = False
        self._secret = secrets.token_bytes(32)  # signs start tokens; new at every start of the hub

    # -- app -------------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        middlewares = ([_local_host_only] if is_loopback(self.settings.host) else []) + [_same_site_only]
        app = web.Application(client_max_size=1 << 20, middlewares=middlewares)
        app.add_routes([
            web.get("/", self.landing),
            web.post("/session", self.new_session),
            web.get("/status", self.status),
            # The landing page's icon (a browser asks /favicon.ico of any page that names none).
            web.get("/favicon.svg", _favicon),
            web.get("/favicon.ico", _favicon),
            web.route("*", "/s/{token}", self.add_slash),
            web.route("*", "/s/{token}/{tail:.*}", self.forward),
        ])
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._shutdown)
        app.on_response_prepare.append(_add_security_headers)
        return app

    async def _startup(self, _app) -> None:
        sweep_session_folders()
        self._client = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None))
        self._background.append(asyncio.ensure_future(self._expire_idle()))
        self._keep_spare()

    async def _shutdown(self, _app) -> None:
        self._closing = True
        for task in self._background:
            task.cancel()
        for spare in self._spares:
            spare.cancel()
        await asyncio.gather(*self._spares, *self._background, return_exceptions=True)
        await asyncio.gather(*(self._stop(s) for s in list(self.sessions.values())), return_exceptions=True)
        # Sessions still starting (a spare) have no Session entry yet.
        for process in list(self._processes):
            await self._stop(Session("", process))
        if self._client is not None:
            await self._client.close()

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
                    await self._stop(session)

    # -- sessions --------------------------------------------------------------------------------

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
            await self._stop(session)
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

    async def _stop(self, session: Session, grace: float = 8.0) -> None:
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

    # -- routes ----------------------------------------------------------------------------------

    # -- starting sessions -------------------------------------------------------------------------

    def start_token(self, now: float | None = None) -> str:
        """A token the landing page sends back to start one session (signed, valid a few minutes)."""
        issued = str(int(time.time() if now is None else now))
        return f"{issued}.{hmac.new(self._secret, issued.encode(), hashlib.sha256).hexdigest()}"

    def token_valid(self, token: str, now: float | None = None) -> bool:
        issued, _, signature = str(token or "").partition(".")
        expected = hmac.new(self._secret, issued.encode(), hashlib.sha256).hexdigest()
        if not issued.isdigit() or not hmac.compare_digest(signature, expected):
            return False
        return 0 <= (time.time() if now is None else now) - int(issued) <= _START_TOKEN_S

    async def landing(self, _request: web.Request) -> web.Response:
        """The page at ``/``: it asks for a session (``POST /session``) and goes there. Starts nothing."""
        return web.Response(text=_LANDING.replace("{token}", self.start_token()), content_type="text/html",
                            headers={"Cache-Control": "no-store"})

    async def new_session(self, request: web.Request) -> web.Response:
        """``POST /session`` from the landing page: JSON ``{"url": ...}``, or ``{"title", "message"}``
        with status 403 (not the app's own page), 503 (all sessions in use) or 500."""
        if not self.token_valid(request.headers.get(START_HEADER, "")):
            return _refusal(403, "Open the app from its own address",
                            "Sessions start only from the app's own page: open its address (or reload it).")
        assigned = sum(s.alive and s.assigned for s in self.sessions.values())
        if assigned + self._starting >= self.settings.max_sessions:
            return _refusal(503, "All sessions are in use",
                            f"This app serves {self.settings.max_sessions} browser tab(s) at once "
                            f"(--max-sessions {self.settings.max_sessions}), each with its own session. "
                            "Close another XDiffusion tab, wait a minute for it to end, then reload this page.")
        self._starting += 1
        try:
            session = await self._take_session()
            session.assigned, session.idle_since = True, asyncio.get_running_loop().time()
        except XDiffusionError as error:
            return _refusal(500, "The session could not start", str(error))
        finally:
            self._starting -= 1
        self._keep_spare()
        return web.json_response({"url": f"/s/{session.token}/"}, headers={"Cache-Control": "no-store"})

    async def status(self, _request: web.Request) -> web.Response:
        return web.json_response({"sessions": sum(s.alive and s.assigned for s in self.sessions.values()),
                                  "spare": sum(s.alive and not s.assigned for s in self.sessions.values()),
                                  "max_sessions": self.settings.max_sessions,
                                  "max_upload_bytes": self.settings.max_upload_bytes})

    async def add_slash(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently(f"/s/{request.match_info['token']}/")

    async def forward(self, request: web.Request) -> web.StreamResponse:
        token, tail = request.match_info["token"], request.match_info["tail"]
        session = self.sessions.get(token)
        if session is None or not session.alive or not session.assigned:
            return _page(404, "This session has ended",
                         'Sessions end a minute after their tab is closed, or when the app restarts. '
                         '<a href="/">Open a new session</a>.', escape=False)
        if tail == "ws" and request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._forward_websocket(request, session)
        if tail in ("", "index.html") and request.method == "GET" and session.sockets and not _is_reload(request):
            # This session's tab is open and this is not that tab reloading: a second tab (or a
            # duplicated one) gets a session of its own.
            raise web.HTTPSeeOther("/")
        if tail == "upload" and (request.content_length or 0) > self.settings.max_upload_bytes:
            name = request.query.get("name", "the file")
            return web.json_response(
                {"ok": False, "error": f"{name}: the file is larger than the upload limit of "
                                       f"{megabytes(self.settings.max_upload_bytes)} "
                                       f"({megabytes(request.content_length)}); start the app with a larger "
                                       "--max-upload-mb, or load it from a path on the server"},
                status=413)
        return await self._forward_http(request, session, tail)

    async def _forward_http(self, request: web.Request, session: Session, tail: str) -> web.StreamResponse:
        url = f"http://127.0.0.1:{session.port}/{tail}"
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in _HOP_BY_HOP and k.lower() != SESSION_KEY_HEADER.lower()}
        headers[SESSION_KEY_HEADER] = session.key
        # Where the page lives for the browser: the session answers trame's launcher request
        # (``paraview/``) with the websocket address under this prefix.
        headers["X-XDiffusion-Prefix"] = f"/s/{session.token}/"
        headers.setdefault("X-Forwarded-Proto", request.scheme)
        data = request.content if request.body_exists else None
        try:
            async with self._client.request(request.method, url, params=request.query, headers=headers, data=data,
                                            allow_redirects=False) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for key, value in upstream.headers.items():
                    if key.lower() not in _HOP_BY_HOP:
                        response.headers.add(key, value)
                if tail in ("", "index.html"):
                    # A page from the browser's cache would join this session without asking the hub.
                    for key in ("Cache-Control", "ETag", "Last-Modified"):
                        response.headers.popall(key, None)
                    response.headers["Cache-Control"] = "no-store"
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(1 << 16):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except aiohttp.ClientError as error:
            return _page(502, "The session did not answer", f"{type(error).__name__}: {error}")

    async def _forward_websocket(self, request: web.Request, session: Session) -> web.WebSocketResponse:
        # One live tab per session: a reloading tab's old page closes its socket right after the
        # new page loads; any other older socket is closed so two tabs never drive one session.
        for _ in range(int(_RELOAD_GRACE_S / 0.1)):
            if not session.browsers:
                break
            await asyncio.sleep(0.1)
        for old in list(session.browsers):
            await old.close(code=4001, message=b"this session was opened in another tab")
        browser = web.WebSocketResponse(max_msg_size=0, compress=False)
        await browser.prepare(request)
        session.browsers.append(browser)
        try:
            async with self._client.ws_connect(f"ws://127.0.0.1:{session.port}/ws", max_msg_size=0, compress=0,
                                               headers={SESSION_KEY_HEADER: session.key}) as upstream:
                await _pump_both(browser, upstream)
        except aiohttp.ClientError as error:
            log.info("session %s websocket: %s", session.token[:6], error)
        finally:
            session.browsers.remove(browser)
            session.idle_since = asyncio.get_running_loop().time()
            await browser.close()
        return browser


async def _pump(source, sink) -> None:
    async for message in source:
        if message.type == aiohttp.WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type == aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        else:
            break


async def _pump_both(browser, upstream) -> None:
    tasks = [asyncio.ensure_future(_pump(browser, upstream)), asyncio.ensure_future(_pump(upstream, browser))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


_LANDING = """<!doctype html><html><head><meta charset='utf-8'><title>XDiffusion</title>
<link rel='icon' type='image/svg+xml' href='/favicon.svg'></head>
<body style='font-family: sans-serif; margin: 3em;'><h2 id='xd-hub-title'>XDiffusion</h2>
<p id='xd-hub-message'>Starting a session for this tab&hellip;</p>
<noscript><p>This app needs JavaScript.</p></noscript>
<script>
(async () => {
  const title = document.getElementById('xd-hub-title'), text = document.getElementById('xd-hub-message');
  try {
    const answer = await fetch('/session', {method: 'POST', headers: {'X-XDiffusion-Start': '{token}'},
                                            credentials: 'same-origin', cache: 'no-store'});
    const body = await answer.json();
    if (answer.ok && body.url) { location.replace(body.url); return; }
    document.title = 'XDiffusion: ' + body.title;
    title.textContent = body.title;
    text.textContent = body.message;
  } catch (error) {
    title.textContent = 'The app did not answer';
    text.textContent = String(error) + ': reload this page to try again.';
  }
})();
</script></body></html>"""


async def _favicon(_request: web.Request) -> web.Response:
    return web.Response(body=FAVICON.read_bytes(), content_type="image/svg+xml",
                        headers={"Cache-Control": "max-age=86400"})


def _refusal(status: int, title: str, message: str) -> web.Response:
    return web.json_response({"title": title, "message": message}, status=status,
                             headers={"Cache-Control": "no-store"})


@web.middleware
async def _same_site_only(request: web.Request, handler):
    """Websockets and anything but GET/HEAD only from the app's own pages (see ``same_site``)."""
    if changes_something(request) and not same_site(request):
        # The path holds the session token: only its start goes to the log.
        log.info("refused %s %s from %s", request.method, short_path(request.path), request.headers.get("Origin", "?"))
        return _page(403, "Refused", "Requests from other web sites are refused.")
    return await handler(request)


async def _add_security_headers(_request: web.Request, response: web.StreamResponse) -> None:
    for key, value in _SECURITY_HEADERS.items():
        response.headers[key] = value


@web.middleware
async def _local_host_only(request: web.Request, handler):
    """Served on this computer only: refuse requests addressed to another host name. A web page
    elsewhere whose name was made to resolve to 127.0.0.1 (DNS rebinding) could otherwise drive
    the app, which opens files by their path on this computer."""
    if not request_is_local(request):
        return _page(403, "Wrong address", "This app serves this computer only: open it as http://127.0.0.1 or "
                     "http://localhost, or start it with --host to serve other computers.")
    return await handler(request)


def _is_reload(request: web.Request) -> bool:
    """Browsers revalidate the page they reload (Cache-Control: max-age=0 or no-cache); a new tab
    opening the address does not."""
    control = request.headers.get("Cache-Control", "").lower()
    return "max-age=0" in control or "no-cache" in control or "no-cache" in request.headers.get("Pragma", "").lower()


def _page(status: int, title: str, text: str, escape: bool = True) -> web.Response:
    body = html.escape(text) if escape else text
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>XDiffusion: {html.escape(title)}</title></head>"
            f"<body style='font-family: sans-serif; margin: 3em;'><h2>{html.escape(title)}</h2>"
            f"<p id='xd-hub-message'>{body}</p></body></html>")
    return web.Response(status=status, text=page, content_type="text/html")


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


def serve(settings: HubSettings) -> int:
    """Run the hub until interrupted (Ctrl-C / SIGTERM); every session stops with it."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    hub = Hub(settings)
    url_host = f"[{settings.host}]" if ":" in settings.host else settings.host

    def announce(_message: str) -> None:
        print(f"XDiffusion web app: http://{url_host}:{settings.port}/  (Ctrl-C to stop)", flush=True)
        if settings.allow_server_paths:
            print("server paths: the page may open files inside " + ", ".join(map(str, settings.data_roots)),
                  flush=True)
        if not is_loopback(settings.host):
            print("warning: the app is reachable from other computers on this network; it has no login "
                  "(see docs/security.md). "
                  + ("Anyone who can reach it can open the files inside those folders."
                     if settings.allow_server_paths else "Loading paths on the server is off."), flush=True)

    try:
        web.run_app(hub.make_app(), host=settings.host, port=settings.port, print=announce, access_log=None,
                    handle_signals=True)
    except OSError as error:
        raise XDiffusionError(f"cannot listen on {settings.host}:{settings.port} ({error.strerror or error}): "
                              "choose another --port or --host") from None
    return 0
