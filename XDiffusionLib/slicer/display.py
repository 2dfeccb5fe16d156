"""How results look in slice views: the difference and uncertainty maps of ``XDiffusionLib.maps``.

The difference (real - generated) gets the diverging table of ``maps.DIFFERENCE_COLOURS`` (dark at
0) with a window centred exactly on 0 and symmetric, +/- the 99.5th percentile of |difference|, and
a colour bar with its sign and units.
Uncertainty (>= 0; with a calibrated model the half-width of its 90% interval, else the spread
across views) gets ``maps.UNCERTAINTY_COLOURS`` from 0 up to its 99.5th percentile, with a colour
bar (Slicer's colour legend) titled with what it is and its level
(``uncertainty.intervals.UncertaintyInfo``); the same label, level and units are stored on the node
as ``XDiffusion.uncertainty*`` attributes. The colour tables are built here (not taken from
Slicer's shipped files) so they exist in any scene, and are reused when already present.
"""

from __future__ import annotations

import slicer
import slicer.util

from ..maps import DIFFERENCE_COLOURS, DIFFERENCE_UNITS, UNCERTAINTY_COLOURS, ramp, symmetric_limit, upper_limit
from ..uncertainty.intervals import UNCALIBRATED, UncertaintyInfo

DIVERGING_NAME = "XDiffusion diverging"
SEQUENTIAL_NAME = "XDiffusion uncertainty"
_TAG = "XDiffusion.ColorTable"
DIFFERENCE_LEGEND_TITLE = f"real - generated\n({DIFFERENCE_UNITS})"


def color_table(scene, name: str, anchors) -> "slicer.vtkMRMLColorTableNode":
    """The colour table ``name`` made by XDiffusion in ``scene``; created the first time."""
    nodes = scene.GetNodesByClassByName("vtkMRMLColorTableNode", name)
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        if node.GetAttribute(_TAG) == name:
            return node
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    node.SetAttribute(_TAG, name)
    node.SetTypeToUser()
    colours = ramp(anchors)
    node.SetNumberOfColors(len(colours))
    for index, (r, g, b) in enumerate(colours):
        node.SetColor(index, f"{index}", float(r), float(g), float(b), 1.0)
    return node


def show_difference(node, scene, legend: bool = True) -> "slicer.vtkMRMLScalarVolumeDisplayNode":
    """Diverging colours centred on 0, symmetric window, for a difference volume node (real - generated);
    ``legend=False`` hides Slicer's colour bar (the web page draws its own)."""
    limit = symmetric_limit(slicer.util.arrayFromVolume(node))
    display = _display_node(node)
    display.SetAndObserveColorNodeID(color_table(scene, DIVERGING_NAME, DIFFERENCE_COLOURS).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevel(2.0 * limit, 0.0)
    _show_legend(node, scene, DIFFERENCE_LEGEND_TITLE, legend)
    return display


def show_uncertainty(node, scene, info: UncertaintyInfo | None = None,
                     legend: bool = True) -> "slicer.vtkMRMLScalarVolumeDisplayNode":
    """Sequential colours from 0 (certain) to the 99.5th percentile, and a colour bar titled
    ``info.label``; ``info`` is recorded on the node. Without ``info``, what the node already
    records (a redisplay keeps its meaning), else the uncalibrated view spread. ``legend=False``
    hides Slicer's colour bar (the web page draws its own)."""
    info = uncertainty_info_of(node) if info is None else info
    high = upper_limit(slicer.util.arrayFromVolume(node))
    display = _display_node(node)
    display.SetAndObserveColorNodeID(color_table(scene, SEQUENTIAL_NAME, UNCERTAINTY_COLOURS).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, high)
    for key, value in info.metadata().items():
        node.SetAttribute(key.replace("XDiffusion_", UNCERTAINTY_ATTRIBUTE_PREFIX, 1), value)
    _show_legend(node, scene, legend_title(info), legend)
    return display


UNCERTAINTY_ATTRIBUTE_PREFIX = "XDiffusion."


def uncertainty_info_of(node) -> UncertaintyInfo:
    """What an uncertainty node shows, from the attributes ``show_uncertainty`` recorded."""
    return UncertaintyInfo.from_metadata(
        lambda key: node.GetAttribute(key.replace("XDiffusion_", UNCERTAINTY_ATTRIBUTE_PREFIX, 1)))


def legend_title(info: UncertaintyInfo) -> str:
    """Colour-bar title: what the value is, its level, where it was calibrated (``UncertaintyInfo.legend``)."""
    return info.legend


def color_legend(node, scene):
    """The colour legend (colour bar) of ``node``'s display, created once (as Slicer's Colors module does)."""
    for index in range(node.GetNumberOfDisplayNodes()):
        candidate = node.GetNthDisplayNode(index)
        if candidate is not None and candidate.IsA("vtkMRMLColorLegendDisplayNode"):
            return candidate
    if not scene.IsNodeClassRegistered("vtkMRMLColorLegendDisplayNode"):  # a bare MRML scene (no Colors module)
        scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
    legend = scene.AddNewNodeByClass("vtkMRMLColorLegendDisplayNode")
    legend.SetName(f"{node.GetName()} colour bar")
    legend.SetAndObservePrimaryDisplayNode(_display_node(node))
    node.AddAndObserveDisplayNodeID(legend.GetID())
    return legend


def _show_legend(node, scene, title: str, visible: bool = True) -> None:
    legend = color_legend(node, scene)
    legend.SetTitleText(title)
    legend.SetLabelFormat("%.3g")
    legend.SetVisibility(bool(visible))


def show_like(node, template) -> None:
    """Display ``node`` with the grey-scale window of ``template`` (a reconstruction like its input)."""
    source = template.GetDisplayNode() if template is not None else None
    display = _display_node(node)
    if source is None:
        return
    if source.GetColorNodeID():
        display.SetAndObserveColorNodeID(source.GetColorNodeID())
    display.AutoWindowLevelOff()
    display.SetWindowLevel(source.GetWindow(), source.GetLevel())


def _display_node(node):
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node.GetDisplayNode()
