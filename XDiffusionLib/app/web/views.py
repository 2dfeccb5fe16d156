"""The page's slice views: three input planes, and the side-by-side comparison.

Both are trame-slicer layouts over the session's one Slicer scene:
- ``input``: Red (axial) | Green (coronal) | Yellow (sagittal), each with a title, its canonical
  slice index, a "use this slice" button and a slider;
- ``compare``: the views of ``XDiffusionLib.slicer.layout.ComparisonLayout`` (real | generated |
  difference | uncertainty), filled by ``layout.apply_to_scene``. Their slice offsets are kept equal
  here (``SliceSync``): trame-slicer's slider sets the offset without Slicer's interaction flags,
  so Slicer's own slice linking would not follow it.

Every view exists from the start (the comparison views are created empty) so that the scene's
view nodes are in place before any volume is loaded.
"""

from __future__ import annotations

from collections.abc import Callable

from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition, ViewProps, ViewType

from ...slicer.layout import ORIENTATION, VIEW_GROUP, ViewSpec, comparison_layout
from ...slicer.slices import PLANE_VIEW

INPUT_LAYOUT = "input"
COMPARE_LAYOUT = "compare"

# Plane of each input view (the views of Slicer's default layouts).
VIEW_PLANE: dict[str, str] = {tag: plane for plane, tag in PLANE_VIEW.items()}
INPUT_VIEW_COLOR = {"Red": "#F34A33", "Green": "#6DAD4A", "Yellow": "#EFD64D"}


def _comparison_views() -> tuple[ViewSpec, ...]:
    """The views of ``slicer.layout.comparison_layout`` (real | generated | difference) plus its
    uncertainty view, which the web page shows next to the difference rather than instead of it."""
    with_difference = comparison_layout("", "", difference_id="")
    with_uncertainty = comparison_layout("", "", uncertainty_id="")
    return with_difference.views + (with_uncertainty.view("uncertainty"),)


COMPARE_VIEWS: tuple[ViewSpec, ...] = _comparison_views()
UNCERTAINTY_VIEW = COMPARE_VIEWS[-1]
COMPARE_TITLES = {view.name: view.title for view in COMPARE_VIEWS}


def input_layout() -> Layout:
    views = [
        ViewLayoutDefinition.slice_view(VIEW_PLANE[tag].capitalize(), label=tag, color=INPUT_VIEW_COLOR[tag])
        for tag in ("Red", "Green", "Yellow")
    ]
    return Layout(LayoutDirection.Horizontal, views)


def compare_layout(names: list[str], plane: str = "axial") -> Layout:
    """The comparison views ``names`` side by side, all showing ``plane``."""
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
    return Layout(LayoutDirection.Horizontal, views)


class SliceSync:
    """Keeps the slice offsets of a group of slice views equal: moving one moves the others."""

    def __init__(self) -> None:
        self._views: list = []
        self._busy = False

    def set_views(self, views: list) -> None:
        self._views = list(views)

    def follow(self, source) -> None:
        """Called when ``source`` changed: give every other view its offset."""
        if self._busy or source not in self._views:
            return
        offset = source.get_slice_value()
        self._busy = True
        try:
            for view in self._views:
                if view is not source and abs(view.get_slice_value() - offset) > 1e-6:
                    view.set_slice_value(offset)
        finally:
            self._busy = False


def on_modified(view, callback: Callable[[object], None]) -> None:
    """Call ``callback(view)`` whenever the view (its slice node, logic or content) changes."""
    view.modified.connect(callback)


def on_resized(view, callback: Callable[[object], None]) -> None:
    """Call ``callback(view)`` after the browser gave the view a new size."""
    from vtkmodules.vtkCommonCore import vtkCommand

    view.render_window().AddObserver(vtkCommand.WindowResizeEvent, lambda *_: callback(view))


def refit(view) -> None:
    """Fit the view's content to its (new) size on the same slice. A view is first fitted before the
    page has shown it at its real size (a comparison appears, a volume loads), so fitting again on
    resize is what keeps the whole image in view with square pixels."""
    offset = view.get_slice_value()
    view.fit_view_to_content()
    view.set_slice_value(offset)
