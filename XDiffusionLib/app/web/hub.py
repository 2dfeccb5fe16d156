"""The front server of ``xdiffusion app``: one private session process per browser tab.

trame keeps a single state per server and mirrors it to every connected client, so two tabs on
one trame server would overwrite each other's volume, slices and results. The hub therefore
listens on the one public address and, for every tab that opens ``/``, hands it a session process
(``session.py``, its own Slicer scene and state, bound to 127.0.0.1 on a free port) and sends the
tab to ``/s/<token>/``; everything under that prefix is forwarded to that tab's process.

The hub only routes; each idea has its module:
- ``pool``: the session processes (the spare, the limit, idle expiry, their folders);
- ``admission``: who may start a session (signed start tokens) and the hub's origin policy;
- ``proxy``: the reverse proxy to a tab's session (HTTP and websocket, one live tab per session);
- ``pages``: the landing page and the pages that say why something was refused or has ended.

Consequences, by design:
- a reload keeps its session; a second tab, or a duplicated one, gets a new session (and if a
  second tab ever does join a session, the older tab is disconnected: one live tab per session);
- a crashed or stopped session only affects its own tab (its URL then says so, with a link);
- at most ``max_sessions`` run at once (memory); a further tab gets a clear "busy" page;
- one spare session is kept started, so a new tab does not wait for Slicer's libraries to load;
- a session stops ``session_timeout`` seconds after its tab closed (the hub counts its websockets);
  all stop with the hub, and a session whose hub vanished stops by itself (its stdin closes).
"""

from __future__ import annotations

import logging

from aiohttp import web

from ...errors import XDiffusionError
from . import admission, pages
from .origins import is_loopback
from .pool import HubSettings, Session, SessionPool, sweep_session_folders
from .proxy import PAGE_TAILS, ReverseProxy, is_reload, is_websocket
from .transfer import megabytes

__all__ = ["Hub", "HubSettings", "Session", "is_loopback", "serve", "sweep_session_folders"]

log = logging.getLogger("xdiffusion.hub")


class Hub:
    def __init__(self, settings: HubSettings):
        self.settings = settings
        self.pool = SessionPool(settings)
        self.tokens = admission.StartTokens()
        self.proxy = ReverseProxy()

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 20,
                              middlewares=admission.middlewares(is_loopback(self.settings.host)))
        app.add_routes([
            web.get("/", self.landing),
            web.post("/session", self.new_session),
            web.get("/status", self.status),
            # The landing page's icon (a browser asks /favicon.ico of any page that names none).
            web.get("/favicon.svg", pages.favicon),
            web.get("/favicon.ico", pages.favicon),
            web.route("*", "/s/{token}", self.add_slash),
            web.route("*", "/s/{token}/{tail:.*}", self.forward),
        ])
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._shutdown)
        app.on_response_prepare.append(admission.add_security_headers)
        return app

    async def _startup(self, _app) -> None:
        self.proxy.open()
        self.pool.open()

    async def _shutdown(self, _app) -> None:
        await self.pool.close()
        await self.proxy.close()

    # -- routes ----------------------------------------------------------------------------------

    async def landing(self, _request: web.Request) -> web.Response:
        """The page at ``/``: it asks for a session (``POST /session``) and goes there. Starts nothing."""
        return pages.landing(admission.START_HEADER, self.tokens.issue())

    async def new_session(self, request: web.Request) -> web.Response:
        """``POST /session`` from the landing page: JSON ``{"url": ...}``, or ``{"title", "message"}``
        with status 403 (not the app's own page), 503 (all sessions in use) or 500."""
        if not self.tokens.valid(request.headers.get(admission.START_HEADER, "")):
            return pages.refusal(403, "Open the app from its own address",
                                 "Sessions start only from the app's own page: open its address (or reload it).")
        if self.pool.full():
            return pages.refusal(503, "All sessions are in use",
                                 f"This app serves {self.settings.max_sessions} browser tab(s) at once "
                                 f"(--max-sessions {self.settings.max_sessions}), each with its own session. "
                                 "Close another XDiffusion tab, wait a minute for it to end, then reload this page.")
        try:
            session = await self.pool.assign()
        except XDiffusionError as error:
            return pages.refusal(500, "The session could not start", str(error))
        return web.json_response({"url": f"/s/{session.token}/"}, headers={"Cache-Control": "no-store"})

    async def status(self, _request: web.Request) -> web.Response:
        return web.json_response({"sessions": self.pool.assigned_count(), "spare": self.pool.spare_count(),
                                  "max_sessions": self.settings.max_sessions,
                                  "max_upload_bytes": self.settings.max_upload_bytes})

    async def add_slash(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently(f"/s/{request.match_info['token']}/")

    async def forward(self, request: web.Request) -> web.StreamResponse:
        token, tail = request.match_info["token"], request.match_info["tail"]
        session = self.pool.get(token)
        if session is None:
            return pages.page(404, "This session has ended",
                              'Sessions end a minute after their tab is closed, or when the app restarts. '
                              '<a href="/">Open a new session</a>.', escape=False)
        if is_websocket(request, tail):
            return await self.proxy.forward_websocket(request, session)
        if tail in PAGE_TAILS and request.method == "GET" and session.sockets and not is_reload(request):
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
        return await self.proxy.forward_http(request, session, tail)


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
