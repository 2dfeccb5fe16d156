"""The hub's own pages: the landing page that asks for a session, its icon, and the pages and JSON
answers that say why something was refused or has ended."""

from __future__ import annotations

import html

from aiohttp import web

from .session import FAVICON

_LANDING = """<!doctype html><html><head><meta charset='utf-8'><title>XDiffusion</title>
<link rel='icon' type='image/svg+xml' href='/favicon.svg'></head>
<body style='font-family: sans-serif; margin: 3em;'><h2 id='xd-hub-title'>XDiffusion</h2>
<p id='xd-hub-message'>Starting a session for this tab&hellip;</p>
<noscript><p>This app needs JavaScript.</p></noscript>
<script>
(async () => {
  const title = document.getElementById('xd-hub-title'), text = document.getElementById('xd-hub-message');
  try {
    const answer = await fetch('/session', {method: 'POST', headers: {'{header}': '{token}'},
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


def landing(header: str, token: str) -> web.Response:
    """The page at ``/``: it asks for a session (``POST /session`` with ``token`` in ``header``)
    and goes there."""
    return web.Response(text=_LANDING.replace("{header}", header).replace("{token}", token),
                        content_type="text/html", headers={"Cache-Control": "no-store"})


async def favicon(_request: web.Request) -> web.Response:
    """The landing page's icon (the tab's own, ``session.FAVICON``)."""
    return web.Response(body=FAVICON.read_bytes(), content_type="image/svg+xml",
                        headers={"Cache-Control": "max-age=86400"})


def refusal(status: int, title: str, message: str) -> web.Response:
    """What ``POST /session`` answers when it starts nothing: JSON the landing page shows."""
    return web.json_response({"title": title, "message": message}, status=status,
                             headers={"Cache-Control": "no-store"})


def page(status: int, title: str, text: str, escape: bool = True) -> web.Response:
    """A page of one title and one line (``text`` escaped unless ``escape`` is False)."""
    body = html.escape(text) if escape else text
    document = (f"<!doctype html><html><head><meta charset='utf-8'><title>XDiffusion: {html.escape(title)}</title>"
                f"</head><body style='font-family: sans-serif; margin: 3em;'><h2>{html.escape(title)}</h2>"
                f"<p id='xd-hub-message'>{body}</p></body></html>")
    return web.Response(status=status, text=document, content_type="text/html")
