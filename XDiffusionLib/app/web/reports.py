"""What the page says: an error or a note above the views, and what the session is busy with
(``state.MessagesState``). Every feature reports through one ``Reports``."""

from __future__ import annotations

import asyncio
import logging

from ...errors import XDiffusionError, describe_system_error

log = logging.getLogger("xdiffusion.web")


class Reports:
    def __init__(self, page):
        """``page``: the session's ``TypedState`` of ``state.PageState``."""
        self.state = page.state
        self.messages = page.data.messages

    def error(self, message: str, shown: tuple[tuple[str, str], ...] = ()) -> None:
        """Show ``message`` in the page. ``shown``: (server path, what the page calls it) pairs,
        replaced in order: the page knows its files by their own names, and the server's folders
        stay private."""
        message = str(message)
        for server, page_name in shown:
            message = message.replace(server, page_name)
        log.info("error shown: %s", message)
        with self.state:
            self.messages.error = message
            self.messages.info = ""
            self.messages.busy = ""
            self.messages.upload_percent = -1

    def info(self, message: str) -> None:
        with self.state:
            self.messages.info = str(message)
            self.messages.error = ""

    def failure(self, error: Exception, what: str, shown: tuple[tuple[str, str], ...] = ()) -> None:
        """Show a failure in the page: our own errors and the machine's (a full disk, no memory) in
        one line (``shown`` as for ``error``), anything else as an internal error."""
        if isinstance(error, XDiffusionError):
            self.error(str(error), shown)
            return
        if isinstance(error, (OSError, MemoryError)):
            self.error(f"{what} failed: {describe_system_error(error)}", shown)
            return
        log.error("%s failed", what, exc_info=error)
        self.error(f"internal error in {what} ({type(error).__name__}: {error}); "
                   "the details are in the server's log")

    def guarded(self, function):
        """``function`` reporting any failure in the page (a trigger's exception would otherwise
        only reach the server log, leaving the page waiting)."""
        if asyncio.iscoroutinefunction(function):
            async def run_async(*args, **kwargs):
                try:
                    return await function(*args, **kwargs)
                except Exception as error:  # noqa: BLE001 - shown in the page
                    self.failure(error, function.__name__)
            return run_async

        def run(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - shown in the page
                self.failure(error, getattr(function, "__name__", "action"))
        return run
