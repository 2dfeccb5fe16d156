"""The web app's warm worker (issue 13): PyTorch and the model are loaded before the first run.

``WarmLauncher`` starts a worker process that loads everything and waits; a run then goes to that
very process. Without a browser: the launcher is driven directly with a tiny random model.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from XDiffusionLib.io.volume import Volume
from XDiffusionLib.worker.launcher import DONE
from XDiffusionLib.worker.messages import JobSettings


def _head() -> Volume:
    i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in (16, 16, 12)], indexing="ij")
    # 31 (not 30): whole-numbered levels would make it a label map, which a reconstruction refuses.
    array = np.where(i**2 + j**2 + k**2 < 0.7, 80.0 + 31.0 * i, 2.0).astype(np.float32)
    return Volume.from_array(array, (2.0, 2.0, 2.5))


def _wait_warm(launcher, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not launcher.is_warm:
        assert launcher._process.poll() is None, "the warm worker stopped before it was ready"
        assert time.monotonic() < deadline, "the worker did not get warm"
        time.sleep(0.2)


def test_a_run_goes_to_the_process_that_was_warmed_before_it(tiny_model):
    from XDiffusionLib.app.web.warm_worker import WarmLauncher

    launcher = WarmLauncher(str(tiny_model))
    try:
        assert not launcher.is_warm
        launcher.warm()
        _wait_warm(launcher)
        warm_pid = launcher.warm_pid
        settings = JobSettings("axial", (5,), str(tiny_model), {"views": 1, "steps": 1})
        job = launcher.start(_head(), settings)
        assert job.process.pid == warm_pid and launcher.used_warm  # no new process, no new imports
        assert job.wait(timeout=240) == DONE, job.error
        result = job.result()
        assert result.volume.shape == (16, 16, 12)
        # The input slice comes through exactly, as from a cold worker.
        assert np.allclose(result.volume.array[:, :, 5], _head().array[:, :, 5], atol=1e-3)
        # The used process is not handed out twice: the next run starts cold unless re-warmed.
        assert not launcher.is_warm
        job = launcher.start(_head(), settings)
        assert not launcher.used_warm and job.process.pid != warm_pid
        job.cancel()
    finally:
        launcher.close()


def test_a_waiting_warm_worker_ends_with_its_session(tiny_model):
    from XDiffusionLib.app.web.warm_worker import WarmLauncher

    launcher = WarmLauncher(str(tiny_model))
    launcher.warm()
    process = launcher._process
    _wait_warm(launcher)
    process.stdin.close()  # what the session's exit does to the pipe
    assert process.wait(timeout=30) == 0
    launcher.close()
    assert not launcher._folder.exists()


def _progress_words(job, timeout: float = 240.0) -> list[str]:
    """Every progress message of ``job``, in order, until it ends."""
    words, deadline = [], time.monotonic() + timeout
    while True:
        words += [m["message"] for m in job.poll() if m.get("type") == "progress"]
        if job.finished:
            return words + [m["message"] for m in job.poll() if m.get("type") == "progress"]
        assert time.monotonic() < deadline, "the run did not end"
        time.sleep(0.05)


def test_a_warm_run_says_what_it_does_before_the_sampling(tiny_model):
    """Issue 22 item 5: after "model loaded, ready" a run showed "loading PyTorch and the model" for
    the seconds that its own first step took (the anchor's head template, fitted to the input slices):
    a warm worker loads only the model's files, and the run says when it prepares the slices."""
    from XDiffusionLib.app.web.warm_worker import WarmLauncher

    settings = JobSettings("axial", (5,), str(tiny_model), {"views": 1, "steps": 2})
    launcher = WarmLauncher(str(tiny_model))
    try:
        launcher.warm()
        _wait_warm(launcher)
        job = launcher.start(_head(), settings)
        assert launcher.used_warm
        words = _progress_words(job)
        assert job.state == DONE, job.error
        assert not any("PyTorch" in w for w in words), words
        first_step = next(i for i, w in enumerate(words) if "step 1/2" in w)
        assert words[first_step - 1] == "preparing the input slices for the model", words  # this tiny model's target
        assert "loading the model" in words[:first_step]
        cold = launcher.start(_head(), settings)  # nothing warm: a new process imports PyTorch, and says so
        assert not launcher.used_warm
        assert "loading PyTorch and the model" in _progress_words(cold)
    finally:
        launcher.close()


FRAGMENTED_HEAP = r"""
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil

from XDiffusionLib.app.web.session import return_free_memory

kept = []


def work(_):
    blocks = []
    for _ in range(2000):
        blocks.append(np.ones(12_000))  # 96 kB each: from the C heap (below the mmap threshold)
        kept.append(np.ones(8))  # small blocks in between: the heap cannot shrink from its top
    return len(blocks)


with ThreadPoolExecutor(2) as pool:  # as the session's metrics and reads run: in threads, each its own heap
    list(pool.map(work, range(2)))
freed = psutil.Process().memory_info().rss
given_back = return_free_memory()
print(given_back, (freed - psutil.Process().memory_info().rss) / 2**20)
"""


def test_the_session_gives_freed_memory_back():
    """Issue 22 item 5: the tab's session grew over its first runs (bench/web_memory.py: 797 -> 993 MB)
    while what it used stayed the same: glibc kept the replaced results' freed memory in its heaps.
    The session hands it back after each run; here a heap left full of holes, as a run leaves it."""
    import subprocess
    import sys

    answer = subprocess.run([sys.executable, "-c", FRAGMENTED_HEAP], capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0, answer.stderr[-2000:]
    given_back, megabytes = answer.stdout.split()
    if sys.platform.startswith("linux"):
        assert given_back == "True" and float(megabytes) > 200, answer.stdout  # of the ~370 MB freed
    else:
        assert given_back == "False"


LARGE_BLOCKS = r"""
import sys

import numpy as np

from XDiffusionLib.app.web.session import map_large_blocks

mapped = map_large_blocks() if sys.argv[1] == "map" else False


def heap() -> int:
    # bytes of the main C heap (the one that grows by brk; what is freed in it stays)
    total = 0
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            low, high = line.split()[0].split("-")
            total += int(high, 16) - int(low, 16)
    return total


freed = np.ones(1 << 19)  # a 4 MB block freed: glibc raises its mapping threshold to 4 MB
del freed
before = heap()
blocks = [np.ones(1 << 17) for _ in range(50)]  # 50 MB in 1 MB blocks, as a run's slabs and images
print(mapped, (heap() - before) / 2**20)
"""


def test_the_session_maps_large_blocks_so_they_go_back_when_freed():
    """Issue 22 item 5: blocks of MB (volumes, rendered images) freed by a run went back into
    glibc's heap (its mapping threshold rises to the largest block freed), where they fragmented:
    trimmed or not, the session grew a few MB with every run. With a fixed threshold every large
    block is a mapping of its own, returned the moment it is freed: the heap does not grow for them."""
    import subprocess
    import sys

    def heap_growth(how: str) -> tuple[str, float]:
        answer = subprocess.run([sys.executable, "-c", LARGE_BLOCKS, how], capture_output=True, text=True,
                                timeout=120)
        assert answer.returncode == 0, answer.stderr[-2000:]
        mapped, grown = answer.stdout.split()
        return mapped, float(grown)

    if not sys.platform.startswith("linux"):
        assert heap_growth("map")[0] == "False"
        return
    assert heap_growth("glibc's own") == ("False", pytest.approx(50, abs=5))  # what the session did before
    assert heap_growth("map") == ("True", pytest.approx(0, abs=2))
