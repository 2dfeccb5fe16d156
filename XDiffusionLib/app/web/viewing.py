"""Feature: looking at the volume and the result the way Slicer does.

- Layouts: the input views, or the comparison (``comparison.Comparison``) in a plane.
- Slicer's mouse gestures in every view: left-drag window/level (horizontal: window, vertical:
  level), right-drag zoom and middle-drag pan (Slicer's own interactor style), and a reset. The
  real and the generated view share one grey scale: a window/level change in one shows in both.
- Jumping to the previous / next input slice in the comparison.
- Colour bars for the difference (intensity units of the volume) and the uncertainty (the label
  the run recorded on its node: its level, and calibrated on this scan or on synthetic data only),
  read from the display nodes' colour tables and windows.
- The result's metrics (``results.compute_metrics``: the evaluation protocol's scores).

The labels of each view (index, position, badge) are ``picking``'s, the export choices
``exporting``'s: they follow ``comparison_moved``, ``result_shown`` and ``result_removed``.
"""

from __future__ import annotations

import asyncio

from vtkmodules.vtkCommonCore import vtkCommand

from ...errors import XDiffusionError
from ...maps import DIFFERENCE_UNITS
from ...slicer.display import show_difference, show_like, show_uncertainty, uncertainty_info_of
from ...slicer.nodes import add_volume_node, grid_from_node, volume_from_node
from ...transforms.thick_slices import as_acquired
from . import views
from .results import compute_metrics, reasons_shown, slab_metrics
from .signals import Signal
from .thick_slices import ACQUIRED_TITLE

_COLORBAR_STOPS = 17  # every quarter of the window, where the colour anchors sit


def _display_of(view):
    """The display node of the volume in the view's background, or None."""
    node_id = view.get_background_volume_id()
    node = view.get_view_node().GetScene().GetNodeByID(node_id) if node_id else None
    return node.GetDisplayNode() if node is not None else None


class WindowLevelDrag:
    """Left-drag window/level on one slice view (Slicer's gesture): dragging right widens the
    window, dragging up lowers the level (brighter), both by the volume's range per view size."""

    def __init__(self, view, on_change):
        self.view = view
        self.on_change = on_change
        self._start = None
        interactor = view.interactor()
        interactor.AddObserver(vtkCommand.LeftButtonPressEvent, self._press, 1.0)
        interactor.AddObserver(vtkCommand.MouseMoveEvent, self._move, 1.0)
        interactor.AddObserver(vtkCommand.LeftButtonReleaseEvent, self._release, 1.0)

    def _press(self, interactor, _event) -> None:
        display = _display_of(self.view)
        if display is None:
            return
        node = self.view.get_view_node().GetScene().GetNodeByID(self.view.get_background_volume_id())
        image = node.GetImageData() if node is not None else None
        low, high = image.GetScalarRange() if image is not None else (0.0, 1.0)
        self._start = (interactor.GetEventPosition(), display.GetWindow(), display.GetLevel(),
                       max(high - low, 1e-6))

    def _move(self, interactor, _event) -> None:
        if self._start is None:
            return
        (x0, y0), window, level, span = self._start
        x, y = interactor.GetEventPosition()
        width, height = self.view.render_window().GetSize()
        new_window = max(window + (x - x0) * span / max(width, 1), span * 1e-3)
        new_level = level - (y - y0) * span / max(height, 1)
        self.on_change(self.view, new_window, new_level)

    def _release(self, _interactor, _event) -> None:
        self._start = None


class Viewing:
    """The layouts, gestures, colour bars and the result. ``result_shown(run, result)``: a run's
    result is in the comparison; ``result_removed`` (no arguments): the result shown is gone;
    ``comparison_moved`` (no arguments): the comparison views show other slices (a result, a plane)."""

    def __init__(self, page, reports, workspace):
        self.state, self.page = page.state, page.data
        self.mine = page.data.viewing
        self.reports, self.workspace = reports, workspace
        self.result_shown = Signal()
        self.result_removed = Signal()
        self.comparison_moved = Signal()
        viewing = page.get_sub_state(page.name.viewing)
        viewing.bind_changes({viewing.name.layout: self._on_layout_changed,
                              viewing.name.show_overlay: self._on_overlay_toggled,
                              viewing.name.result_plane: self._on_result_plane_changed})
        self._drags = []
        self._uncertainty_label = ""

    def connect_views(self) -> None:
        """Gestures and fits on every view (called once the views exist)."""
        for tag in [*views.VIEW_PLANE, *(spec.name for spec in views.COMPARE_VIEWS)]:
            view = self.workspace.view(tag)
            views.on_resized(view, self._refit)
            self._drags.append(WindowLevelDrag(view, self.set_window_level))

    def _grid(self):
        return grid_from_node(self.workspace.input_node)

    def _refit(self, view) -> None:
        """A view got a new size: fit its content again (a view is first fitted before the page
        has shown it at its real size)."""
        comparison = self.workspace.comparison
        if self.workspace.input_node is None:
            return
        if view in comparison.views():
            comparison.fit()  # one field of view for all comparison views
        else:
            views.fit(view, self._grid())

    def on_volume_loaded(self, _volume, _thickness=None) -> None:
        """A new volume: its input views."""
        with self.state:
            self.mine.layout = "input"

    # -- window/level, reset -------------------------------------------------------------------

    def set_window_level(self, view, window: float, level: float) -> None:
        display = _display_of(view)
        if display is None:
            return
        targets = [display]
        # real (or acquired) and generated: one grey scale
        workspace = self.workspace
        nodes = [n for n in [workspace.input_node, *workspace.comparison.grey_nodes()] if n is not None]
        if display in [n.GetDisplayNode() for n in nodes]:
            targets = [n.GetDisplayNode() for n in nodes if n.GetDisplayNode() is not None]
        for target in targets:
            target.AutoWindowLevelOff()
            target.SetWindowLevel(window, level)
        self.update_colorbars()

    def reset_views(self) -> None:
        """Back to the first look: fitted views, automatic window/level, the result's own colours."""
        workspace = self.workspace
        input_node, comparison = workspace.input_node, workspace.comparison
        if input_node is None:
            return
        input_display = input_node.GetDisplayNode()
        if input_display is not None:
            input_display.AutoWindowLevelOn()
        result = comparison.result
        if result is not None:
            for node in comparison.grey_nodes():
                if node is not input_node:
                    show_like(node, input_node)
            # The run's own meaning (recorded on the node) and no Slicer legend: the page draws the bars.
            if result.difference is not None:
                show_difference(result.difference, workspace.scene, legend=False)
            if result.uncertainty is not None:
                show_uncertainty(result.uncertainty, workspace.scene, legend=False)
        for tag in views.VIEW_PLANE:
            views.fit(workspace.view(tag), self._grid())
        if comparison.shown:
            comparison.fit()
        self.update_colorbars()

    # -- colour bars ---------------------------------------------------------------------------

    def update_colorbars(self) -> None:
        comparison = self.workspace.comparison
        result = comparison.result
        bars = {}
        if result is not None:
            for spec in comparison.layout.views:
                label = {"difference": DIFFERENCE_UNITS, "uncertainty": self._uncertainty_label}.get(spec.role)
                node = self.workspace.scene.GetNodeByID(spec.background) if spec.background else None
                if label is None or node is None or node.GetDisplayNode() is None:
                    continue
                bars[spec.name] = colorbar(node.GetDisplayNode(), label)
        if bars != self.mine.colorbars:
            with self.state:
                self.mine.colorbars = bars

    # -- result --------------------------------------------------------------------------------

    def replace_result(self, run):
        """Add ``run``'s result nodes, remove the previous result's, and show the comparison."""
        previous = self.workspace.comparison.result
        result = run.finish()
        self.remove_result(previous)
        self.show_result(run, result)
        return result

    def show_result(self, run, result) -> None:
        comparison = self.workspace.comparison
        plane = run.settings.plane
        self._uncertainty_label = uncertainty_label(result.uncertainty)
        acquired, title = self._acquired_on_result_grid(run, result)
        comparison.show(result, plane, run.settings.indices, acquired, title)
        with self.state:
            mine = self.mine
            mine.has_result, mine.has_overlay = True, comparison.has_overlay
            mine.metrics, mine.metrics_note, mine.result_note = [], "", ""
            mine.layout, mine.result_plane, mine.show_overlay = "compare", plane, False
            mine.view_titles, mine.overlay_legend = comparison.titles, comparison.overlay_legend()
            mine.input_slices = list(comparison.plane_indices)
        self.result_shown.emit(run, result)
        self.update_colorbars()
        self.comparison_moved.emit()

    def _acquired_on_result_grid(self, run, result):
        """A thick-slice run: the acquired slices as acquired on the result's finer grid (a node shown
        like the input) and the real view's title for it; otherwise (None, "")."""
        workspace, plan = self.workspace, getattr(run, "plan", None)
        if plan is None or workspace.volume is None:
            return None, ""
        input_node = workspace.input_node
        node = add_volume_node(workspace.scene, as_acquired(workspace.volume, plan), f"{input_node.GetName()} as acquired",
                               like=input_node)
        show_like(node, input_node)
        return node, ACQUIRED_TITLE.format(spacing=plan.slice_spacing)

    async def compute_metrics(self, run, result) -> None:
        """Fill the metrics table (in a thread: SSIM over every slice of a large volume takes a while)."""
        mine = self.mine
        plan = getattr(run, "plan", None)
        if result.difference is None and plan is None:
            with self.state:
                mine.metrics_note = "no reference: the loaded volume was not used as ground truth"
            return
        with self.state:
            mine.metrics_note = "computing metrics"
        reconstruction = volume_from_node(result.reconstruction)
        volume = self.workspace.volume
        try:
            if plan is not None:  # nothing was measured between thick slices: the slabs are what can be checked
                rows = await asyncio.to_thread(slab_metrics, volume, reconstruction, plan)
                note = (f"no difference map, PSNR or SSIM: nothing was measured between the {plan.acquired} "
                        f"acquired slices, {plan.slice_spacing:g} mm apart; the result averaged over each "
                        f"{plan.thickness:g} mm slab gives back that slice. The uncertainty was calibrated "
                        "with thin input slices: between thick ones it is a guide")
            else:
                rows = await asyncio.to_thread(compute_metrics, volume, reconstruction, run.settings.plane,
                                               run.settings.indices)
                note = "against the loaded volume as the reference (the evaluation protocol's scores)"
        except XDiffusionError as error:
            with self.state:
                mine.metrics_note = f"metrics not available: {error}"
            return
        if self.workspace.comparison.result is result:
            shown = [row.to_dict() for row in rows]
            # In words beside the table: why a view or score is missing, why a score reads inf or n/a.
            short = ("no difference map or PSNR/SSIM: no truth between the acquired slices" if plan
                     else reasons_shown(shown))
            if plan is not None and result.share is not None:  # first: what the result is made of
                short = f"{result.share.label()}; {short}"
            with self.state:
                mine.metrics, mine.metrics_note, mine.result_note = shown, note, short

    def remove_result(self, result=None) -> None:
        """Remove a result's nodes (default: the one shown); back to the input views if it was shown."""
        comparison = self.workspace.comparison
        shown = result is None or result is comparison.result
        comparison.remove(result)
        if shown:
            with self.state:
                mine = self.mine
                mine.has_result, mine.has_overlay = False, False
                mine.metrics, mine.metrics_note, mine.result_note = [], "", ""
                mine.layout, mine.colorbars, mine.input_slices, mine.view_titles = "input", {}, [], {}
            self.result_removed.emit()

    # -- navigation ----------------------------------------------------------------------------

    def previous_input_slice(self) -> None:
        self._step_input_slice(-1)

    def next_input_slice(self) -> None:
        self._step_input_slice(+1)

    def _step_input_slice(self, direction: int) -> None:
        """Show the previous (-1) or next (+1) input slice in the comparison."""
        comparison = self.workspace.comparison
        inputs = comparison.plane_indices
        if not inputs or not comparison.views():
            self.reports.info("the comparison shows another plane than the input slices': switch to "
                              f"{comparison.result.layout.plane if comparison.result else 'their plane'} first")
            return
        current = comparison.current_index()
        later = [i for i in inputs if i > current]
        earlier = [i for i in inputs if i < current]
        if direction > 0:
            target = later[0] if later else inputs[0]
        else:
            target = earlier[-1] if earlier else inputs[-1]
        comparison.go_to_slice(target)

    # -- state changes -------------------------------------------------------------------------

    def _on_layout_changed(self, layout: str) -> None:
        workspace = self.workspace
        if layout == "compare" and not workspace.comparison.shown:
            with self.state:
                self.mine.layout = "input"
            return
        workspace.layout_manager.set_layout(views.COMPARE_LAYOUT if layout == "compare" else views.INPUT_LAYOUT)

    def _on_overlay_toggled(self, show_overlay: bool) -> None:
        self.workspace.comparison.set_overlay_visible(bool(show_overlay))

    def _on_result_plane_changed(self, result_plane: str) -> None:
        workspace = self.workspace
        if workspace.comparison.shown and workspace.input_node is not None:
            workspace.comparison.set_plane(result_plane)
            with self.state:
                self.mine.input_slices = list(workspace.comparison.plane_indices)
            self.comparison_moved.emit()


def uncertainty_label(node) -> str:
    """What a run's uncertainty node means, with its units: as the run recorded it on the node
    (``slicer.display.uncertainty_info_of``: calibrated on this scan or on synthetic data only)."""
    if node is None:
        return ""
    info = uncertainty_info_of(node)
    return info.label if "intensity units" in info.label else f"{info.label}, {info.units}"


def colorbar(display, label: str) -> dict:
    """A colour bar of ``display``'s colour table over its window, for the page (CSS gradient)."""
    color_node = display.GetColorNode()
    low = display.GetLevel() - display.GetWindow() / 2.0
    high = display.GetLevel() + display.GetWindow() / 2.0
    stops = []
    count = color_node.GetNumberOfColors() if color_node is not None else 0
    for i in range(_COLORBAR_STOPS):
        t = i / (_COLORBAR_STOPS - 1)
        rgba = [t, t, t, 1.0]
        if count:
            color_node.GetColor(min(int(round(t * (count - 1))), count - 1), rgba)
        stops.append(f"rgb({round(255 * rgba[0])}, {round(255 * rgba[1])}, {round(255 * rgba[2])}) {100 * t:.0f}%")
    return {"gradient": f"linear-gradient(to right, {', '.join(stops)})", "low": _number(low),
            "high": _number(high), "label": label}


def _number(value: float) -> str:
    magnitude = abs(value)
    return f"{value:.0f}" if magnitude >= 100 else (f"{value:.1f}" if magnitude >= 1 else f"{value:.3g}")
