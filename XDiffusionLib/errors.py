"""One exception type for every user-facing error: the CLI prints its message on one line."""


class XDiffusionError(Exception):
    """A problem with the user's input or settings. The message names the file or value and the problem."""
