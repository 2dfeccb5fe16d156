"""``xdiffusion app``: the browser app (trame + 3D Slicer's core libraries), see docs/web-app.md."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...errors import XDiffusionError
from ..web.server_paths import default_data_roots


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "app",
        help="start the browser app: load a volume, pick slices, reconstruct, compare, export",
        description=("Serve the XDiffusion web app. Open the printed address in a browser; every tab gets its "
                     "own session. Listens on this computer only unless --host says otherwise."),
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this computer only; 0.0.0.0: every network)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument("--model", metavar="DIR",
                        help="model folder (config.json + model.safetensors); default: the shipped weights")
    parser.add_argument("--max-upload-mb", type=float, default=512, metavar="MB",
                        help="largest volume file a browser may upload (default 512)")
    parser.add_argument("--max-sessions", type=int, default=4, metavar="N",
                        help="browser tabs served at once, each with its own session (default 4)")
    parser.add_argument("--session-timeout", type=int, default=60, metavar="S",
                        help="seconds a session lives on after its tab closed (default 60)")
    paths = parser.add_mutually_exclusive_group()
    paths.add_argument("--allow-server-paths", dest="server_paths", action="store_true", default=None,
                       help="let the page open volumes and models by a path on this server "
                            "(default: only when listening on this computer)")
    paths.add_argument("--no-server-paths", dest="server_paths", action="store_false",
                       help="uploads only, and only the --model folder")
    parser.add_argument("--data-root", dest="data_roots", action="append", metavar="DIR",
                        help="with server paths: a folder whose files (and model folders) the page may open; "
                             "repeat for more (default: the shipped samples and the current folder)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # SimpleITK, Slicer's core and aiohttp: loaded when the app starts, not with the command line's --help.
    from ...slicer.request_checks import check_model_dir
    from ..web.hub import HubSettings, is_loopback, serve

    if not 0 <= args.port <= 65535:
        raise XDiffusionError(f"port {args.port} is not a port number (0..65535)")
    if args.max_upload_mb <= 0:
        raise XDiffusionError(f"--max-upload-mb must be positive, got {args.max_upload_mb:g}")
    if args.max_sessions < 1:
        raise XDiffusionError(f"--max-sessions must be at least 1, got {args.max_sessions}")
    if args.session_timeout < 1:
        raise XDiffusionError(f"--session-timeout must be at least 1 second, got {args.session_timeout}")
    allow_paths = is_loopback(args.host) if args.server_paths is None else bool(args.server_paths)
    roots = data_roots(args.data_roots)
    if args.data_roots and not allow_paths:
        raise XDiffusionError("--data-root needs server paths: they are off (--no-server-paths, or --host serves "
                              "other computers); add --allow-server-paths")
    if args.model:
        model_dir = str(check_model_dir(args.model))
    else:
        model_dir = None
        try:
            check_model_dir(None)
        except XDiffusionError as error:
            if not allow_paths:  # the page could not name a model either
                raise XDiffusionError(f"{error}; pass --model DIR") from None
            print(f"xdiffusion app: note: {error} (or start with --model DIR)")
    settings = HubSettings(host=args.host, port=args.port, model_dir=model_dir,
                           max_upload_bytes=int(args.max_upload_mb * (1 << 20)), max_sessions=args.max_sessions,
                           session_timeout=args.session_timeout, allow_server_paths=allow_paths,
                           data_roots=tuple(str(r) for r in roots))
    return serve(settings)


def data_roots(given: list[str] | None) -> list[Path]:
    """The folders the page may open server paths in: ``--data-root`` folders (each must be an
    existing folder), by default the shipped samples and the current folder."""
    if not given:
        return default_data_roots()
    roots = []
    for text in given:
        root = Path(text).expanduser()
        if not root.is_dir():
            raise XDiffusionError(f"--data-root {text}: {'not a folder' if root.exists() else 'no such folder'}")
        roots.append(root.resolve())
    return roots
