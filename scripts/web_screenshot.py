"""The README's browser screenshot: the web app after a reconstruction, at 1280x720.

    .venv/bin/python scripts/web_screenshot.py      # writes Resources/Screenshots/web-app.png

It starts ``xdiffusion app`` with the shipped model on a free port, drives Debian's Chromium
(``/usr/bin/chromium``, never a browser download) through Playwright the way a user would: opens
the shipped held-out real T1 ``kmeans_t1``, scrolls the axial view to each of 5 input slices chosen
as the evaluation protocol chooses them (``evaluation.protocol.choose_indices``), picks them,
waits for the warm worker, reconstructs at the page's default settings, waits for the metrics,
scrolls the comparison to a generated slice (halfway between the third and the fourth input) and
saves the page. The app
is stopped on the way out, whatever happens. Re-run it after the shipped weights or the page change.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

DEFAULT_OUT = REPO / "Resources" / "Screenshots" / "web-app.png"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SAMPLE = "kmeans_t1"
PLANE, TAG, K = "axial", "Red", 5
SLOW_MS = 300_000  # a session start or a reconstruction on a busy 2-core machine


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Make the README's screenshot of the XDiffusion web app.")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"PNG to write (default {DEFAULT_OUT.relative_to(REPO)})")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--model", metavar="DIR", help="model folder (default: the shipped weights)")
    return parser.parse_args(argv)


def input_slices() -> tuple[int, ...]:
    from XDiffusionLib.data.samples import sample_path
    from XDiffusionLib.evaluation.protocol import canonical_case, choose_indices
    from XDiffusionLib.io import read_volume

    return choose_indices(canonical_case(read_volume(sample_path(SAMPLE))).array, PLANE, K)


def start_app(model: str | None, log_path: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "XDiffusionLib.app.cli", "app", "--port", str(port), "--no-server-paths"]
    if model:
        command += ["--model", model]
    log = open(log_path, "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url + "/status", timeout=10).read()
            return process, url
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the app did not start:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.5)


def shown_index(page, tag: str) -> int:
    return int(re.search(r"\d+", page.inner_text(f"#xd-index-{tag}")).group(0))


def scroll_to(page, index: int, tag: str = TAG) -> None:
    """Scroll view ``tag`` with the mouse wheel until it shows slice ``index``."""
    box = page.locator(f"#xd-view-{tag}").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(300):
        current = shown_index(page, tag)
        if current == index:
            return
        page.mouse.wheel(0, -120 if current < index else 120)
        deadline = time.monotonic() + 10
        while shown_index(page, tag) == current and time.monotonic() < deadline:
            time.sleep(0.1)
    raise SystemExit(f"could not scroll the {tag} view to slice {index}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from playwright.sync_api import sync_playwright

    slices = input_slices()
    out = Path(args.out)
    log_path = Path(tempfile.mkdtemp(prefix="xdiffusion-screenshot-")) / "app.log"
    process, url = start_app(args.model, log_path)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.set_default_timeout(60_000)
            page.goto(url + "/", timeout=SLOW_MS)
            page.wait_for_selector("#xd-upload", state="attached", timeout=SLOW_MS)
            page.click("#xd-open-sample")
            page.wait_for_selector("#xd-volume", timeout=SLOW_MS)
            page.wait_for_selector(f"#xd-index-{TAG}")
            for index in slices:
                scroll_to(page, index)
                page.click(f"#xd-use-{TAG}")
                page.wait_for_function(f"document.querySelector('#xd-picks')?.innerText.includes('{index}')")
            page.wait_for_selector("#xd-worker-ready", timeout=SLOW_MS)  # the worker is warm
            page.click("#xd-reconstruct")
            page.wait_for_selector("#xd-metrics", timeout=SLOW_MS)
            page.click("#xd-info .v-alert__close button")
            # The page opens on the first input slice (copied, so no difference to see); the
            # picture shows a generated one, halfway between the third and the fourth input.
            generated = (slices[2] + slices[3]) // 2
            scroll_to(page, generated, "XDiffusionGenerated")
            time.sleep(3.0)  # the streamed views' last frames
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
            print(f"wrote {out} ({args.width}x{args.height}); inputs {PLANE} {' '.join(map(str, slices))}, "
                  f"shown {generated}; "
                  f"metrics: {' | '.join(page.inner_text('#xd-metrics').split(chr(10)))}")
            browser.close()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
