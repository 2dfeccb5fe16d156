"""The page's slice views: three input planes, and the side-by-side comparison.

Both are trame-slicer layouts over the session's one Slicer scene:
- ``input``: Red (axial) | Green (coronal) | Yellow (sagittal), each with a title, its canonical
  slice index, a "use this slice" button and a slider;
- ``compare``: the views of ``XDiffusionLib.slicer.layout.ComparisonLayout`` (real | generated |
  difference | uncertainty) in a 2 x 2 grid (each view gets twice the height a row of four would
  give it on a laptop screen), filled by ``layout.apply_to_scene``. Their slice, field of view and
  pan are kept equal here (``SliceSync``): trame-slicer's slider sets the offset without Slicer's
  interaction flags, so Slicer's own slice linking would not follow it.

Every view exists from the start (the comparison views are created empty) so that the scene's
view nodes are in place before any volume is loaded.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition, ViewProps, ViewType
from vtkmodules.vtkCommonCore import vtkCommand

from ...slicer.layout import ORIENTATION, VIEW_GROUP, ViewSpec, comparison_layout
from ...slicer.slices import PLANE_VIEW

INPUT_LAYOUT = "input"
COMPARE_LAYOUT = "compare"

# Plane of each input view (the views of Slicer's default layouts).
VIEW_PLANE: dict[str, str] = {tag: plane for plane, tag in PLANE_VIEW.items()}
INPUT_VIEW_COLOR = {"Red": "#F34A33", "Green": "#6DAD4A", "Yellow": "#EFD64D"}
# Pixels of each view kept free of the slice by the fit (top, bottom, left, right): the title row
# above, the colour bar and the slider below (``ui.view_overlay``) never cover the anatomy.
FIT_MARGINS: tuple[int, int, int, int] = (28, 54, 4, 4)


def _comparison_views() -> tuple[ViewSpec, ...]:
    """The views of ``slicer.layout.comparison_layout`` (real | generated | difference) plus its
    uncertainty view, which the web page shows next to the difference rather than instead of it."""
    with_difference = comparison_layout("", "", difference_id="")
    with_uncertainty = comparison_layout("", "", uncertainty_id="")
    return with_difference.views + (with_uncertainty.view("uncertainty"),)


COMPARE_VIEWS: tuple[ViewSpec, ...] = _comparison_views()
UNCERTAINTY_VIEW = COMPARE_VIEWS[-1]
COMPARE_TITLES = {view.name: view.title for view in COMPARE_VIEWS}
COMPARE_ROLES = {view.name: view.role for view in COMPARE_VIEWS}
# Views that show what the model made (a new run makes them stale); the real view never is.
GENERATED_ROLES = ("generated", "difference", "uncertainty")
GENERATED_MARK = "#ff9800"  # the border and badge of the generated image


def input_layout() -> Layout:
    views = [
        ViewLayoutDefinition.slice_view(VIEW_PLANE[tag].capitalize(), label=tag, color=INPUT_VIEW_COLOR[tag])
        for tag in ("Red", "Green", "Yellow")
    ]
    return Layout(LayoutDirection.Horizontal, views)


def compare_layout(names: list[str], plane: str = "axial") -> Layout:
    """The comparison views ``names``, all showing ``plane``: two rows of two (one row for two)."""
    specs = {view.name: view for view in COMPARE_VIEWS}
    views = [
        ViewLayoutDefinition(
            singleton_tag=name,
            view_type=ViewType.SLICE_VIEW,
            properties=ViewProps(orientation=ORIENTATION[plane], label=specs[name].label, color=specs[name].color,
                                 group=VIEW_GROUP),
        )
        for name in names
    ]
    if len(views) <= 2:
        return Layout(LayoutDirection.Horizontal, views)
    rows = [views[i:i + 2] for i in range(0, len(views), 2)]
    return Layout(LayoutDirection.Vertical, [Layout(LayoutDirection.Horizontal, row) for row in rows])


class SliceSync:
    """Keeps a group of slice views on one slice, one zoom and one pan: scrolling, zooming or
    panning one moves the others (the volumes share one grid, so the same slice-to-RAS matrix is
    the same slice)."""

    def __init__(self) -> None:
        self._views: list = []
        self._busy = False

    def set_views(self, views: list) -> None:
        self._views = list(views)

    def follow(self, source) -> None:
        """Called when ``source`` changed: give every other view its offset."""
        if self._busy or source not in self._views:
            return
        node = source.get_view_node()
        matrix, fov, origin = node.GetSliceToRAS(), node.GetFieldOfView(), node.GetXYZOrigin()
        # The same millimetres per pixel, not the same field of view: the views of the grid may
        # differ by a few pixels in size, and each keeps its own aspect.
        scale = fov[0] / max(node.GetDimensions()[0], 1)
        self._busy = True
        try:
            for view in self._views:
                if view is source:
                    continue
                other = view.get_view_node()
                dims = other.GetDimensions()
                wanted = (scale * dims[0], scale * dims[1], fov[2])
                same = (all(abs(other.GetSliceToRAS().GetElement(r, c) - matrix.GetElement(r, c)) < 1e-6
                            for r in range(4) for c in range(4))
                        and all(abs(a - b) < 1e-6 for a, b in zip(other.GetFieldOfView(), wanted))
                        and all(abs(a - b) < 1e-6 for a, b in zip(other.GetXYZOrigin(), origin)))
                if same:
                    continue
                disabled = other.StartModify()
                other.GetSliceToRAS().DeepCopy(matrix)
                other.SetFieldOfView(*wanted)
                other.SetXYZOrigin(*origin)
                other.UpdateMatrices()
                other.EndModify(disabled)
        finally:
            self._busy = False


def on_modified(view, callback: Callable[[object], None]) -> None:
    """Call ``callback(view)`` whenever the view (its slice node, logic or content) changes."""
    view.modified.connect(callback)


def on_resized(view, callback: Callable[[object], None]) -> None:
    """Call ``callback(view)`` after the browser gave the view a new size."""
    # trame-slicer's RCA window announces a new size on the interactor (not on the render window);
    # a low priority runs this after trame-slicer has resized the slice node.
    view.interactor().AddObserver(vtkCommand.WindowResizeEvent, lambda *_: callback(view), -1.0)


def _extent(view, grid):
    """The grid's extent (x, y mm) and centre (x, y) along the view's in-plane axes, and the view's
    slice-to-RAS axes and origin."""
    shape = np.asarray(grid.shape, dtype=np.float64)
    corners = np.array([[i, j, k, 1.0] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5)
                        for k in (-0.5, shape[2] - 0.5)])
    ras = (np.diag([-1.0, -1.0, 1.0, 1.0]) @ grid.index_to_physical @ corners.T).T[:, :3]
    matrix = slice_to_ras(view)
    axes, origin = matrix[:3, :3], matrix[:3, 3]
    local = (ras - origin) @ axes  # coordinates along the view's x, y and normal (unit axes)
    low, high = local.min(axis=0), local.max(axis=0)
    extent = (max(high[0] - low[0], 1e-6), max(high[1] - low[1], 1e-6))
    return extent, (low[:2] + high[:2]) / 2.0, axes, origin


def view_size(view) -> tuple[int, int]:
    width, height = view.render_window().GetSize()
    return max(int(width), 1), max(int(height), 1)


def free_size(view, margins: tuple[int, int, int, int] = FIT_MARGINS) -> tuple[int, int]:
    """The view's size in pixels without ``margins`` (top, bottom, left, right)."""
    width, height = view_size(view)
    top, bottom, left, right = margins
    return max(width - left - right, 1), max(height - top - bottom, 1)


def fit_scale(view, grid, margins: tuple[int, int, int, int] = FIT_MARGINS) -> float:
    """Millimetres per pixel that show the whole slice of ``grid`` in the view at its current
    size, inside ``margins`` (the whole slice, whichever side limits: wide or tall scans alike)."""
    (extent_x, extent_y), _, _, _ = _extent(view, grid)
    width, height = free_size(view, margins)
    return max(extent_x / width, extent_y / height)


def fit(view, grid, scale: float | None = None, margins: tuple[int, int, int, int] = FIT_MARGINS) -> None:
    """Show the whole slice of ``grid`` centred in the view's free area (inside ``margins``), with
    square pixels, on the same slice (``scale``: millimetres per pixel, default the view's own fit).

    The extent is that of the grid's eight corners along the view's own axes, at the view's
    current size (a fit made before the page gave the view its real size would overflow it).
    """
    _, centre, axes, origin = _extent(view, grid)
    scale = fit_scale(view, grid, margins) if scale is None else scale
    width, height = view_size(view)
    top, bottom, left, right = margins
    node = view.get_view_node()
    disabled = node.StartModify()
    for row in range(3):  # move within the plane only: the slice stays where it is
        node.GetSliceToRAS().SetElement(row, 3, float(origin[row] + axes[row, 0] * centre[0]
                                                     + axes[row, 1] * centre[1]))
    # The slice centre at the free area's centre: Slicer's XYZOrigin is the slice point at the
    # view's centre, in mm (pixel y grows upwards in VTK).
    node.SetXYZOrigin(scale * (right - left) / 2.0, scale * (top - bottom) / 2.0, 0.0)
    node.SetDimensions(width, height, node.GetDimensions()[2])
    node.SetFieldOfView(scale * width, scale * height, node.GetFieldOfView()[2])
    node.UpdateMatrices()
    node.EndModify(disabled)


def slice_to_ras(view):
    """The view's slice-to-RAS matrix as a 4 x 4 numpy array."""
    matrix = view.get_view_node().GetSliceToRAS()
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
