"""Feature: which slice each view shows, and picking the input slices.

Every view (input and comparison) reports its canonical RAS+ slice index, the slice's position in
mm along the plane's normal (Slicer's "S 12.0 mm" style) and whether it is an input slice; the
page draws them in the view's title row. Indices are those ``xdiffusion reconstruct --indices``
takes, whatever the file's own voxel order.
"""

from __future__ import annotations

import numpy as np

from ...errors import XDiffusionError
from .views import VIEW_PLANE, slice_to_ras

_RAS = "RAS"


def position_label(grid, plane: str, index: int) -> str:
    """The slice's position in mm along the plane's RAS axis, e.g. ``S 12.0 mm``."""
    from ...inputs import plane_axis
    from ...slicer.slices import ras_point_of_slice

    axis = plane_axis(plane)
    return f"{_RAS[axis]} {float(ras_point_of_slice(grid, plane, index)[axis]):.1f} mm"


class Picking:
    def __init__(self, app):
        self.app = app

    # -- what each view shows ------------------------------------------------------------------

    def view_plane(self, view) -> str | None:
        tag = view.get_singleton_tag()
        if tag in VIEW_PLANE:
            return VIEW_PLANE[tag]
        comparison = self.app.comparison
        if comparison.layout is not None and tag in {spec.name for spec in comparison.layout.views}:
            return comparison.layout.plane
        return None

    def current_index(self, view) -> int:
        from ...slicer.nodes import grid_from_node
        from ...slicer.slices import slice_index_from_view

        return slice_index_from_view(grid_from_node(self.app.input_node), self.view_plane(view), slice_to_ras(view))

    def on_view_modified(self, view) -> None:
        """Refresh the view's index, position and input badge in the page (when they changed)."""
        from ...slicer.nodes import grid_from_node

        app = self.app
        tag = view.get_singleton_tag()
        plane = self.view_plane(view)
        index, label, is_input = None, "", False
        if app.input_node is not None and plane is not None:
            try:
                index = self.current_index(view)
                label = position_label(grid_from_node(app.input_node), plane, index)
            except XDiffusionError:
                index = None
        if index is not None:
            if tag in VIEW_PLANE:
                is_input = plane == app.state.xd_pick_plane and index in app.state.xd_picks
            else:
                is_input = index in app.comparison.plane_indices
        changes = {}
        for key, value in (("xd_view_index", index), ("xd_view_label", label), ("xd_view_is_input", is_input)):
            current = app.state[key] or {}
            if current.get(tag) != value:
                changes[key] = {**current, tag: value}
        if changes:
            app.push(**changes)

    def refresh_input_views(self) -> None:
        for tag in VIEW_PLANE:
            self.on_view_modified(self.app.view_manager.get_view(tag))

    # -- input slices --------------------------------------------------------------------------

    def _slice_values(self, plane: str, index: int) -> np.ndarray:
        """The voxels of canonical ``plane`` slice ``index`` of the loaded volume."""
        from ...inputs import plane_axis
        from ...transforms.orientation import Reorientation

        volume = self.app.volume
        axis, original = Reorientation.for_grid(volume.grid).original_index(plane_axis(plane), index)
        return np.take(np.asarray(volume.array), original, axis=axis)

    def pick(self, tag: str) -> None:
        """Add the slice that view ``tag`` shows to the input slices."""
        app = self.app
        if app.input_node is None:
            app.report_error("load a volume first, then pick its slices")
            return
        if app.state.xd_running:
            app.report_error("a reconstruction is running: the input slices are locked until it ends")
            return
        plane = VIEW_PLANE.get(tag)
        if plane is None:
            app.report_error(f"view {tag!r} is not an input view")
            return
        picks, current = list(app.state.xd_picks), app.state.xd_pick_plane
        if picks and current != plane:
            app.report_error(f"the input slices so far are {current}: one reconstruction uses one plane; "
                             f"remove them to pick {plane} slices")
            return
        try:
            index = self.current_index(app.view_manager.get_view(tag))
        except XDiffusionError as error:
            app.report_error(str(error))
            return
        values = self._slice_values(plane, index)
        if values.size and float(values.max()) == float(values.min()):
            app.report_error(f"{plane} slice {index} is empty (every voxel is {float(values.min()):g}): "
                             "pick a slice through the head")
            return
        if index in picks:
            app.report_info(f"{plane} slice {index} is already an input slice")
            return
        app.push(xd_picks=sorted(picks + [index]), xd_pick_plane=plane, xd_error="",
                 xd_info=f"added {plane} slice {index}")
        self.refresh_input_views()

    def unpick(self, index: int) -> None:
        app = self.app
        if app.state.xd_running:
            return
        picks = [i for i in app.state.xd_picks if i != int(index)]
        app.push(xd_picks=picks, xd_pick_plane=app.state.xd_pick_plane if picks else "")
        self.refresh_input_views()

    def clear(self) -> None:
        if self.app.state.xd_running:
            return
        self.app.push(xd_picks=[], xd_pick_plane="")
        self.refresh_input_views()
