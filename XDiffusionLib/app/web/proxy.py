"""The hub's reverse proxy: everything under a tab's ``/s/<token>/`` (page, websocket, uploads,
downloads) forwarded to that tab's session process on 127.0.0.1, with the session's secret added
(and any the browser sent removed).

One live tab per session: a reloading tab's old page closes its socket right after the new page
loads; any other older socket is closed, so two tabs never drive one session. A second tab that
opens a session's page while its tab is open is sent to ``/`` for a session of its own (``is_reload``
tells a reload from a new tab).
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web

from .origins import SESSION_KEY_HEADER
from .pages import page
from .pool import Session

log = logging.getLogger("xdiffusion.hub")

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade", "host"}
_RELOAD_GRACE_S = 3.0
PAGE_TAILS = ("", "index.html")  # the tab's page itself


class ReverseProxy:
    """Forwards requests to session processes over one HTTP client (``open`` / ``close``)."""

    def __init__(self) -> None:
        self._client: aiohttp.ClientSession | None = None

    def open(self) -> None:
        self._client = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def forward_http(self, request: web.Request, session: Session, tail: str) -> web.StreamResponse:
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
                if tail in PAGE_TAILS:
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
            return page(502, "The session did not answer", f"{type(error).__name__}: {error}")

    async def forward_websocket(self, request: web.Request, session: Session) -> web.WebSocketResponse:
        # One live tab per session: wait a moment for a reloading tab's old socket to close, then
        # close whatever older socket is left.
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


def is_websocket(request: web.Request, tail: str) -> bool:
    return tail == "ws" and request.headers.get("Upgrade", "").lower() == "websocket"


def is_reload(request: web.Request) -> bool:
    """Browsers revalidate the page they reload (Cache-Control: max-age=0 or no-cache); a new tab
    opening the address does not."""
    control = request.headers.get("Cache-Control", "").lower()
    return "max-age=0" in control or "no-cache" in control or "no-cache" in request.headers.get("Pragma", "").lower()


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
