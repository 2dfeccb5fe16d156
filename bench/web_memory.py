"""Memory of a browser tab's session over repeated runs (issue 22 item 5).

Starts the web app (``xdiffusion app``, the shipped model unless ``--model``), opens one tab in
Debian's chromium through Playwright, opens the shipped sample ``kmeans_t1``, uses one axial slice,
and presses Reconstruct ``--runs`` times (1 view, ``--steps`` steps: the size of the result volumes
is what matters here, not the sampling). After each run it records the resident set (RSS) of the
tab's session process: the session process that the hub handed to the tab (the one with a worker
below it; a spare session holds no worker). Every run replaces the previous result, so a session
that frees what it replaces stays flat after its first run.

    .venv/bin/python bench/web_memory.py                    # writes bench/results/web_memory.json
    .venv/bin/python bench/web_memory.py --runs 5 --steps 1

Before the first fix (result nodes removed without their display nodes, which hold the image) the
issue measured 610 MB -> 1,041 MB over 5 runs; after it, 846 -> 1,053 MB over 10 runs (1018 ->
1053 from run 3). What remained was the C heap's: the heap in use stayed ~270 MB while glibc kept
the freed volumes and images (797 -> 993 MB on 2 busy cores). With the session's large blocks
mapped on their own and its heaps trimmed after each run (``app/web/session.py``): 743 -> 752 MB
over 10 runs (``results/web_memory.json``; ``--model`` a copy of the shipped weights).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from run_benchmarks import RESULTS, machine, write_json  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from app_process import start_app  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
SESSION_MODULE = "XDiffusionLib.app.web.session"
SLOW_MS = 300_000


def tab_session(app_pid: int):
    """The tab's session process: a session under the app with a (warm or running) worker below it."""
    sessions = [child for child in psutil.Process(app_pid).children(recursive=True)
                if SESSION_MODULE in " ".join(child.cmdline())]
    with_worker = [session for session in sessions if session.children()]
    if len(with_worker) != 1:
        raise RuntimeError(f"expected one session with a worker, found {len(with_worker)} of {len(sessions)}")
    return with_worker[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--model", default=None, help="model folder (default: the shipped weights)")
    parser.add_argument("--out", default=str(RESULTS / "web_memory.json"))
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright  # the test extra's, not a dependency of the app

    log_path = Path(tempfile.mkdtemp(prefix="xdiffusion-bench-")) / "app.log"
    process, url = start_app(args.model, log_path)
    rows = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            page.set_default_timeout(60_000)
            page.goto(url + "/", timeout=SLOW_MS)
            page.wait_for_selector("#xd-upload", state="attached", timeout=SLOW_MS)
            page.click("#xd-open-sample")
            page.wait_for_selector("#xd-volume", timeout=SLOW_MS)
            page.click("#xd-use-Red")
            page.wait_for_selector("#xd-picks")
            page.fill("#xd-views-count", "1")
            page.fill("#xd-steps", str(args.steps))
            session = None
            for run in range(1, args.runs + 1):
                page.wait_for_selector("#xd-worker-ready", timeout=SLOW_MS)
                session = session or tab_session(process.pid)
                started = time.monotonic()
                page.click("#xd-reconstruct")
                page.wait_for_selector("#xd-cancel", state="visible")
                page.wait_for_selector("#xd-cancel", state="hidden", timeout=SLOW_MS)
                seconds = time.monotonic() - started
                if "finished" not in page.inner_text("#xd-progress-text"):
                    error = page.inner_text("#xd-error") if page.locator("#xd-error").count() else ""
                    raise RuntimeError(f"run {run} did not finish: {page.inner_text('#xd-progress-text')} {error}")
                time.sleep(2.0)  # the metrics, in a thread after the run
                rss = session.memory_info().rss / 2**20
                rows.append({"run": run, "session_rss_mb": round(rss, 1), "run_s": round(seconds, 1)})
                print(f"run {run:2d}: session RSS {rss:7.1f} MB  ({seconds:.1f} s)", flush=True)
            browser.close()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    growth = rows[-1]["session_rss_mb"] - rows[0]["session_rss_mb"]
    print(f"growth from run 1 to run {len(rows)}: {growth:+.1f} MB")
    write_json(Path(args.out), {"machine": machine(), "sample": "kmeans_t1", "views": 1, "steps": args.steps,
                                "runs": rows, "growth_mb": round(growth, 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
