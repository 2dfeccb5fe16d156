"""One browser tab's app: a trame server with its own Slicer scene, views, state and worker.

The hub (``hub.py``) starts one of these processes per tab, so tabs never share state: trame
keeps one state per server and mirrors it to every connected client, which would otherwise let a
second tab overwrite the first one's volume, slices and results.

This module only wires (the trame-slicer way): the page's state is typed (``state.PageState``,
through trame-server's ``TypedState``), each feature in its own module (``loading``, ``picking``,
``thick_slices``, ``running``, ``viewing``, ``exporting``; metrics and export formats in
``results``), the page in ``ui.py``. ``XDiffusionSession`` creates the Slicer app and views, the
feature objects, connects their signals (what one does that concerns another) and registers the
functions the page calls under the names trame gives them (``ctrl.trigger_name``). The features
share the page's state, the ``Reports`` of its status lines and the ``Workspace`` (scene, views,
loaded volume, comparison), never each other.

``python -m XDiffusionLib.app.web.session --port 0 ...`` prints ``XDIFFUSION_SESSION_PORT <port>``
on stdout once it serves. (Started alone, without the hub, it serves every tab that connects, and
they all share its one state.) Standing alone it stops ``--timeout`` seconds after its tab disconnects;
under the hub (``--timeout 0 --watch-stdin``) the hub decides when it stops, and it stops by itself
if the hub disappears (its stdin closes). Under the hub it serves only requests that carry the
secret the hub put in its environment (``origins.session_guard``): its port on 127.0.0.1 is open
to every local program and web page, the hub is not. Started alone it applies the hub's host and
origin policy itself. On the way out a running reconstruction is cancelled
and the session's files are removed. The worker (PyTorch and the model) is warmed when a tab
connects, not before; a tab gone for ``TAB_GONE_S`` (no websocket: closed, not reloaded) has its
run cancelled, and no worker is warmed for it.

The hub imports this module (``READY_PREFIX``, ``FAVICON``) and stays light: trame, Slicer, numpy and
SimpleITK, and the modules built on them, are imported inside the functions that run in the session.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import ctypes
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from aiohttp import web
from wslink.websocket import LinkProtocol

from ...data.samples import samples_with_role
from ...model.files import default_model_dir
from .origins import SESSION_KEY_ENV, is_loopback, session_guard
from .reports import Reports
from .server_paths import DataRoots, ModelFolders, default_data_roots
from .workspace import Workspace

log = logging.getLogger("xdiffusion.web")

READY_PREFIX = "XDIFFUSION_SESSION_PORT"
STATIC_DIR = Path(__file__).resolve().parent / "static"
FAVICON = STATIC_DIR / "favicon.svg"  # the tab's icon (the hub's landing page shows it too)
_WARM_POLL_S = 1.0
# A tab gone this long (no websocket) is closed: a reload reconnects well within it, and keeps its run.
TAB_GONE_S = 10.0


class XDiffusionSession:
    """Everything one tab sees and does. All Slicer and state work runs on the server's event loop;
    file reading, metrics and exports run in threads, the reconstruction in a worker process."""

    def __init__(self, server, *, model_dir: str | None, max_upload_bytes: int, allow_server_paths: bool,
                 workdir: Path, worker_mode: str = "subprocess", data_roots: tuple[str, ...] = (),
                 session_key: str | None = None, local_only: bool = True):
        # trame, Slicer, numpy and SimpleITK: in the session process only (the hub imports this module)
        from trame_rca.encoders import RcaImageEncoder
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories

        from ...slicer.nodes import node_ids
        from ...worker.launcher import WorkerLauncher
        from . import ui, views
        from .comparison import Comparison
        from .results import EXPORT_FORMAT_TITLES
        from .state import FAVICON, TITLE, initial_state, typed_page
        from .transfer import Transfers
        from .warm_worker import WarmLauncher

        self.server = server
        self.state = server.state
        self._session_key, self._local_only = session_key, local_only
        self.allow_server_paths = bool(allow_server_paths)
        self.data_roots = DataRoots(data_roots if self.allow_server_paths else ())
        self.transfers = Transfers(workdir, max_upload_bytes)
        if model_dir is None and (default_model_dir() / "config.json").is_file():
            model_dir = str(default_model_dir())
        self.model_dir = model_dir
        self.models = ModelFolders(model_dir, self.data_roots, self.allow_server_paths)
        # A worker warmed in advance: a first run does not wait for PyTorch and the model.
        self.launcher = WarmLauncher(model_dir) if worker_mode == "subprocess" else WorkerLauncher(worker_mode)

        server.enable_module(trame_slicer_module)
        # (A <style> inside the page's template would be dropped by Vue: the CSS is a file.)
        server.enable_module({"serve": {"xdiffusion_static": str(STATIC_DIR)},
                              "scripts": ["xdiffusion_static/xdiffusion.js"],
                              "styles": ["xdiffusion_static/xdiffusion.css"]})
        server.controller.on_server_bind.add(self._bind_routes)

        self.slicer_app = SlicerApp()
        self.scene = self.slicer_app.scene
        self.view_manager = self.slicer_app.view_manager
        register_rca_factories(self.view_manager, server, slice_view_ui_f=self._populate_view,
                               rca_encoder=RcaImageEncoder.JPEG, blur_fps=10.0)
        self.layout_manager = LayoutManager(self.scene, self.view_manager, server)

        # The page's state, typed (``state.PageState``); without server paths the page shows the
        # model's name, not where it lies on the server.
        self.page = typed_page(self.state)
        shown = (model_dir if self.allow_server_paths else Path(model_dir).name) if model_dir else ""
        self.state.update({"trame__title": TITLE, "trame__favicon": FAVICON})
        self.page.set_dataclass(initial_state(
            max_upload_bytes=self.transfers.max_upload_bytes, allow_server_paths=self.allow_server_paths,
            model_shown=shown, export_format_titles=EXPORT_FORMAT_TITLES,
            sample_choices=[{"title": f"{s.name}: {s.description}", "value": s.name}
                            for s in samples_with_role("heldout")]))
        self.reports = Reports(self.page)
        self.workspace = Workspace(self.scene, self.view_manager, self.layout_manager)
        self._make_features()
        # The views' overlays are made as their layouts register: they need the triggers.
        self.triggers = self._register_triggers()

        self.layout_manager.register_layout(views.INPUT_LAYOUT, views.input_layout())
        self.layout_manager.register_layout(views.COMPARE_LAYOUT,
                                            views.compare_layout([v.name for v in views.COMPARE_VIEWS]))
        # Every view exists now; whatever is added later belongs to a loaded volume or a result.
        self.workspace.baseline = node_ids(self.scene)
        self.workspace.comparison = Comparison(self.scene, self.view_manager, self.layout_manager)
        self.picking.connect_views()
        self.viewing.connect_views()

        self.ui = ui.build_page(self.server, self.layout_manager, self.page.name, self.triggers)
        self.layout_manager.set_layout(views.INPUT_LAYOUT)
        # A spare session holds no worker (PyTorch and the model, >1 GB): it warms one when a tab
        # takes it; a closed tab cancels its run and warms nothing more. The tab's websocket says
        # when it comes and goes (the page's own "exited" message, sent while it unloads, may never
        # arrive, and a reload sends it too).
        self.tab_open = False
        server.add_protocol_to_configure(lambda protocol: protocol.registerLinkProtocol(_TabSockets(self)))
        if hasattr(self.launcher, "warm"):
            server.controller.on_server_ready.add(self._watch_warm_worker)

    # -- wiring ----------------------------------------------------------------------------------

    def _make_features(self) -> None:
        """The features, each with the page's typed state and what it needs; they never hold each
        other: what one does that concerns another is a signal, connected here."""
        # they load Slicer: in the session process only (the hub imports this module)
        from .exporting import Exporting
        from .loading import Loading
        from .picking import Picking
        from .running import Running
        from .thick_slices import ThickSlices
        from .viewing import Viewing

        page, reports, workspace = self.page, self.reports, self.workspace
        self.picking = Picking(page, reports, workspace)
        self.loading = Loading(page, reports, workspace, self.transfers, self.data_roots, self.allow_server_paths)
        self.thick_slices = ThickSlices(page, workspace, self.models, self.launcher)
        self.viewing = Viewing(page, reports, workspace)
        self.exporting = Exporting(page, reports, workspace, self.transfers)
        self.running = Running(page, reports, workspace, self.models, self.launcher,
                               show_result=self.viewing.replace_result, measure_result=self.viewing.compute_metrics,
                               thick_run=self.thick_slices.scene_run)

        # A volume goes: its result and its thick-slice offer with it.
        self.loading.volume_closing.connect(self.viewing.remove_result)
        self.loading.volume_closing.connect(self.thick_slices.forget)
        # A volume comes: no picks, its input views, the offer for a thick-slice scan, the last one's memory freed.
        self.loading.volume_loaded.connect(self.picking.on_volume_loaded)
        self.loading.volume_loaded.connect(self.viewing.on_volume_loaded)
        self.loading.volume_loaded.connect(self.thick_slices.offer)
        self.loading.volume_loaded.connect(lambda *_: self.release_memory())
        # The result's export choices and the comparison views' labels.
        self.viewing.result_shown.connect(self.exporting.on_result_shown)
        self.viewing.result_removed.connect(self.exporting.on_result_removed)
        self.viewing.comparison_moved.connect(self.picking.refresh_comparison_views)
        # A run took the warm worker: warm the next; its result replaced the last one: free that.
        self.running.worker_done.connect(lambda _run: self.rewarm())
        self.running.result_ready.connect(lambda _run: self.release_memory())

    def _register_triggers(self):
        """Every function the page calls, registered under the name trame gives it (``ctrl.trigger_name``)
        and reporting its failures in the page."""
        from .ui import Triggers  # trame and Slicer: not in the hub, which imports this module

        def name(function) -> str:
            return self.server.controller.trigger_name(self.reports.guarded(function))

        loading, picking, running, viewing = self.loading, self.picking, self.running, self.viewing
        return Triggers(
            upload_started=name(loading.on_upload_started),
            upload_progress=name(loading.on_upload_progress),
            upload_failed=name(self.reports.error),
            load_upload=name(loading.load_upload),
            load_path=name(loading.load_server_path),
            load_sample=name(loading.load_sample),
            load_volume_pick=name(loading.load_picked_volume),
            pick=name(picking.pick),
            unpick=name(picking.unpick),
            clear_picks=name(picking.clear),
            quick_pick=name(picking.quick_pick),
            reconstruct=name(running.reconstruct),
            reconstruct_thick=name(running.reconstruct_thick),
            cancel=name(running.cancel),
            previous_input=name(viewing.previous_input_slice),
            next_input=name(viewing.next_input_slice),
            reset_views=name(viewing.reset_views),
            export=name(self.exporting.export),
        )

    def _bind_routes(self, wslink_server) -> None:
        # First of all middlewares: without the hub's key (or, started alone, from another site or
        # host name) nothing is served, the websocket and uploads included.
        wslink_server.app.middlewares.insert(0, session_guard(self._session_key, self._local_only))
        router = wslink_server.app.router
        router.add_routes(self.transfers.routes())
        # trame's page first asks a launcher at paraview/ for the websocket address (and logs the
        # 405 of a server without one): answer with this server's own address.
        router.add_routes([web.post("/paraview/", _session_manager_answer)])

    def _populate_view(self, server, view_id, view) -> None:
        from . import ui  # trame and Slicer: not in the hub, which imports this module

        ui.view_overlay(server, view, self.page.name, self.triggers)

    @property
    def running_now(self) -> bool:
        return bool(self.page.data.running.running)

    def on_tab_connected(self) -> None:
        self.tab_open = True
        if hasattr(self.launcher, "warm") and not self.running_now:
            self.launcher.warm()  # a no-op while one is alive (a reload)

    def on_tab_gone(self) -> None:
        from trame_server.utils.asynchronous import create_task  # trame: not in the hub, which imports this module

        self.tab_open = False
        if self.running_now:
            create_task(self._cancel_when_closed())

    async def _cancel_when_closed(self) -> None:
        """Cancel the run unless the tab comes back (a reload) within ``TAB_GONE_S``."""
        await asyncio.sleep(TAB_GONE_S)
        if not self.tab_open and self.running_now:
            log.info("the tab closed: cancelling its reconstruction")
            await self.running.cancel()

    def _watch_warm_worker(self, **_) -> None:
        from trame_server.utils.asynchronous import create_task  # trame: not in the hub, which imports this module

        async def watch():
            while True:
                self.running.show_worker_warm(bool(self.launcher.is_warm))
                await asyncio.sleep(_WARM_POLL_S)

        create_task(watch())

    def rewarm(self) -> None:
        """Warm the next worker (a run took the last one); a few seconds later the page says so."""
        if hasattr(self.launcher, "warm") and self.tab_open:  # no worker for a closed tab
            self.launcher.warm()

    def release_memory(self) -> None:
        """Give what the session freed back to the system (after a result replaced the last one)."""
        return_free_memory()

    def close(self) -> None:
        """Cancel a running reconstruction, end the warm worker and remove the session's files."""
        self.running.close()
        self.loading.close()
        if hasattr(self.launcher, "close"):
            self.launcher.close()
        self.transfers.close()


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
LARGE_BLOCK_BYTES = 256 << 10


def map_large_blocks() -> bool:
    """Have glibc give every block of ``LARGE_BLOCK_BYTES`` or more its own mapping, returned to the
    system as soon as it is freed (a fixed threshold: glibc otherwise raises it to the size of the
    largest block freed, up to 32 MB, and serves volumes and rendered images from its heaps, where
    what they leave behind fragments). False where there is no such call."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES))


def return_free_memory() -> bool:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``); False where there
    is no such call (macOS, Windows, musl).

    Every run replaces the result's volumes and images (hundreds of MB with the metrics' copies), and
    glibc keeps what was freed in its heaps (one per thread that allocated: the metrics and the
    file reading run in threads) for later use rather than returning it: the session's memory climbed
    over its first runs and stayed up although what it used did not grow (bench/web_memory.py).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own C library
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


class _TabSockets(LinkProtocol):
    """A wslink link protocol that only follows the session's websockets (its tab's, through the hub)."""

    def __init__(self, session: XDiffusionSession):
        super().__init__()
        self.session = session
        self.open: set[str] = set()

    def onConnect(self, request, client_id) -> None:  # noqa: N802 - wslink's name
        self.open.add(client_id)
        self.session.on_tab_connected()

    def onClose(self, client_id) -> None:  # noqa: N802 - wslink's name
        self.open.discard(client_id)
        if not self.open:
            self.session.on_tab_gone()


async def _session_manager_answer(request):
    """The launcher answer trame's client asks for: connect to this page's own ``ws`` (relative to
    the page, so it also holds behind the hub's ``/s/<token>/`` prefix)."""
    prefix = request.headers.get("X-XDiffusion-Prefix", "/")
    scheme = "wss" if request.headers.get("X-Forwarded-Proto", request.scheme) == "https" else "ws"
    return web.json_response({"sessionURL": f"{scheme}://USE_HOST{prefix}ws"})


def _stop_when_stdin_closes() -> None:
    # The raw descriptor, not sys.stdin: a daemon thread blocked in a buffered read would hold its
    # lock while the interpreter shuts down.
    try:
        while os.read(0, 1 << 12):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m XDiffusionLib.app.web.session",
                                     description="One XDiffusion web app session (started by the hub).")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--model", default=None, help="model folder")
    parser.add_argument("--max-upload-bytes", type=int, default=512 << 20)
    parser.add_argument("--allow-server-paths", action="store_true")
    parser.add_argument("--data-root", dest="data_roots", action="append", default=[],
                        help="a folder the page may open server paths in (repeatable)")
    parser.add_argument("--timeout", type=int, default=60,
                        help="stop this many seconds after the tab disconnects (0: never)")
    parser.add_argument("--watch-stdin", action="store_true", help="stop when stdin closes (the hub is gone)")
    parser.add_argument("--worker-mode", default="subprocess", choices=("subprocess", "inprocess"))
    parser.add_argument("--workdir", default=None,
                        help="the session's folder, made by the hub (which removes it however the session ends)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    # The hub's secret for this session; taken out of the environment so the worker processes
    # started from here do not inherit it.
    session_key = os.environ.pop(SESSION_KEY_ENV, None) or None
    map_large_blocks()  # before the volumes and images come
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s session %(levelname)s %(message)s")
    log.setLevel(logging.INFO)
    # A terminated session still cleans up (atexit does not run on an unhandled SIGTERM).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="xdiffusion-web-"))
    atexit.register(shutil.rmtree, workdir, True)
    # Every temporary file of this session and of its worker processes goes inside its folder, so
    # removing the folder removes all of them.
    scratch = workdir / "tmp"
    scratch.mkdir(mode=0o700, exist_ok=True)
    os.environ["TMPDIR"] = tempfile.tempdir = str(scratch)
    log.info("session files in %s", workdir)
    if args.watch_stdin:
        threading.Thread(target=_stop_when_stdin_closes, name="xdiffusion-parent-watch", daemon=True).start()
    # trame reads sys.argv for its own options: give it only what we decide here.
    sys.argv = [sys.argv[0], "--server"]
    from trame.app import get_server  # trame: not in the hub, which imports this module

    server = get_server(client_type="vue3")
    if args.allow_server_paths and not args.data_roots:  # started alone: the app's defaults
        args.data_roots = [str(root) for root in default_data_roots()]
    session = XDiffusionSession(server, model_dir=args.model, max_upload_bytes=args.max_upload_bytes,
                                allow_server_paths=args.allow_server_paths, workdir=workdir,
                                worker_mode=args.worker_mode, data_roots=tuple(args.data_roots),
                                session_key=session_key, local_only=is_loopback(args.host))
    atexit.register(session.close)

    def announce(**_):
        print(f"{READY_PREFIX} {server.port}", flush=True)

    server.controller.on_server_ready.add(announce)
    server.start(host=args.host, port=args.port, open_browser=False, show_connection_info=False,
                 timeout=args.timeout, disable_logging=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
