"""Who may start a session and drive the hub: start tokens and the hub's origin policy.

Only the app's own page starts sessions (each costs a process and most of a GB): ``GET /`` returns
a small page that asks for one with ``POST /session``, carrying a signed start token from that page
in a custom header (``START_HEADER``). Any web page can make a browser send background GETs (and
simple POSTs) to the app, but it can neither read the token nor send the header without the app's
consent. The hub also refuses websockets and non-GET requests whose ``Origin`` or
``Sec-Fetch-Site`` say they come from another site (``same_site_only``), serves only this
computer's host names when it listens on this computer only (``local_host_only``: no DNS
rebinding), and no hub page may be framed by another site (``add_security_headers``). The checks
of single requests are ``origins``' (the sessions apply the same ones when started alone).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time

from aiohttp import web

from .origins import changes_something, request_is_local, same_site, short_path
from .pages import page

log = logging.getLogger("xdiffusion.hub")

START_HEADER = "X-XDiffusion-Start"  # carries the start token; a custom header needs CORS consent
START_TOKEN_S = 600.0  # a landing page's token starts a session within this many seconds
# On every hub answer: no framing by other sites (a framed landing page would start sessions) and
# no session address in the Referer of a link followed from the page.
SECURITY_HEADERS = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'",
                    "Referrer-Policy": "same-origin", "X-Content-Type-Options": "nosniff"}


class StartTokens:
    """Signed start tokens: what the landing page sends back to start one session."""

    def __init__(self) -> None:
        self._secret = secrets.token_bytes(32)  # new at every start of the hub

    def issue(self, now: float | None = None) -> str:
        """A token valid ``START_TOKEN_S`` seconds from ``now``."""
        issued = str(int(time.time() if now is None else now))
        return f"{issued}.{hmac.new(self._secret, issued.encode(), hashlib.sha256).hexdigest()}"

    def valid(self, token: str, now: float | None = None) -> bool:
        issued, _, signature = str(token or "").partition(".")
        expected = hmac.new(self._secret, issued.encode(), hashlib.sha256).hexdigest()
        if not issued.isdigit() or not hmac.compare_digest(signature, expected):
            return False
        return 0 <= (time.time() if now is None else now) - int(issued) <= START_TOKEN_S


def middlewares(local_only: bool) -> list:
    """The hub's request checks, in order."""
    return ([local_host_only] if local_only else []) + [same_site_only]


@web.middleware
async def same_site_only(request: web.Request, handler):
    """Websockets and anything but GET/HEAD only from the app's own pages (see ``origins.same_site``)."""
    if changes_something(request) and not same_site(request):
        # The path holds the session token: only its start goes to the log.
        log.info("refused %s %s from %s", request.method, short_path(request.path), request.headers.get("Origin", "?"))
        return page(403, "Refused", "Requests from other web sites are refused.")
    return await handler(request)


@web.middleware
async def local_host_only(request: web.Request, handler):
    """Served on this computer only: refuse requests addressed to another host name. A web page
    elsewhere whose name was made to resolve to 127.0.0.1 (DNS rebinding) could otherwise drive
    the app, which opens files by their path on this computer."""
    if not request_is_local(request):
        return page(403, "Wrong address", "This app serves this computer only: open it as http://127.0.0.1 or "
                    "http://localhost, or start it with --host to serve other computers.")
    return await handler(request)


async def add_security_headers(_request: web.Request, response: web.StreamResponse) -> None:
    for key, value in SECURITY_HEADERS.items():
        response.headers[key] = value
