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
import time

from trame_server.utils.asynchronous import create_task
from trame_server.utils.typed_state import TypedState

from ...errors import XDiffusionError
from ...settings import LONG_RUN_EVALUATIONS, ReconstructionSettings, model_evaluations
from ...slicer.reconstruction import AUTOMATIC, SceneReconstruction
from ...worker.launcher import CANCELLED, DONE, RUNNING
from ...worker.messages import JobSettings
from .signals import Signal
from .state import SAMPLING_FIELDS, SamplingState, reconstruct_fields, take_form

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


def options_from_page(sampling: SamplingState) -> dict:
    """Sampling settings from the page's fields as numbers (one line naming a field that is not
    one), checked by the one check of sampling settings (``ReconstructionSettings.from_record``, what
    ``JobSettings.check`` runs: limits included, steps <= MAX_STEPS ...)."""
    options = {}
    for field in SAMPLING_FIELDS:
        raw = getattr(sampling, field.key)
        text = str(raw).strip()
        try:
            options[field.key] = int(text) if field.kind == "int" else float(text) if field.kind == "float" else text
        except ValueError:
            kind = "a whole number" if field.kind == "int" else "a number"
            raise XDiffusionError(f"{field.label} must be {kind}, got {raw!r}") from None
    ReconstructionSettings.from_record(options)
    return options


class Running:
    """One run at a time. Its result goes to ``show_result(run)`` (which returns it) and
    ``measure_result(run, result)``; a thick-slice run is made by ``thick_run(settings)``.
    ``worker_done(run)``: the run's worker process has ended (the next one may be warmed);
    ``result_ready(run)``: its result is shown and measured."""

    def __init__(self, page, reports, workspace, models, launcher, *, show_result, measure_result, thick_run):
        self.state, self.page, self.names = page.state, page.data, page.name
        self.mine = page.data.running
        self.reports, self.workspace, self.models, self.launcher = reports, workspace, models, launcher
        self._show_result, self._measure_result, self._thick_run = show_result, measure_result, thick_run
        self.worker_done = Signal()
        self.result_ready = Signal()
        self.run = None  # SceneReconstruction of the running or last run
        self._task = None
        self._cancelling = False

    def model_dir(self) -> str | None:
        """The model folder for a run (``server_paths.ModelFolders``)."""
        return self.models.for_run(self.page.settings.model_dir)

    def _send(self, messages: dict | None = None, **changes) -> None:
        """Set fields of the run's section (and ``messages``: of the status lines) and send them to
        the page now, together."""
        with self.state:
            for section, values in ((self.mine, changes), (self.page.messages, messages or {})):
                for key, value in values.items():
                    if not hasattr(type(section), key):  # a field of the typed state, not a new attribute
                        raise AttributeError(f"{type(section).__name__} has no field {key!r}")
                    setattr(section, key, value)

    def reconstruct(self, fields=None, confirmed: bool = False, thick: bool = False) -> None:
        """Start a run from the picked input slices, or (``thick``) from every acquired slice of a
        thick-slice scan onto a finer grid (``thick_slices``); a long run asks the page first."""
        page, reports, workspace = self.page, self.reports, self.workspace
        take_form(self.state, fields, reconstruct_fields(self.names))
        if self.mine.running:
            reports.error("a reconstruction is already running in this tab: wait for it or cancel it")
            return
        if workspace.input_node is None:
            reports.error("load a volume first")
            return
        if not thick and not page.picking.picks:
            reports.error("pick at least one input slice: scroll a view to a slice and press 'Use this slice'")
            return
        try:
            options = options_from_page(TypedState.as_dataclass(page.sampling))
            cost = model_evaluations(options["views"], options["steps"], options["samples"], options["guidance"])
            if cost > LONG_RUN_EVALUATIONS and not confirmed:  # ask first: this run takes long
                self._send(confirm_thick=bool(thick),
                           confirm=(f"{cost} model evaluations per slice group (views x steps x samples"
                                    f"{' x 2 for guidance' if options['guidance'] != 1 else ''}): this run may "
                                    "take many minutes. Start it?"))
                return
            if thick:  # the plane and the slices are the plan's
                run = self._thick_run(JobSettings(model_dir=self.model_dir(), options=options))
            else:
                settings = JobSettings(page.picking.pick_plane, tuple(page.picking.picks), self.model_dir(), options)
                input_node = workspace.input_node
                run = SceneReconstruction(workspace.scene, input_node, settings,
                                          reference_node=input_node if page.settings.compare else None,
                                          overlay=AUTOMATIC, launcher=self.launcher)
            run.start()
        except XDiffusionError as error:
            reports.error(str(error))
            return
        self.run = run
        self._send(confirm="", running=True, progress=0.0, progress_message="starting the reconstruction process",
                   elapsed=clock(0), remaining="", stale=bool(page.viewing.has_result), worker_warm=False,
                   messages={"error": "", "info": ""})
        self._task = create_task(self._follow(run))

    def reconstruct_thick(self, fields=None, confirmed: bool = False) -> None:
        """Every acquired slice of the thick-slice scan onto a finer grid (the panel's one-click offer)."""
        self.reconstruct(fields, confirmed, thick=True)

    async def _follow(self, run) -> None:
        reports = self.reports
        started, reference = time.monotonic(), None
        while True:
            if not self._cancelling:
                run.poll()
            now = time.monotonic()
            if reference is None and run.fraction > _SAMPLING_START:  # the first step (not the anchor's start)
                reference = (now, run.fraction)
            left = remaining_seconds(run.fraction, reference, now)
            self._send(progress=round(100.0 * run.fraction, 1), progress_message=run.message,
                       elapsed=clock(now - started), remaining="" if left is None else clock(left))
            if run.state != RUNNING:
                break
            await asyncio.sleep(PROGRESS_PERIOD_S)
        self.worker_done.emit(run)
        if run is not self.run:
            return
        self._send(remaining="", stale=False)
        if run.state == DONE:
            self._send(progress_message="adding the results")
            try:
                result = self._show_result(run)
            except Exception as error:  # noqa: BLE001 - the page must leave the running state
                self._send(running=False)
                reports.failure(error, "showing the result")
                return
            titles = " | ".join(spec.title for spec in self.workspace.comparison.layout.views)
            # A thick-slice run says how much of its result the model generated (the library's line).
            share = f"; {result.share.label()}" if result.share is not None else ""
            self._send(running=False, progress=100.0, progress_message="finished",
                       messages={"info": f"reconstruction finished in {self.mine.elapsed}: {titles}{share}"})
            await reports.guarded(self._measure_result)(run, result)
            self.result_ready.emit(run)  # the replaced result and the metrics' copies can go
        elif run.state == CANCELLED:
            self._send(running=False, progress=0.0, progress_message="")
            reports.info("the reconstruction was cancelled")
        else:
            self._send(running=False, progress_message="failed")
            reports.error(run.error or "the reconstruction failed")

    def show_worker_warm(self, warm: bool) -> None:
        """Whether a worker waits with the model loaded (the page says "model loaded, ready")."""
        if bool(warm) != bool(self.mine.worker_warm) and not self.mine.running:
            self._send(worker_warm=bool(warm))

    async def cancel(self) -> None:
        run = self.run
        if run is None or not self.mine.running:
            return
        self._cancelling = True
        self._send(progress_message="cancelling")
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
