"""``python -m XDiffusionLib.worker REQUEST.json``: one reconstruction in its own process.

stdout carries only protocol lines (JSON, one per line); everything else any library prints goes
to stderr. Exit codes: 0 done, 2 user-facing error (XDiffusionError), 1 anything else.
The process makes itself the leader of a new process group so that a caller can end it together
with anything it started (``launcher.WorkerJob.cancel``).
"""

from __future__ import annotations

import os
import sys
import traceback

from .messages import encode, error_message


def _own_process_group() -> None:
    if hasattr(os, "setsid"):
        try:
            os.setsid()
        except OSError:
            pass  # already a group leader (started with start_new_session)


USAGE = """usage: python -m XDiffusionLib.worker REQUEST.json

Run the one reconstruction that REQUEST.json describes (see XDiffusionLib.worker.messages) and
report on stdout as JSON lines: progress, then done or error. Exit codes: 0 done, 2 a problem
with the request or its input, 1 anything else."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv in (["-h"], ["--help"]):
        print(USAGE)  # a person asked: plain text, before stdout becomes the protocol stream
        return 0
    _own_process_group()
    # Keep a private handle on the real stdout for protocol lines, then point fd 1 at stderr so
    # stray prints (Python or C) cannot corrupt the protocol stream.
    sys.stdout.flush()
    protocol = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def emit(message: dict) -> None:
        protocol.write(encode(message) + "\n")
        protocol.flush()

    if len(argv) != 1:
        emit(error_message(USAGE.splitlines()[0]))
        return 2
    # Imported after stdout was redirected: nothing an import prints can reach the protocol stream.
    from ..errors import XDiffusionError
    from .messages import read_request
    from .run import describe_failure, run_request

    try:
        run_request(read_request(argv[0]), emit)
    except XDiffusionError as error:
        emit(error_message(describe_failure(error)))
        return 2
    except BaseException as error:  # noqa: BLE001 - the caller must always get one error line
        traceback.print_exc(file=sys.stderr)
        emit(error_message(describe_failure(error)))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
