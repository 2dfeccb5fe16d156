"""Nothing lost, nothing leaked, round two (issue 20): each test reproduces one way the tool let a
stranger in, lost data or answered with a traceback, and checks that it no longer does. Item
numbers are the issue's. Web checks run against a real app on 127.0.0.1 (``test_web_app``'s
helpers); full-disk checks use a simulated short write, and a real small tmpfs where we may mount one.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from test_web_app import browser  # noqa: F401 - test_web_app's Chromium fixture, for the upload tests here
from test_web_app import error_text, open_tab, start_app, stop_app

from XDiffusionLib.app.cli import main
from XDiffusionLib.errors import XDiffusionError
from XDiffusionLib.io.volume import Volume
from XDiffusionLib.io.writers import write_volume

REPO = Path(__file__).resolve().parents[1]


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"xdiffusion {command}: error:"), err
    return err


@pytest.fixture
def volume() -> Volume:
    rng = np.random.default_rng(0)
    i, j, k = np.meshgrid(*[np.linspace(0, 1, n) for n in (24, 22, 16)], indexing="ij")
    array = (200 + 150 * np.sin(3 * i) * np.cos(2 * j) + 80 * k + rng.normal(0, 3, i.shape)).astype(np.float32)
    return Volume.from_array(array, (1.1, 1.0, 1.5))


def hidden_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# -- 1, 2, 12. the session ports, the Host header, tokens in the log, session folders -------------


@pytest.mark.parametrize("host, local", [
    ("localhost", True), ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("LOCALHOST", True),
    ("127.1.attacker.example", False), ("127.0.0.1.nip.io", False), ("localhost.attacker.example", False),
    ("127.evil", False), ("::1.evil", False), ("", False), ("10.0.0.1", False),
])
def test_loopback_is_parsed_as_an_address_never_a_prefix(host, local):
    from XDiffusionLib.app.web.origins import host_name, is_loopback

    assert is_loopback(host) is local
    assert host_name("127.1.attacker.example:8080") == "127.1.attacker.example"
    assert host_name("[::1]:8080") == "::1"


def _request(port: int, method: str, path: str, headers: dict | None = None, body: bytes | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request(method, path, body=body, headers=headers or {})
    answer = connection.getresponse()
    return answer.status, answer.read().decode("utf-8", "replace")


def _websocket_status(port: int, path: str, headers: dict) -> int:
    """The status of a websocket handshake (101: accepted)."""
    return _request(port, "GET", path, {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                                        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", **headers})[0]


@pytest.mark.slow  # starts the web app's session processes
def test_session_ports_host_names_token_logs_and_session_folders(tiny_model, tmp_path):
    # A folder left by a hub that was killed (its process id is gone) is swept at start.
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    stale = Path(tempfile.mkdtemp(prefix=f"xdiffusion-web-{ended.pid}-"))
    (stale / "uploads").mkdir()
    (stale / "uploads" / "patient.nii.gz").write_bytes(b"x" * 100)

    log_path = tmp_path / "app.log"
    process, url = start_app(tiny_model, log_path, "--max-sessions", "2")
    hub_port = int(url.rsplit(":", 1)[1])
    try:
        assert not stale.exists()
        # 2. DNS rebinding: a name that starts with "127." is a name, not this computer.
        for host in ("127.1.attacker.example", f"127.0.0.1.attacker.example:{hub_port}", "localhost.evil"):
            assert _request(hub_port, "GET", "/", {"Host": host})[0] == 403, host
        for host in (f"localhost:{hub_port}", f"127.0.0.1:{hub_port}", f"[::1]:{hub_port}"):
            assert _request(hub_port, "GET", "/status", {"Host": host})[0] == 200, host
        status, landing = _request(hub_port, "GET", "/")
        token = re.search(r"'X-XDiffusion-Start': '([^']+)'", landing).group(1)
        status, answer = _request(hub_port, "POST", "/session", {"X-XDiffusion-Start": token,
                                                                  "Sec-Fetch-Site": "same-origin"})
        assert status == 200
        session_path = json.loads(answer)["url"]
        session_token = session_path.split("/")[2]
        log_text = log_path.read_text()
        started = re.search(rf"session {session_token[:6]} started on port (\d+) \(pid (\d+)\)", log_text)
        session_port, session_pid = int(started.group(1)), int(started.group(2))

        # 1. The session's own port: nothing without the hub's key, whatever the Origin.
        assert _request(session_port, "GET", "/")[0] == 403
        assert _request(session_port, "POST", "/upload?name=a.nii.gz", body=b"x" * 100)[0] == 403
        assert _websocket_status(session_port, "/ws", {"Origin": "http://evil.example"}) == 403
        assert _websocket_status(session_port, "/ws", {"Origin": f"http://127.0.0.1:{session_port}"}) == 403
        # Through the hub the page and an upload still work (the hub adds the key).
        assert _request(hub_port, "GET", session_path + "index.html")[0] == 200
        status, upload = _request(hub_port, "POST", session_path + "upload?name=patient.nii.gz",
                                  {"Sec-Fetch-Site": "same-origin"}, body=b"y" * 1000)
        assert status == 200 and json.loads(upload)["ok"], upload

        # 12. A refused request names its session by the token's start only.
        assert _request(hub_port, "POST", session_path + "upload?name=b.nii.gz",
                        {"Origin": "http://evil.example"}, body=b"z")[0] == 403
        time.sleep(0.5)
        log_text = log_path.read_text()
        assert "refused POST" in log_text and session_token[:6] in log_text
        assert session_token not in log_text

        # 12. The hub owns the session's folder: a SIGKILL of the session does not leave the upload.
        folders = list(Path(tempfile.gettempdir()).glob(f"xdiffusion-web-{process.pid}-*"))
        assert [p for folder in folders for p in folder.rglob("patient.nii.gz")]
        os.kill(session_pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(folder.exists() for folder in folders) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert not [folder for folder in folders if folder.exists() and list(folder.rglob("patient.nii.gz"))]
    finally:
        assert stop_app(process) == 0
    assert not list(Path(tempfile.gettempdir()).glob(f"xdiffusion-web-{process.pid}-*"))


def test_session_guard_refuses_foreign_requests_and_passes_the_hubs(tmp_path):
    """The session's middleware alone: the key opens it; started without the hub it applies the
    hub's host and origin policy (a websocket from another site is refused)."""
    import asyncio
    import concurrent.futures

    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from XDiffusionLib.app.web.origins import SESSION_KEY_HEADER, session_guard

    async def hello(_request):
        return web.Response(text="ok")

    async def scenario(key):
        app = web.Application(middlewares=[session_guard(key)])
        app.router.add_get("/", hello)
        app.router.add_get("/ws", hello)
        statuses = []
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            ws = {"Upgrade": "websocket", "Connection": "Upgrade"}
            for headers in ({}, {SESSION_KEY_HEADER: "wrong"}, {SESSION_KEY_HEADER: "secret"},
                            {**ws, "Origin": "http://evil.example"}, {"Host": "127.1.attacker.example"}):
                path = "/ws" if "Upgrade" in headers else "/"
                statuses.append((await client.get(path, headers=headers)).status)
        return statuses

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with_key = pool.submit(asyncio.run, scenario("secret")).result()
        alone = pool.submit(asyncio.run, scenario(None)).result()
    assert with_key == [403, 403, 200, 403, 403]
    assert alone == [200, 200, 200, 403, 403]


# -- 3. a full disk never leaves a file cut short under its final name ---------------------------


def _short_writes(monkeypatch, keep: float = 0.5) -> None:
    """ITK's writers on a full disk: the file is cut short and no error is raised."""
    import SimpleITK as sitk

    real = sitk.WriteImage

    def write_short(image, name, *args, **kwargs):
        real(image, name, *args, **kwargs)
        size = os.path.getsize(name)
        with open(name, "r+b") as stream:
            stream.truncate(int(size * keep))

    monkeypatch.setattr("XDiffusionLib.io.writers.sitk.WriteImage", write_short)
    monkeypatch.setattr("XDiffusionLib.io.atomic._free_bytes", lambda folder: 0)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_a_short_write_is_an_error_naming_the_output_and_leaves_the_old_file(tmp_path, volume, monkeypatch,
                                                                               suffix):
    target = tmp_path / f"result{suffix}"
    target.write_bytes(b"the user's earlier file")
    _short_writes(monkeypatch)
    with pytest.raises(XDiffusionError) as error:
        write_volume(volume, target)
    assert str(error.value).startswith(f"{target}: writing failed (no space left on device)")
    assert "\n" not in str(error.value) and ".xdpart" not in str(error.value)
    assert target.read_bytes() == b"the user's earlier file"
    assert hidden_files(tmp_path) == []


def test_a_gzip_stream_that_ends_early_but_closes_cleanly_is_caught(tmp_path, volume, monkeypatch):
    """What ITK leaves on a full disk: a well-formed .nii.gz holding the header and few voxels."""
    import gzip

    import SimpleITK as sitk

    real = sitk.WriteImage

    def header_only(image, name, *args, **kwargs):
        real(image, name, *args, **kwargs)
        data = gzip.decompress(Path(name).read_bytes())
        Path(name).write_bytes(gzip.compress(data[:400]))

    monkeypatch.setattr("XDiffusionLib.io.writers.sitk.WriteImage", header_only)
    with pytest.raises(XDiffusionError, match=r"result\.nii\.gz: writing failed \(\d+ of \d+ bytes\)"):
        write_volume(volume, tmp_path / "result.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_every_atomic_writer_checks_its_file(tmp_path):
    from XDiffusionLib.io.atomic import atomic_file

    with pytest.raises(XDiffusionError, match=r"figure\.png: writing failed"):
        with atomic_file(tmp_path / "figure.png") as temporary:
            temporary.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)  # no end chunk: cut short
    with pytest.raises(XDiffusionError, match=r"data\.json: writing failed"):
        with atomic_file(tmp_path / "data.json") as temporary:
            temporary.write_text('{"a": [1, 2')
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 150 kB tmpfs, where this user may mount one (root on Linux); skipped elsewhere."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=150k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (the simulated short writes cover this)")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_really_full_disk_leaves_no_file(small_tmpfs, volume):
    from XDiffusionLib.io.atomic import write_text_atomic

    big = Volume.from_array(np.random.default_rng(1).normal(size=(40, 40, 30)).astype(np.float32), (1, 1, 2))
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):  # ITK's NRRD and MetaImage writers raise in their words
        with pytest.raises(XDiffusionError, match=re.escape(str(small_tmpfs / f"big{suffix}"))
                           + r": writing failed \(no space left on device\); nothing was written under this name$"):
            write_volume(big, small_tmpfs / f"big{suffix}")
    with pytest.raises(OSError) as full:  # Python's own writes (tables, JSON) name the output too
        write_text_atomic(small_tmpfs / "table.csv", "x" * 300_000)
    assert full.value.filename == str(small_tmpfs / "table.csv") and full.value.errno == errno.ENOSPC
    assert list(small_tmpfs.iterdir()) == []
    write_volume(volume, small_tmpfs / "small.nii.gz")  # what fits is written


# A full disk anywhere, without mounting one: a child process that may write no file larger than
# a limit (RLIMIT_FSIZE, ``ulimit -f``), with SIGXFSZ ignored so that a write past it fails with
# EFBIG, as a write on a full disk fails with ENOSPC, instead of killing the process. SimpleITK's
# real writers meet a real failed write(2).
_FILE_SIZE_LIMITED = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                      "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), "
                      "resource.getrlimit(resource.RLIMIT_FSIZE)[1])); "
                      "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])")


def _run_with_file_size_limit(limit: int, *args: str) -> subprocess.CompletedProcess:
    """``python *args`` in a child that may write no file larger than ``limit`` bytes."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, "-c", _FILE_SIZE_LIMITED, str(limit), *args], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=600)


_WRITE_PAST_THE_LIMIT = """
import json, sys
from pathlib import Path
import numpy as np
from XDiffusionLib.errors import XDiffusionError, describe_system_error
from XDiffusionLib.io import atomic
from XDiffusionLib.io.volume import Volume
from XDiffusionLib.io.writers import write_volume

folder = Path(sys.argv[1])
if sys.argv[2] == "full":  # what statvfs says of a full disk
    atomic._free_bytes = lambda folder: 0
big = Volume.from_array(np.random.default_rng(1).normal(size=(40, 40, 30)).astype(np.float32), (1.0, 1.0, 2.0))
errors = {}
for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
    try:
        write_volume(big, folder / f"big{suffix}")
    except XDiffusionError as error:
        errors[suffix] = str(error)
try:
    atomic.write_text_atomic(folder / "table.csv", "x" * 100_000)
except OSError as error:
    errors["table.csv"] = describe_system_error(error)
write_volume(Volume.from_array(np.zeros((4, 4, 3), np.float32), (1.0, 1.0, 1.0)), folder / "small.nii.gz")
print(json.dumps(errors))
"""


@pytest.mark.parametrize("disk", ["limit", "full"])
def test_a_real_failed_write_leaves_no_file_and_names_the_output(tmp_path, disk):
    """Every volume format and a text file, written past the limit: one line naming the real output
    and why (the limit; or the full disk when the disk says it is full), the user's file under that
    name unchanged, no temporary; what fits is still written."""
    for name in ("big.nii.gz", "big.nii", "big.nrrd", "big.mha", "table.csv"):
        (tmp_path / name).write_bytes(b"the user's earlier file")
    done = _run_with_file_size_limit(60_000, "-c", _WRITE_PAST_THE_LIMIT, str(tmp_path), disk)
    assert done.returncode == 0, done.stderr[-3000:]
    errors = json.loads(done.stdout.splitlines()[-1])
    why = ("the file reached this process's file size limit of 60000 bytes, ulimit -f" if disk == "limit"
           else "no space left on device")
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        assert errors.get(suffix) == (f"{tmp_path / f'big{suffix}'}: writing failed ({why}); "
                                      "nothing was written under this name"), errors
    assert errors["table.csv"] == f"{tmp_path / 'table.csv'}: File too large"  # was "File too large", no file
    for name in ("big.nii.gz", "big.nii", "big.nrrd", "big.mha", "table.csv"):
        assert (tmp_path / name).read_bytes() == b"the user's earlier file"
    assert hidden_files(tmp_path) == []
    assert (tmp_path / "small.nii.gz").is_file()


@pytest.mark.slow  # a CLI reconstruction up to the size limit: several seconds on a 2-core CPU
def test_reconstruct_past_the_file_size_limit_is_one_line_and_leaves_nothing(tiny_model, tmp_path):
    """The command line's output path with SimpleITK's real writers: the result and its uncertainty
    are written together or not at all."""
    big = Volume.from_array(np.random.default_rng(2).normal(100, 20, (40, 40, 30)).astype(np.float32), (1, 1, 2))
    source = write_volume(big, tmp_path / "in.nii.gz")
    for suffix in (".nii.gz", ".nrrd"):
        out = tmp_path / "out" / f"result{suffix}"
        done = _run_with_file_size_limit(
            60_000, "-m", "XDiffusionLib.app.cli", "reconstruct", str(source), "--plane", "axial", "--indices", "5",
            "-o", str(out), "--model", str(tiny_model), "--views", "1", "--steps", "1", "--device", "cpu",
            "--runtime", "torch", "--no-progress")
        err = done.stderr.strip().splitlines()
        assert done.returncode != 0 and len(err) == 1, done.stderr[-3000:]
        assert err[0].startswith(f"xdiffusion reconstruct: error: {tmp_path / 'out'}/result"), err
        assert "writing failed (the file reached this process's file size limit" in err[0], err
        assert "xdpart" not in err[0]
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [], suffix  # no result, uncertainty, temporary


# -- 9. demo --out and evaluate --out never replace the user's files unasked ---------------------


def test_evaluate_keeps_the_users_files_and_replaces_its_own(tmp_path, volume, capsys):
    write_volume(volume, tmp_path / "data" / "case.nii.gz")
    out = tmp_path / "eval"
    out.mkdir()
    (out / "summary.csv").write_text("the user's own table")
    args = ["evaluate", "--data", str(tmp_path / "data"), "--method", "linear", "--slices", "1", "--out", str(out),
            "--no-figures", "--no-progress"]
    assert main(args) == 2
    err = one_line_error(capsys, "evaluate")
    assert f"{out / 'summary.csv'} already exists and no earlier xdiffusion evaluate wrote it" in err
    assert (out / "summary.csv").read_text() == "the user's own table"
    assert not (out / "cases.csv").exists()
    (out / "summary.csv").unlink()
    assert main(args) == 0
    assert main(args) == 0  # its own files of the earlier run
    capsys.readouterr()
    (out / "summary.md").write_text("edited by the user")  # no longer evaluate's
    assert main(args) == 2
    assert "summary.md already exists" in one_line_error(capsys, "evaluate")
    assert main([*args, "--overwrite"]) == 0


def test_demo_keeps_the_users_files_before_any_work(tiny_model, tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "kmeans_t1_demo.png").write_bytes(b"the user's figure")
    assert main(["demo", "--model", str(tiny_model), "--out", str(out), "--views", "1", "--steps", "1"]) == 2
    err = one_line_error(capsys, "demo")
    assert f"{out / 'kmeans_t1_demo.png'} already exists" in err and "--overwrite" in err
    assert (out / "kmeans_t1_demo.png").read_bytes() == b"the user's figure"
    assert sorted(p.name for p in out.iterdir()) == ["kmeans_t1_demo.png"]


def test_demo_output_ledger_counts_only_unchanged_files(tmp_path):
    from XDiffusionLib.io.outputs import OutputLedger, check_outputs

    mine, theirs = tmp_path / "a.nii.gz", tmp_path / "b.png"
    mine.write_bytes(b"written by the demo")
    theirs.write_bytes(b"the user's")
    OutputLedger(tmp_path, "demo").record([mine])
    assert OutputLedger(tmp_path, "demo").ours() == [mine]
    assert OutputLedger(tmp_path, "evaluate").ours() == []  # another command's files are not its own
    check_outputs([mine], ours=OutputLedger(tmp_path, "demo").ours())
    with pytest.raises(XDiffusionError, match="b.png already exists"):
        check_outputs([mine, theirs], ours=OutputLedger(tmp_path, "demo").ours())
    mine.write_bytes(b"changed by the user since")
    assert OutputLedger(tmp_path, "demo").ours() == []


# -- 10. reconstruct-batch --inputs with a relative folder -----------------------------------------


def test_reconstruct_batch_reads_a_relative_inputs_folder(tiny_model, tmp_path, volume, monkeypatch, capsys):
    write_volume(volume, tmp_path / "bin" / "case1.nii.gz")
    monkeypatch.chdir(tmp_path)
    assert main(["reconstruct-batch", "--inputs", "bin", "--out", "out", "--plane", "axial", "--k", "1",
                 "--model", str(tiny_model), "--views", "1", "--steps", "1", "--device", "cpu", "--no-progress"]) == 0, \
        capsys.readouterr().err
    assert (tmp_path / "out" / "case1_xdiffusion.nii.gz").is_file()


# -- 4. the ONNX graph cache is checked against the SHA-256 recorded at export --------------------


def _unet_numbers(model, fast):
    import torch

    from test_onnx_runtime import batch

    x, t, cond = batch(model.config, 2)
    with torch.no_grad():
        return model(x, t, cond), fast(x, t, cond)


def test_a_cached_graph_of_other_weights_or_flipped_bytes_is_exported_again(tiny_model, private_onnx_cache):
    import copy

    import torch

    from XDiffusionLib.model import onnx_runtime
    from XDiffusionLib.model.checkpoint import load_pretrained

    model, _ = load_pretrained(tiny_model)
    first = onnx_runtime.on_onnx_runtime(model, "onnx", tiny_model)
    graph = first.graph
    assert graph.with_name(graph.name + ".sha256").is_file()
    # Another model's graph under this model's key (the key is computable by anyone).
    other = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in other.unet.parameters():
            parameter.add_(0.05)
    onnx_runtime.export_unet(other, graph)
    served = onnx_runtime.on_onnx_runtime(model, "onnx", tiny_model)
    expected, got = _unet_numbers(model, served)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # 64 flipped bytes in the middle of the graph.
    data = bytearray(graph.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    graph.write_bytes(bytes(data))
    served = onnx_runtime.on_onnx_runtime(model, "onnx", tiny_model)
    expected, got = _unet_numbers(model, served)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert served.graph == graph and onnx_runtime.verified_graph(graph) is not None


def test_a_cache_other_users_can_write_is_not_used(tiny_model, private_onnx_cache):
    import torch

    from XDiffusionLib.model import onnx_runtime
    from XDiffusionLib.model.checkpoint import load_pretrained

    model, _ = load_pretrained(tiny_model)
    folder = onnx_runtime.cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o777)
    try:
        with pytest.warns(RuntimeWarning, match="can be written by other users"):
            fast = onnx_runtime.on_onnx_runtime(model, "onnx", tiny_model)
        assert fast.graph.parent != folder
        expected, got = _unet_numbers(model, fast)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    finally:
        os.chmod(folder, 0o700)


# -- 5. an edited config.json is checked before anything is built from it -------------------------


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.fixture
def model_copy(tiny_model, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(tiny_model, tmp_path / "model"))


def test_an_edited_config_is_refused_before_its_model_is_built(model_copy, monkeypatch):
    from XDiffusionLib.model import checkpoint

    built = []
    real_build = checkpoint.build_denoiser
    monkeypatch.setattr(checkpoint, "build_denoiser", lambda config: built.append(config) or real_build(config))
    _edit_config(model_copy, block_out_channels=[2048, 2048])
    with pytest.raises(XDiffusionError, match="config.json: does not match the config these weights"):
        checkpoint.load_pretrained(model_copy)
    assert built == []  # before: the 2048-channel model (5 GB at full size) was built first


def test_a_folder_without_checksums_warns_once_and_refuses_huge_configs_before_building(model_copy, monkeypatch,
                                                                                          capsys, volume, tmp_path):
    import torch

    from XDiffusionLib.io.checksums import read_safetensors_header
    from XDiffusionLib.model import checkpoint

    # An older folder: the weights' metadata holds no checksums.
    weights = model_copy / "model.safetensors"
    offset, header = read_safetensors_header(weights)
    header["__metadata__"] = {}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    data = weights.read_bytes()[offset:]
    weights.write_bytes(len(text).to_bytes(8, "little") + text + data)
    with pytest.warns(RuntimeWarning, match="records no checksums"):
        checkpoint.load_pretrained(model_copy)
    built = []
    real_build = checkpoint.build_denoiser
    monkeypatch.setattr(checkpoint, "build_denoiser", lambda config: real_build(config) if torch.empty(0).is_meta
                        else built.append(config) or real_build(config))  # only builds that take memory
    _edit_config(model_copy, block_out_channels=[2048, 2048])
    with pytest.warns(RuntimeWarning), pytest.raises(XDiffusionError, match="(the config's model needs|for this config)"):
        checkpoint.load_pretrained(model_copy)
    assert built == []
    _edit_config(model_copy, block_out_channels=[10 ** 6, 10 ** 6])
    with pytest.raises(XDiffusionError, match="config.json: config channels 1000000 is larger than any model"):
        checkpoint.load_pretrained(model_copy)
    # On the command line: one warning line, one error line.
    source = write_volume(volume, tmp_path / "in.nii.gz")
    assert main(["reconstruct", str(source), "--plane", "axial", "--indices", "5", "-o", str(tmp_path / "out.nii.gz"),
                 "--model", str(model_copy), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "larger than any model" in err[0], err


# -- 7. the worker never overwrites its input or any existing file --------------------------------


def test_worker_refuses_to_overwrite_its_input_or_an_existing_file(tmp_path, volume, tiny_model):
    from XDiffusionLib.worker import messages

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    source = write_volume(volume, tmp_path / "reconstruction.nrrd")  # the input, where the output goes
    before = source.read_bytes()
    settings = {"plane": "axial", "indices": [3], "model_dir": str(tiny_model),
                "options": {"views": 1, "steps": 1, "device": "cpu"}}
    request = {"protocol": 1, "input": str(source), "output_dir": str(tmp_path), "settings": settings}
    (tmp_path / "request.json").write_text(json.dumps(request))
    done = subprocess.run([sys.executable, "-m", "XDiffusionLib.worker", str(tmp_path / "request.json")],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    [message] = [messages.decode(line) for line in done.stdout.splitlines()]
    assert message["type"] == "error" and "is the input" in message["message"], message
    assert source.read_bytes() == before
    # Any other existing file in the output's place is kept too.
    other = tmp_path / "out"
    other.mkdir()
    (other / "uncertainty.nrrd").write_text("someone's file")
    from XDiffusionLib.worker.messages import JobSettings, Request
    from XDiffusionLib.worker.run import run_request

    with pytest.raises(XDiffusionError, match="uncertainty.nrrd already exists: the worker writes only new files"):
        run_request(Request(str(source), str(other), JobSettings.from_dict(settings)), lambda message: None)
    assert (other / "uncertainty.nrrd").read_text() == "someone's file"
    assert sorted(p.name for p in other.iterdir()) == ["uncertainty.nrrd"]


# -- 11. machine errors (full disk, no memory) are one line on the command line -------------------


def test_a_full_disk_during_reconstruct_batch_is_one_line(tiny_model, tmp_path, volume, monkeypatch, capsys):
    import errno

    from XDiffusionLib.io import atomic

    write_volume(volume, tmp_path / "data" / "case1.nii.gz")

    def full_disk(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(atomic, "write_text_atomic", full_disk)
    code = main(["reconstruct-batch", "--inputs", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--plane",
                 "axial", "--k", "1", "--model", str(tiny_model), "--views", "1", "--steps", "1", "--device", "cpu",
                 "--no-progress"])
    err = one_line_error(capsys, "reconstruct-batch")
    assert code == 1 and "no space left on device" in err and str(tmp_path / "out") in err


@pytest.mark.slow  # a training run until the disk fills: several seconds on a 2-core CPU
def test_a_full_disk_during_train_is_one_line(tmp_path, monkeypatch, capsys):
    import safetensors.torch

    from test_training import blob, train_args

    from XDiffusionLib.io import atomic

    for i in range(3):
        write_volume(Volume.from_array(blob((20, 18, 14), i), (1.0, 1.2, 1.5)), tmp_path / "data" / f"s{i}.nii.gz")
    real = safetensors.torch.save_file

    def save_short(tensors, name, *args, **kwargs):  # what a full disk leaves: the file cut short
        real(tensors, name, *args, **kwargs)
        with open(name, "r+b") as stream:
            stream.truncate(os.path.getsize(name) // 2)

    monkeypatch.setattr(safetensors.torch, "save_file", save_short)
    monkeypatch.setattr(atomic, "_free_bytes", lambda folder: 0)
    code = main(train_args(tmp_path / "data", tmp_path / "run", "--steps", "2"))
    err = one_line_error(capsys, "train")
    assert code != 0 and "no space left on device" in err and str(tmp_path / "run") in err
    assert not list((tmp_path / "run").rglob("*.safetensors"))  # nothing cut short under its name


def test_out_of_memory_while_reading_is_one_line(tmp_path, volume, monkeypatch, capsys):
    source = write_volume(volume, tmp_path / "in.nii.gz")

    def no_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr("XDiffusionLib.io.readers.read_volume", no_memory)
    code = main(["reconstruct", str(source), "--plane", "axial", "--indices", "5", "-o", str(tmp_path / "out.nii.gz"),
                 "--device", "cpu"])
    assert code == 1 and "ran out of memory" in one_line_error(capsys, "reconstruct")


@pytest.mark.parametrize("spacing", [1e-30, 1e30])
def test_a_header_spacing_outside_a_sane_range_is_refused_at_read(tmp_path, spacing):
    import SimpleITK as sitk

    from XDiffusionLib.io.readers import read_volume

    image = sitk.GetImageFromArray(np.random.default_rng(0).random((8, 9, 10)).astype(np.float32))
    image.SetSpacing((1.0, spacing, 1.0))
    path = tmp_path / "odd.nrrd"
    sitk.WriteImage(image, str(path))
    with pytest.raises(XDiffusionError) as refused:
        read_volume(path)
    message = str(refused.value)
    assert message.startswith(str(path)) and f"{spacing:g}" in message and "\n" not in message, message


@pytest.mark.parametrize("name, header", [
    ("huge.nhdr", "NRRD0004\ntype: uint8\ndimension: 3\nsizes: 1000 1000 500\nencoding: raw\ndata file: huge.raw\n\n"),
    ("huge.mhd", "ObjectType = Image\nNDims = 3\nDimSize = 1000 1000 500\nElementType = MET_USHORT\n"
                 "ElementDataFile = huge.raw\n"),
    ("huge.nrrd", "NRRD0004\ntype: float\nendian: little\ndimension: 3\nsizes: 1000 1000 250\nencoding: gzip\n\n"),
])
def test_a_header_declaring_more_voxels_than_its_data_file_holds_is_refused_before_allocation(tmp_path, monkeypatch,
                                                                                              name, header):
    import gzip

    import SimpleITK as sitk

    from XDiffusionLib.io.readers import read_volume

    path = tmp_path / name
    if name.endswith(".nrrd"):
        path.write_bytes(header.encode() + gzip.compress(b"\0" * 4000))
        data = path
    else:
        path.write_text(header)
        data = tmp_path / "huge.raw"
        data.write_bytes(b"\0" * 4000)

    def allocate(self):
        raise AssertionError("ITK was asked to read the voxels")

    monkeypatch.setattr(sitk.ImageFileReader, "Execute", allocate)
    with pytest.raises(XDiffusionError, match="bytes, but .* holds") as refused:
        read_volume(path)
    assert str(refused.value).startswith(str(path)) and str(data) in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("indices", ["[1e400]", "[-1e400]", "[1.5]", '["3"]', "[true]", '"12"', "null"])
def test_a_worker_request_with_a_bad_slice_index_is_one_line(tmp_path, indices):
    from XDiffusionLib.worker import messages

    request = tmp_path / "request.json"
    request.write_text('{"protocol": 1, "input": "in.nrrd", "output_dir": "out", '
                       f'"settings": {{"plane": "axial", "indices": {indices}}}}}')
    with pytest.raises(XDiffusionError) as refused:
        messages.read_request(request)
    assert str(refused.value).startswith(f"{request} settings:") and "\n" not in str(refused.value)
    if indices == "[1e400]":  # the worker process itself: an error line, exit code 2, no traceback
        env = dict(os.environ, PYTHONPATH=str(REPO))
        done = subprocess.run([sys.executable, "-m", "XDiffusionLib.worker", str(request)], capture_output=True,
                              text=True, env=env, cwd=REPO, timeout=120)
        [line] = done.stdout.splitlines()
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert "slice index inf is not a whole number" in messages.decode(line)["message"]
    assert messages.JobSettings(indices=(3.0, np.int64(4))).indices == (3, 4)  # whole numbers still do


def _patch_zip(path: Path, *, flags: int | None = None, method: int | None = None) -> None:
    """Set the general-purpose flags or the compression method of every member, in the local and
    the central headers (Python's zipfile writes neither encrypted nor unknown-method members)."""
    import struct

    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = data.find(signature)
        while start >= 0:
            if flags is not None:
                struct.pack_into("<H", data, start + offset, flags)
            if method is not None:
                struct.pack_into("<H", data, start + offset + 2, method)
            start = data.find(signature, start + 4)
    path.write_bytes(bytes(data))


def _page_and_reports():
    """The page's typed state as a session holds it (a trame state of its own, no server), and the
    session's reports of it, each error shown also kept in ``errors``."""
    from trame_server.state import State

    from XDiffusionLib.app.web.reports import Reports
    from XDiffusionLib.app.web.state import typed_page

    class Recorded(Reports):
        def __init__(self, page):
            super().__init__(page)
            self.errors = []

        def error(self, message, shown=()):
            super().error(message, shown)
            self.errors.append(self.messages.error)

    page = typed_page(State())
    return page, Recorded(page)


@pytest.mark.parametrize("kind, words", [("deep", "3000 folders deep"), ("encrypted", "is encrypted"),
                                         ("method", "uses compression method 99")])
def test_upload_zips_nested_deep_encrypted_or_of_unknown_compression_are_one_line_on_the_page(tmp_path, kind,
                                                                                                words):
    import asyncio
    import zipfile

    from XDiffusionLib.app.web.loading import Loading
    from XDiffusionLib.app.web.transfer import Transfers

    transfers = Transfers(tmp_path / "session", max_upload_bytes=1 << 20)
    upload = tmp_path / "session" / "uploads" / "a1" / "scan.zip"
    upload.parent.mkdir(parents=True)
    name = "d/" * 3000 + "scan.nrrd" if kind == "deep" else "scan.nrrd"
    with zipfile.ZipFile(upload, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, b"NRRD0004\n" + b"x" * 100)
    if kind == "encrypted":
        _patch_zip(upload, flags=0x1)
    elif kind == "method":
        _patch_zip(upload, method=99)
    with pytest.raises(XDiffusionError, match=words) as refused:
        transfers.unpack_zip(upload)
    assert str(refused.value).startswith("scan.zip: ") and "\n" not in str(refused.value)
    assert not (upload.parent / "unzipped").exists()  # refused before anything is unpacked

    page, reports = _page_and_reports()
    transfers._uploads["token"] = upload
    loading = Loading(page, reports, workspace=None, transfers=transfers, data_roots=None, allow_server_paths=False)
    asyncio.run(loading.load_upload("token", "scan.zip"))
    assert len(reports.errors) == 1 and words in reports.errors[0], reports.errors
    assert not upload.parent.exists()  # the refused upload is removed


# -- 6. uploads are bounded per session: pending files and decompressed voxels ---------------------


def test_a_session_keeps_two_pending_uploads_and_bounds_their_voxels(tmp_path):
    import asyncio
    import concurrent.futures

    import SimpleITK as sitk
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from XDiffusionLib.app.web.transfer import MAX_PENDING_UPLOADS, Transfers
    from XDiffusionLib.io.readers import read_volume

    transfers = Transfers(tmp_path / "session", max_upload_bytes=1 << 20)

    async def scenario():
        app = web.Application()
        app.add_routes(transfers.routes())
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            answers = []
            for n in range(40):
                answer = await client.post(f"/upload?name=u{n}.nii.gz", data=b"x" * 50_000)
                answers.append(await answer.json())
            return answers

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answers = pool.submit(asyncio.run, scenario()).result()
    assert all(a["ok"] for a in answers)  # each upload is accepted ...
    kept = [p for p in (tmp_path / "session" / "uploads").rglob("*") if p.is_file()]
    assert len(kept) == MAX_PENDING_UPLOADS == 2  # ... but only the newest two stay on disk
    with pytest.raises(XDiffusionError, match="no longer available"):
        transfers.take_upload(answers[0]["token"])
    assert transfers.take_upload(answers[-1]["token"]).name == "u39.nii.gz"

    # A small file declaring a huge volume is refused from its header, before decompression.
    bomb = tmp_path / "bomb.nii.gz"
    sitk.WriteImage(sitk.Image([300, 300, 300], sitk.sitkUInt8), str(bomb), useCompression=True)
    assert bomb.stat().st_size < (1 << 20)
    with pytest.raises(XDiffusionError, match=r"300x300x300 voxels .* more than the 16,777,216 voxels"):
        read_volume(bomb, max_voxels=transfers.max_voxels)




def test_a_session_keeps_its_two_newest_exports(tmp_path):
    """Exports are disk of the session too: each up to the largest volume a session may hold, and
    the page downloads each at once. Before, every export stayed until the session ended."""
    import asyncio
    import concurrent.futures

    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from XDiffusionLib.app.web.transfer import MAX_KEPT_DOWNLOADS, Transfers

    transfers = Transfers(tmp_path / "session", max_upload_bytes=1 << 20)
    urls = []
    for n in range(6):
        folder = transfers.new_download_folder()
        (folder / f"r{n}.nii.gz").write_bytes(b"x" * 10_000)
        urls.append(transfers.add_download(folder / f"r{n}.nii.gz", f"r{n}.nii.gz"))
    failed = transfers.new_download_folder()  # an export that failed half-way
    (failed / "series").mkdir()
    transfers.discard_download(failed)
    downloads = tmp_path / "session" / "downloads"
    kept = sorted(str(p.relative_to(downloads)).split("/", 1)[1] for p in downloads.rglob("*") if p.is_file())
    assert kept == ["r4.nii.gz", "r5.nii.gz"] and MAX_KEPT_DOWNLOADS == 2, kept
    assert len(list(downloads.iterdir())) == 2  # their folders only: the failed export's is gone too

    async def scenario():
        app = web.Application()
        app.add_routes(transfers.routes())
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            old, new = await client.get("/" + urls[0]), await client.get("/" + urls[-1])
            return old.status, await old.text(), new.status, await new.read()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        old_status, old_text, new_status, new_body = pool.submit(asyncio.run, scenario()).result()
    assert old_status == 404 and "expired: export again" in old_text
    assert new_status == 200 and new_body == b"x" * 10_000
    transfers.discard_download(tmp_path / "elsewhere")  # never outside the session's downloads
    assert (tmp_path / "session" / "downloads").is_dir()


@pytest.mark.parametrize("export_format", ["nifti", "dicom"])
def test_a_failed_export_says_why_by_the_download_name_and_leaves_nothing(tmp_path, volume, monkeypatch,
                                                                           export_format):
    """A full disk while the page exports: one line naming the download as the page knows it, never
    the session's folder on the server (before: the whole server path, or an "internal error")."""
    import asyncio
    from types import SimpleNamespace

    from XDiffusionLib.app.web.exporting import Exporting
    from XDiffusionLib.app.web.transfer import Transfers
    from XDiffusionLib.slicer.export import Provenance

    monkeypatch.setattr("XDiffusionLib.app.web.exporting.volume_from_node", lambda node: volume)
    if export_format == "nifti":  # ITK's NIfTI writer on a full disk: the file cut short, no error
        _short_writes(monkeypatch)
    else:  # pydicom's writes raise, naming no file
        def full_disk(dataset, path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr("XDiffusionLib.slicer.export._save", full_disk)

    # The session as the export sees it, with its real way of showing errors: a result shown (the
    # reconstruction only) and the run that made it.
    page, reports = _page_and_reports()
    result = SimpleNamespace(reconstruction="node", uncertainty=None, difference=None)
    workspace = SimpleNamespace(comparison=SimpleNamespace(result=result), input_node=None)
    exporting = Exporting(page, reports, workspace, Transfers(tmp_path / "session", max_upload_bytes=1 << 20))
    run = SimpleNamespace(settings=SimpleNamespace(model_dir="model"), provenance=lambda: Provenance("axial", (3,), "m"))
    exporting.on_result_shown(run, result)
    page.data.exporting.format = export_format
    assert asyncio.run(exporting.export()) is None
    [error] = reports.errors
    assert error == ("volume_XDiffusion.nii.gz: writing failed (no space left on device); nothing was written "
                     "under this name" if export_format == "nifti" else
                     "export failed: no space left on device"), error
    assert list((tmp_path / "session" / "downloads").iterdir()) == []

# -- 6, 11. bad zips and oversized uploads sent to the running app, as its page sends them ----------
# The checks above hold for the loading code alone; these go through the hub, the session's key,
# its upload route and its loader, and read what the page shows and what is left on disk.


@pytest.fixture(scope="module")
def upload_app(tiny_model, tmp_path_factory):
    """One running app (hub and session processes, 1 MB upload limit) and the folder of its log."""
    folder = tmp_path_factory.mktemp("upload-app")
    process, url = start_app(tiny_model, folder / "app.log", "--max-sessions", "2")
    yield process, url
    assert stop_app(process) == 0


def _session_folders(hub: subprocess.Popen) -> list[Path]:
    return sorted(Path(tempfile.gettempdir()).glob(f"xdiffusion-web-{hub.pid}-*"))


def _left_behind(hub: subprocess.Popen, names: tuple[str, ...] = ()) -> list[Path]:
    """What an upload may have left in the app's session folders: anything in their upload and
    download folders, a hidden temporary, or a file of one of ``names`` anywhere inside (the
    sessions' worker scratch folders included)."""
    left = []
    for folder in _session_folders(hub):
        for path in folder.rglob("*"):
            inside = path.relative_to(folder).parts
            if (inside[0] in ("uploads", "downloads") and len(inside) > 1) or ".xdpart-" in path.name \
                    or path.name in names:
                left.append(path)
    return left


def _zip_bytes(members: dict[str, bytes], compression: int = 8) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _bad_zips(folder: Path) -> list[tuple[Path, str, tuple[str, ...]]]:
    """(zip file, words of the page's error, names its members would unpack to)."""
    import struct

    import SimpleITK as sitk

    made = []

    def add(name: str, data: bytes, words: str, members: tuple[str, ...]) -> Path:
        path = folder / name
        path.write_bytes(data)
        made.append((path, words, members))
        return path

    # A bomb: 50 MB of zeros in 50 kB.
    add("bomb.zip", _zip_bytes({"scan.nii": b"\0" * (50 << 20)}),
        "bomb.zip (unpacked): the file is larger than the upload limit of 1.0 MB (50 MB)", ("scan.nii",))
    # The same bomb lying about its size (1000 bytes in both headers): unpacking stops there.
    data = bytearray(_zip_bytes({"liar.nii": b"\0" * (50 << 20)}))
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        struct.pack_into("<I", data, data.find(signature) + offset, 1000)
    add("liar.zip", bytes(data), "liar.zip: not a readable zip file (Bad CRC-32 for file 'liar.nii')", ("liar.nii",))
    # One member counted many times: 30 central-directory entries over the same 100 kB.
    single = bytearray(_zip_bytes({"same.nii": b"\0" * 100_000}))
    central = single.find(b"PK\x01\x02")
    end = single.find(b"PK\x05\x06")
    count = 30
    entries = bytes(single[central:end]) * count
    tail = bytearray(single[end:])
    struct.pack_into("<HHII", tail, 8, count, count, len(entries), central)
    add("overlap.zip", bytes(single[:central]) + entries + bytes(tail),
        "overlap.zip (unpacked): the file is larger than the upload limit of 1.0 MB (2.9 MB)", ("same.nii",))
    add("climb.zip", _zip_bytes({"../../outside.nii.gz": b"x" * 100}),
        "climb.zip: unsafe path '../../outside.nii.gz' in the zip file", ("outside.nii.gz",))
    add("windows.zip", _zip_bytes({"..\\..\\outside.nrrd": b"x" * 100}),
        "windows.zip: unsafe path '..\\\\..\\\\outside.nrrd' in the zip file", ("outside.nrrd",))
    add("absolute.zip", _zip_bytes({"/tmp/xd-absolute-member.nii.gz": b"x" * 100}),
        "absolute.zip: unsafe path '/tmp/xd-absolute-member.nii.gz' in the zip file",
        ("xd-absolute-member.nii.gz",))
    add("deep.zip", _zip_bytes({"d/" * 3000 + "scan.nrrd": b"NRRD0004\n" + b"x" * 100}),
        "deep.zip: a file in the zip is 3000 folders deep", ("scan.nrrd",))
    _patch_zip(add("locked.zip", _zip_bytes({"locked.nrrd": b"NRRD0004\n" + b"x" * 100}),
                   "locked.zip: 'locked.nrrd' is encrypted; upload a zip without a password", ("locked.nrrd",)),
               flags=0x1)
    _patch_zip(add("method.zip", _zip_bytes({"odd.nrrd": b"NRRD0004\n" + b"x" * 100}),
                   "method.zip: 'odd.nrrd' uses compression method 99", ("odd.nrrd",)), method=99)
    add("garbage.zip", np.random.default_rng(3).bytes(5000), "garbage.zip: not a readable zip file", ())
    # Inside a harmless zip, a volume whose header declares 300^3 voxels (27 MB) in 27 kB.
    voxels = folder / "voxels.nii.gz"
    sitk.WriteImage(sitk.Image([300, 300, 300], sitk.sitkUInt8), str(voxels), useCompression=True)
    add("voxels.zip", _zip_bytes({"voxels.nii.gz": voxels.read_bytes()}, compression=0),
        "voxels.zip/voxels.nii.gz: 300x300x300 voxels (27,000,000) is more than", ("voxels.nii.gz",))
    voxels.unlink()
    return made


@pytest.mark.slow  # starts the web app and drives its page in Chromium
def test_bad_zips_uploaded_to_the_running_app_are_one_line_and_leave_nothing(upload_app, browser, tmp_path):
    hub, url = upload_app
    page = open_tab(browser, url)
    try:
        assert _left_behind(hub) == []
        for path, words, members in _bad_zips(tmp_path):
            page.set_input_files("#xd-upload", str(path))
            message = error_text(page).strip()
            assert "\n" not in message and words in message, (path.name, message)
            assert message.startswith(path.name) and "unzipped" not in message, message  # the page's names only
            assert "xdiffusion-web-" not in message and "Traceback" not in message, message
            assert page.locator("#xd-volume").count() == 0  # nothing was loaded
            # Nothing unpacked or uploaded stays, in the session or beside it.
            assert _left_behind(hub, members + (path.name,)) == [], path.name
            for folder in _session_folders(hub):
                assert not [p for p in folder.parent.glob("outside.*")]
            assert not Path("/tmp/xd-absolute-member.nii.gz").exists()
            page.click("#xd-error .v-alert__close button")
            page.wait_for_selector("#xd-error", state="detached")

        # A good zip after all that: it loads, and its upload is removed once read.
        good = write_volume(Volume.from_array(np.random.default_rng(4).normal(100, 5, (20, 18, 12))
                                              .astype(np.float32), (2.0, 2.0, 2.5)), tmp_path / "good.nii.gz")
        (tmp_path / "good.zip").write_bytes(_zip_bytes({"study/good.nii.gz": good.read_bytes()}))
        page.set_input_files("#xd-upload", str(tmp_path / "good.zip"))
        page.wait_for_selector("#xd-volume:has-text('good: 20x18x12 voxels')", timeout=60_000)
        assert _left_behind(hub, ("good.zip", "good.nii.gz")) == []
    finally:
        page.close()


@pytest.mark.slow  # starts the web app and drives its page in Chromium
def test_upload_limits_of_the_running_app_hold_and_leave_nothing(upload_app, browser, tmp_path):
    hub, url = upload_app
    page = open_tab(browser, url)
    session = page.url.split("/s/", 1)[1].split("/", 1)[0]
    port = int(url.rsplit(":", 1)[1])
    try:
        # Over the limit: the page refuses before sending a byte ...
        big = tmp_path / "big.zip"
        big.write_bytes(np.random.default_rng(5).bytes(int(1.5 * (1 << 20))))
        page.set_input_files("#xd-upload", str(big))
        message = error_text(page).strip()
        assert "\n" not in message and message.startswith("big.zip: the file is larger than the upload limit"), message
        page.click("#xd-error .v-alert__close button")
        # ... and the app refuses it too from a client that skips the page's check: declared ...
        status, answer = page.evaluate(
            "async () => { const r = await fetch('upload?name=big.zip', {method: 'POST', body: new Uint8Array(1600000)});"
            " return [r.status, await r.json()]; }")
        assert status == 413 and "upload limit of 1.0 MB" in answer["error"], answer
        # ... or streamed without a length (cut off while it arrives).
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        connection.request("POST", f"/s/{session}/upload?name=streamed.zip",
                           body=(b"x" * (256 << 10) for _ in range(8)), encode_chunked=True,
                           headers={"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"})
        answer = connection.getresponse()
        assert answer.status == 413 and "upload limit" in json.loads(answer.read())["error"]
        assert _left_behind(hub, ("big.zip", "streamed.zip")) == []

        # Pending uploads: of five sent without loading, the newest two stay on disk.
        tokens = page.evaluate(
            "async () => { const tokens = []; for (let n = 0; n < 5; n++) {"
            " const r = await fetch(`upload?name=pending${n}.nii.gz`, {method: 'POST', body: new Uint8Array(50000)});"
            " tokens.push((await r.json()).token); } return tokens; }")
        assert len(set(tokens)) == 5
        kept = sorted(p.name for p in _left_behind(hub) if p.is_file())
        assert kept == ["pending3.nii.gz", "pending4.nii.gz"], kept
        # Loading the oldest says it is gone, in one line (the page's load trigger, as its upload
        # script finds it on the file input).
        load = page.get_attribute("#xd-upload", "data-trigger-load")
        page.evaluate(f"() => window.trame.trigger('{load}', ['{tokens[0]}', 'pending0.nii.gz'])")
        message = error_text(page).strip()
        assert "\n" not in message and "no longer available" in message and "upload it again" in message, message
        # Loading one that is kept reads it (not an image: one line) and removes it.
        page.click("#xd-error .v-alert__close button")
        page.evaluate(f"() => window.trame.trigger('{load}', ['{tokens[4]}', 'pending4.nii.gz'])")
        message = error_text(page).strip()
        assert "\n" not in message and message.startswith("pending4.nii.gz"), message
        assert sorted(p.name for p in _left_behind(hub) if p.is_file()) == ["pending3.nii.gz"]
    finally:
        page.close()


# -- 13. saved model folders get the usual permissions ---------------------------------------------


def test_saved_model_folders_are_readable_like_every_other_output(tiny_model, tmp_path):
    from XDiffusionLib.model.checkpoint import load_pretrained, save_pretrained

    model, config = load_pretrained(tiny_model)
    folder = save_pretrained(model, config, tmp_path / "model")
    umask = os.umask(0o022)
    os.umask(umask)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask  # was 0700 (mkdtemp's)
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in folder.iterdir())


# -- 8. DICOM series with uneven spacing or a gantry tilt are refused, not misread -----------------


def _move_slice(path: Path, offset) -> None:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    position = np.array([float(v) for v in image.GetMetaData("0020|0032").split("\\")]) + np.asarray(offset)
    image.SetMetaData("0020|0032", "\\".join(f"{v:.10f}" for v in position))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(path))
    writer.Execute(image)


@pytest.mark.parametrize("offset, words", [((0.0, 0.0, 2.0), "unevenly spaced"), (None, "sheared")])
def test_dicom_series_with_uneven_gaps_or_gantry_tilt_is_refused(tmp_path, volume_factory, offset, words):
    from test_io import write_dicom_series

    from XDiffusionLib.io.readers import read_volume

    volume = volume_factory(shape=(10, 9, 6), spacing=(0.8, 1.1, 2.0), direction=np.eye(3))
    folder = tmp_path / "series"
    write_dicom_series(volume, folder, "1.2.826.0.1.3680043.2.1125.7")
    np.testing.assert_allclose(read_volume(folder).spacing, (0.8, 1.1, 2.0), atol=1e-4)  # an even series reads
    slices = sorted(folder.glob("*.dcm"))
    if offset is not None:  # every slice from the 4th on 2 mm further: gaps 2, 2, 4, 2, 2 mm
        for path in slices[3:]:
            _move_slice(path, offset)
    else:  # a tilt: each slice 0.5 mm further along x than the one before
        for n, path in enumerate(slices):
            _move_slice(path, (0.5 * n, 0.0, 0.0))
    with pytest.raises(XDiffusionError, match=words) as refused:
        read_volume(folder)
    assert str(refused.value).startswith(str(folder)) and "\n" not in str(refused.value)
