"""Nothing lost, nothing leaked (issue 9): each test reproduces one way the tool lost data, leaked a
file or answered bad input with a traceback, and checks that it no longer does.

The browser-level checks of the same rules (an upload of the /etc/passwd zip, a page on another
origin, server paths outside the data folders) are in ``test_web_app.py``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from XDiffusionLib.app.cli import main
from XDiffusionLib.errors import XDiffusionError
from XDiffusionLib.io.readers import read_volume
from XDiffusionLib.io.volume import Volume
from XDiffusionLib.io.writers import write_volume

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))

# The attacker's header: 16 x 16 x 5 bytes of "voxels" = the first 1280 bytes of /etc/passwd.
PASSWD_HEADER = "NRRD0004\ntype: uint8\ndimension: 3\nsizes: 16 16 5\nencoding: raw\ndata file: {}\n\n"


@pytest.fixture
def volume_file(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    i, j, k = np.meshgrid(*[np.linspace(0, 1, n) for n in (14, 12, 10)], indexing="ij")
    array = (200 + 150 * np.sin(3 * i) * np.cos(2 * j) + 80 * k + rng.normal(0, 3, i.shape)).astype(np.float32)
    return write_volume(Volume.from_array(array, (1.1, 1.0, 1.5)), tmp_path / "in" / "subject.nii.gz")


def one_line_error(capsys, command: str = "reconstruct") -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"xdiffusion {command}: error:"), err
    return err


def reconstruct(*args: str, model: Path | None = None) -> int:
    extra = ["--model", str(model)] if model else ["--model", "/nonexistent/model"]
    return main(["reconstruct", *args, "--steps", "1", "--views", "1", "--device", "cpu", "--no-progress", *extra])


# -- 1. uploads are self-contained ----------------------------------------------------------------


def test_upload_zip_whose_header_reads_etc_passwd_is_refused(tmp_path):
    from XDiffusionLib.app.web.transfer import Transfers

    transfers = Transfers(tmp_path / "session", max_upload_bytes=1 << 20)
    upload = tmp_path / "session" / "uploads" / "a1" / "evil.zip"
    upload.parent.mkdir(parents=True)
    with zipfile.ZipFile(upload, "w") as archive:
        archive.writestr("evil.nhdr", PASSWD_HEADER.format("/etc/passwd"))
    target = transfers.unpack_zip(upload)
    assert read_volume(target).shape == (16, 16, 5)  # what the app used to show and export back
    with pytest.raises(XDiffusionError, match="names the data file '/etc/passwd', which lies outside") as refused:
        read_volume(target, within=transfers.upload_root(target))
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("name, header", [
    ("dotdot.nhdr", PASSWD_HEADER.format("../../../../../../../../etc/passwd")),
    ("attached.nrrd", PASSWD_HEADER.format("/etc/passwd")),  # a .nrrd may name a data file too
    ("list.nhdr", PASSWD_HEADER.format("LIST").rstrip("\n") + "\n/etc/passwd\n"),
    ("meta.mhd", "ObjectType = Image\nNDims = 3\nDimSize = 16 16 5\nElementType = MET_UCHAR\n"
                 "ElementDataFile = /etc/passwd\n"),
    ("pattern.mha", "ObjectType = Image\nNDims = 3\nDimSize = 16 16 5\nElementType = MET_UCHAR\n"
                    "ElementDataFile = ../../../etc/pass%01d 0 1 1\n"),
])
def test_headers_naming_data_outside_their_folder_are_refused(tmp_path, name, header):
    folder = tmp_path / "upload"
    folder.mkdir()
    (folder / name).write_text(header)
    with pytest.raises(XDiffusionError, match="lies outside the files it came with"):
        read_volume(folder / name, within=folder)


def test_data_file_reached_through_a_link_is_refused_and_one_inside_is_read(tmp_path, oblique_volume):
    folder = tmp_path / "upload"
    folder.mkdir()
    (folder / "passwd.raw").symlink_to("/etc/passwd")
    (folder / "linked.nhdr").write_text(PASSWD_HEADER.format("passwd.raw"))
    with pytest.raises(XDiffusionError, match="'passwd.raw', which lies outside"):
        read_volume(folder / "linked.nhdr", within=folder)
    # A header with its own data file next to it is fine.
    from XDiffusionLib.io.writers import volume_to_image

    sitk.WriteImage(volume_to_image(oblique_volume), str(folder / "good.nhdr"))
    np.testing.assert_array_equal(read_volume(folder / "good.nhdr", within=folder).array, oblique_volume.array)


# -- 2. only the app's own page starts sessions ---------------------------------------------------


class _FakeProcess:
    def __init__(self):
        self.returncode = None
        self.pid = -1  # never signalled: the test ends it before the hub shuts down


def _hub_requests(requests: list[tuple[str, str, dict]]) -> tuple[list[int], int]:
    """Send (method, path, headers) to a hub whose session start is counted, not run; returns the
    statuses and how many sessions it started. ``{token}`` in a header is the landing page's token."""
    from aiohttp.test_utils import TestClient, TestServer

    from XDiffusionLib.app.web.hub import Hub, HubSettings, Session

    hub = Hub(HubSettings(spare_sessions=0))
    started = []

    async def fake_start():
        started.append(1)
        session = Session(f"t{len(started)}", _FakeProcess())
        hub.pool.sessions[session.token] = session
        return session

    hub.pool.start_session = fake_start

    async def scenario():
        statuses = []
        async with TestClient(TestServer(hub.make_app())) as client:
            landing = await client.get("/")
            page = await landing.text()
            token = page.split("'X-XDiffusion-Start': '", 1)[1].split("'", 1)[0] if "X-XDiffusion-Start" in page else ""
            for method, path, headers in requests:
                headers = {k: v.replace("{token}", token) for k, v in headers.items()}
                answer = await client.request(method, path, headers=headers, allow_redirects=False)
                statuses.append(answer.status)
            for session in hub.pool.sessions.values():
                session.process.returncode = 0  # "ended": the hub's shutdown has nothing to stop
        return statuses

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        statuses = pool.submit(asyncio.run, scenario()).result()
    return statuses, len(started)


def test_background_requests_from_other_sites_start_no_session():
    statuses, started = _hub_requests([
        ("GET", "/", {}),  # what a page on another origin can make a browser send in the background
        ("GET", "/", {"Sec-Fetch-Site": "cross-site", "Origin": "http://127.0.0.1:9999"}),
        ("POST", "/session", {}),  # a simple form POST: no token
        ("POST", "/session", {"X-XDiffusion-Start": "123.forged"}),
        ("POST", "/session", {"X-XDiffusion-Start": "{token}", "Sec-Fetch-Site": "same-site"}),
        ("POST", "/session", {"X-XDiffusion-Start": "{token}", "Origin": "http://127.0.0.1:9999"}),
        ("POST", "/session", {"X-XDiffusion-Start": "{token}", "Origin": "null"}),
    ])
    assert started == 0
    assert statuses == [200, 200, 403, 403, 403, 403, 403]


def test_the_apps_own_page_starts_a_session():
    statuses, started = _hub_requests([
        ("POST", "/session", {"X-XDiffusion-Start": "{token}", "Sec-Fetch-Site": "same-origin"}),
    ])
    assert statuses == [200] and started == 1


def test_start_tokens_are_signed_and_expire():
    from XDiffusionLib.app.web.hub import Hub, HubSettings

    hub, other = Hub(HubSettings()), Hub(HubSettings())
    token = hub.tokens.issue(now=1000.0)
    assert hub.tokens.valid(token, now=1100.0)
    assert not hub.tokens.valid(token, now=1000.0 + 3600)  # an hour later
    assert not other.tokens.valid(token, now=1100.0)  # another hub (or a restarted one)
    assert not hub.tokens.valid("1000." + "0" * 64, now=1100.0)


# -- 3. server paths only inside the data folders -------------------------------------------------


def test_server_paths_outside_the_data_folders_get_one_refusal(tmp_path):
    from XDiffusionLib.app.web.server_paths import DataRoots

    data = tmp_path / "data"
    data.mkdir()
    (data / "head.nii.gz").write_bytes(b"x")
    (data / "escape").symlink_to("/etc")
    roots = DataRoots([data])
    assert roots.resolve(str(data / "head.nii.gz")) == (data / "head.nii.gz", data)
    assert roots.resolve("head.nii.gz") == (data / "head.nii.gz", data)  # relative: inside the data folder
    assert roots.resolve("missing.nii.gz")[0] == data / "missing.nii.gz"  # inside: "no such file" later
    messages = []
    for text in ("/etc/passwd", "/etc/no-such-file", "../../../../etc/passwd", "escape/passwd",
                 str(tmp_path / "secret.nii.gz"), str(data / ".." / "data2")):
        with pytest.raises(XDiffusionError) as refused:
            roots.resolve(text)
        messages.append(str(refused.value).replace(text, "PATH"))
    assert len(set(messages)) == 1 and "not available" in messages[0]  # existing or not: one answer


def test_model_folders_from_the_page_stay_inside_the_data_folders(tmp_path, tiny_model):
    import shutil

    from XDiffusionLib.app.web.server_paths import DataRoots

    data = tmp_path / "data"
    shutil.copytree(tiny_model, data / "model")
    (data / "linked").mkdir()
    (data / "linked" / "config.json").symlink_to(tiny_model / "config.json")  # tiny_model is outside
    roots = DataRoots([data])
    assert roots.resolve_model("model") == data / "model"
    for text in (str(tiny_model), "linked"):
        with pytest.raises(XDiffusionError, match="not available"):
            roots.resolve_model(text)


def test_app_refuses_a_data_root_that_is_not_a_folder(tmp_path, capsys):
    assert main(["app", "--data-root", str(tmp_path / "none"), "--model", str(tmp_path)]) == 2
    assert "--data-root" in one_line_error(capsys, "app")


# -- 4. exports name the model, never its server path ---------------------------------------------


def test_dicom_names_the_model_by_name_and_weights_checksum(tmp_path, tiny_model):
    import pydicom

    from XDiffusionLib.model.checkpoint import weights_checksum
    from XDiffusionLib.slicer.export import Provenance, export_dicom_series

    volume = Volume.from_array(np.arange(6 * 5 * 3, dtype=np.float32).reshape(6, 5, 3))
    files = export_dicom_series(volume, tmp_path / "series", Provenance("axial", (1,), str(tiny_model)))
    first = pydicom.dcmread(files[0])
    for text in (first.DerivationDescription, first.ImageComments):
        assert str(tiny_model.parent) not in text
        assert f"model tiny (weights sha256 {weights_checksum(tiny_model)})" in text
    gone = export_dicom_series(volume, tmp_path / "gone", Provenance("axial", (1,), "/home/alice/models/old"))
    assert "model old;" in pydicom.dcmread(gone[0]).DerivationDescription


# -- 5. no silent overwrite, never of the input ---------------------------------------------------


def test_output_that_is_the_input_is_refused_in_every_spelling(tmp_path, volume_file, capsys, monkeypatch):
    before = volume_file.read_bytes()
    os.link(volume_file, tmp_path / "hard.nii.gz")
    (tmp_path / "soft.nii.gz").symlink_to(volume_file)
    spellings = [str(volume_file), str(volume_file.parent / ".." / "in" / volume_file.name),
                 str(tmp_path / "hard.nii.gz"), str(tmp_path / "soft.nii.gz")]
    monkeypatch.chdir(tmp_path)
    spellings.append("in/subject.nii.gz")
    for spelling in spellings:
        for option in (["-o", spelling], ["-o", str(tmp_path / "r.nii.gz"), "--uncertainty", spelling]):
            for overwrite in ([], ["--overwrite"]):
                code = reconstruct(str(volume_file), "--slices", "3", "--plane", "axial", *option, *overwrite)
                assert code == 2 and "is the input" in one_line_error(capsys), (spelling, option, overwrite)
    assert volume_file.read_bytes() == before
    assert not (tmp_path / "r.nii.gz").exists()


def test_existing_output_needs_overwrite(tmp_path, volume_file, tiny_model, capsys):
    out = tmp_path / "recon.nii.gz"
    out.write_bytes(b"keep me")
    args = [str(volume_file), "--slices", "3", "--plane", "axial", "-o", str(out)]
    assert reconstruct(*args, model=tiny_model) == 2
    assert f"{out} already exists: pass --overwrite" in one_line_error(capsys)
    assert out.read_bytes() == b"keep me" and sorted(os.listdir(tmp_path)) == ["in", "recon.nii.gz"]
    # The uncertainty file counts too.
    out.unlink()
    (tmp_path / "recon_uncertainty.nii.gz").write_bytes(b"keep me too")
    assert reconstruct(*args, model=tiny_model) == 2
    assert "recon_uncertainty.nii.gz already exists" in one_line_error(capsys)
    assert reconstruct(*args, "--overwrite", model=tiny_model) == 0
    assert read_volume(out).shape == (14, 12, 10)
    assert sitk.ReadImage(str(tmp_path / "recon_uncertainty.nii.gz")).GetSize() == (14, 12, 10)  # replaced


def test_output_and_uncertainty_must_differ_in_every_spelling(tmp_path, volume_file, capsys):
    out = tmp_path / "recon.nii.gz"
    code = reconstruct(str(volume_file), "--slices", "3", "--plane", "axial", "-o", str(out),
                       "--uncertainty", str(tmp_path / "x" / ".." / "recon.nii.gz"))
    assert code == 2 and "are the same file" in one_line_error(capsys)


# -- 6. corrupt or mismatched weights are refused -------------------------------------------------


@pytest.fixture
def model_copy(tiny_model, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(tiny_model, tmp_path / "model"))


def test_flipped_bytes_in_the_weights_are_refused(model_copy):
    from XDiffusionLib.io.checksums import read_safetensors_header
    from XDiffusionLib.model.checkpoint import load_pretrained

    weights = model_copy / "model.safetensors"
    offset, _ = read_safetensors_header(weights)
    data = bytearray(weights.read_bytes())
    positions = np.random.default_rng(0).choice(np.arange(offset, len(data)), 2000, replace=False)
    for position in positions:
        data[position] ^= 0x5A
    weights.write_bytes(bytes(data))
    with pytest.raises(XDiffusionError) as refused:
        load_pretrained(model_copy)
    message = str(refused.value)
    assert message.startswith(str(weights)) and "checksum" in message and "\n" not in message


def test_an_edited_config_is_refused(model_copy):
    from XDiffusionLib.model.checkpoint import load_pretrained

    config = model_copy / "config.json"
    data = json.loads(config.read_text())
    data["prediction_type"] = "epsilon" if data.get("prediction_type") != "epsilon" else "v_prediction"
    config.write_text(json.dumps(data, indent=2))
    with pytest.raises(XDiffusionError) as refused:
        load_pretrained(model_copy)
    assert str(refused.value).startswith(str(config)) and "does not match" in str(refused.value)


def test_corrupt_weights_fail_the_command_with_one_line(model_copy, volume_file, tmp_path, capsys):
    weights = model_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    code = reconstruct(str(volume_file), "--slices", "3", "--plane", "axial", "-o", str(tmp_path / "r.nii.gz"),
                       model=model_copy)
    assert code == 2 and "model.safetensors: the weights do not match the checksum" in one_line_error(capsys)
    assert not (tmp_path / "r.nii.gz").exists()


def test_a_folder_saved_without_checksums_still_loads(model_copy):
    """The shipped weights and older model folders predate the checksums: no verification possible."""
    from safetensors.torch import load_file, save_file

    from XDiffusionLib.io.checksums import safetensors_metadata
    from XDiffusionLib.model.checkpoint import load_pretrained, verify_checksums, weights_checksum

    weights = model_copy / "model.safetensors"
    recorded = safetensors_metadata(weights)
    assert {"config_sha256", "weights_sha256"} <= set(recorded)
    save_file(load_file(str(weights)), str(weights), metadata={"format": "pt"})
    assert verify_checksums(model_copy) is False
    model, config = load_pretrained(model_copy)
    assert config.side == 16
    assert weights_checksum(model_copy) == recorded["weights_sha256"]  # the same tensor bytes


# -- 7. a killed writer leaves nothing a reader takes for data ------------------------------------


KILLED_WRITER = """
import os, signal, sys
import numpy as np
import SimpleITK as sitk
from XDiffusionLib.io.volume import Volume
from XDiffusionLib.io.writers import write_volume

def write_half_then_die(image, name, *args, **kwargs):
    with open(name, "wb") as stream:
        stream.write(b"\\x1f\\x8b" + os.urandom(3000))  # a truncated gzip stream, as a kill leaves it
    os.kill(os.getpid(), signal.SIGKILL)

sitk.WriteImage = write_half_then_die
write_volume(Volume.from_array(np.ones((8, 8, 8), np.float32)), sys.argv[1])
"""


def test_a_kill_during_writing_leaves_no_file_a_reader_takes_for_data(tmp_path, oblique_volume):
    from XDiffusionLib.training.data import find_volume_sources

    folder = tmp_path / "data"
    write_volume(oblique_volume, folder / "subject1.nii.gz")
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(folder / "subject2.nii.gz")], env=ENV,
                            cwd=REPO, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    leftovers = [p for p in folder.iterdir() if p.name != "subject1.nii.gz"]
    assert leftovers and all(p.name.startswith(".") for p in leftovers)  # hidden, never "subject2.nii.gz"
    assert find_volume_sources([folder]) == [(folder / "subject1.nii.gz").resolve()]  # `train --data` skips it
    write_volume(oblique_volume, folder / "subject3.nii.gz")  # the next writer removes what a dead one left
    assert sorted(os.listdir(folder)) == ["subject1.nii.gz", "subject3.nii.gz"]


def test_macos_metadata_files_are_not_volumes(tmp_path, oblique_volume):
    from XDiffusionLib.training.data import find_volume_sources

    write_volume(oblique_volume, tmp_path / "a.nrrd")
    (tmp_path / "._a.nrrd").write_bytes(b"\x00\x05\x16\x07 resource fork")
    assert find_volume_sources([tmp_path]) == [(tmp_path / "a.nrrd").resolve()]


# -- 8. unwritable outputs are found before any work ----------------------------------------------


def test_output_under_a_file_is_refused_before_any_work(tmp_path, volume_file, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    out = blocker / "sub" / "recon.nii.gz"
    # The model does not exist: finding that first would mean the output was not checked first.
    assert reconstruct(str(volume_file), "--slices", "3", "--plane", "axial", "-o", str(out)) == 2
    err = one_line_error(capsys)
    assert str(out) in err and f"{blocker} is a file" in err and "partial" not in err


def test_output_in_a_folder_that_takes_no_files_is_refused_before_any_work(tmp_path, volume_file, capsys):
    # No process, not even root, can create files in sysfs: it stands for a read-only folder.
    out = Path("/sys/xdiffusion-recon.nii.gz")
    assert reconstruct(str(volume_file), "--slices", "3", "--plane", "axial", "-o", str(out)) == 2
    err = one_line_error(capsys)
    assert f"{out}: cannot write in /sys" in err and "partial" not in err


def test_write_volumes_writes_all_or_nothing(tmp_path, oblique_volume, monkeypatch):
    from XDiffusionLib.io.writers import write_volumes

    calls = []
    real = sitk.WriteImage

    def fail_second(image, name, *args, **kwargs):
        calls.append(name)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(image, name, *args, **kwargs)

    monkeypatch.setattr(sitk, "WriteImage", fail_second)
    with pytest.raises(XDiffusionError, match=r"b\.nrrd: writing failed \(disk full\)"):
        write_volumes([(oblique_volume, tmp_path / "a.nrrd"), (oblique_volume, tmp_path / "b.nrrd")])
    assert os.listdir(tmp_path) == []


# -- 9. one line instead of a traceback -----------------------------------------------------------


def test_binary_or_folder_indices_file_is_one_line(tmp_path, volume_file, capsys):
    binary = tmp_path / "indices.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    folder = tmp_path / "indices"
    folder.mkdir()
    for path, words in ((binary, "not a text file"), (folder, "is a folder")):
        code = reconstruct(str(volume_file), "--indices-file", str(path), "--plane", "axial",
                           "-o", str(tmp_path / "r.nii.gz"))
        err = one_line_error(capsys)
        assert code == 2 and str(path) in err and words in err


def _checkpoint(folder: Path, model: Path, state) -> Path:
    import shutil

    folder.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model / name, folder / name)
    shutil.copy(model / "model.safetensors", folder / "ema.safetensors")
    (folder / "training_state.json").write_text(state if isinstance(state, str) else json.dumps(state))
    return folder


def _resume(tmp_path: Path, checkpoint: Path) -> int:
    return main(["train", "--out", str(tmp_path / "run"), "--resume", str(checkpoint), "--no-progress"])


@pytest.mark.parametrize("state, words", [
    ("{this is not json", "not a readable training state"),
    ("{}", "no step, train_config"),
    (json.dumps({"step": "ten", "train_config": {}, "data_sources": [], "optimizer": {"param_groups": []},
                 "lr_scheduler": {}, "ema": {"num_updates": 1}}), "'step' is str"),
])
def test_resume_from_a_damaged_training_state_is_one_line(tmp_path, tiny_model, capsys, state, words):
    checkpoint = _checkpoint(tmp_path / "step-000010", tiny_model, state)
    assert _resume(tmp_path, checkpoint) == 2
    err = one_line_error(capsys, "train")
    assert str(checkpoint / "training_state.json") in err and words in err


def _valid_state(volume: Path) -> dict:
    from XDiffusionLib.training.config import train_profile

    return {"step": 10, "train_config": train_profile("compact").to_dict(), "data_sources": [str(volume)],
            "optimizer": {"param_groups": [], "state_scalars": {}}, "lr_scheduler": {}, "ema": {"num_updates": 10}}


def test_resume_with_a_config_from_another_model_is_one_line(tmp_path, tiny_model, volume_file, capsys):
    checkpoint = _checkpoint(tmp_path / "step-000010", tiny_model, _valid_state(volume_file))
    config = json.loads((checkpoint / "config.json").read_text())
    config["block_out_channels"] = [16, 32]
    (checkpoint / "config.json").write_text(json.dumps(config))
    assert _resume(tmp_path, checkpoint) == 2
    assert f"{checkpoint / 'config.json'}: does not match" in one_line_error(capsys, "train")


def test_resume_of_an_old_checkpoint_with_a_mismatched_config_is_one_line(tmp_path, tiny_model, volume_file, capsys):
    from safetensors.torch import load_file, save_file

    checkpoint = _checkpoint(tmp_path / "step-000010", tiny_model, _valid_state(volume_file))
    weights = checkpoint / "model.safetensors"
    save_file(load_file(str(weights)), str(weights))  # saved before checksums: only the shapes tell
    config = json.loads((checkpoint / "config.json").read_text())
    config["block_out_channels"] = [16, 32]
    (checkpoint / "config.json").write_text(json.dumps(config))
    assert _resume(tmp_path, checkpoint) == 2
    err = one_line_error(capsys, "train")
    assert str(weights) in err and "the config's model needs" in err


def test_worker_refuses_options_of_the_wrong_type_with_one_line(tmp_path):
    from XDiffusionLib.worker import messages

    request = {"protocol": 1, "input": str(tmp_path / "input.nrrd"), "output_dir": str(tmp_path),
               "settings": {"plane": "axial", "indices": [2], "options": {"views": "many"}}}
    (tmp_path / "request.json").write_text(json.dumps(request))
    done = subprocess.run([sys.executable, "-m", "XDiffusionLib.worker", str(tmp_path / "request.json")],
                          capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert [messages.decode(line) for line in done.stdout.splitlines()] == [
        {"type": "error", "message": "setting 'views' must be a whole number, got 'many'"}]
    assert "Traceback" not in done.stderr


def test_worker_help_prints_usage_and_exits_0():
    done = subprocess.run([sys.executable, "-m", "XDiffusionLib.worker", "--help"], capture_output=True, text=True,
                          env=ENV, cwd=REPO, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m XDiffusionLib.worker REQUEST.json")


def test_worker_4d_error_does_not_name_an_option_it_lacks(tmp_path, oblique_volume):
    from XDiffusionLib.io.writers import volume_to_image
    from XDiffusionLib.worker.messages import JobSettings, Request
    from XDiffusionLib.worker.run import run_request

    four_d = tmp_path / "series4d.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([volume_to_image(oblique_volume)] * 3), str(four_d))
    with pytest.raises(XDiffusionError) as refused:
        run_request(Request(str(four_d), str(tmp_path), JobSettings("axial", (2,))), lambda message: None)
    message = str(refused.value)
    assert "is 4D with 3 volumes" in message and "--volume" not in message and "volume_index" not in message


@pytest.mark.slow  # a CLI process: several seconds on a 2-core CPU
def test_empty_input_folder_is_one_line_without_itk_warnings(tmp_path, tiny_model):
    empty = tmp_path / "empty"
    empty.mkdir()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("no images here")
    for folder, words in ((empty, "the folder is empty"), (notes, "no DICOM series found")):
        done = subprocess.run(
            [sys.executable, "-m", "XDiffusionLib.app.cli", "reconstruct", str(folder), "--slices", "3", "--plane",
             "axial", "--model", str(tiny_model), "--device", "cpu", "-o", str(tmp_path / "r.nii.gz")],
            capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
        assert done.returncode == 2
        assert done.stderr.strip() == f"xdiffusion reconstruct: error: {folder}: {words}" + (
            "; give a volume file or a folder holding one DICOM series" if folder == empty else "")


def test_reconstruct_refuses_a_label_map_as_evaluate_does(tmp_path, tiny_model, capsys):
    labels = np.zeros((14, 12, 10), np.int16)
    labels[3:10, 2:9, 2:8] = 1
    labels[5:8, 4:7, 3:6] = 2
    path = write_volume(Volume.from_array(labels), tmp_path / "seg.nii.gz")
    code = reconstruct(str(path), "--slices", "3", "--plane", "axial", "-o", str(tmp_path / "r.nii.gz"),
                       model=tiny_model)
    assert code == 2 and "is a label map (3 distinct values), not an MRI intensity volume" in one_line_error(capsys)
    assert not (tmp_path / "r.nii.gz").exists()


def test_safetensors_header_reader_refuses_garbage(tmp_path):
    from XDiffusionLib.io.checksums import read_safetensors_header

    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(XDiffusionError, match="corrupt or truncated"):
        read_safetensors_header(path)
