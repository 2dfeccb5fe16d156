"""A signal: how one feature of the session tells the others that something happened, without
knowing who listens (the session connects them; trame-slicer's objects talk the same way)."""

from __future__ import annotations

import inspect
from collections.abc import Callable


class Signal:
    """Callbacks ``connect``-ed to one event. ``emit`` calls each in the order connected with the
    same arguments; ``emit_async`` also awaits what a callback returns. A callback's exception
    reaches the emitter, as a direct call's would."""

    def __init__(self) -> None:
        self._callbacks: list[Callable] = []

    def connect(self, callback: Callable) -> Callable:
        self._callbacks.append(callback)
        return callback

    def emit(self, *args) -> None:
        for callback in list(self._callbacks):
            callback(*args)

    async def emit_async(self, *args) -> None:
        for callback in list(self._callbacks):
            result = callback(*args)
            if inspect.isawaitable(result):
                await result
