"""``xdiffusion app`` in a real browser: Debian's Chromium driven by Playwright.

One app (hub) for the module, started in a subprocess on a free port with a tiny random model
(side 16) and a 1 MB upload limit; every test opens its own tab, so its own session. Views are
checked from the page's pixels (screenshots -> numpy), not from the server's state.

``XDIFFUSION_WEB_SCREENSHOT=Resources/web-app-screenshot.png`` makes the reconstruction test also
write the README screenshot there (docs/web-app.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

from XDiffusionLib.io import read_volume, write_volume
from XDiffusionLib.io.volume import Volume

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
VIEWPORT = {"width": 1500, "height": 850}
UPLOAD_LIMIT_MB = 1
SLOW = 150_000  # ms: a session start or a reconstruction on a busy 2-core machine


# -- fixtures ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.loads(answer.read())


@pytest.fixture(scope="module")
def head_file(tmp_path_factory) -> Path:
    """A small synthetic head: a bright textured ball in dark noise, 24x24x20 at 2x2x2.5 mm."""
    i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in (24, 24, 20)], indexing="ij")
    r = np.sqrt(i**2 + j**2 + (1.1 * k) ** 2)
    rng = np.random.default_rng(0)
    array = np.where(r < 0.8, 80 + 60 * np.cos(3 * r) + 20 * i, 5) + rng.normal(0, 2, r.shape)
    volume = Volume.from_array(array.astype(np.float32), (2.0, 2.0, 2.5), (10.0, -4.0, 3.0))
    return write_volume(volume, tmp_path_factory.mktemp("data") / "head.nii.gz")


def start_app(model: Path, log_path: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "XDiffusionLib.app.cli", "app", "--port", str(port), "--model", str(model),
         "--max-upload-mb", str(UPLOAD_LIMIT_MB), "--session-timeout", "30", "--max-sessions", "8", *extra],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            get_json(url + "/status")
            return process, url
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"the app did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)


def stop_app(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise


@pytest.fixture(scope="module")
def app_url(tiny_model, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("app") / "app.log"
    # The tests' own folders are the data folders: server paths elsewhere are refused.
    process, url = start_app(tiny_model, log_path, "--data-root", str(tmp_path_factory.getbasetemp()))
    yield url
    stop_app(process)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup.sh (installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


# -- page helpers --------------------------------------------------------------------------------

def open_tab(browser_or_context, url: str):
    page = browser_or_context.new_page(**({"viewport": VIEWPORT} if hasattr(browser_or_context, "contexts") else {}))
    page.set_default_timeout(30_000)
    page.goto(url + "/", timeout=SLOW)
    page.wait_for_selector("#xd-upload", state="attached", timeout=SLOW)
    return page


def view_pixels(page, tag: str) -> np.ndarray:
    """RGB pixels of one slice view, without its title row and slider."""
    from PIL import Image

    box = page.locator(f"#xd-view-{tag}").bounding_box()
    clip = {"x": box["x"] + 4, "y": box["y"] + 30, "width": box["width"] - 8, "height": box["height"] - 75}
    return np.asarray(Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("RGB"), dtype=np.float64)


def wait_until(condition, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def red_minus_blue(pixels: np.ndarray) -> float:
    """How coloured an RGB image is (0 for grey)."""
    return float(np.abs(pixels[..., 0] - pixels[..., 2]).mean())


def slider_track(page, tag: str):
    return page.locator(f"#xd-view-{tag}").locator("xpath=..").locator(".v-slider-track").first


def error_text(page) -> str:
    page.wait_for_selector("#xd-error", timeout=60_000)
    return page.inner_text("#xd-error")


# -- tests ---------------------------------------------------------------------------------------

def test_reconstruct_compare_export_in_browser(browser, app_url, tmp_path):
    page = open_tab(browser, app_url)
    # Load the smallest shipped real MRI from the sample list.
    page.click("#xd-open-sample")
    page.wait_for_selector("#xd-volume", timeout=60_000)
    assert "128x128x62" in page.inner_text("#xd-volume")
    wait_until(lambda: view_pixels(page, "Red").std() > 10, what="the axial view to show the volume")

    # Scroll the axial view with its slider; the title follows the slice index.
    title = page.inner_text("#xd-title-Red")
    track = slider_track(page, "Red")
    # The first slices are air: picking one is refused (a constant input carries nothing).
    track.click(position={"x": 2, "y": 2})
    wait_until(lambda: page.inner_text("#xd-title-Red") != title, what="the axial slice index to change")
    page.click("#xd-use-Red")
    assert "is empty" in error_text(page)
    assert page.locator("#xd-picks").count() == 0
    title = page.inner_text("#xd-title-Red")
    track.click(position={"x": 0.62 * track.bounding_box()["width"], "y": 2})
    wait_until(lambda: page.inner_text("#xd-title-Red") != title, what="the axial slice index to change")
    # ... and with the mouse wheel.
    title = page.inner_text("#xd-title-Red")
    box = page.locator("#xd-view-Red").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, 120)
    wait_until(lambda: page.inner_text("#xd-title-Red") != title, what="the mouse wheel to change the slice")
    index = int(re.search(r"(\d+)\s*$", page.inner_text("#xd-title-Red")).group(1))

    page.click("#xd-use-Red")
    page.wait_for_selector("#xd-picks")
    assert re.search(rf"axial:\s*{index}\b", page.inner_text("#xd-picks"))

    page.fill("#xd-steps", "2")
    page.fill("#xd-views-count", "2")
    page.click("#xd-reconstruct")
    page.wait_for_selector("#xd-progress", state="visible")
    page.wait_for_selector("#xd-results", timeout=SLOW)
    assert page.locator("#xd-error").count() == 0

    page.wait_for_selector("#xd-metrics", timeout=60_000)
    metrics = page.inner_text("#xd-metrics")
    for name in ("PSNR, paper convention", "PSNR, unit-range convention", "SSIM, axial", "SSIM, coronal",
                 "SSIM, sagittal"):
        assert name in metrics
    assert re.search(r"PSNR, paper convention\s+-?\d+\.\d+ dB", metrics)

    for tag in ("XDiffusionReal", "XDiffusionGenerated", "XDiffusionDifference", "XDiffusionUncertainty"):
        wait_until(lambda: view_pixels(page, tag).std() > 5, what=f"the {tag} view to show an image")

    # The overlay toggle changes what the generated view shows.
    with_overlay = view_pixels(page, "XDiffusionGenerated")
    page.click("#xd-overlay")
    wait_until(lambda: np.abs(view_pixels(page, "XDiffusionGenerated") - with_overlay).mean() > 2,
               what="the overlay to disappear")
    time.sleep(1.0)
    generated = view_pixels(page, "XDiffusionGenerated")
    difference = view_pixels(page, "XDiffusionDifference")
    assert generated.std() > 5, "the generated view is empty"
    assert np.abs(generated - difference).mean() > 10, "the difference view looks like the generated view"
    # Colour: the difference uses a diverging blue-white-red table, the generated view is grey.
    assert red_minus_blue(difference) > 3 * red_minus_blue(generated)

    # Square pixels, whole slice in view: the coloured difference map covers the axial extent of
    # kmeans_t1 (128 x 2 mm left-right by 62 x 3 mm front-back), no more, no less.
    rows, columns = np.nonzero(difference.max(axis=2) > 40)
    ratio = (columns.max() - columns.min() + 1) / (rows.max() - rows.min() + 1)
    assert abs(ratio / (256 / 186) - 1) < 0.1, ratio
    assert columns.max() - columns.min() + 1 > 0.9 * difference.shape[1]  # fitted to the view's width

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-app-result.png"))
    if os.environ.get("XDIFFUSION_WEB_SCREENSHOT"):
        page.screenshot(path=str(REPO / os.environ["XDIFFUSION_WEB_SCREENSHOT"]))

    # The comparison in another plane.
    before = view_pixels(page, "XDiffusionReal")
    page.click("#xd-plane-coronal")
    wait_until(lambda: np.abs(view_pixels(page, "XDiffusionReal") - before).mean() > 2,
               what="the comparison to show coronal slices")
    page.click("#xd-plane-axial")

    # Synchronised slices: moving the generated view's slider moves the real view too.
    real = view_pixels(page, "XDiffusionReal")
    slider_track(page, "XDiffusionGenerated").click(position={"x": 12, "y": 2})
    wait_until(lambda: np.abs(view_pixels(page, "XDiffusionReal") - real).mean() > 2,
               what="the real view to follow the generated view's slider")

    # Export: NIfTI download, then a DICOM pseudo-MRI series.
    page.click("#xd-export")
    page.wait_for_selector("#xd-download")
    with page.expect_download() as download:
        page.click("#xd-download")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name.endswith(".nii.gz")
    assert read_volume(saved).shape == (128, 128, 62)

    page.click(".xd-export-format .v-field")
    page.get_by_text("DICOM pseudo-MRI series (.zip)").click()
    page.click("#xd-export")
    page.wait_for_selector("#xd-download:has-text('.zip')")
    with page.expect_download() as download:
        page.click("#xd-download")
    archive = tmp_path / download.value.suggested_filename
    download.value.save_as(archive)
    with zipfile.ZipFile(archive) as series:
        names = [n for n in series.namelist() if n.endswith(".dcm")]
        assert len(names) == 62
        import pydicom

        first = pydicom.dcmread(io.BytesIO(series.read(names[0])))
        assert "AI-generated" in first.SeriesDescription
        # The model by its name and weights checksum, never by its folder on the server.
        assert "model tiny (weights sha256 " in first.DerivationDescription
        assert "/tmp" not in first.DerivationDescription and "/tmp" not in first.ImageComments
    page.close()


def test_bad_uploads_show_an_error_and_the_app_keeps_serving(browser, app_url, head_file, tmp_path):
    import SimpleITK as sitk

    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((32, 32)).astype(np.float32)), str(flat))
    big = tmp_path / "big.nii.gz"
    big.write_bytes(np.random.default_rng(1).bytes(int(1.5 * (1 << 20))))
    # An attacker's zip: a header whose "voxels" are the first 1280 bytes of /etc/passwd.
    passwd = tmp_path / "passwd.zip"
    with zipfile.ZipFile(passwd, "w") as archive:
        archive.writestr("evil.nhdr", "NRRD0004\ntype: uint8\ndimension: 3\nsizes: 16 16 5\nencoding: raw\n"
                                      "data file: /etc/passwd\n\n")
    four_d = tmp_path / "four_d.nii.gz"
    frame = sitk.ReadImage(str(head_file))
    sitk.WriteImage(sitk.JoinSeries([frame, frame]), str(four_d))

    page = open_tab(browser, app_url)
    for path, expected in ((text, "unsupported file type"), (flat, "2D"), (big, "larger than the upload limit"),
                           (passwd, "names the data file '/etc/passwd', which lies outside"),
                           (four_d, "is 4D with 2 volumes: a single 3D volume is needed")):
        page.set_input_files("#xd-upload", str(path))
        message = error_text(page)
        assert (path.name if path != passwd else "evil.nhdr") in message and expected in message, message
        assert str(tmp_path) not in message  # the server's folders stay private
        assert "--volume" not in message  # the page has no such option
        assert page.locator("#xd-volume").count() == 0  # nothing was loaded
        assert get_json(app_url + "/status")["sessions"] >= 1  # the server still answers
        page.click("#xd-error .v-alert__close button")
        page.wait_for_selector("#xd-error", state="detached")

    # The server checks the limit itself too (a client that skips the page's check).
    status, answer = page.evaluate(
        "async () => { const r = await fetch('upload?name=big.nii.gz',"
        " {method: 'POST', body: new Uint8Array(1600000)});"
        " return [r.status, await r.json()]; }")
    assert status == 413 and "upload limit" in answer["error"]

    # A good upload after all that still works.
    page.set_input_files("#xd-upload", str(head_file))
    page.wait_for_selector("#xd-volume")
    assert "head: 24x24x20 voxels" in page.inner_text("#xd-volume")
    assert page.locator("#xd-error").count() == 0

    # A path on the server: outside the data folders one refusal whether it exists or not; inside,
    # a wrong one is an error and a right one loads.
    refusals = []
    for outside in ("/etc/passwd", "/etc/no-such-file.nii.gz", str(tmp_path / ".." / ".." / ".." / "etc" / "hosts")):
        page.fill("#xd-path", outside)
        page.click("#xd-open-path")
        page.wait_for_selector("#xd-error:has-text('not available')")
        refusals.append(page.inner_text("#xd-error").replace(outside, "PATH"))
        page.click("#xd-error .v-alert__close button")
        page.wait_for_selector("#xd-error", state="detached")
    assert len(set(refusals)) == 1, refusals
    page.fill("#xd-path", str(tmp_path / "missing.nii.gz"))
    page.click("#xd-open-path")
    assert "no such file" in error_text(page)
    page.fill("#xd-path", str(tmp_path / "flat.nii.gz"))
    page.click("#xd-open-path")
    page.wait_for_selector("#xd-error:has-text('2D')")
    page.fill("#xd-path", str(head_file))
    page.click("#xd-open-path")
    page.wait_for_selector("#xd-info:has-text('loaded')")
    assert "head: 24x24x20 voxels" in page.inner_text("#xd-volume")
    page.close()


def test_two_tabs_have_their_own_sessions(browser, app_url, head_file):
    context = browser.new_context(viewport=VIEWPORT)
    first = open_tab(context, app_url)
    first.set_input_files("#xd-upload", str(head_file))
    first.wait_for_selector("#xd-volume")
    first.click("#xd-use-Green")
    first.wait_for_selector("#xd-picks")
    picks = first.inner_text("#xd-picks")
    assert picks.startswith("coronal")

    second = open_tab(context, app_url)
    assert second.url != first.url
    assert second.locator("#xd-volume").count() == 0 and second.locator("#xd-picks").count() == 0
    second.click("#xd-open-sample")
    second.wait_for_selector("#xd-volume", timeout=60_000)
    assert "128x128x62" in second.inner_text("#xd-volume")

    # The first tab kept its volume and slices.
    time.sleep(1.0)
    assert "head: 24x24x20" in first.inner_text("#xd-volume")
    assert first.inner_text("#xd-picks") == picks

    # A reload keeps the tab's session.
    first.reload(timeout=SLOW)
    first.wait_for_selector("#xd-volume", timeout=SLOW)
    assert "head: 24x24x20" in first.inner_text("#xd-volume") and first.inner_text("#xd-picks") == picks

    # The first tab's address opened in another tab (a duplicated tab) gets a session of its own.
    third = context.new_page()
    third.goto(first.url, timeout=SLOW)
    third.wait_for_selector("#xd-upload", state="attached", timeout=SLOW)
    assert third.url != first.url and third.locator("#xd-volume").count() == 0
    assert get_json(app_url + "/status")["sessions"] >= 3
    context.close()


def test_worker_failure_is_reported_and_cancel_stops_a_run(browser, app_url, head_file, tiny_model, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    shutil.copy(tiny_model / "config.json", broken / "config.json")
    (broken / "model.safetensors").write_bytes(b"this is not a safetensors file")

    page = open_tab(browser, app_url)
    page.set_input_files("#xd-upload", str(head_file))
    page.wait_for_selector("#xd-volume")
    page.click("#xd-use-Red")
    page.wait_for_selector("#xd-picks")

    # The worker process fails to load the model: the page says so and keeps working.
    page.fill("#xd-model", str(broken))
    page.fill("#xd-steps", "2")
    page.click("#xd-reconstruct")
    message = error_text(page)
    assert "model.safetensors" in message or "weights" in message, message
    assert page.is_enabled("#xd-reconstruct")

    # A long run is cancelled from the page.
    page.fill("#xd-model", str(tiny_model))
    page.fill("#xd-steps", "500")
    page.fill("#xd-views-count", "8")
    page.click("#xd-reconstruct")
    page.wait_for_selector("#xd-cancel", state="visible")
    wait_until(lambda: re.match(r"\s*([1-9]\d*)%", page.inner_text("#xd-progress-text")), timeout=SLOW / 1000,
               what="sampling progress")
    page.click("#xd-cancel")
    page.wait_for_selector("#xd-info:has-text('cancelled')", timeout=60_000)
    assert page.is_hidden("#xd-cancel") and page.is_enabled("#xd-reconstruct")
    assert page.locator("#xd-results").count() == 0
    page.close()


def test_session_limit_and_stopping_the_app_stops_its_sessions(tiny_model, tmp_path):
    log_path = tmp_path / "app.log"
    process, url = start_app(tiny_model, log_path, "--max-sessions", "1")
    try:
        def request(method: str, path: str, headers: dict | None = None):
            connection = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=SLOW / 1000)
            connection.request(method, path, headers=headers or {})
            answer = connection.getresponse()
            return answer.status, answer.read().decode()

        def open_session():
            # What the landing page's script does: POST /session with the page's token.
            status, landing = request("GET", "/")
            assert status == 200
            token = re.search(r"'X-XDiffusion-Start': '([^']+)'", landing).group(1)
            return request("POST", "/session", {"X-XDiffusion-Start": token, "Sec-Fetch-Site": "same-origin"})

        assert get_json(url + "/status")["sessions"] == 0  # the GET above started nothing
        status, answer = open_session()
        assert status == 200 and json.loads(answer)["url"].startswith("/s/")
        status, answer = open_session()  # a second tab over the limit
        assert status == 503 and "--max-sessions 1" in json.loads(answer)["message"]
        # Served on this computer only: another host name (DNS rebinding) is refused.
        connection = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=30)
        connection.request("GET", "/status", headers={"Host": "attacker.example:80"})
        assert connection.getresponse().status == 403
        port = int(re.search(r"started on port (\d+)", log_path.read_text()).group(1))
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # the session serves
        # An unknown session says so, with a way back.
        with pytest.raises(urllib.error.HTTPError) as gone:
            urllib.request.urlopen(url + "/s/no-such-session/", timeout=10)
        assert gone.value.code == 404 and "new session" in gone.value.read().decode()
    finally:
        assert stop_app(process) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert "ended" in log_path.read_text()


ATTACKER_PAGE = """<!doctype html><html><body>
<img src="APP/"><iframe src="APP/"></iframe><iframe name="sink"></iframe>
<form id="f" method="post" action="APP/session" target="sink"><input name="token" value="guess"></form>
<script>
for (let i = 0; i < 6; i++) { fetch("APP/", {mode: "no-cors", credentials: "include"}).catch(() => {}); }
fetch("APP/session", {method: "POST", mode: "no-cors", credentials: "include"}).catch(() => {});
fetch("APP/session", {method: "POST", headers: {"X-XDiffusion-Start": "guess"}}).catch(() => {});
document.getElementById("f").submit();
setTimeout(() => { document.title = "sent"; }, 2000);
</script></body></html>"""


def test_a_page_on_another_origin_cannot_start_sessions(browser, tiny_model, tmp_path):
    """Issue 9: background requests from another site's page started session processes (each
    most of a GB) until real users were locked out."""
    import http.server
    import threading

    log_path = tmp_path / "app.log"
    process, url = start_app(tiny_model, log_path, "--max-sessions", "4")
    attacker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    page_text = ATTACKER_PAGE.replace("APP", url)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = page_text.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    attacker.RequestHandlerClass = Handler
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    try:
        wait_until(lambda: get_json(url + "/status")["spare"] == 1, timeout=SLOW / 1000, what="the spare session")
        started = log_path.read_text().count("started on port")
        page = browser.new_page()
        for host in ("127.0.0.1", "localhost"):  # another origin: another port, or another name
            page.goto(f"http://{host}:{attacker.server_address[1]}/", timeout=60_000)
            page.wait_for_function("document.title === 'sent'", timeout=60_000)
        time.sleep(3.0)
        assert get_json(url + "/status")["sessions"] == 0
        assert log_path.read_text().count("started on port") == started  # no process was started
        page.close()
        # The app's own page still starts one.
        tab = open_tab(browser, url)
        assert get_json(url + "/status")["sessions"] == 1
        tab.close()
    finally:
        attacker.shutdown()
        assert stop_app(process) == 0


def test_upload_limit_holds_for_streamed_bodies(tmp_path):
    """A body without Content-Length is cut off at the limit while it streams in."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from XDiffusionLib.app.web.transfer import Transfers

    transfers = Transfers(tmp_path / "session", max_upload_bytes=1 << 20)

    async def scenario():
        app = web.Application()
        app.add_routes(transfers.routes())
        async with TestClient(TestServer(app)) as client:
            async def body():
                for _ in range(3):
                    yield b"x" * (600 << 10)

            refused = await client.post("/upload?name=../../big.nii.gz", data=body())
            accepted = await client.post("/upload?name=../../small.nii.gz", data=b"y" * 1000)
            return refused.status, await refused.json(), accepted.status, await accepted.json()

    # Playwright's sync API owns this thread's event loop: run the server in a thread of its own.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        refused_status, refused, accepted_status, accepted = pool.submit(asyncio.run, scenario()).result()
    assert refused_status == 413 and not refused["ok"] and "upload limit" in refused["error"]
    assert accepted_status == 200 and accepted["ok"] and accepted["name"] == "small.nii.gz"
    path = transfers.take_upload(accepted["token"])
    assert path.read_bytes() == b"y" * 1000
    assert (tmp_path / "session" / "uploads") in path.parents  # never outside the session's folder
    assert not [p for p in (tmp_path / "session" / "uploads").rglob("big*")]  # the refused file is gone


def test_app_command_refuses_a_missing_model(tmp_path):
    result = subprocess.run([sys.executable, "-m", "XDiffusionLib.app.cli", "app", "--model", str(tmp_path / "none")],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert "model folder" in result.stderr and "not found" in result.stderr


def test_zip_uploads_unpack_safely(tmp_path):
    from XDiffusionLib.app.web.transfer import Transfers
    from XDiffusionLib.errors import XDiffusionError
    from XDiffusionLib.slicer.export import Provenance, export_dicom_series

    transfers = Transfers(tmp_path / "session", max_upload_bytes=1 << 20)
    volume = Volume.from_array(np.arange(12 * 10 * 4, dtype=np.float32).reshape(12, 10, 4), (1.0, 1.2, 2.0))
    files = export_dicom_series(volume, tmp_path / "series", Provenance("axial", (1,), "test"))
    upload = tmp_path / "session" / "uploads" / "a" / "series.zip"
    upload.parent.mkdir(parents=True)
    with zipfile.ZipFile(upload, "w") as archive:
        for file in files:
            archive.write(file, f"study/series/{file.name}")
    assert read_volume(transfers.unpack_zip(upload)).shape == (12, 10, 4)

    evil = upload.with_name("evil.zip")
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../../outside.nii.gz", b"x")
    with pytest.raises(XDiffusionError, match="unsafe path"):
        transfers.unpack_zip(evil)
    assert not (tmp_path / "session" / "outside.nii.gz").exists()
