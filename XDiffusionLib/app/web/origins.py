"""The one host and origin policy of the web app, used by the hub and by every session process.

- ``is_loopback``: a host *name* or address that means "this computer". Names are compared whole
  and addresses parsed (``ipaddress``), never matched by prefix: ``127.1.attacker.example`` is a
  name anyone can point at 127.0.0.1 (DNS rebinding), not a loopback address.
- ``same_site``: whether a request may come from the app's own page (``Origin``, ``Sec-Fetch-Site``).
- ``session_key_valid``: a session process behind the hub listens on a 127.0.0.1 port that any
  local program or any web page (through the browser) can find by scanning; it serves only
  requests carrying the secret the hub gave it at start (``SESSION_KEY_HEADER``), which only the
  hub knows and which a browser cannot be made to send.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from urllib.parse import urlsplit

from aiohttp import web

log = logging.getLogger("xdiffusion.web")

SESSION_KEY_HEADER = "X-XDiffusion-Session-Key"
SESSION_KEY_ENV = "XDIFFUSION_SESSION_KEY"  # the environment, not argv: argv is public (ps)
LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bare name or address, no port) is this computer: ``localhost`` exactly,
    or an IPv4/IPv6 loopback address written as an address."""
    host = str(host or "").strip()
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: only the names above are known to stay on this computer
        return False


def host_name(header: str) -> str:
    """The name in a Host header: "localhost:8080" -> "localhost", "[::1]:8080" -> "::1"."""
    header = str(header or "").strip()
    if header.startswith("["):
        end = header.find("]")
        return header[1:end] if end > 0 else ""
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def request_is_local(request: web.Request) -> bool:
    """Whether ``request`` is addressed (its Host header) to this computer."""
    return is_loopback(host_name(request.headers.get("Host", "")))


def same_site(request: web.Request) -> bool:
    """Whether a request may come from the app's own page: browsers say where a request comes from
    (``Sec-Fetch-Site``, ``Origin``); a request saying another site, or another origin, is refused.
    Clients that send neither (not browsers, so no other site's page behind them) pass."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site != "same-origin":
        return False
    origin = request.headers.get("Origin")
    if origin is not None:
        # "null" (sandboxed frames, file: pages) has no host and is refused with the rest.
        return urlsplit(origin).netloc.lower() == request.host.lower()
    return True


def changes_something(request: web.Request) -> bool:
    """Websockets and anything but GET/HEAD: what a page on another site must not send."""
    return request.method not in ("GET", "HEAD") or request.headers.get("Upgrade", "").lower() == "websocket"


def session_key_valid(request: web.Request, key: str) -> bool:
    """Whether ``request`` carries the session's secret ``key`` (compared in constant time)."""
    return hmac.compare_digest(request.headers.get(SESSION_KEY_HEADER, "").encode(), key.encode())


def short(token: str) -> str:
    """What logs show of a session token or key: enough to tell sessions apart, not to use one."""
    return str(token)[:6]


def short_path(path: str) -> str:
    """A request path for the log with a session token cut short (``/s/<token>/...``)."""
    parts = str(path).split("/")
    if len(parts) > 2 and parts[1] == "s":
        parts[2] = short(parts[2]) + "..."
    return "/".join(parts)


def session_guard(key: str | None, local_only: bool = True):
    """The middleware of a session process. With the hub's ``key``: every request must carry it
    (the hub has applied the host and origin policy already). Without one (a session started alone
    for development): the hub's own policy, this computer's host names only and no websocket or
    upload from another site."""

    @web.middleware
    async def guard(request: web.Request, handler):
        if key:
            if not session_key_valid(request, key):
                log.info("refused %s %s: no session key", request.method, short_path(request.path))
                return web.Response(status=403, text="Refused: this port serves the XDiffusion app's hub only.")
        else:
            if local_only and not request_is_local(request):
                return web.Response(status=403, text="Refused: this session serves this computer only.")
            if changes_something(request) and not same_site(request):
                return web.Response(status=403, text="Refused: requests from other web sites are refused.")
        return await handler(request)

    return guard
