"""Volume nodes <-> XDiffusionLib ``Volume``, with exact geometry.

Two conventions meet here:
- Slicer: world coordinates are RAS; ``slicer.util.arrayFromVolume`` returns voxels as ``[k, j, i]``.
- ``Volume``: physical coordinates are LPS (ITK); ``array[i, j, k]``.

RAS = diag(-1, -1, 1) @ LPS, so the IJK-to-RAS directions are the LPS directions with the first two
rows negated, and the same for the origin. Spacing, origin and directions are copied one by one (not
decomposed out of a 4x4 matrix) so a round trip is exact.

Input nodes are only read. Every output is a new node with a name derived from the input's.
"""

from __future__ import annotations

import numpy as np
import slicer
import slicer.util
import vtk

from ..errors import XDiffusionError
from ..io.volume import Grid, Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

# What each output is called: "<input name> <suffix>".
OUTPUT_SUFFIXES: dict[str, str] = {
    "reconstruction": "XDiffusion",
    "uncertainty": "uncertainty",
    "difference": "difference",
    "segmentation_real": "tissue (real)",
    "segmentation_generated": "tissue (XDiffusion)",
}


def grid_from_node(node) -> Grid:
    """Geometry of a volume node (its own IJK-to-RAS; parent transforms are not applied)."""
    image = node.GetImageData() if node is not None else None
    if image is None:
        raise XDiffusionError(f"volume {_name(node)!r} has no voxels")
    directions = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(directions)
    ras_direction = np.array([[directions.GetElement(r, c) for c in range(3)] for r in range(3)])
    return Grid(
        shape=image.GetDimensions(),
        spacing=node.GetSpacing(),
        origin=LPS_TO_RAS @ np.array(node.GetOrigin()),
        direction=LPS_TO_RAS @ ras_direction,
    )


def set_node_geometry(node, grid: Grid) -> None:
    """Give ``node`` the geometry of ``grid`` (spacing, origin, directions)."""
    ras_direction = LPS_TO_RAS @ grid.direction
    directions = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            directions.SetElement(r, c, float(ras_direction[r, c]))
    node.SetIJKToRASDirectionMatrix(directions)
    node.SetSpacing(*grid.spacing)
    node.SetOrigin(*(LPS_TO_RAS @ np.array(grid.origin)))


def check_scalar_volume(node, role: str = "input volume") -> None:
    """A 3D scalar volume node with voxels, or a one-line XDiffusionError saying what is wrong."""
    if node is None:
        raise XDiffusionError(f"no {role} selected")
    if not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise XDiffusionError(f"{role} {_name(node)!r} is a {node.GetClassName()}: XDiffusion needs a scalar volume")
    image = node.GetImageData()
    if image is None:
        raise XDiffusionError(f"{role} {_name(node)!r} has no voxels")
    if image.GetNumberOfScalarComponents() != 1:
        raise XDiffusionError(f"{role} {_name(node)!r} has {image.GetNumberOfScalarComponents()} components per voxel: "
                              "XDiffusion needs a single-component (grey-scale) volume")
    dims = image.GetDimensions()
    if min(dims) < 2:
        raise XDiffusionError(f"{role} {_name(node)!r} is 2D ({dims[0]}x{dims[1]}x{dims[2]}): "
                              "XDiffusion needs a 3D volume")


def volume_from_node(node) -> Volume:
    """A copy of the node's voxels and geometry as a ``Volume`` (array[i, j, k], LPS)."""
    grid = grid_from_node(node)
    array = np.array(slicer.util.arrayFromVolume(node), copy=True).transpose(2, 1, 0)
    return Volume(np.ascontiguousarray(array), grid)


def update_node_from_volume(node, volume: Volume) -> None:
    """Write voxels and geometry of ``volume`` into an existing node."""
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(np.asarray(volume.array).transpose(2, 1, 0)))
    set_node_geometry(node, volume.grid)


def output_name(input_node_or_name, kind: str) -> str:
    """Name of an output of ``kind`` (see OUTPUT_SUFFIXES) made from an input node (or its name)."""
    name = input_node_or_name if isinstance(input_node_or_name, str) else _name(input_node_or_name)
    return f"{name} {OUTPUT_SUFFIXES[kind]}"


def node_ids(scene) -> set[str]:
    """IDs of every node in ``scene`` (to undo additions exactly)."""
    return {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}


def remove_nodes_added_since(scene, before: set[str], keep=()) -> None:
    """Remove every node whose ID is not in ``before`` (nor one of ``keep``)."""
    keep_ids = {node.GetID() for node in keep if node is not None}
    added = [scene.GetNthNode(n) for n in range(scene.GetNumberOfNodes())]
    for node in reversed(added):
        if node.GetID() not in before and node.GetID() not in keep_ids and scene.IsNodePresent(node):
            scene.RemoveNode(node)


def remove_node(scene, node) -> None:
    """Remove ``node`` from ``scene`` with its display nodes (colour legends included) and storage
    nodes. ``scene.RemoveNode`` leaves those behind, and a volume's display node keeps the node's
    whole image alive: a session that replaces its result every run would grow by it each time."""
    if node is None or not scene.IsNodePresent(node):
        return
    dependents = []
    for count, nth in (("GetNumberOfDisplayNodes", "GetNthDisplayNode"),
                       ("GetNumberOfStorageNodes", "GetNthStorageNode")):
        if hasattr(node, count):
            dependents += [getattr(node, nth)(index) for index in range(getattr(node, count)())]
    scene.RemoveNode(node)
    for dependent in dependents:
        if dependent is not None and scene.IsNodePresent(dependent):
            scene.RemoveNode(dependent)


def add_volume_node(scene, volume: Volume, name: str, like=None,
                    class_name: str = "vtkMRMLScalarVolumeNode"):
    """New volume node in ``scene`` holding ``volume``.

    ``name`` is made unique in the scene (an earlier result is never overwritten). With ``like``, the
    node goes under the same parent transform so it overlays ``like`` exactly.
    """
    node = scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))
    update_node_from_volume(node, volume)
    if like is not None and like.GetTransformNodeID():
        node.SetAndObserveTransformNodeID(like.GetTransformNodeID())
    node.CreateDefaultDisplayNodes()
    return node


def _name(node) -> str:
    return node.GetName() if node is not None else "(none)"
