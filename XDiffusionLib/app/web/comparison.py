"""The result views of one session: real | generated | difference | uncertainty on one slice.

``Comparison`` takes the result nodes of a ``SceneReconstruction`` and its ``ComparisonLayout``
(``XDiffusionLib.slicer.layout``), adds the uncertainty view next to the difference, fills the views
(``layout.apply_to_scene``: backgrounds, linking, each segmentation in its own view), keeps their
slice, zoom and pan in step (one field of view for all: the real and the generated head are drawn
at the same size), switches the plane, jumps between input slices and shows or hides the
segmentation overlays (hidden at first: the anatomy comes first).

Slice indices, positions and the fit are those of the result's own grid (``grid``): the input's
grid for picked input slices, a finer one for a thick-slice scan's acquired slices, where the real
view shows the acquired slices on that finer grid (``show``'s ``acquired``) and there is no
difference view.
"""

from __future__ import annotations

import dataclasses

from ...io.volume import Grid
from ...slicer.layout import ORIENTATION, apply_to_scene
from ...slicer.nodes import grid_from_node, remove_node
from ...slicer.slices import canonical_depth, ras_point_of_slice, slice_index_from_view
from . import views


# The tissue overlay: the classes' outlines, no fill. In the app's server-side rendering a segment's
# fill is not blended with the image under it: at any opacity it drew the class's whole area dark,
# hiding the anatomy (the page's legend names the outlines' colours).
OVERLAY_OUTLINE = 1.0


class Comparison:
    def __init__(self, scene, view_manager, layout_manager):
        self.scene = scene
        self.view_manager = view_manager
        self.layout_manager = layout_manager
        self.sync = views.SliceSync()
        self.result = None  # slicer.reconstruction.ResultNodes
        self.layout = None  # slicer.layout.ComparisonLayout, with the uncertainty view added
        self.indices: tuple[int, ...] = ()
        self.grid: Grid | None = None  # the result's grid: every index and position of the comparison
        self.acquired = None  # a thick-slice run's acquired slices on the result's grid (a node of ours)
        self._registered: tuple[str, ...] = ()  # the views of the comparison layout the page has
        for spec in views.COMPARE_VIEWS:
            views.on_modified(view_manager.get_view(spec.name), self.sync.follow)

    @property
    def shown(self) -> bool:
        return self.result is not None

    @property
    def has_overlay(self) -> bool:
        return self.layout is not None and any(spec.segmentation for spec in self.layout.views)

    def show(self, result, plane: str, indices, acquired=None, acquired_title: str = "") -> None:
        """Show ``result`` in the comparison views, in ``plane``, on its first input slice
        (``indices``: canonical indices of ``plane`` on the result's grid). ``acquired``: a volume
        node on the result's grid that the real view shows instead of the input (titled
        ``acquired_title``); it goes with the result."""
        specs = list(result.layout.views)
        if result.difference is not None and result.uncertainty is not None:
            specs.append(dataclasses.replace(views.UNCERTAINTY_VIEW, background=result.uncertainty.GetID()))
        if acquired is not None:
            specs = [dataclasses.replace(spec, background=acquired.GetID(), title=acquired_title or spec.title)
                     if spec.role == "real" else spec for spec in specs]
        self.result, self.indices, self.acquired = result, tuple(indices), acquired
        self.grid = grid_from_node(result.reconstruction)
        self.layout = dataclasses.replace(result.layout, views=tuple(specs), plane=plane)
        names = tuple(spec.name for spec in specs)
        if names != self._registered:  # a new layout rebuilds the page's view grid: only when its views change
            self.layout_manager.register_layout(views.COMPARE_LAYOUT, views.compare_layout(list(names), plane))
            self._registered = names
        apply_to_scene(self.scene, self.layout)
        for node in self._segmentations():
            display = node.GetDisplayNode()
            if display is not None:  # the image stays readable under the classes
                display.SetVisibility2DFill(False)
                display.SetOpacity2DOutline(OVERLAY_OUTLINE)
        self.sync.set_views([self.view_manager.get_view(spec.name) for spec in specs])
        self.set_overlay_visible(False)
        self.layout_manager.set_layout(views.COMPARE_LAYOUT)
        self._fit()

    @property
    def titles(self) -> dict[str, str]:
        """Each comparison view's title (tag -> title)."""
        return {} if self.layout is None else {spec.name: spec.title for spec in self.layout.views}

    def grey_nodes(self) -> list:
        """The volumes shown in grey (the real or acquired and the generated): one window/level."""
        if self.result is None:
            return []
        real = self.scene.GetNodeByID(self.layout.view("real").background) if self.layout is not None else None
        return [node for node in (real, self.result.reconstruction) if node is not None]

    def set_plane(self, plane: str) -> None:
        if self.layout is None or plane not in ORIENTATION or plane == self.layout.plane:
            return
        self.layout = dataclasses.replace(self.layout, plane=plane)
        apply_to_scene(self.scene, self.layout)
        self._fit()

    def set_overlay_visible(self, visible: bool) -> None:
        for node in self._segmentations():
            display = node.GetDisplayNode()
            if display is not None:
                display.SetVisibility(bool(visible))

    def remove(self, result=None) -> None:
        """Remove the nodes of ``result`` (default: the one shown); forget it if it is the one shown."""
        result = self.result if result is None else result
        if result is None:
            return
        shown = result is self.result
        for node in (result.reconstruction, result.uncertainty, result.difference,
                     result.segmentation_real, result.segmentation_generated, self.acquired if shown else None):
            remove_node(self.scene, node)  # with its display nodes, which hold its image
        if shown:
            self.result = self.layout = self.grid = self.acquired = None
            self.sync.set_views([])

    def overlay_legend(self) -> list[dict]:
        """The overlay's classes as drawn: ``[{"name", "color"}]`` (CSS colour) from the segments."""
        legend = []
        for node in self._segmentations()[:1]:  # the real and the generated overlay share their classes
            segmentation = node.GetSegmentation()
            for index in range(segmentation.GetNumberOfSegments()):
                segment = segmentation.GetNthSegment(index)
                r, g, b = (round(255 * c) for c in segment.GetColor())
                legend.append({"name": segment.GetName(), "color": f"rgb({r}, {g}, {b})"})
        return legend

    def _segmentations(self) -> list:
        if self.result is None:
            return []
        nodes = [self.result.segmentation_real, self.result.segmentation_generated]
        return [node for index, node in enumerate(nodes) if node is not None and node not in nodes[:index]]

    @property
    def plane_indices(self) -> tuple[int, ...]:
        """The input slices of the plane shown (none when another plane is shown)."""
        if self.layout is None or self.result is None or self.layout.plane != self.result.layout.plane:
            return ()
        return tuple(sorted(self.indices))

    def views(self) -> list:
        return [] if self.layout is None else [self.view_manager.get_view(spec.name) for spec in self.layout.views]

    def current_index(self) -> int:
        """The canonical index of the slice the comparison shows (its first view's, the others follow)."""
        return slice_index_from_view(self.grid, self.layout.plane, views.slice_to_ras(self.views()[0]))

    def go_to_slice(self, index: int) -> None:
        """Show canonical slice ``index`` of the plane shown in every comparison view."""
        plane, grid = self.layout.plane, self.grid
        point = ras_point_of_slice(grid, plane, min(max(int(index), 0), canonical_depth(grid, plane) - 1))
        shown = self.views()
        if shown:  # one view moves, the others follow it (SliceSync)
            shown[0].get_view_node().JumpSliceByOffsetting(*point)
            self.sync.follow(shown[0])

    def fit(self) -> None:
        """One zoom for all: the scale that shows the whole slice in the smallest view, given to
        the first view and from it, with its pan and slice, to the others."""
        shown = self.views()
        if not shown:
            return
        views.fit(shown[0], self.grid, max(views.fit_scale(view, self.grid) for view in shown))
        self.sync.follow(shown[0])

    def _fit(self) -> None:
        """Fit the views and open on the first input slice when the plane is the inputs' (a
        radiologist checks there first that the input came through), else the middle slice."""
        inputs = self.plane_indices
        index = inputs[0] if inputs else canonical_depth(self.grid, self.layout.plane) // 2
        self.fit()
        self.go_to_slice(index)
