"""One exception type for every user-facing error: the CLI prints its message on one line."""

import errno


class XDiffusionError(Exception):
    """A problem with the user's input or settings. The message names the file or value and the problem."""


def describe_system_error(error: BaseException) -> str:
    """One line for an error of the machine rather than of the input (a full disk, a file that
    cannot be opened, no memory left), naming the file where the error has one. The command line
    and the worker both report these this way."""
    if isinstance(error, MemoryError):
        return "the computer ran out of memory: use a smaller volume, fewer views or samples, or a larger machine"
    if isinstance(error, OSError):
        reason = "no space left on device" if error.errno == errno.ENOSPC else (error.strerror or "")
        reason = reason or (str(error).strip().splitlines() or [type(error).__name__])[0]
        return f"{error.filename}: {reason}" if error.filename is not None else reason
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
