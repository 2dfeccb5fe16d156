"""Side-by-side comparison layout: real | generated | difference (or uncertainty), slices linked.

The layout is first a plain description (``ComparisonLayout``: views, what each shows, which plane),
which Slicer and the web app both read: ``to_dict()`` for the web app, ``layout_xml()`` for Slicer's
layout manager, ``apply_to_scene()`` to fill the slice views with volumes and overlays.
All three views show the same plane and their slice composite nodes have linked control, so
scrolling, panning and zooming one view moves the others: the volumes share one voxel grid, so the
same offset is the same slice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
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


def register_layout(layout_node, layout: ComparisonLayout | None = None) -> None:
    """Give Slicer's layout node the comparison layout's description (added, or updated in place).

    A layout added with ``AddLayoutDescription`` is not saved with the scene, only its number is: a
    scene saved while the comparison was shown opens to an empty view area unless the description
    is registered before (at application start-up, ``slicer.app.startupCompleted``)."""
    layout = layout if layout is not None else startup_layout()
    if layout_node.IsLayoutDescription(layout.layout_id):
        layout_node.SetLayoutDescription(layout.layout_id, layout_xml(layout))
    else:
        layout_node.AddLayoutDescription(layout.layout_id, layout_xml(layout))


def startup_layout(plane: str = "axial") -> ComparisonLayout:
    """Real | generated | difference with no volumes yet: what start-up registers."""
    layout = comparison_layout(None, None, difference_id="", plane=plane)
    return replace(layout, views=tuple(replace(view, background=None) for view in layout.views))


# Node references on the reconstruction node (saved with the scene): what its comparison shows.
REFERENCE_ROLES = {"real": "XDiffusion.real", "difference": "XDiffusion.difference",
                   "uncertainty": "XDiffusion.uncertainty"}
SEGMENTATION_ROLES = {"real": "XDiffusion.realSegmentation", "generated": "XDiffusion.generatedSegmentation"}


def remember_comparison(reconstruction_node, layout: ComparisonLayout, uncertainty_id: str | None = None) -> None:
    """Keep the run's real volume, third view, uncertainty and overlays as node references on the
    reconstruction node."""
    if uncertainty_id:
        reconstruction_node.SetNodeReferenceID(REFERENCE_ROLES["uncertainty"], uncertainty_id)
    for view in layout.views:
        if view.role in REFERENCE_ROLES and view.background:
            reconstruction_node.SetNodeReferenceID(REFERENCE_ROLES[view.role], view.background)
        if view.role in SEGMENTATION_ROLES and view.segmentation:
            reconstruction_node.SetNodeReferenceID(SEGMENTATION_ROLES[view.role], view.segmentation)


def comparison_from_node(reconstruction_node, plane: str = "axial") -> ComparisonLayout | None:
    """The comparison of the run that made ``reconstruction_node`` (its references); None when it has
    none (a scene saved before they were kept)."""
    def referenced(role: str) -> str | None:
        node = reconstruction_node.GetNodeReference(role)
        return node.GetID() if node is not None else None

    real = referenced(REFERENCE_ROLES["real"])
    if real is None:
        return None
    return comparison_layout(
        real, reconstruction_node.GetID(), difference_id=referenced(REFERENCE_ROLES["difference"]),
        uncertainty_id=referenced(REFERENCE_ROLES["uncertainty"]),
        real_segmentation_id=referenced(SEGMENTATION_ROLES["real"]),
        generated_segmentation_id=referenced(SEGMENTATION_ROLES["generated"]),
        plane=reconstruction_node.GetAttribute("XDiffusion.plane") or plane,
    )


def bind_overlays(scene, layout: ComparisonLayout) -> None:
    """Each segmentation only in the comparison views that show its volume (a display node without
    view IDs draws in every view: both tissue segmentations over each other in Red, Green, Yellow)."""
    for view in layout.views:
        if view.segmentation:
            segmentation = scene.GetNodeByID(view.segmentation)
            display = segmentation.GetDisplayNode() if segmentation is not None else None
            if display is not None:
                display.AddViewNodeID(layout.slice_node_id(view))


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
    bind_overlays(scene, layout)


def composite_node(scene, layout_name: str):
    """The slice composite node of the view named ``layout_name`` (what it shows), or None."""
    nodes = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        if node.GetLayoutName() == layout_name:
            return node
    return None
