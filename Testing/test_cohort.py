"""Cohorts across processes (``evaluation.cohort``): rank split, resume keyed on the settings, the
gather's dead-rank detection, ``xdiffusion reconstruct-batch`` and ``xdiffusion evaluate`` under
a real 2-process ``torchrun`` / ``accelerate launch`` (CPU, gloo), and the manifest's errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from XDiffusionLib.app.cli import main
from XDiffusionLib.errors import XDiffusionError
from XDiffusionLib.evaluation import cohort as cohort_module
from XDiffusionLib.evaluation.cohort import Case, Cohort, Rank, current_rank, split, unique_file_names
from XDiffusionLib.io import read_volume, write_volume
from XDiffusionLib.io.volume import Volume

RAS = np.diag([-1.0, -1.0, 1.0])


def head(shape, seed: int) -> np.ndarray:
    """A smooth ellipsoid 'head' on a zero background (so the protocol finds a foreground)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = (x / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 0.75) ** 2 < 1.0
    values = inside * (80 + 40 * np.cos(2.0 * x + 0.5 + seed) * np.sin(1.5 * y) + 30 * z)
    return (values + inside * rng.normal(0, 0.5, shape)).astype(np.float32)


@pytest.fixture
def cohort_dir(tmp_path) -> Path:
    """Three tiny subjects in sub-folders and a manifest beside them (relative paths)."""
    for n, shape in enumerate([(16, 14, 12), (14, 16, 12), (16, 14, 13)]):
        write_volume(Volume.from_array(head(shape, n), spacing=(1.1, 1.0, 1.5), direction=RAS),
                     tmp_path / "data" / f"sub{n}" / "t1.nii.gz")
    (tmp_path / "cohort.csv").write_text(
        "path,plane,slices,k,output\n"
        "data/sub0/t1.nii.gz,axial,3 7,,sub0\n"
        "# a comment line\n"
        "data/sub1/t1.nii.gz,coronal,,2,sub1.nrrd\n"
        "data/sub2/t1.nii.gz,axial,5,,\n")
    return tmp_path


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(launcher: list[str], args: list[str], cwd: Path) -> None:
    """``python -m <launcher> -m XDiffusionLib.app.cli <args>``; on a timeout the whole process group is ended."""
    # UTF-8 both ways whatever the locale: the tables print "±" (an ASCII locale broke the decode once).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    process = subprocess.Popen([sys.executable, "-m", *launcher, "-m", "XDiffusionLib.app.cli", *args], cwd=cwd,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8",
                               errors="replace",
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the launcher and its ranks
        process.communicate()
        raise
    assert process.returncode == 0, stdout[-2000:] + stderr[-4000:]


def torchrun() -> list[str]:
    return ["torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def accelerate() -> list[str]:
    # On a CPU-only machine accelerate starts N processes with --multi_gpu (gloo); --cpu alone starts one.
    return ["accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no"]


# ---- ranks and the split ----------------------------------------------------------------------


def test_rank_comes_from_the_launchers_variables():
    assert current_rank({}) == Rank(0, 1, 0)
    assert current_rank({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Rank(3, 4, 1)
    assert current_rank({"RANK": "0", "WORLD_SIZE": "1"}).world_size == 1
    with pytest.raises(XDiffusionError, match="RANK=4 does not fit WORLD_SIZE=4"):
        current_rank({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(XDiffusionError, match="RANK is not set"):
        current_rank({"WORLD_SIZE": "2"})


def test_split_is_deterministic_and_covers_every_case_once():
    items = [f"case{n}" for n in range(7)]
    shares = [split(items, Rank(r, 3)) for r in range(3)]
    assert shares == [split(items, Rank(r, 3)) for r in range(3)]
    assert sorted(sum(shares, [])) == sorted(items) and [len(s) for s in shares] == [3, 2, 2]
    assert unique_file_names(["a b", "a_b", "A_B", "../x"]) == ["a_b", "a_b_2", "A_B_3", "x"]


# ---- resume and the gather (in-process) -------------------------------------------------------


def test_resume_skips_complete_cases_and_redoes_changed_or_damaged_ones(tmp_path):
    calls = []

    def work(case):
        calls.append(case.name)
        path = tmp_path / f"{case.name}.txt"
        path.write_text(case.key)
        return {"value": case.name.upper()}, [path]

    cases = [Case("a", "k1"), Case("b", "k1"), Case("c", "k1")]
    cohort = Cohort(tmp_path, Rank())
    first = cohort.run(cases, work, note=lambda text: None)
    assert calls == ["a", "b", "c"] and [r["result"]["value"] for r in first] == ["A", "B", "C"]
    calls.clear()
    assert cohort.run(cases, work, note=lambda text: None) == first and calls == []
    # A changed setting (new key) for b, and c's output file damaged: both redone, a reused.
    (tmp_path / "c.txt").write_text("truncated")
    again = cohort.run([Case("a", "k1"), Case("b", "k2"), Case("c", "k1")], work, note=lambda text: None)
    assert calls == ["b", "c"] and again[0] == first[0] and again[1]["key"] == "k2"
    calls.clear()
    cohort.run(cases, work, note=lambda text: None, fresh=True)
    assert calls == ["a", "b", "c"]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("beat, message", [
    (None, "never reported"),
    ({"state": "failed", "case": "b", "message": "b.nii.gz is truncated"}, "rank 1 failed on case b: b.nii.gz is truncated"),
    ("dead", "rank 1 died (process"),
    ({"state": "running", "time": 0.0}, "rank 1 stopped responding"),
])
def test_gather_ends_with_one_line_when_a_rank_is_gone(tmp_path, monkeypatch, beat, message):
    monkeypatch.setattr(cohort_module, "_broadcast", lambda decision, timeout: decision)  # no process group
    monkeypatch.setattr(cohort_module.uuid, "uuid4", lambda: type("U", (), {"hex": "t0ken" * 3})())
    token = "t0kent0kent0"
    ranks = tmp_path / cohort_module.RANKS_DIR
    ranks.mkdir()
    if beat == "dead":
        beat = {"state": "running", "case": "b", "pid": dead_pid(), "host": cohort_module.HOST_TAG}
    if beat is not None:
        (ranks / f"{token}-1.json").write_text(json.dumps({"pid": 1, "host": "elsewhere", "time": 9e12, **beat}))
    cohort = Cohort(tmp_path, Rank(0, 2), heartbeat_seconds=0.05, stale_seconds=0.5)
    done = []
    with pytest.raises(XDiffusionError) as error:
        cohort.run([Case("a", "k"), Case("b", "k")], lambda case: (done.append(case.name) or {}, []),
                   note=lambda text: None)
    text = str(error.value)
    assert message in text and "1 case(s) not done (b)" in text and "\n" not in text
    assert done == ["a"]  # rank 0 did its own share first


# ---- the commands under real 2-process launches -------------------------------------------------


def batch_args(out: str, model: Path, steps: int = 2, inputs: str = "cohort.csv") -> list[str]:
    return ["reconstruct-batch", "--inputs", inputs, "--out", out, "--model", str(model), "--views", "2",
            "--steps", str(steps), "--device", "cpu", "--no-progress"]


@pytest.mark.slow  # two rank processes, then a resumed run
def test_batch_on_two_ranks_then_resume_after_an_interruption(cohort_dir, tiny_model):
    # Uninterrupted, 2 ranks (torchrun): one CSV with every case, cases spread over both ranks.
    launch(torchrun(), batch_args("full", tiny_model), cohort_dir)
    full = cohort_dir / "full"
    rows = read_csv(full / "results.csv")
    assert [r["case"] for r in rows] == ["sub0", "sub1", "t1_xdiffusion"]
    assert [(r["plane"], r["k"], r["indices"]) for r in rows][0] == ("axial", "2", "3 7")
    assert rows[1]["output"] == "sub1.nrrd" and rows[1]["k"] == "2"
    ranks = {json.loads((full / "per-case" / f"{r['case']}.json").read_text())["rank"] for r in rows}
    assert ranks == {0, 1}
    assert not (full / cohort_module.RANKS_DIR).exists()

    # Interrupted: the same run killed during its last case (no volumes, no result record for it).
    part = cohort_dir / "part"
    part.mkdir()
    for name in ("sub0.nii.gz", "sub0_uncertainty.nii.gz", "sub1.nrrd", "sub1_uncertainty.nrrd"):
        (part / name).write_bytes((full / name).read_bytes())
    (part / "per-case").mkdir()
    for case in ("sub0", "sub1"):
        (part / "per-case" / f"{case}.json").write_bytes((full / "per-case" / f"{case}.json").read_bytes())
    before = {p.name: p.stat().st_mtime_ns for p in part.rglob("*") if p.is_file()}
    # Resumed in one process (the world size may change between runs).
    assert main(batch_args(str(part), tiny_model, inputs=str(cohort_dir / "cohort.csv"))) == 0
    after = {p.name: p.stat().st_mtime_ns for p in part.rglob("*") if p.is_file()}
    assert all(after[name] == stamp for name, stamp in before.items())  # done cases not recomputed
    assert without_seconds(read_csv(part / "results.csv")) == without_seconds(rows)
    assert read_csv(part / "results.csv")[:2] == rows[:2]  # their rows are the saved ones, seconds included
    redone = read_volume(part / "t1_xdiffusion.nii.gz").array
    assert np.array_equal(redone, read_volume(full / "t1_xdiffusion.nii.gz").array)  # same seed, same volume

    # A changed setting is never served from the saved results: every case is recomputed.
    assert main(batch_args(str(part), tiny_model, steps=1, inputs=str(cohort_dir / "cohort.csv"))) == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in part.glob("*.nii.gz")}
    assert all(stamps[name] != after[name] for name in stamps)


@pytest.mark.slow  # two rank processes: several seconds on a 2-core CPU
def test_evaluate_on_two_ranks_matches_one_process(cohort_dir, capsys, monkeypatch):
    common = ["--data", "data", "--method", "nearest", "linear", "--slices", "1", "3", "--no-figures", "--no-progress"]
    launch(accelerate(), ["evaluate", *common, "--out", "two"], cohort_dir)
    monkeypatch.chdir(cohort_dir)
    assert main(["evaluate", *common, "--out", "one"]) == 0
    two, one = read_csv(cohort_dir / "two" / "cases.csv"), read_csv(cohort_dir / "one" / "cases.csv")
    assert len(one) == 3 * 2 * 2 and without_seconds(two) == without_seconds(one)
    assert (cohort_dir / "two" / "summary.csv").read_text() == (cohort_dir / "one" / "summary.csv").read_text()
    owners = {json.loads(p.read_text())["rank"] for p in (cohort_dir / "two" / "per-case").glob("*.json")}
    assert owners == {0, 1}
    # Run again: nothing is recomputed, the tables are the same.
    stamps = {p: p.stat().st_mtime_ns for p in (cohort_dir / "one" / "per-case").glob("*.json")}
    capsys.readouterr()
    assert main(["evaluate", *common, "--out", "one"]) == 0
    assert "resuming: 3 of 3 cases already done" in capsys.readouterr().err
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())
    assert read_csv(cohort_dir / "one" / "cases.csv") == one


# ---- bad manifests ------------------------------------------------------------------------------


def test_bad_manifest_rows_are_all_named_before_any_work(cohort_dir, tiny_model, capsys):
    (cohort_dir / "bad.csv").write_text(
        "path,plane,slices,k,output\n"
        "data/sub0/t1.nii.gz,axial,3 7,,ok\n"
        "data/missing.nii.gz,axial,3,,\n"
        "data/sub1/t1.nii.gz,diagonal,3,,\n"
        "data/sub1/t1.nii.gz,axial,3 x,,b\n"
        "data/sub2/t1.nii.gz,axial,3,2,c\n"
        "data/sub2/t1.nii.gz,axial,40,,d\n"
        "data/sub2/t1.nii.gz,axial,,0,e\n"
        "data/sub2/t1.nii.gz,axial,1,,../escape\n"
        "data/sub2/t1.nii.gz,axial,1,,ok.nii.gz\n"
        "data/sub2/t1.nii.gz,axial,0 1 2 3 4,,f\n")
    out = cohort_dir / "out"
    code = main(["reconstruct-batch", "--inputs", str(cohort_dir / "bad.csv"), "--out", str(out),
                 "--model", str(tiny_model), "--no-progress"])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    expected = [
        (3, "missing.nii.gz: no such file or folder"),
        (4, "unknown plane 'diagonal'"),
        (5, "'x' is not a slice index"),
        (6, "both 'slices' (3) and 'k' (2) are given"),
        (8, "must be a whole number >= 1"),
        (9, "must be a name inside the output folder"),
        (10, "output ok.nii.gz is also the output of"),
        (11, "5 input slices: this model takes at most 4"),
        (7, "slice index 40 is outside t1.nii.gz, whose axial indices run 0..12"),
    ]
    assert len(lines) == len(expected)
    for number, problem in expected:
        assert any(f"bad.csv line {number}: " in line and problem in line for line in lines), (number, lines)
    assert not out.exists()


@pytest.mark.parametrize("content, problem", [
    ("", "the manifest is empty"),
    ("input,plane\nx,axial\n", "unknown column 'input'"),
    ("plane,k\naxial,1\n", "the header has no 'path' column"),
    ("path,plane,k\n", "has a header but no rows"),
])
def test_bad_manifest_files_fail_with_one_line(cohort_dir, tiny_model, capsys, content, problem):
    (cohort_dir / "m.csv").write_text(content)
    out = cohort_dir / "out"
    assert main(["reconstruct-batch", "--inputs", str(cohort_dir / "m.csv"), "--out", str(out),
                 "--model", str(tiny_model)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and problem in err[0] and "m.csv" in err[0]
    assert not out.exists()


def test_an_existing_file_the_batch_did_not_write_is_kept(cohort_dir, tiny_model, capsys):
    out = cohort_dir / "out"
    out.mkdir()
    (out / "sub0.nii.gz").write_text("someone's file")
    args = ["reconstruct-batch", "--inputs", str(cohort_dir / "cohort.csv"), "--out", str(out), "--model",
            str(tiny_model), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "cohort.csv line 2:" in err and "already exists and this batch did not write it" in err
    assert (out / "sub0.nii.gz").read_text() == "someone's file"
    assert sorted(p.name for p in out.iterdir()) == ["sub0.nii.gz"]


def test_folder_inputs_use_the_commands_plane_and_k(cohort_dir, tiny_model, capsys):
    out = cohort_dir / "out"
    args = ["reconstruct-batch", "--inputs", str(cohort_dir / "data"), "--out", str(out), "--model", str(tiny_model),
            "--views", "1", "--steps", "1", "--device", "cpu", "--no-progress"]
    assert main(args) == 2
    assert "give --plane" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--plane", "coronal", "--k", "2"]) == 0
    rows = read_csv(out / "results.csv")
    # Named as `xdiffusion evaluate --data FOLDER` names them (clashing file names get their folder's).
    assert [(r["case"], r["plane"], r["k"]) for r in rows] == [(f"sub{n}_t1_xdiffusion", "coronal", "2") for n in range(3)]
    assert all((out / r["output"]).is_file() and (out / r["uncertainty"]).is_file() for r in rows)
