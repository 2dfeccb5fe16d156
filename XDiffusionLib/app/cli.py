"""``xdiffusion`` command line: discovers the subcommands in ``app/commands`` and runs one.

User errors (XDiffusionError) print as one line on stderr with a non-zero exit code; so do a full
disk or another operating-system error (OSError, naming the file where it has one) and running out
of memory (MemoryError), which are not bugs of ours but of the machine. Warnings print as one line.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import warnings

from .. import __version__
from ..errors import XDiffusionError, describe_system_error
from . import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xdiffusion",
        description="3D MRI volumes from one or a few 2D slices (X-Diffusion).",
    )
    parser.add_argument("--version", action="version", version=f"xdiffusion {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{module_info.name}")
        module.register(subparsers)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"xdiffusion: warning: {str(message).strip().splitlines()[0] if str(message).strip() else category.__name__}\n"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = warnings.formatwarning
    warnings.formatwarning = _one_line_warning  # a warning is one line, as an error is
    try:
        return int(args.func(args) or 0)
    except XDiffusionError as error:
        print(f"xdiffusion {args.command}: error: {error}", file=sys.stderr)
        return 2
    except (OSError, MemoryError) as error:
        print(f"xdiffusion {args.command}: error: {describe_system_error(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"xdiffusion {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = previous


if __name__ == "__main__":
    sys.exit(main())
