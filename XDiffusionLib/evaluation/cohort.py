"""A cohort of independent cases split across processes (ranks), with resume and one gathered result.

Used by ``xdiffusion evaluate`` and ``xdiffusion reconstruct-batch``; nothing here knows what a
case computes. The same code runs plain (one process), under ``torchrun`` and under
``accelerate launch`` (one or many nodes):

- **Rank and world size** come from the launchers' standard variables ``RANK``, ``WORLD_SIZE``
  and ``LOCAL_RANK`` (what torchrun and accelerate's launcher set, and what accelerate's
  ``PartialState`` reads); without them the run is one process.
- **Start**: with more than one rank, accelerate's ``PartialState`` opens the process group (gloo
  on CPU, NCCL on GPU) once, only so rank 0 can tell every rank which cases are still to do
  and a run token; the group is closed right after. Everything later goes through files in the
  output folder, which every rank must see (one machine, or a shared file system across nodes).
- **Split**: the cases still to do, in the order given, go round-robin to the ranks
  (``cases[rank::world_size]``): the same state always gives the same split.
- **Per-case results** go to ``OUT/per-case/<case>.json``, written atomically after the case's
  own files. A case counts as done only when that file is there, holds this case's key (a hash
  of every setting that changes the result and of the input file's size and time) and every file
  it lists still exists with its recorded size. A changed setting or input gives a new key, so
  the case is computed again; nothing stale is reused.
- **Gather**: rank 0, after its own cases, waits until every case is done, then returns all
  results in the cases' order. It never waits forever: every other rank writes a heartbeat file
  (``OUT/.ranks/``) every few seconds; a rank that reported an error, whose process is gone (same
  host) or whose heartbeat stopped ends the wait with a one-line error naming the rank.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import XDiffusionError
from ..io.atomic import HOST_TAG, process_alive, remove_quietly, write_json_atomic
from ..io.names import safe_file_name

RESULTS_DIR = "per-case"
RANKS_DIR = ".ranks"
RESULT_VERSION = 1
HEARTBEAT_SECONDS = 2.0
# A rank whose heartbeat is older than this is taken for dead (generous: a loaded machine can
# starve a thread for a while, and a rank on another node cannot be checked by its process id).
STALE_SECONDS = 120.0
START_TIMEOUT = 600.0  # the start synchronisation (ranks still importing torch, loading models)
_HASH_CONTENT_BELOW = 256 * 1024 * 1024  # larger files are identified by size and time only


@dataclass(frozen=True)
class Rank:
    """This process's place in the launch: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(names: Sequence[str], environ) -> int | None:
    for name in names:
        value = environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise XDiffusionError(f"environment variable {name}={value!r} is not an integer") from None
    return None


def current_rank(environ=None) -> Rank:
    """The rank of this process from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (one process without them)."""
    environ = os.environ if environ is None else environ
    world = _env_int(("WORLD_SIZE",), environ)
    rank = _env_int(("RANK",), environ)
    if world is None or world == 1:
        return Rank()
    if rank is None:
        raise XDiffusionError(f"WORLD_SIZE={world} but RANK is not set: start the ranks with torchrun or accelerate launch")
    if world < 1 or not 0 <= rank < world:
        raise XDiffusionError(f"RANK={rank} does not fit WORLD_SIZE={world}")
    local = _env_int(("LOCAL_RANK",), environ)
    return Rank(rank, world, rank if local is None else local)


def rank_device(requested: str | None, rank: Rank) -> str | None:
    """The device this rank should use: with several ranks and CUDA present, ``auto`` or ``cuda``
    becomes this rank's local GPU (``cuda:LOCAL_RANK``, wrapping if there are fewer GPUs)."""
    if rank.world_size == 1 or requested not in (None, "auto", "cuda"):
        return requested
    try:
        import torch  # the torch boundary: a cohort of baselines runs without it
    except ImportError:  # baselines only: no device to choose
        return requested
    if not torch.cuda.is_available():
        return requested
    return f"cuda:{rank.local_rank % torch.cuda.device_count()}"


def split(items: Sequence, rank: Rank) -> list:
    """This rank's share of ``items``: round-robin in the given order."""
    return list(items[rank.rank::rank.world_size])


def digest(record: Any) -> str:
    """A short stable hash of a JSON-able record (keys sorted)."""
    text = json.dumps(record, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def file_identity(paths: Sequence[str | os.PathLike], content: bool = False) -> list[list]:
    """What identifies these files for resume: name, size and modification time (and a content
    hash with ``content``, for files under 256 MB). Folders count as the files inside them."""
    out: list[list] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            out.extend(file_identity(sorted(p for p in path.iterdir() if p.is_file()), content))
            continue
        try:
            stat = path.stat()
        except OSError:
            out.append([str(path), None])
            continue
        entry = [str(path.resolve()), stat.st_size]
        if content and stat.st_size < _HASH_CONTENT_BELOW:
            sha = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    sha.update(block)
            entry.append(sha.hexdigest())
        else:
            entry.append(stat.st_mtime_ns)
        out.append(entry)
    return out


def unique_file_names(names: Sequence[str]) -> list[str]:
    """File-safe versions of ``names`` (``io.names.safe_file_name``), made unique with a number."""
    out: list[str] = []
    for name in names:
        base = safe_file_name(name)
        candidate, n = base, 2
        while candidate.lower() in (o.lower() for o in out):  # also unique on case-insensitive file systems
            candidate, n = f"{base}_{n}", n + 1
        out.append(candidate)
    return out


@dataclass(frozen=True)
class Case:
    """One unit of work: a unique, file-safe ``name`` and the ``key`` its result must carry."""

    name: str
    key: str


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, data, default=_json_default)


def _json_default(value: Any):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, (tuple, set)) or hasattr(value, "tolist"):
        return list(value.tolist() if hasattr(value, "tolist") else value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _read_json(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class Cohort:
    """Per-case results, resume and gathering in one output folder (see the module docstring)."""

    def __init__(self, out: str | os.PathLike, rank: Rank | None = None, *,
                 heartbeat_seconds: float = HEARTBEAT_SECONDS, stale_seconds: float = STALE_SECONDS,
                 start_timeout: float = START_TIMEOUT) -> None:
        self.out = Path(out)
        self.rank = rank if rank is not None else current_rank()
        self.heartbeat_seconds = heartbeat_seconds
        self.stale_seconds = stale_seconds
        self.start_timeout = start_timeout

    # ---- per-case results -------------------------------------------------------------------

    @property
    def results_dir(self) -> Path:
        return self.out / RESULTS_DIR

    def result_path(self, case: Case) -> Path:
        return self.results_dir / f"{case.name}.json"

    def load(self, case: Case) -> dict | None:
        """The complete result of ``case`` for its key, or None (missing, other key, or a file it lists is gone)."""
        data = _read_json(self.result_path(case))
        if data is None or data.get("version") != RESULT_VERSION or data.get("key") != case.key:
            return None
        for name, size in data.get("files", {}).items():
            path = self.out / name
            try:
                if path.stat().st_size != size:
                    return None
            except OSError:
                return None
        return data

    def recorded_files(self, case: Case) -> list[Path]:
        """Files an earlier result of ``case`` (any key) says it wrote: this cohort's own, safe to replace."""
        data = _read_json(self.result_path(case)) or {}
        return [self.out / name for name in data.get("files", {})]

    def save(self, case: Case, result: dict, files: Sequence[str | os.PathLike] = ()) -> dict:
        """Record ``case`` as done, once its ``files`` (under the output folder) are complete."""
        listed = {}
        for file in files:
            path = Path(file)
            relative = os.path.relpath(path, self.out)
            listed[Path(relative).as_posix()] = path.stat().st_size
        data = {"version": RESULT_VERSION, "case": case.name, "key": case.key, "rank": self.rank.rank,
                "files": listed, "result": result}
        _write_json(self.result_path(case), data)
        return data

    # ---- the run ----------------------------------------------------------------------------

    def run(self, cases: Sequence[Case], work: Callable[[Case], tuple[dict, Sequence[Path]]],
            note: Callable[[str], None] = print, fresh: bool = False) -> list[dict] | None:
        """Do this rank's share of the cases not yet done (all of them with ``fresh``; ``work(case)
        -> (result, files)``); on rank 0 return every case's saved record in the cases' order once
        all are done, on the other ranks None."""
        names = [c.name for c in cases]
        if len(set(names)) != len(names):
            raise ValueError("case names must be unique")
        token, pending = self._start(cases, fresh)
        mine = split([c for c in cases if c.name in pending], self.rank)
        if self.rank.is_main:
            done = len(cases) - len(pending)
            if done:
                note(f"resuming: {done} of {len(cases)} cases already done in {self.results_dir}, "
                     f"{len(pending)} to do")
            if self.rank.world_size > 1:
                note(f"{len(pending)} cases split over {self.rank.world_size} ranks")
        beat = _Heartbeat(self.out / RANKS_DIR, token, self.rank, self.heartbeat_seconds) \
            if self.rank.world_size > 1 else None
        current = ""
        try:
            for case in mine:
                current = case.name
                if beat:
                    beat.state = {"state": "running", "case": current}
                result, files = work(case)
                self.save(case, result, files)
        except BaseException as error:
            if beat:
                beat.stop({"state": "failed", "case": current, "message": _one_line(error)})
            raise
        if beat:
            beat.stop({"state": "finished"})
        if not self.rank.is_main:
            return None
        records = self._gather(cases, token)
        if self.rank.world_size > 1:
            for path in (self.out / RANKS_DIR).glob(f"{token}-*.json"):
                remove_quietly(path)
            try:
                (self.out / RANKS_DIR).rmdir()
            except OSError:
                pass  # another run's files are still there
        return records

    def _start(self, cases: Sequence[Case], fresh: bool) -> tuple[str, set[str]]:
        """Rank 0 decides the run token and which cases are still to do; every rank learns both."""
        decision = None
        if self.rank.is_main:
            decision = [uuid.uuid4().hex[:12], [c.name for c in cases if fresh or self.load(c) is None]]
        if self.rank.world_size > 1:
            decision = _broadcast(decision, self.start_timeout)
        return decision[0], set(decision[1])

    def _gather(self, cases: Sequence[Case], token: str) -> list[dict]:
        started = time.monotonic()
        others = range(1, self.rank.world_size)
        records: dict[str, dict] = {}
        while True:
            # Heartbeats first: a rank writes "finished" only after its last result, so if it was
            # finished before the results were read, a case still missing now will never come.
            finished = all(self._finished(r, token) for r in others)
            for case in cases:
                if case.name not in records:
                    record = self.load(case)
                    if record is not None:
                        records[case.name] = record
            missing = [c.name for c in cases if c.name not in records]
            if not missing:
                return [records[c.name] for c in cases]
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            for other in others:
                problem = self._rank_problem(other, token, time.monotonic() - started)
                if problem:
                    raise XDiffusionError(f"rank {other} {problem}; {len(missing)} case(s) not done ({shown}): "
                                          "rerun the same command to resume")
            if finished:
                raise XDiffusionError(f"every rank finished but {len(missing)} case(s) have no result in "
                                      f"{self.results_dir} ({shown}): rerun the same command to resume")
            time.sleep(min(0.5, self.heartbeat_seconds / 2))

    def _beat(self, rank: int, token: str) -> dict | None:
        return _read_json(self.out / RANKS_DIR / f"{token}-{rank}.json")

    def _finished(self, rank: int, token: str) -> bool:
        beat = self._beat(rank, token)
        return beat is not None and beat.get("state") == "finished"

    def _rank_problem(self, rank: int, token: str, waited: float) -> str | None:
        beat = self._beat(rank, token)
        if beat is None:
            if waited > self.stale_seconds:
                return f"never reported (no heartbeat in {self.out / RANKS_DIR} after {waited:.0f} s: did it start?)"
            return None
        state = beat.get("state")
        if state == "finished":
            return None
        if state == "failed":
            where = f" on case {beat['case']}" if beat.get("case") else ""
            return f"failed{where}: {beat.get('message', 'unknown error')}"
        if beat.get("host") == HOST_TAG and not process_alive(int(beat.get("pid", -1))):
            return f"died (process {beat.get('pid')} ended without finishing{' case ' + beat['case'] if beat.get('case') else ''})"
        age = time.time() - float(beat.get("time", 0))
        if age > self.stale_seconds:
            return f"stopped responding (no heartbeat for {age:.0f} s; did it die?)"
        return None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:300]


def _broadcast(decision, timeout: float):
    """``decision`` of rank 0 on every rank, through accelerate's process group (opened and closed here)."""
    # torch and accelerate load only here (the torch boundary): one-process runs never need them.
    import torch
    import torch.distributed as dist
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState(cpu=not torch.cuda.is_available(), timeout=datetime.timedelta(seconds=timeout))
    if state.num_processes == 1:
        raise XDiffusionError("WORLD_SIZE > 1 but no process group could be formed: start the ranks with "
                              "torchrun or accelerate launch (on CPU: accelerate launch --multi_gpu --num_processes N)")
    box = [decision]
    broadcast_object_list(box, from_process=0)
    if dist.is_initialized():
        # Nothing else goes through the group: close it so ranks can end at different times.
        dist.destroy_process_group()
    return box[0]


class _Heartbeat:
    """A thread that rewrites ``DIR/<token>-<rank>.json`` (pid, host, time, state) every few seconds."""

    def __init__(self, folder: Path, token: str, rank: Rank, seconds: float) -> None:
        self.path = folder / f"{token}-{rank.rank}.json"
        self.seconds = seconds
        self.state: dict = {"state": "running"}
        self._stop = threading.Event()
        folder.mkdir(parents=True, exist_ok=True)
        self._write()
        self._thread = threading.Thread(target=self._loop, name="cohort-heartbeat", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        try:
            _write_json(self.path, {"pid": os.getpid(), "host": HOST_TAG, "time": time.time(), **self.state})
        except OSError:
            pass  # the folder was cleaned up after the gather: nothing left to report to

    def _loop(self) -> None:
        while not self._stop.wait(self.seconds):
            self._write()

    def stop(self, final: dict) -> None:
        self._stop.set()
        self._thread.join(timeout=max(5.0, 2 * self.seconds))
        self.state = final
        self._write()


__all__ = ["Case", "Cohort", "Rank", "current_rank", "digest", "file_identity", "rank_device", "split", "unique_file_names"]
