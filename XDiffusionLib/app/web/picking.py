"""Feature: which slice each view shows, and picking the input slices.

Every view (input and comparison) reports its canonical RAS+ slice index, the slice's position in
mm along the plane's normal (Slicer's "S 12.0 mm" style) and whether it is an input slice; the
page draws them in the view's title row. Indices are those ``xdiffusion reconstruct --indices``
takes, whatever the file's own voxel order.
"""

from __future__ import annotations

import numpy as np

from ...errors import XDiffusionError
from ...inputs import plane_axis
from ...slicer.nodes import grid_from_node
from ...slicer.slices import (canonical_depth, quick_picks, ras_point_of_slice, slice_index_from_view,
                              slice_line_in_view, slice_plane)
from ...transforms.orientation import Reorientation, to_canonical
from ...transforms.thick_slices import acquisition_plane
from .views import COMPARE_VIEWS, VIEW_PLANE, on_modified, slice_to_ras, view_size

_RAS = "RAS"


_AXIS_NAMES = {"R": "right", "A": "anterior", "S": "superior"}


def position_label(grid, plane: str, index: int) -> str:
    """The slice's position in mm along the plane's scanner RAS axis, e.g. ``S 12.0 mm RAS``."""
    axis = plane_axis(plane)
    return f"{_RAS[axis]} {float(ras_point_of_slice(grid, plane, index)[axis]):.1f} mm RAS"


def position_note(grid, plane: str, index: int) -> str:
    """What ``position_label`` means, with the slice's offset from the volume's centre (hover text)."""
    axis = plane_axis(plane)
    letter = _RAS[axis]
    here = float(ras_point_of_slice(grid, plane, index)[axis])
    depth = canonical_depth(grid, plane)
    centre = (float(ras_point_of_slice(grid, plane, 0)[axis]) + float(ras_point_of_slice(grid, plane, depth - 1)[axis])) / 2
    return (f"scanner RAS coordinate {letter} ({_AXIS_NAMES[letter]} positive), mm; "
            f"{here - centre:+.1f} mm from the volume's centre ({letter} {centre:.1f} mm)")


def input_lines(view, grid, plane: str, indices) -> list[dict]:
    """The input slices (``plane``, ``indices``) where they cross ``view``, in the page's pixels."""
    matrix = view.get_view_node().GetXYToRAS()
    xy_to_ras = [[matrix.GetElement(r, c) for c in range(4)] for r in range(4)]
    lines = []
    for index in indices:
        segment = slice_line_in_view(xy_to_ras, view_size(view), *slice_plane(grid, plane, int(index)))
        if segment is not None:
            x1, y1, x2, y2 = (round(value, 1) for value in segment)
            lines.append({"x1": x1, "y1": y1, "x2": x2, "y2": y2, "index": int(index)})
    return lines


# More input slices than this crossing a view are drawn as ticks at the view's edges, not lines
# across it: 30 acquired slices of a thick-slice scan drew a line every few pixels over the anatomy.
MAX_FULL_LINES = 6
TICK_PX = 12.0


def edge_ticks(lines: list[dict], length: float = TICK_PX) -> list[dict]:
    """Each of ``lines`` (full-width segments, as ``input_lines`` gives them) as two short ticks, one
    at either end (the view's edges), pointing inwards; keys ``index`` become ``"<index>a"``/``"<index>b"``."""
    ticks = []
    for line in lines:
        x1, y1, x2, y2 = line["x1"], line["y1"], line["x2"], line["y2"]
        span = max(((x2 - x1) ** 2 + (y2 - y1) ** 2) ** 0.5, 1e-9)
        dx, dy = (x2 - x1) / span * min(length, span / 2), (y2 - y1) / span * min(length, span / 2)
        ticks.append({"x1": x1, "y1": y1, "x2": round(x1 + dx, 1), "y2": round(y1 + dy, 1), "index": f"{line['index']}a"})
        ticks.append({"x1": round(x2 - dx, 1), "y1": round(y2 - dy, 1), "x2": x2, "y2": y2, "index": f"{line['index']}b"})
    return ticks


class Picking:
    def __init__(self, page, reports, workspace):
        self.state, self.page = page.state, page.data
        self.mine = page.data.picking
        self.reports, self.workspace = reports, workspace

    def connect_views(self) -> None:
        """Follow every view (input and comparison) as it moves (called once the views exist)."""
        for tag in [*VIEW_PLANE, *(spec.name for spec in COMPARE_VIEWS)]:
            on_modified(self.workspace.view(tag), self.on_view_modified)

    # -- what each view shows ------------------------------------------------------------------

    def view_plane(self, view) -> str | None:
        tag = view.get_singleton_tag()
        if tag in VIEW_PLANE:
            return VIEW_PLANE[tag]
        comparison = self.workspace.comparison
        if comparison.layout is not None and tag in {spec.name for spec in comparison.layout.views}:
            return comparison.layout.plane
        return None

    def view_grid(self, view):
        """The grid whose indices ``view`` shows: the input's in the input views, the result's in the
        comparison (a finer one after a thick-slice run)."""
        comparison = self.workspace.comparison
        if view.get_singleton_tag() not in VIEW_PLANE and comparison.grid is not None:
            return comparison.grid
        return grid_from_node(self.workspace.input_node)

    def current_index(self, view) -> int:
        return slice_index_from_view(self.view_grid(view), self.view_plane(view), slice_to_ras(view))

    def on_view_modified(self, view) -> None:
        """Refresh the view's index, position and input badge in the page (when they changed)."""
        mine = self.mine
        tag = view.get_singleton_tag()
        plane = self.view_plane(view)
        index, label, note, is_input, lines = None, "", "", False, []
        if self.workspace.input_node is not None and plane is not None:
            grid = self.view_grid(view)
            try:
                index = self.current_index(view)
                label, note = position_label(grid, plane, index), position_note(grid, plane, index)
            except XDiffusionError:
                index = None
            # The input slices of another plane, as lines where they cross this view.
            inputs_plane, inputs = self.input_slices_for(tag)
            if inputs and inputs_plane != plane:
                lines = input_lines(view, grid, inputs_plane, inputs)
                if len(lines) > MAX_FULL_LINES:  # many: ticks at the edges, the anatomy left clear
                    lines = edge_ticks(lines)
        if index is not None:
            if tag in VIEW_PLANE:
                is_input = plane == mine.pick_plane and index in mine.picks
            else:
                is_input = index in self.workspace.comparison.plane_indices
        with self.state:
            for key, value in (("view_index", index), ("view_label", label), ("view_is_input", is_input),
                               ("view_position_note", note), ("view_lines", lines)):
                current = getattr(mine, key) or {}
                if current.get(tag) != value:
                    setattr(mine, key, {**current, tag: value})

    def input_slices_for(self, tag: str) -> tuple[str, list[int]]:
        """The input slices a view marks: the picks in the input views, the run's in the comparison."""
        if tag in VIEW_PLANE:
            return str(self.mine.pick_plane or ""), list(self.mine.picks or [])
        comparison = self.workspace.comparison
        if comparison.result is None:
            return "", []
        return comparison.result.layout.plane, list(comparison.indices)

    def refresh_input_views(self) -> None:
        for tag in VIEW_PLANE:
            self.on_view_modified(self.workspace.view(tag))

    def refresh_comparison_views(self) -> None:
        for view in self.workspace.comparison.views():
            self.on_view_modified(view)

    def on_volume_loaded(self, _volume, _thickness=None) -> None:
        """A new volume: no picks yet, every input view on its own slices."""
        with self.state:
            self.mine.picks, self.mine.pick_plane = [], ""
        self.refresh_input_views()

    # -- input slices --------------------------------------------------------------------------

    def _slice_values(self, plane: str, index: int) -> np.ndarray:
        """The voxels of canonical ``plane`` slice ``index`` of the loaded volume."""
        volume = self.workspace.volume
        axis, original = Reorientation.for_grid(volume.grid).original_index(plane_axis(plane), index)
        return np.take(np.asarray(volume.array), original, axis=axis)

    def _can_pick(self) -> bool:
        """Picks need a loaded volume and no run under way; otherwise one line says why."""
        if self.workspace.input_node is None:
            self.reports.error("load a volume first, then pick its slices")
            return False
        if self.page.running.running:
            self.reports.error("a reconstruction is running: the input slices are locked until it ends")
            return False
        return True

    def _set_picks(self, picks: list[int], plane: str, info: str | None = None) -> None:
        with self.state:
            self.mine.picks, self.mine.pick_plane = picks, plane
            if info is not None:
                self.page.messages.error, self.page.messages.info = "", info
        self.refresh_input_views()

    def pick(self, tag: str) -> None:
        """Add the slice that view ``tag`` shows to the input slices."""
        reports = self.reports
        if not self._can_pick():
            return
        plane = VIEW_PLANE.get(tag)
        if plane is None:
            reports.error(f"view {tag!r} is not an input view")
            return
        picks, current = list(self.mine.picks), self.mine.pick_plane
        if picks and current != plane:
            reports.error(f"the input slices so far are {current}: one reconstruction uses one plane; "
                          f"remove them to pick {plane} slices")
            return
        try:
            index = self.current_index(self.workspace.view(tag))
        except XDiffusionError as error:
            reports.error(str(error))
            return
        values = self._slice_values(plane, index)
        if values.size and float(values.max()) == float(values.min()):
            reports.error(f"{plane} slice {index} is empty (every voxel is {float(values.min()):g}): "
                          "pick a slice through the head")
            return
        if index in picks:
            reports.info(f"{plane} slice {index} is already an input slice")
            return
        self._set_picks(sorted(picks + [index]), plane, f"added {plane} slice {index}")

    def quick_pick(self, how: str, n=1, plane: str | None = None) -> None:
        """Replace the input slices by a quick pick (``slicer.slices.quick_picks``) in ``plane``:
        default the plane of the picks so far, else the plane the scan was acquired in."""
        if not self._can_pick():
            return
        try:
            count = int(n)
        except (TypeError, ValueError):
            self.reports.error(f"{'K' if how == 'spread' else 'n'} must be a whole number, got {n!r}")
            return
        volume = self.workspace.volume
        plane = plane or self.mine.pick_plane or acquisition_plane(volume.grid)
        try:
            picks = quick_picks(to_canonical(volume)[0].array, plane, str(how), count)
        except XDiffusionError as error:
            self.reports.error(str(error))
            return
        self._set_picks(picks, plane, f"{len(picks)} {plane} input slices: {picks[0]} to {picks[-1]}")

    def unpick(self, index: int) -> None:
        if self.page.running.running:
            return
        picks = [i for i in self.mine.picks if i != int(index)]
        self._set_picks(picks, self.mine.pick_plane if picks else "")

    def clear(self) -> None:
        if self.page.running.running:
            return
        self._set_picks([], "")
