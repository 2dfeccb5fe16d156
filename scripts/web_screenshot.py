"""The README's browser screenshots: the web app after a reconstruction, at 1280x720.

    .venv/bin/python scripts/web_screenshot.py                  # writes Resources/Screenshots/web-app.png
    .venv/bin/python scripts/web_screenshot.py --thick-slices   # ... web-app-thick-slices.png

With ``--thick-slices`` the scan is a thick-slice one: the shipped held-out MNI152 NLin6 head
(2 mm) with every three axial slices averaged into one 6 mm slab (30 slices), uploaded; one click
on the panel's offer puts all acquired slices onto a 2 mm grid, and the picture shows the
midline sagittal slice: the acquired slabs (a staircase) beside the result.

Otherwise:
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
from app_process import start_app  # noqa: E402  (beside this script)

from XDiffusionLib.data.samples import sample_path  # noqa: E402 - needs the checkout on sys.path
from XDiffusionLib.evaluation.protocol import canonical_case, choose_indices  # noqa: E402
from XDiffusionLib.io import read_volume, write_volume  # noqa: E402
from XDiffusionLib.io.volume import Grid, Volume  # noqa: E402
from XDiffusionLib.transforms.orientation import to_canonical  # noqa: E402

DEFAULT_OUT = REPO / "Resources" / "Screenshots" / "web-app.png"
THICK_OUT = REPO / "Resources" / "Screenshots" / "web-app-thick-slices.png"
THICK_SAMPLE, THICK_SLAB = "mni152_nlin6", 3  # 2 mm slices, three to a slab: 6 mm
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SAMPLE = "kmeans_t1"
PLANE, TAG, K = "axial", "Red", 5
SLOW_MS = 300_000  # a session start or a reconstruction on a busy 2-core machine


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Make the README's screenshot of the XDiffusion web app.")
    parser.add_argument("--out", default=None, help=f"PNG to write (default {DEFAULT_OUT.relative_to(REPO)}, "
                                                    f"with --thick-slices {THICK_OUT.relative_to(REPO)})")
    parser.add_argument("--thick-slices", action="store_true",
                        help="a thick-slice scan, all acquired slices onto a finer grid in one click")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--model", metavar="DIR", help="model folder (default: the shipped weights)")
    return parser.parse_args(argv)


def input_slices() -> tuple[int, ...]:
    return choose_indices(canonical_case(read_volume(sample_path(SAMPLE))).array, PLANE, K)


def thick_scan(folder: Path) -> Path:
    """The thick-slice scan of ``--thick-slices`` (module docstring), written into ``folder``."""
    thin = to_canonical(read_volume(sample_path(THICK_SAMPLE)))[0]
    depth = thin.shape[2] // THICK_SLAB
    slabs = np.asarray(thin.array[:, :, : depth * THICK_SLAB], dtype=np.float32)
    slabs = slabs.reshape(*thin.shape[:2], depth, THICK_SLAB).mean(axis=3)
    spacing = (*thin.spacing[:2], THICK_SLAB * thin.spacing[2])
    # The slab's centre: the middle of its thin slices.
    origin = thin.grid.index_to_physical @ np.array([0.0, 0.0, (THICK_SLAB - 1) / 2, 1.0])
    grid = Grid((*thin.shape[:2], depth), spacing, tuple(origin[:3]), thin.grid.direction)
    return write_volume(Volume(slabs, grid), folder / f"{THICK_SAMPLE}_{spacing[2]:g}mm_slices.nii.gz")


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
    from playwright.sync_api import sync_playwright  # the test extra's, not a dependency of the app

    out = Path(args.out or (THICK_OUT if args.thick_slices else DEFAULT_OUT))
    folder = Path(tempfile.mkdtemp(prefix="xdiffusion-screenshot-"))
    log_path = folder / "app.log"
    scan = thick_scan(folder) if args.thick_slices else None
    process, url = start_app(args.model, log_path, ("--no-server-paths",))
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.set_default_timeout(60_000)
            page.goto(url + "/", timeout=SLOW_MS)
            page.wait_for_selector("#xd-upload", state="attached", timeout=SLOW_MS)
            if scan is not None:
                thick_slices_picture(page, scan, out, args)
                browser.close()
                return 0
            slices = input_slices()
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


def thick_slices_picture(page, scan: Path, out: Path, args: argparse.Namespace) -> None:
    """Upload the thick-slice scan, take the panel's one-click offer, save the midline sagittal comparison."""
    page.set_input_files("#xd-upload", str(scan))
    page.wait_for_selector("#xd-thick-run", timeout=SLOW_MS)
    offer = page.get_attribute("#xd-thick-run", "title")
    page.wait_for_selector("#xd-worker-ready", timeout=SLOW_MS)
    page.click("#xd-thick-run")
    page.wait_for_selector("#xd-metrics", timeout=SLOW_MS)
    page.click("#xd-info .v-alert__close button")
    page.click("#xd-plane-sagittal")  # opens on the middle slice: the midline
    time.sleep(3.0)  # the streamed views' last frames
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out))
    print(f"wrote {out} ({args.width}x{args.height}); {offer}; shown sagittal "
          f"{page.inner_text('#xd-index-XDiffusionGenerated')}; {page.inner_text('#xd-result-note')}")


if __name__ == "__main__":
    sys.exit(main())
