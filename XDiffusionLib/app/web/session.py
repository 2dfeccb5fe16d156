"""One browser tab's app: a trame server with its own Slicer scene, views, state and worker.

The hub (``hub.py``) starts one of these processes per tab, so tabs never share state: trame
keeps one state per server and mirrors it to every connected client, which would otherwise let a
second tab overwrite the first one's volume, slices and results.

``python -m XDiffusionLib.app.web.session --port 0 ...`` prints ``XDIFFUSION_SESSION_PORT <port>``
on stdout once it serves. (Started alone, without the hub, it serves every tab that connects, and
they all share its one state.) Standing alone it stops ``--timeout`` seconds after its tab disconnects;
under the hub (``--timeout 0 --watch-stdin``) the hub decides when it stops, and it stops by itself
if the hub disappears (its stdin closes). On the way out a running reconstruction is cancelled
and the session's files are removed.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from ...errors import XDiffusionError
from ...settings import DEFAULTS, SAMPLERS, ReconstructionSettings

log = logging.getLogger("xdiffusion.web")

READY_PREFIX = "XDIFFUSION_SESSION_PORT"
STATIC_DIR = Path(__file__).resolve().parent / "static"
# The page's sampling fields and their defaults come from the one settings home.
DEFAULT_OPTIONS = {key: getattr(DEFAULTS, key) for key in ("views", "steps", "sampler", "guidance", "seed", "samples")}
_PROGRESS_PERIOD_S = 0.25
# Form values the page sends along with these triggers (see XDiffusionSession._take).
RECONSTRUCT_FIELDS = ("xd_model_dir", *(f"xd_{key}" for key in DEFAULT_OPTIONS), "xd_compare")
EXPORT_FIELDS = ("xd_export_what", "xd_export_format")


class XDiffusionSession:
    """Everything one tab sees and does. All Slicer and state work runs on the server's event loop;
    file reading, metrics and exports run in threads, the reconstruction in a worker process."""

    def __init__(self, server, *, model_dir: str | None, max_upload_bytes: int, allow_server_paths: bool,
                 workdir: Path, worker_mode: str = "subprocess", data_roots: tuple[str, ...] = ()):
        from trame_rca.encoders import RcaImageEncoder
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories

        from ...slicer.nodes import node_ids
        from ...worker.launcher import WorkerLauncher
        from . import ui, views
        from .comparison import Comparison
        from .server_paths import DataRoots
        from .transfer import Transfers

        self.server = server
        self.state = server.state
        self.allow_server_paths = bool(allow_server_paths)
        self.data_roots = DataRoots(data_roots if self.allow_server_paths else ())
        self.transfers = Transfers(workdir, max_upload_bytes)
        self.launcher = WorkerLauncher(worker_mode)

        server.enable_module(trame_slicer_module)
        server.enable_module({"serve": {"xdiffusion_static": str(STATIC_DIR)},
                              "scripts": ["xdiffusion_static/xdiffusion.js"]})
        server.controller.on_server_bind.add(self._bind_routes)

        self.slicer_app = SlicerApp()
        self.scene = self.slicer_app.scene
        self.view_manager = self.slicer_app.view_manager
        register_rca_factories(self.view_manager, server, slice_view_ui_f=self._populate_view,
                               rca_encoder=RcaImageEncoder.JPEG, blur_fps=10.0)
        self.layout_manager = LayoutManager(self.scene, self.view_manager, server)

        self.volume = None  # the loaded Volume (also the reference when "compare" is on)
        self.input_node = None
        self.run = None  # SceneReconstruction of the running or last run
        self._follow_task = None
        self._cancelling = False

        self._init_state(model_dir)
        self.layout_manager.register_layout(views.INPUT_LAYOUT, views.input_layout())
        self.layout_manager.register_layout(views.COMPARE_LAYOUT,
                                            views.compare_layout([v.name for v in views.COMPARE_VIEWS]))
        # Every view exists now; whatever is added later belongs to a loaded volume or a result.
        self._baseline = node_ids(self.scene)
        self.comparison = Comparison(self.scene, self.view_manager, self.layout_manager)
        for tag in views.VIEW_PLANE:
            views.on_modified(self.view_manager.get_view(tag), self._on_input_view_modified)
        for tag in [*views.VIEW_PLANE, *(spec.name for spec in views.COMPARE_VIEWS)]:
            views.on_resized(self.view_manager.get_view(tag), views.refit)

        self._register_triggers()
        self.page = ui.build_page(self)
        self.layout_manager.set_layout(views.INPUT_LAYOUT)

    # -- state -----------------------------------------------------------------------------------

    def _init_state(self, model_dir: str | None) -> None:
        from ...data.samples import samples_with_role
        from ...slicer.validation import default_model_dir

        if model_dir is None and (default_model_dir() / "config.json").is_file():
            model_dir = str(default_model_dir())
        self.model_dir = model_dir
        self.state.update({
            "trame__title": "XDiffusion",
            "xd_error": "",
            "xd_info": "",
            "xd_busy": "",
            "xd_max_upload_bytes": self.transfers.max_upload_bytes,
            "xd_max_upload_mb": round(self.transfers.max_upload_bytes / (1 << 20)),
            "xd_allow_paths": self.allow_server_paths,
            "xd_server_path": "",
            "xd_sample_choices": [{"title": f"{s.name}: {s.description}", "value": s.name}
                                  for s in samples_with_role("heldout")],
            "xd_sample": "kmeans_t1",
            "xd_volume_name": "",
            "xd_volume_info": "",
            "xd_view_index": {},
            "xd_pick_plane": "",
            "xd_picks": [],
            # Without server paths the page shows the model's name, not where it lies on the server.
            "xd_model_dir": (model_dir if self.allow_server_paths else Path(model_dir).name) if model_dir else "",
            "xd_samplers": list(SAMPLERS),
            **{f"xd_{key}": value for key, value in DEFAULT_OPTIONS.items()},
            "xd_compare": True,
            "xd_running": False,
            "xd_progress": 0.0,
            "xd_progress_message": "",
            "xd_has_result": False,
            "xd_layout": "input",
            "xd_result_plane": "axial",
            "xd_show_overlay": True,
            "xd_has_overlay": False,
            "xd_metrics": [],
            "xd_metrics_note": "",
            "xd_export_what": "reconstruction",
            "xd_export_whats": [],
            "xd_export_format": "nifti",
            "xd_export_formats": [],
            "xd_download_url": "",
            "xd_download_name": "",
        })
        from .results import EXPORT_FORMAT_TITLES

        self.state.xd_export_formats = [{"title": t, "value": k} for k, t in EXPORT_FORMAT_TITLES.items()]
        self.state.change("xd_layout")(self._on_layout_changed)
        self.state.change("xd_show_overlay")(self._on_overlay_toggled)
        self.state.change("xd_result_plane")(self._on_result_plane_changed)

    def _push(self, **changes) -> None:
        """Set state and send it to the page now (also from inside async handlers)."""
        with self.state:
            self.state.update(changes)

    def _take(self, fields, names: tuple[str, ...]) -> None:
        """Bring the form values a trigger sent along into the state first: a value typed just
        before a click may otherwise reach the server after the click."""
        if isinstance(fields, dict):
            self._push(**{name: fields[name] for name in names if name in fields})

    def report_error(self, message: str) -> None:
        log.info("error shown: %s", message)
        self._push(xd_error=str(message), xd_info="", xd_busy="")

    def report_info(self, message: str) -> None:
        self._push(xd_info=str(message), xd_error="")

    def _register_triggers(self) -> None:
        ctrl = self.server.controller
        triggers = {
            "xd_upload_started": self.on_upload_started,
            "xd_upload_failed": self.report_error,
            "xd_load_upload": self.load_upload,
            "xd_load_path": self.load_server_path,
            "xd_load_sample": self.load_sample,
            "xd_pick": self.pick,
            "xd_unpick": self.unpick,
            "xd_clear_picks": self.clear_picks,
            "xd_reconstruct": self.reconstruct,
            "xd_cancel": self.cancel,
            "xd_export": self.export,
        }
        for name, function in triggers.items():
            ctrl.trigger(name)(self._guarded(function))

    def _report_failure(self, error: Exception, what: str) -> None:
        """Show a failure in the page: our own errors as they are, anything else as an internal error."""
        if isinstance(error, XDiffusionError):
            self.report_error(str(error))
            return
        log.error("%s failed", what, exc_info=error)
        self.report_error(f"internal error in {what} ({type(error).__name__}: {error}); "
                          "the details are in the server's log")

    def _guarded(self, function):
        """``function`` reporting any failure in the page (a trigger's exception would otherwise
        only reach the server log, leaving the page waiting)."""
        if asyncio.iscoroutinefunction(function):
            async def run_async(*args, **kwargs):
                try:
                    return await function(*args, **kwargs)
                except Exception as error:  # noqa: BLE001 - shown in the page
                    self._report_failure(error, function.__name__)
            return run_async

        def run(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - shown in the page
                self._report_failure(error, function.__name__)
        return run

    def _bind_routes(self, wslink_server) -> None:
        wslink_server.app.router.add_routes(self.transfers.routes())

    # -- loading ---------------------------------------------------------------------------------

    def on_upload_started(self, name: str, size: int) -> None:
        from .transfer import megabytes

        self._push(xd_busy=f"uploading {name} ({megabytes(int(size))})", xd_error="", xd_info="")

    async def load_upload(self, token: str, name: str) -> None:
        try:
            path = self.transfers.take_upload(token)
        except XDiffusionError as error:
            self.report_error(str(error))
            return
        try:
            root = self.transfers.upload_root(path)
            target = path
            if path.name.lower().endswith(".zip"):
                target = await asyncio.to_thread(self.transfers.unpack_zip, path)
            # Self-contained: a header inside may not name a data file elsewhere on the server.
            await self._load(target, display=name, hide=str(path.parent), within=root)
        finally:
            self.transfers.discard(path)

    async def load_server_path(self, fields=None) -> None:
        self._take(fields, ("xd_server_path",))
        if not self.allow_server_paths:
            self.report_error("loading paths on the server is off for this app (it serves other computers); "
                              "upload the file instead")
            return
        text = str(self.state.xd_server_path or "").strip()
        if not text:
            self.report_error("type the path of a volume file or DICOM folder on the server first")
            return
        try:
            path, root = self.data_roots.resolve(text)
        except XDiffusionError as error:
            self.report_error(str(error))
            return
        await self._load(path, display=text, within=root)

    async def load_sample(self, fields=None) -> None:
        from ...data.samples import sample_path

        self._take(fields, ("xd_sample",))
        name = str(self.state.xd_sample or "")
        try:
            path = sample_path(name)
        except XDiffusionError as error:
            self.report_error(str(error))
            return
        await self._load(path, display=f"sample {name}")

    async def _load(self, path: Path, display: str, hide: str | None = None, within: Path | None = None) -> None:
        from ...evaluation.protocol import label_value_count
        from ...io import read_volume
        from ...io.readers import MultiVolumeError, volume_suffix

        if self.state.xd_running:
            self.report_error("a reconstruction is running: cancel it or wait before loading another volume")
            return
        self._push(xd_busy=f"reading {Path(display).name}", xd_error="", xd_info="")
        try:
            volume = await asyncio.to_thread(read_volume, path, within=within)
            labels = label_value_count(volume.array)  # the rule of `xdiffusion evaluate` and `reconstruct`
            if labels is not None:
                raise XDiffusionError(f"{path} is a label map ({labels} distinct values), not an MRI intensity volume")
        except XDiffusionError as error:
            if isinstance(error, MultiVolumeError):
                error = error.without_option()  # the page has no --volume to choose with
            message = str(error)
            if hide:  # the page knows the file by its own name, not by the server's temporary folder
                message = message.replace(hide + os.sep, "").replace(hide, "")
            self.report_error(message)
            return
        except Exception as error:  # noqa: BLE001 - any failure to read is the user's file, not a crash
            self.report_error(f"{Path(display).name}: cannot read it ({type(error).__name__}: {error})")
            return
        name = path.name
        suffix = volume_suffix(name)
        if suffix:
            name = name[: -len(suffix)]
        self.set_volume(volume, name or "volume")
        self._push(xd_busy="", xd_info=f"loaded {display}")

    def set_volume(self, volume, name: str) -> None:
        """Show ``volume`` in the input views; everything of the previous volume is removed."""
        from ...slicer.nodes import add_volume_node

        self._clear_scene()
        self.volume = volume
        self.input_node = add_volume_node(self.scene, volume, name)
        for tag in ("Red", "Green", "Yellow"):
            view = self.view_manager.get_view(tag)
            view.set_background_volume_id(self.input_node.GetID())
            view.set_foreground_volume_id(None)
            view.fit_view_to_content()
        shape = "x".join(str(s) for s in volume.shape)
        spacing = " x ".join(f"{s:g}" for s in volume.spacing)
        self._push(xd_volume_name=name, xd_volume_info=f"{shape} voxels, {spacing} mm",
                   xd_picks=[], xd_pick_plane="", xd_layout="input")
        for tag in ("Red", "Green", "Yellow"):
            self._on_input_view_modified(self.view_manager.get_view(tag))

    def _clear_scene(self) -> None:
        from ...slicer.nodes import remove_nodes_added_since

        for tag in ("Red", "Green", "Yellow"):
            self.view_manager.get_view(tag).set_background_volume_id(None)
        self._remove_result()
        remove_nodes_added_since(self.scene, self._baseline)
        self.volume = self.input_node = None

    # -- input slices ----------------------------------------------------------------------------

    def _current_index(self, tag: str) -> int:
        from ...slicer.nodes import grid_from_node
        from ...slicer.slices import slice_index_from_view
        from .views import VIEW_PLANE

        view = self.view_manager.get_view(tag)
        matrix = view.get_view_node().GetSliceToRAS()
        slice_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        return slice_index_from_view(grid_from_node(self.input_node), VIEW_PLANE[tag], slice_to_ras)

    def _on_input_view_modified(self, view) -> None:
        tag = view.get_singleton_tag()
        if self.input_node is None:
            value = None
        else:
            try:
                value = self._current_index(tag)
            except XDiffusionError:
                value = None
        if self.state.xd_view_index.get(tag) != value:
            self._push(xd_view_index={**self.state.xd_view_index, tag: value})

    def _slice_values(self, plane: str, index: int) -> np.ndarray:
        """The voxels of canonical ``plane`` slice ``index`` of the loaded volume."""
        from ...methods import plane_axis
        from ...transforms.orientation import Reorientation

        axis, original = Reorientation.for_grid(self.volume.grid).original_index(plane_axis(plane), index)
        return np.take(np.asarray(self.volume.array), original, axis=axis)

    def pick(self, tag: str) -> None:
        """Add the slice that view ``tag`` shows to the input slices."""
        from .views import VIEW_PLANE

        if self.input_node is None:
            self.report_error("load a volume first, then pick its slices")
            return
        plane = VIEW_PLANE.get(tag)
        if plane is None:
            self.report_error(f"view {tag!r} is not an input view")
            return
        picks, current = list(self.state.xd_picks), self.state.xd_pick_plane
        if picks and current != plane:
            self.report_error(f"the input slices so far are {current}: one reconstruction uses one plane; "
                              f"remove them to pick {plane} slices")
            return
        try:
            index = self._current_index(tag)
        except XDiffusionError as error:
            self.report_error(str(error))
            return
        values = self._slice_values(plane, index)
        if values.size and float(values.max()) == float(values.min()):
            self.report_error(f"{plane} slice {index} is empty (every voxel is {float(values.min()):g}): "
                              "pick a slice through the head")
            return
        if index in picks:
            self.report_info(f"{plane} slice {index} is already an input slice")
            return
        self._push(xd_picks=sorted(picks + [index]), xd_pick_plane=plane, xd_error="",
                   xd_info=f"added {plane} slice {index}")

    def unpick(self, index: int) -> None:
        picks = [i for i in self.state.xd_picks if i != int(index)]
        self._push(xd_picks=picks, xd_pick_plane=self.state.xd_pick_plane if picks else "")

    def clear_picks(self) -> None:
        self._push(xd_picks=[], xd_pick_plane="")

    # -- reconstruction --------------------------------------------------------------------------

    def _options(self) -> dict:
        """Sampling settings from the page, as numbers (one clear error for a bad field)."""
        options = {}
        for key in ("views", "steps", "samples", "seed"):
            raw = self.state[f"xd_{key}"]
            try:
                value = int(str(raw).strip())
            except ValueError:
                raise XDiffusionError(f"{key} must be a whole number, got {raw!r}") from None
            if key != "seed" and value < 1:
                raise XDiffusionError(f"{key} must be at least 1, got {value}")
            options[key] = value
        try:
            options["guidance"] = float(str(self.state.xd_guidance).strip())
        except ValueError:
            raise XDiffusionError(f"guidance must be a number, got {self.state.xd_guidance!r}") from None
        if not np.isfinite(options["guidance"]) or options["guidance"] < 0:
            raise XDiffusionError(f"guidance must be a number >= 0, got {options['guidance']}")
        sampler = str(self.state.xd_sampler)
        if sampler not in SAMPLERS:
            raise XDiffusionError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
        options["sampler"] = sampler
        ReconstructionSettings.from_options(options)  # the shared checks, limits included (steps <= 1000 ...)
        return options

    def reconstruct(self, fields=None) -> None:
        from ...slicer.reconstruction import AUTOMATIC, SceneReconstruction
        from ...worker.protocol import JobSettings
        from trame_server.utils.asynchronous import create_task

        self._take(fields, RECONSTRUCT_FIELDS)
        if self.state.xd_running:
            self.report_error("a reconstruction is already running in this tab: wait for it or cancel it")
            return
        if self.input_node is None:
            self.report_error("load a volume first")
            return
        if not self.state.xd_picks:
            self.report_error("pick at least one input slice: scroll a view to a slice and press 'Use this slice'")
            return
        try:
            model_dir = self._model_dir()
            settings = JobSettings(self.state.xd_pick_plane, tuple(self.state.xd_picks), model_dir, self._options())
            run = SceneReconstruction(self.scene, self.input_node, settings,
                                      reference_node=self.input_node if self.state.xd_compare else None,
                                      overlay=AUTOMATIC, launcher=self.launcher)
            run.start()
        except XDiffusionError as error:
            self.report_error(str(error))
            return
        self.run = run
        self._push(xd_running=True, xd_progress=0.0, xd_progress_message="starting the reconstruction process",
                   xd_error="", xd_info="", xd_download_url="")
        self._follow_task = create_task(self._follow(run))

    def _model_dir(self) -> str | None:
        """The model folder for a run: the app's own (``--model`` or the shipped one), or with
        server paths one the page names inside the data folders (``server_paths``)."""
        text = str(self.state.xd_model_dir or "").strip()
        if not self.allow_server_paths or not text:
            return self.model_dir  # without server paths the page cannot choose (whatever it sends)
        if self.model_dir and os.path.realpath(Path(text).expanduser()) == os.path.realpath(self.model_dir):
            return self.model_dir
        return str(self.data_roots.resolve_model(text))

    async def _follow(self, run) -> None:
        from ...worker.launcher import CANCELLED, DONE, RUNNING

        while True:
            if not self._cancelling:
                run.poll()
            self._push(xd_progress=round(100.0 * run.fraction, 1), xd_progress_message=run.message)
            if run.state != RUNNING:
                break
            await asyncio.sleep(_PROGRESS_PERIOD_S)
        if run is not self.run:
            return
        if run.state == DONE:
            self._push(xd_progress_message="adding the results")
            try:
                previous = self.comparison.result
                result = run.finish()
                self._remove_result(previous)
                self.show_result(run, result)
            except Exception as error:  # noqa: BLE001 - the page must leave the running state
                self._push(xd_running=False)
                self._report_failure(error, "showing the result")
                return
            titles = " | ".join(spec.title for spec in self.comparison.layout.views)
            self._push(xd_running=False, xd_progress=100.0, xd_progress_message="finished",
                       xd_info=f"reconstruction finished: {titles}")
            await self._guarded(self.compute_metrics)(run, result)
        elif run.state == CANCELLED:
            self._push(xd_running=False, xd_progress=0.0, xd_progress_message="")
            self.report_info("the reconstruction was cancelled")
        else:
            self._push(xd_running=False, xd_progress_message="failed")
            self.report_error(run.error or "the reconstruction failed")

    async def cancel(self) -> None:
        run = self.run
        if run is None or not self.state.xd_running:
            return
        self._cancelling = True
        self._push(xd_progress_message="cancelling")
        try:
            await asyncio.to_thread(run.cancel)
        finally:
            self._cancelling = False

    # -- results ---------------------------------------------------------------------------------

    def show_result(self, run, result) -> None:
        from ...slicer.nodes import grid_from_node

        plane = run.settings.plane
        self.comparison.show(result, plane, run.settings.indices, grid_from_node(self.input_node))
        self.comparison.set_overlay_visible(self.state.xd_show_overlay)
        whats = [{"title": "reconstruction", "value": "reconstruction"}]
        if result.uncertainty is not None:
            whats.append({"title": "uncertainty", "value": "uncertainty"})
        if result.difference is not None:
            whats.append({"title": "difference (real - generated)", "value": "difference"})
        self._push(xd_has_result=True, xd_has_overlay=self.comparison.has_overlay, xd_export_whats=whats,
                   xd_export_what="reconstruction", xd_metrics=[], xd_layout="compare", xd_result_plane=plane)

    async def compute_metrics(self, run, result) -> None:
        """Fill the metrics table (in a thread: SSIM over every slice of a large volume takes a while)."""
        from ...slicer.nodes import volume_from_node
        from .results import compute_metrics

        plane = run.settings.plane
        if result.difference is None:
            self._push(xd_metrics_note="no reference: the loaded volume was not used as ground truth")
            return
        self._push(xd_metrics_note="computing metrics")
        reconstruction = volume_from_node(result.reconstruction)
        try:
            rows = await asyncio.to_thread(compute_metrics, self.volume, reconstruction, plane, run.settings.indices)
        except XDiffusionError as error:
            self._push(xd_metrics_note=f"metrics not available: {error}")
            return
        if self.comparison.result is result:
            self._push(xd_metrics=[row.to_dict() for row in rows],
                       xd_metrics_note="against the loaded volume as the reference")

    def _remove_result(self, result=None) -> None:
        """Remove a result's nodes (default: the one shown); back to the input views if it was shown."""
        shown = result is None or result is self.comparison.result
        self.comparison.remove(result)
        if shown:
            self._push(xd_has_result=False, xd_has_overlay=False, xd_metrics=[], xd_metrics_note="",
                       xd_layout="input", xd_download_url="")

    def _on_layout_changed(self, xd_layout, **_) -> None:
        from . import views

        if xd_layout == "compare" and not self.comparison.shown:
            self._push(xd_layout="input")
            return
        self.layout_manager.set_layout(views.COMPARE_LAYOUT if xd_layout == "compare" else views.INPUT_LAYOUT)

    def _on_overlay_toggled(self, xd_show_overlay, **_) -> None:
        self.comparison.set_overlay_visible(bool(xd_show_overlay))

    def _on_result_plane_changed(self, xd_result_plane, **_) -> None:
        from ...slicer.nodes import grid_from_node

        if self.comparison.shown and self.input_node is not None:
            self.comparison.set_plane(xd_result_plane, grid_from_node(self.input_node))

    async def export(self, fields=None) -> None:
        from ...slicer.nodes import output_name, volume_from_node
        from .results import export_result

        self._take(fields, EXPORT_FIELDS)
        result = self.comparison.result
        if result is None or self.run is None:
            self.report_error("nothing to export yet: reconstruct first")
            return
        what, fmt = str(self.state.xd_export_what), str(self.state.xd_export_format)
        node = {"reconstruction": result.reconstruction, "uncertainty": result.uncertainty,
                "difference": result.difference}.get(what)
        if node is None:
            self.report_error(f"there is no {what} to export")
            return
        if fmt == "dicom" and what != "reconstruction":
            self.report_error("DICOM export is for the reconstruction (a pseudo-MRI series); "
                              f"export the {what} as NIfTI or NRRD")
            return
        volume = volume_from_node(node)
        stem = output_name(self.input_node.GetName() if self.input_node is not None else "volume", what)
        from .transfer import safe_filename

        stem = safe_filename(stem.replace(" ", "_"))
        provenance = None
        if what == "reconstruction":
            from dataclasses import replace

            from ...slicer.validation import default_model_dir

            # The folder itself, so the DICOM names the model by its name and weights checksum.
            used = self.run.settings.model_dir or (str(default_model_dir()) if default_model_dir().is_dir() else None)
            provenance = replace(self.run.provenance(), model=used) if used else self.run.provenance()
        folder = self.transfers.new_download_folder()
        self._push(xd_busy=f"exporting the {what}", xd_download_url="")
        try:
            path = await asyncio.to_thread(export_result, volume, fmt, folder, stem, provenance)
        except XDiffusionError as error:
            self.report_error(str(error))
            return
        url = self.transfers.add_download(path, path.name)
        self._push(xd_busy="", xd_download_url=url, xd_download_name=path.name,
                   xd_info=f"{path.name} is ready: download it with the link below the export button")

    # -- views -----------------------------------------------------------------------------------

    def _populate_view(self, server, view_id, view) -> None:
        from . import ui

        ui.view_overlay(self, view_id, view)

    def close(self) -> None:
        """Cancel a running reconstruction and remove the session's files."""
        if self.run is not None:
            try:
                self.run.cancel()
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        self.transfers.close()


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s session %(levelname)s %(message)s")
    log.setLevel(logging.INFO)
    # A terminated session still cleans up (atexit does not run on an unhandled SIGTERM).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    workdir = Path(tempfile.mkdtemp(prefix="xdiffusion-web-"))
    atexit.register(shutil.rmtree, workdir, True)
    log.info("session files in %s", workdir)
    if args.watch_stdin:
        threading.Thread(target=_stop_when_stdin_closes, name="xdiffusion-parent-watch", daemon=True).start()
    # trame reads sys.argv for its own options: give it only what we decide here.
    sys.argv = [sys.argv[0], "--server"]
    from trame.app import get_server

    server = get_server(client_type="vue3")
    if args.allow_server_paths and not args.data_roots:  # started alone: the app's defaults
        from ..commands.app import data_roots

        args.data_roots = [str(root) for root in data_roots(None)]
    session = XDiffusionSession(server, model_dir=args.model, max_upload_bytes=args.max_upload_bytes,
                                allow_server_paths=args.allow_server_paths, workdir=workdir,
                                worker_mode=args.worker_mode, data_roots=tuple(args.data_roots))
    atexit.register(session.close)

    def announce(**_):
        print(f"{READY_PREFIX} {server.port}", flush=True)

    server.controller.on_server_ready.add(announce)
    server.start(host=args.host, port=args.port, open_browser=False, show_connection_info=False,
                 timeout=args.timeout, disable_logging=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
