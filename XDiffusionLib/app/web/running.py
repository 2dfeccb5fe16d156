"""Feature: one reconstruction at a time: settings from the page, the run, its progress, cancel.

The settings' names, defaults, choices and limits are those of ``XDiffusionLib.settings`` (through
``state.SAMPLING_FIELDS``); a value past a limit is refused before anything starts, with the
limit in the message. While a run goes the settings and input slices are locked, the page shows
the elapsed time and an estimate of the time left, and the result still shown is marked stale.
The run itself is a ``SceneReconstruction`` in a worker process, warmed in advance
(``warm_worker``) so that a first run does not wait for PyTorch and the model to load.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from ...errors import XDiffusionError
from ...settings import LONG_RUN_EVALUATIONS, ReconstructionSettings, model_evaluations
from .state import RECONSTRUCT_FIELDS, SAMPLING_FIELDS

PROGRESS_PERIOD_S = 0.25
# Share of the progress bar before the sampling starts (worker.run reports 0.05 once loaded, and while
# the anchor is fitted).
_SAMPLING_START = 0.05


def clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def remaining_seconds(fraction: float, reference: tuple[float, float] | None, now: float) -> float | None:
    """Time left at the pace since ``reference`` (time, fraction), the first report of the sampling
    itself: loading does not count. None until the sampling has moved on from there."""
    if reference is None or fraction >= 1.0 or fraction <= reference[1] + 1e-3:
        return None
    return (now - reference[0]) / (fraction - reference[1]) * (1.0 - fraction)


def options_from_page(state) -> dict:
    """Sampling settings from the page's fields as numbers (one line naming a field that is not
    one), checked by the one check of sampling settings (``ReconstructionSettings.from_record``, what
    ``JobSettings.check`` runs: limits included, steps <= MAX_STEPS ...)."""
    options = {}
    for field in SAMPLING_FIELDS:
        raw = state[field.name]
        text = str(raw).strip()
        try:
            options[field.key] = int(text) if field.kind == "int" else float(text) if field.kind == "float" else text
        except ValueError:
            kind = "a whole number" if field.kind == "int" else "a number"
            raise XDiffusionError(f"{field.label} must be {kind}, got {raw!r}") from None
    ReconstructionSettings.from_record(options)
    return options


class Running:
    def __init__(self, app):
        self.app = app
        self.run = None  # SceneReconstruction of the running or last run
        self._task = None
        self._cancelling = False

    def model_dir(self) -> str | None:
        """The model folder for a run: the app's own (``--model`` or the shipped one), or with
        server paths one the page names inside the data folders (``server_paths``)."""
        app = self.app
        text = str(app.state.xd_model_dir or "").strip()
        if not app.allow_server_paths or not text:
            return app.model_dir  # without server paths the page cannot choose (whatever it sends)
        if app.model_dir and os.path.realpath(Path(text).expanduser()) == os.path.realpath(app.model_dir):
            return app.model_dir
        return str(app.data_roots.resolve_model(text))

    def reconstruct(self, fields=None, confirmed: bool = False, thick: bool = False) -> None:
        """Start a run from the picked input slices, or (``thick``) from every acquired slice of a
        thick-slice scan onto a finer grid (``thick_slices``); a long run asks the page first."""
        from trame_server.utils.asynchronous import create_task

        from ...slicer.reconstruction import AUTOMATIC, SceneReconstruction
        from ...worker.messages import JobSettings

        app = self.app
        app.take(fields, RECONSTRUCT_FIELDS)
        if app.state.xd_running:
            app.report_error("a reconstruction is already running in this tab: wait for it or cancel it")
            return
        if app.input_node is None:
            app.report_error("load a volume first")
            return
        if not thick and not app.state.xd_picks:
            app.report_error("pick at least one input slice: scroll a view to a slice and press 'Use this slice'")
            return
        try:
            options = options_from_page(app.state)
            cost = model_evaluations(options["views"], options["steps"], options["samples"], options["guidance"])
            if cost > LONG_RUN_EVALUATIONS and not confirmed:  # ask first: this run takes long
                app.push(xd_confirm_thick=bool(thick),
                         xd_confirm=(f"{cost} model evaluations per slice group (views x steps x samples"
                                     f"{' x 2 for guidance' if options['guidance'] != 1 else ''}): this run may "
                                     "take many minutes. Start it?"))
                return
            if thick:  # the plane and the slices are the plan's
                run = app.thick_slices.scene_run(JobSettings(model_dir=self.model_dir(), options=options))
            else:
                settings = JobSettings(app.state.xd_pick_plane, tuple(app.state.xd_picks), self.model_dir(), options)
                run = SceneReconstruction(app.scene, app.input_node, settings,
                                          reference_node=app.input_node if app.state.xd_compare else None,
                                          overlay=AUTOMATIC, launcher=app.launcher)
            run.start()
        except XDiffusionError as error:
            app.report_error(str(error))
            return
        self.run = run
        app.push(xd_confirm="", xd_running=True, xd_progress=0.0, xd_progress_message="starting the reconstruction process",
                 xd_elapsed=clock(0), xd_remaining="", xd_stale=bool(app.state.xd_has_result),
                 xd_error="", xd_info="", xd_worker_warm=False)
        self._task = create_task(self._follow(run))

    def reconstruct_thick(self, fields=None, confirmed: bool = False) -> None:
        """Every acquired slice of the thick-slice scan onto a finer grid (the panel's one-click offer)."""
        self.reconstruct(fields, confirmed, thick=True)

    async def _follow(self, run) -> None:
        from ...worker.launcher import CANCELLED, DONE, RUNNING

        app = self.app
        started, reference = time.monotonic(), None
        while True:
            if not self._cancelling:
                run.poll()
            now = time.monotonic()
            if reference is None and run.fraction > _SAMPLING_START:  # the first step (not the anchor's start)
                reference = (now, run.fraction)
            left = remaining_seconds(run.fraction, reference, now)
            app.push(xd_progress=round(100.0 * run.fraction, 1), xd_progress_message=run.message,
                     xd_elapsed=clock(now - started), xd_remaining="" if left is None else clock(left))
            if run.state != RUNNING:
                break
            await asyncio.sleep(PROGRESS_PERIOD_S)
        self.rewarm()
        if run is not self.run:
            return
        app.push(xd_remaining="", xd_stale=False)
        if run.state == DONE:
            app.push(xd_progress_message="adding the results")
            try:
                result = app.viewing.replace_result(run)
            except Exception as error:  # noqa: BLE001 - the page must leave the running state
                app.push(xd_running=False)
                app.report_failure(error, "showing the result")
                return
            titles = " | ".join(spec.title for spec in app.comparison.layout.views)
            app.push(xd_running=False, xd_progress=100.0, xd_progress_message="finished",
                     xd_info=f"reconstruction finished in {app.state.xd_elapsed}: {titles}")
            await app.guarded(app.viewing.compute_metrics)(run, result)
            app.release_memory()  # the replaced result and the metrics' copies
        elif run.state == CANCELLED:
            app.push(xd_running=False, xd_progress=0.0, xd_progress_message="")
            app.report_info("the reconstruction was cancelled")
        else:
            app.push(xd_running=False, xd_progress_message="failed")
            app.report_error(run.error or "the reconstruction failed")

    def rewarm(self) -> None:
        """Warm the next worker (a run took the last one); a few seconds later the page says so."""
        launcher = self.app.launcher
        if hasattr(launcher, "warm") and getattr(self.app, "tab_open", True):  # no worker for a closed tab
            launcher.warm()

    async def cancel(self) -> None:
        run = self.run
        if run is None or not self.app.state.xd_running:
            return
        self._cancelling = True
        self.app.push(xd_progress_message="cancelling")
        try:
            await asyncio.to_thread(run.cancel)
        finally:
            self._cancelling = False

    def close(self) -> None:
        if self.run is not None:
            try:
                self.run.cancel()
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
