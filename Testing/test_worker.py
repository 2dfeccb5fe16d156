"""The worker process and its launcher, alone and driven from a real MRML scene, on a tiny randomly
initialised model (side 16, two U-Net levels) saved with save_pretrained.

Real ``python -m XDiffusionLib.worker`` subprocesses: success (result nodes on the input's grid),
cancel mid-run (process group gone, no node, temporary folder gone), a corrupt model file and a
killed process (clear error, scene unchanged), bad input (clear error)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import slicer
from conftest import rotation, smooth_array

from XDiffusionLib.errors import XDiffusionError
from XDiffusionLib.io.volume import Volume
from XDiffusionLib.slicer import nodes
from XDiffusionLib.slicer.reconstruction import AUTOMATIC, SceneReconstruction
from XDiffusionLib.worker import messages
from XDiffusionLib.worker.launcher import CANCELLED, DONE, FAILED, WorkerLauncher

FAST = {"views": 1, "steps": 2, "samples": 1, "device": "cpu", "seed": 3}
# Long enough to be cancelled mid-run on any machine (the test never waits for it to finish).
SLOW = {"views": 8, "steps": 500, "samples": 4, "device": "cpu", "sampler": "ddpm"}


@pytest.fixture
def corrupt_model(tiny_model, tmp_path) -> Path:
    folder = tmp_path / "corrupt"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_model / "config.json").read_text())
    (folder / "model.safetensors").write_bytes((tiny_model / "model.safetensors").read_bytes()[:200])
    return folder


@pytest.fixture
def scene():
    scene = slicer.vtkMRMLScene()
    yield scene
    scene.Clear(1)


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """Point tempfile at a folder of our own so the test sees every job folder come and go."""
    folder = tmp_path / "jobs"
    folder.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(folder))
    return folder


def head_volume() -> Volume:
    return Volume.from_array(smooth_array((12, 10, 8)), (0.9, 1.3, 2.0), (-20.5, 13.25, 7.0),
                             rotation((20.0, -10.0, 35.0)))


def snapshot(scene) -> list[str]:
    return sorted(scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes()))


def wait_for_progress(job, word: str = "step", timeout: float = 120.0) -> None:
    """Poll until the worker reports progress containing ``word`` ("step": the model is sampling)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in job.poll():
            if message.get("type") == "progress" and word in message.get("message", ""):
                return
        assert not job.finished, f"job ended early: {job.state} {job.error}"
        time.sleep(0.05)
    raise AssertionError(f"the worker never reported {word!r}")


# ------------------------------------------------------------------------------ protocol


def test_messages_and_request_round_trip(tmp_path):
    line = messages.encode(messages.progress_message(1.7, "step 3/10"))
    assert "\n" not in line
    assert messages.decode(line + "\n") == {"type": "progress", "fraction": 1.0, "message": "step 3/10"}
    assert messages.decode("UserWarning: something\n") == {"type": "log", "message": "UserWarning: something"}
    assert messages.decode('{"type": "other"}')["type"] == "log"
    settings = messages.JobSettings("coronal", (4, 1), str(tmp_path), dict(FAST))
    request = messages.Request(str(tmp_path / "input.nrrd"), str(tmp_path), settings)
    path = messages.write_request(request, tmp_path / "request.json")
    assert messages.read_request(path) == request
    assert [p.name for p in tmp_path.iterdir()] == ["request.json"]  # no temporary file left


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a readable JSON request"),
    (json.dumps({"protocol": 99}), "protocol 99"),
    (json.dumps({"protocol": 1, "input": "a", "output_dir": "b"}), "missing 'settings'"),
    (json.dumps({"protocol": 1, "input": "a", "output_dir": "b", "settings": {"plane": "axial"}}),
     "no input slices given"),
    (json.dumps({"protocol": 1, "input": "a", "output_dir": "b",
                 "settings": {"plane": "oblique", "indices": [1]}}), "unknown plane 'oblique'"),
    (json.dumps({"protocol": 1, "input": "a", "output_dir": "b",
                 "settings": {"indices": [1], "colour": "red"}}), "unknown settings \\['colour'\\]"),
])
def test_bad_request_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "request.json"
    path.write_text(content)
    with pytest.raises(XDiffusionError, match=message):
        messages.read_request(path)


@pytest.mark.parametrize("options, message", [
    ({"views": "many"}, "setting 'views' must be a whole number, got 'many'"),
    ({"views": 0}, "views must be a positive integer, got 0"),
    ({"sampler": "euler"}, "unknown sampler 'euler'"),
    ({"colour": "red"}, r"unknown reconstruction settings \['colour'\]"),
])
def test_a_jobs_sampling_settings_are_checked_with_the_job_before_any_process(scene, private_tmp, options, message):
    """The Slicer module and the web app check a job before starting a worker (``JobSettings.check``);
    its sampling settings were checked only inside the worker process, after it had started."""
    with pytest.raises(XDiffusionError, match=message):
        messages.JobSettings("axial", (2,), None, options).check()
    source = nodes.add_volume_node(scene, head_volume(), "T1")
    with pytest.raises(XDiffusionError, match=message):
        SceneReconstruction(scene, source, messages.JobSettings("axial", (2,), None, options))
    assert list(private_tmp.iterdir()) == []


def test_worker_process_reports_a_bad_request_as_one_error_line(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "XDiffusionLib.worker", str(tmp_path / "missing.json")],
                               capture_output=True, text=True, timeout=120,
                               cwd=Path(__file__).resolve().parents[1])
    assert completed.returncode == 2
    lines = [messages.decode(line) for line in completed.stdout.splitlines()]
    assert lines == [{"type": "error", "message": f"{tmp_path / 'missing.json'}: request file not found"}]


# ------------------------------------------------------------------------------ launcher alone


def test_in_process_mode_same_api(tiny_model, private_tmp):
    volume = head_volume()
    job = WorkerLauncher("inprocess").start(volume, messages.JobSettings("axial", (2, 5), tiny_model, FAST))
    assert job.wait(120) == DONE
    assert job.fraction == 1.0
    result = job.result()
    assert result.volume.grid.same_geometry(volume.grid, tol=1e-6)
    assert list(private_tmp.iterdir()) == []
    # cancel: the run stops at its next progress report and leaves nothing behind
    job = WorkerLauncher("inprocess").start(volume, messages.JobSettings("axial", (2, 5), tiny_model, SLOW))
    wait_for_progress(job)
    job.cancel()
    assert job.state == CANCELLED
    assert list(private_tmp.iterdir()) == []
    with pytest.raises(XDiffusionError, match="cancelled"):
        job.result()


def test_the_worker_refuses_a_label_map(tiny_model, private_tmp):
    """The Slicer module and the web app reach the library through the worker: it refuses a label
    map in the library's words (it had no check; only the front ends did)."""
    labels = np.zeros((12, 10, 8), np.float32)
    labels[3:9, 2:8, 2:6] = 1
    labels[5:7, 4:6, 3:5] = 4
    job = WorkerLauncher("inprocess").start(Volume.from_array(labels),
                                            messages.JobSettings("axial", (2, 5), tiny_model, FAST))
    assert job.wait(120) == FAILED
    assert job.error == "the input volume is a label map (3 distinct values), not an MRI intensity volume"
    assert list(private_tmp.iterdir()) == []


def test_a_thick_slice_runs_model_share_comes_back_from_the_worker(tmp_path, private_tmp):
    """Issue 21: how much of a thick-slice result the model generated against interpolation along
    the slice axis (chosen on the scan's own slices) was printed by the command line only; the
    worker's files lost it, so the Slicer module and the web app could not say it. It now travels in
    the reconstruction's header, and files written without it read back as before (no share)."""
    from model_helpers import save_tiny_model

    from XDiffusionLib.sampling.result import ModelShare, ReconstructionResult, read_result, write_result
    from XDiffusionLib.sampling.thick_slices import reconstruct_thick_slices
    from XDiffusionLib.slicer.thick_slices import job_settings
    from XDiffusionLib.transforms.thick_slices import plan_thick_slices

    model = save_tiny_model(tmp_path / "tiny8", max_slices=8)  # 7 acquired slices: enough to leave some out
    volume = Volume.from_array(smooth_array((12, 10, 7)), (1.0, 1.2, 4.0), (-20.5, 13.25, 7.0))
    plan = plan_thick_slices(volume.grid, slice_factor=2)
    job = WorkerLauncher("inprocess").start(volume, job_settings(messages.JobSettings(model_dir=str(model),
                                                                                      options=FAST), plan))
    assert job.wait(120) == DONE, job.error
    result = job.result()
    library = reconstruct_thick_slices(volume, slice_factor=2, model_dir=model, **FAST)
    assert library.share.checked and result.share == ModelShare(pytest.approx(library.model_weight, abs=1e-5), True)
    assert result.share.label() == library.share.label()
    # Written without a share (a run from chosen slices, or an older worker): none read back.
    plain = ReconstructionResult(volume, volume.with_array(np.zeros(volume.shape, np.float32)))
    assert read_result(*write_result(plain, tmp_path / "plain.nrrd", tmp_path / "plain_u.nrrd")).share is None
    bad = ReconstructionResult(volume, plain.uncertainty, share=ModelShare(1.5, True))
    with pytest.raises(XDiffusionError, match=r"bad\.nrrd: XDiffusion_model_share '1\.5' is not a share between 0 a"):
        read_result(*write_result(bad, tmp_path / "bad.nrrd", tmp_path / "bad_u.nrrd"))


@pytest.mark.slow
def test_subprocess_bad_input_is_a_clear_error(tiny_model, private_tmp):
    array = smooth_array((12, 10, 8))
    array[3, 4, 5] = np.nan
    volume = Volume.from_array(array)
    job = WorkerLauncher("subprocess").start(volume, messages.JobSettings("axial", (2, 5), tiny_model, FAST))
    assert job.wait(120) == FAILED
    assert job.error.endswith("input.nrrd has 1 NaN voxel: fix or mask them before reconstruction")
    assert list(private_tmp.iterdir()) == []


# ------------------------------------------------------------------------------ from a scene


@pytest.mark.slow
def test_scene_reconstruction_in_a_worker_process(scene, tiny_model, private_tmp):
    volume = head_volume()
    source = nodes.add_volume_node(scene, volume, "T1")
    before_array = np.array(slicer.util.arrayFromVolume(source), copy=True)
    settings = messages.JobSettings("axial", (2, 5), str(tiny_model), FAST)
    run = SceneReconstruction(scene, source, settings, reference_node=source, overlay=AUTOMATIC,
                              launcher=WorkerLauncher("subprocess")).start()
    assert len(list(private_tmp.iterdir())) == 1  # the job's private folder, while it runs
    fractions = []
    while not run.job.finished:
        fractions += [m["fraction"] for m in run.poll() if m["type"] == "progress"]
        time.sleep(0.05)
    assert run.state == DONE, run.error
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    result = run.finish()

    assert result.reconstruction.GetName() == "T1 XDiffusion"
    assert result.uncertainty.GetName() == "T1 uncertainty"
    assert result.difference.GetName() == "T1 difference"
    reconstruction = nodes.volume_from_node(result.reconstruction)
    assert reconstruction.grid.same_geometry(volume.grid, tol=1e-6)
    # the input slices come back unchanged (canonical axial = the axis closest to S)
    difference = nodes.volume_from_node(result.difference)
    np.testing.assert_allclose(difference.array, volume.array - reconstruction.array, atol=1e-4)
    assert result.segmentation_real.GetSegmentation().GetNumberOfSegments() >= 1
    assert [v.background for v in result.layout.views] == [
        source.GetID(), result.reconstruction.GetID(), result.difference.GetID()]
    assert json.loads(result.reconstruction.GetAttribute("XDiffusion.indices")) == [2, 5]
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(source), before_array)
    assert source.GetName() == "T1"
    assert list(private_tmp.iterdir()) == []


def test_the_runs_own_uncertainty_meaning_reaches_the_scene_from_the_result(scene, tmp_path, private_tmp, monkeypatch):
    """A scan-calibrated interval (3 input slices left out in turn) keeps that meaning from the
    reconstructor through the worker's files and the launcher's result to the node; the model
    folder is never read again for it (Slicer derived it from there, hashing the weights)."""
    from dataclasses import replace

    import torch
    from test_residual_model import head, residual_config
    from test_uncertainty import small_table

    from XDiffusionLib.model import calibration
    from XDiffusionLib.model.checkpoint import save_pretrained
    from XDiffusionLib.model.factory import build_denoiser
    from XDiffusionLib.slicer.display import uncertainty_info_of
    from XDiffusionLib.uncertainty.intervals import K_EDGES
    from XDiffusionLib.uncertainty.scan_scale import ScanReference

    torch.manual_seed(0)
    config = residual_config()
    folder = save_pretrained(build_denoiser(config), config, tmp_path / "calibrated")
    n_k = len(K_EDGES)
    reference = ScanReference(np.zeros(n_k), np.zeros(n_k), np.ones(n_k, dtype=np.int64)).to_dict()
    calibration.save_calibration(replace(small_table(), scan_reference=reference), folder)
    source = nodes.add_volume_node(scene, head(), "T1")
    run = SceneReconstruction(scene, source, messages.JobSettings("axial", (4, 10, 16), str(folder), FAST),
                              launcher=WorkerLauncher("inprocess")).start()
    assert run.wait(120) == DONE, run.error
    monkeypatch.setattr(calibration, "load_calibration", lambda *a, **k: pytest.fail("the model folder was read"))
    result = run.finish()
    info = uncertainty_info_of(result.uncertainty)
    assert info.calibrated and info.scan_folds == 3 and info.scan_scale > 0
    assert info.calibration == "calibrated on this scan (leave-one-slice-out, 3 folds)"


@pytest.mark.slow
def test_cancel_mid_run_leaves_nothing(scene, tiny_model, private_tmp):
    source = nodes.add_volume_node(scene, head_volume(), "T1")
    before = snapshot(scene)
    run = SceneReconstruction(scene, source, messages.JobSettings("axial", (2, 5), str(tiny_model), SLOW),
                              launcher=WorkerLauncher("subprocess")).start()
    wait_for_progress(run.job)
    pid = run.job.process.pid
    run.cancel()
    assert run.state == CANCELLED
    assert run.job.process.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the whole process group is gone
    assert list(private_tmp.iterdir()) == []
    with pytest.raises(XDiffusionError, match="cancelled"):
        run.finish()
    assert snapshot(scene) == before


@pytest.mark.slow
def test_corrupt_model_is_a_clear_error_and_scene_unchanged(scene, corrupt_model, private_tmp):
    source = nodes.add_volume_node(scene, head_volume(), "T1")
    before = snapshot(scene)
    run = SceneReconstruction(scene, source, messages.JobSettings("axial", (2, 5), str(corrupt_model), FAST),
                              overlay=AUTOMATIC, launcher=WorkerLauncher("subprocess")).start()
    assert run.wait(120) == FAILED
    assert "model.safetensors: corrupt or truncated safetensors file" in run.error
    assert "\n" not in run.error
    with pytest.raises(XDiffusionError, match="corrupt or truncated"):
        run.finish()
    assert snapshot(scene) == before
    assert list(private_tmp.iterdir()) == []


@pytest.mark.slow
def test_killed_worker_is_reported_and_scene_unchanged(scene, tiny_model, private_tmp):
    source = nodes.add_volume_node(scene, head_volume(), "T1")
    before = snapshot(scene)
    run = SceneReconstruction(scene, source, messages.JobSettings("axial", (2, 5), str(tiny_model), SLOW),
                              launcher=WorkerLauncher("subprocess")).start()
    wait_for_progress(run.job, "reading")
    os.kill(run.job.process.pid, signal.SIGKILL)  # what the out-of-memory killer does
    assert run.wait(60) == FAILED
    assert run.error.startswith("the reconstruction process was killed by signal 9 (often: out of memory)")
    assert snapshot(scene) == before
    assert list(private_tmp.iterdir()) == []


def test_scene_checks_happen_before_any_work(scene, tiny_model, private_tmp):
    source = nodes.add_volume_node(scene, head_volume(), "T1")
    before = snapshot(scene)
    with pytest.raises(XDiffusionError, match="slice index 40 is outside the volume"):
        SceneReconstruction(scene, source, messages.JobSettings("axial", (2, 40), str(tiny_model), FAST))
    with pytest.raises(XDiffusionError, match="model folder .* not found"):
        SceneReconstruction(scene, source, messages.JobSettings("axial", (2,), str(private_tmp / "nope"), FAST))
    assert snapshot(scene) == before
    assert list(private_tmp.iterdir()) == []


# ------------------------------------------------------------------------------ like Slicer's launcher
#
# PythonSlicer is a launcher: it runs python-real as a child, forwards no signal to it, and the
# worker then leaves the launcher's process group (os.setsid in XDiffusionLib.worker.__main__).
# These stand-ins behave the same way.

STANDIN_LAUNCHER = """#!{python}
import signal, subprocess, sys
# A handler (not SIG_IGN, which the child would inherit): the launcher ignores these signals and
# forwards nothing, like CTK's launcher; its child gets the default actions back at exec.
for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(number, lambda *args: None)
child = subprocess.Popen([{python!r}] + sys.argv[1:])  # inherits stdout and stderr
while True:
    try:
        sys.exit(child.wait())
    except InterruptedError:
        pass
"""

# A worker stand-in whose output is not valid UTF-8 (a Windows code page, a user name in a path),
# followed by more output than a pipe holds: a reader that stops at the bad line freezes it.
UNDECODABLE_WORKER = """#!{python}
import json, sys
out = sys.stdout.buffer
out.write(b"C:\\\\Users\\\\J\\xfcrgen\\\\scan.nrrd: \\xff\\xfe not UTF-8\\n")
out.write(json.dumps({{"type": "progress", "fraction": 0.5, "message": "after the bad line"}}).encode() + b"\\n")
for n in range(4000):
    out.write(b"log line %d \\xe9\\xe8 padding padding padding padding padding padding\\n" % n)
out.write(json.dumps({{"type": "done", "outputs": {{"reconstruction": "r.nrrd"}}}}).encode() + b"\\n")
out.flush()
"""


def _executable(path: Path, text: str) -> Path:
    path.write_text(text.format(python=sys.executable))
    path.chmod(0o755)
    return path


@pytest.fixture
def standin_launcher(tmp_path) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    return _executable(folder / "PythonSlicer", STANDIN_LAUNCHER)


@pytest.fixture
def in_slicer_app(monkeypatch, standin_launcher):
    """What the launcher sees inside Slicer: slicer.app, Slicer's startup environment, PythonSlicer on PATH."""
    import slicer.util

    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(), raising=False)
    monkeypatch.setattr(slicer.util, "startupEnvironment", lambda: dict(os.environ))
    monkeypatch.setenv("PATH", f"{standin_launcher.parent}{os.pathsep}{os.environ['PATH']}")
    return standin_launcher


def processes_mentioning(text: str) -> list[int]:
    """Live (not zombie) processes whose command line contains ``text`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in command and state != "Z":
            found.append(int(entry.name))
    return found


def wait_until_gone(text: str, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and processes_mentioning(text):
        time.sleep(0.1)
    return processes_mentioning(text)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads the process table from /proc")
def test_cancel_ends_the_worker_behind_a_launcher_that_forwards_no_signal(in_slicer_app, tiny_model, private_tmp):
    launcher = WorkerLauncher("auto")
    assert launcher.mode == "slicer" and launcher.command("r.json")[0] == str(in_slicer_app)
    job = launcher.start(head_volume(), messages.JobSettings("axial", (2, 5), str(tiny_model), SLOW))
    marker = str(job.workdir)
    wait_for_progress(job)
    assert len(processes_mentioning(marker)) == 2  # the launcher and the worker it started
    started = time.monotonic()
    job.cancel()
    assert time.monotonic() - started < 15.0  # not the 30 s join timeout
    assert job.state == CANCELLED
    assert wait_until_gone(marker, timeout=5.0) == []
    assert list(private_tmp.iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads the process table from /proc")
def test_a_running_worker_does_not_outlive_the_process_that_started_it(standin_launcher, tiny_model, tmp_path):
    """Slicer quitting (or a console closing) with a run in progress: the worker goes too."""
    script = tmp_path / "host.py"
    script.write_text(
        "import sys, time\n"
        "from XDiffusionLib.worker import messages\n"
        "from XDiffusionLib.worker.launcher import WorkerLauncher\n"
        "from XDiffusionLib.io.volume import Volume\n"
        "import numpy as np\n"
        f"job = WorkerLauncher('subprocess', python={str(standin_launcher)!r}).start(\n"
        "    Volume.from_array(np.random.default_rng(0).normal(100, 10, (12, 10, 8)).astype('float32')),\n"
        f"    messages.JobSettings('axial', (2, 5), {str(tiny_model)!r}, {SLOW!r}))\n"
        "print(job.workdir, flush=True)\n"
        "while not any('step' in m.get('message', '') for m in job.poll()):\n"
        "    time.sleep(0.05)\n"
        "sys.exit(0)  # no cancel: the host just ends\n")
    host = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180,
                          cwd=Path(__file__).resolve().parents[1])
    assert host.returncode == 0, host.stderr
    marker = host.stdout.split()[0]
    assert wait_until_gone(marker, timeout=10.0) == []
    assert not Path(marker).exists()


@pytest.mark.parametrize("mode", ["slicer", "subprocess"])
def test_undecodable_worker_output_is_replaced_and_reading_goes_on(mode, in_slicer_app, tmp_path, private_tmp):
    fake = _executable(tmp_path / "fake-worker", UNDECODABLE_WORKER)
    job = WorkerLauncher(mode, python=str(fake)).start(head_volume(), messages.JobSettings("axial", (2,), None, FAST))
    received = []
    deadline = time.monotonic() + 60
    while not job.finished and time.monotonic() < deadline:
        received += job.poll()
        time.sleep(0.02)
    received += job.poll()
    assert job.state == DONE, (job.state, job.error)
    assert {"type": "progress", "fraction": 0.5, "message": "after the bad line"} in received
    logs = [m["message"] for m in received if m["type"] == "log"]
    assert logs[0] == "C:\\Users\\J\ufffdrgen\\scan.nrrd: \ufffd\ufffd not UTF-8"
    assert len(logs) == 4001 and logs[-1].startswith("log line 3999 \ufffd\ufffd")
