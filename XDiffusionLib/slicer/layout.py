"""Side-by-side comparison layout: real | generated | difference (or uncertainty), slices linked.

The layout is first a plain description (``ComparisonLayout``: views, what each shows, which plane),
which Slicer and the web app both read: ``to_dict()`` for the web app, ``layout_xml()`` for Slicer's
layout manager, ``apply_to_scene()`` to fill the slice views with volumes and overlays.
All three views show the same plane and their slice composite nodes have linked control, so
scrolling, panning and zooming one view moves the others: the volumes share one voxel grid, so the
same offset is the same slice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from xml.sax.saxutils import escape

from ..errors import XDiffusionError
from ..maps import DIFFERENCE_TITLE

# A layout id of our own, far from Slicer's built-in ones (0..~100) and common extensions' (500s).
LAYOUT_ID = 7481
# Views of one group move together when linked; a group of our own keeps the default views still.
VIEW_GROUP = 7
ORIENTATION = {"axial": "Axial", "coronal": "Coronal", "sagittal": "Sagittal"}


@dataclass(frozen=True)
class ViewSpec:
    """One slice view: its singleton tag (the Slicer view name), title, role and contents (node IDs)."""

    name: str
    title: str
    role: str  # "real", "generated", "difference" or "uncertainty"
    background: str | None
    segmentation: str | None = None
    color: str = "#808080"
    label: str = ""


@dataclass(frozen=True)
class ComparisonLayout:
    views: tuple[ViewSpec, ...]
    plane: str = "axial"
    linked: bool = True
    layout_id: int = LAYOUT_ID
    arrangement: str = "horizontal"
    view_group: int = VIEW_GROUP
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain JSON-ready description (the web app draws the same comparison from it)."""
        data = asdict(self)
        data["views"] = [asdict(v) for v in self.views]
        data["orientation"] = ORIENTATION[self.plane]
        return data

    def slice_node_id(self, view: ViewSpec) -> str:
        """ID Slicer gives the slice node of ``view`` (class name + singleton tag)."""
        return f"vtkMRMLSliceNode{view.name}"

    def view(self, role: str) -> ViewSpec:
        for view in self.views:
            if view.role == role:
                return view
        raise KeyError(role)


def comparison_layout(real_id: str, generated_id: str, *, difference_id: str | None = None,
                      uncertainty_id: str | None = None, real_segmentation_id: str | None = None,
                      generated_segmentation_id: str | None = None, plane: str = "axial") -> ComparisonLayout:
    """Real | generated | difference; uncertainty takes the third view when there is no difference."""
    if plane not in ORIENTATION:
        raise XDiffusionError(f"unknown plane {plane!r}: choose one of {', '.join(ORIENTATION)}")
    views = [
        ViewSpec("XDiffusionReal", "Real", "real", real_id, real_segmentation_id, "#F34A33", "1"),
        ViewSpec("XDiffusionGenerated", "Generated (X-Diffusion)", "generated", generated_id,
                 generated_segmentation_id, "#4AAF4A", "2"),
    ]
    if difference_id is not None:
        views.append(ViewSpec("XDiffusionDifference", DIFFERENCE_TITLE.capitalize(), "difference",
                              difference_id, None, "#4A7BF3", "3"))
    elif uncertainty_id is not None:
        views.append(ViewSpec("XDiffusionUncertainty", "Uncertainty", "uncertainty", uncertainty_id, None,
                              "#EDD54C", "3"))
    return ComparisonLayout(tuple(views), plane=plane)


def layout_xml(layout: ComparisonLayout) -> str:
    """Slicer layout description (for ``vtkMRMLLayoutNode.AddLayoutDescription``)."""
    items = []
    for view in layout.views:
        items.append(
            " <item>\n"
            f'  <view class="vtkMRMLSliceNode" singletontag="{escape(view.name)}">\n'
            f'   <property name="orientation" action="default">{ORIENTATION[layout.plane]}</property>\n'
            f'   <property name="viewlabel" action="default">{escape(view.label)}</property>\n'
            f'   <property name="viewcolor" action="default">{escape(view.color)}</property>\n'
            f'   <property name="viewgroup" action="default">{layout.view_group}</property>\n'
            "  </view>\n"
            " </item>\n"
        )
    return f'<layout type="{layout.arrangement}" split="true">\n' + "".join(items) + "</layout>\n"


def apply_to_scene(scene, layout: ComparisonLayout) -> None:
    """Fill the layout's slice views: background volumes, segmentation overlays per view, linking.

    The views must exist (Slicer's layout manager creates them when the layout is shown).
    """
    for view in layout.views:
        slice_node = scene.GetNodeByID(layout.slice_node_id(view))
        composite = composite_node(scene, view.name)
        if slice_node is None or composite is None:
            raise XDiffusionError(f"slice view {view.name!r} is not in the scene: show the XDiffusion layout first")
        slice_node.SetOrientation(ORIENTATION[layout.plane])
        slice_node.SetViewGroup(layout.view_group)
        composite.SetBackgroundVolumeID(view.background)
        composite.SetForegroundVolumeID(None)
        composite.SetLabelVolumeID(None)
        composite.SetLinkedControl(layout.linked)
        composite.SetHotLinkedControl(layout.linked)
        if view.segmentation:
            segmentation = scene.GetNodeByID(view.segmentation)
            display = segmentation.GetDisplayNode() if segmentation is not None else None
            if display is not None:
                display.AddViewNodeID(slice_node.GetID())


def composite_node(scene, layout_name: str):
    """The slice composite node of the view named ``layout_name`` (what it shows), or None."""
    nodes = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        if node.GetLayoutName() == layout_name:
            return node
    return None
