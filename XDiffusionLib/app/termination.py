"""SIGTERM unwinds a command like Ctrl-C, so its temporaries are removed on the way out."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt (the CLI then exits 130, nothing kept).

    The signal is also unblocked: a child inherits its parent's signal mask, and a parent that
    blocked SIGTERM in its main thread (a server or test runner) would otherwise leave it pending
    until the run ends."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM}) if hasattr(signal, "pthread_sigmask") else None
    try:
        yield
    finally:
        if blocked is not None and signal.SIGTERM in blocked:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        signal.signal(signal.SIGTERM, previous)
