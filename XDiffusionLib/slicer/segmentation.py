"""Segmentation overlays for real and generated volumes.

Two sources:
- a labelmap or segmentation the user picked: it is brought onto the volume's voxel grid and shown
  on both the real and the generated volume (same structures, two images);
- automatic tissue classes, a deliberately simple visual aid, not a segmentation tool: the head is
  separated from the background by Otsu's threshold, then the head's intensities are split into
  three classes by Otsu's criterion again (two thresholds, exhaustive search). The thresholds are computed once, on the real volume, and applied to
  both volumes, so any difference between the two overlays comes from the images, not from two
  different clusterings. Class names assume T1-like contrast (CSF dark, white matter bright).
"""

from __future__ import annotations

import colorsys
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import slicer
import slicer.util
import vtk

from ..errors import XDiffusionError
from ..io.volume import Volume
from .nodes import add_volume_node, grid_from_node, node_ids, remove_nodes_added_since, volume_from_node
from .request_checks import check_same_grid

# label value -> (name, RGB)
TISSUE_CLASSES: dict[int, tuple[str, tuple[float, float, float]]] = {
    1: ("CSF (dark)", (0.35, 0.60, 0.95)),
    2: ("Grey matter (mid)", (0.95, 0.70, 0.30)),
    3: ("White matter (bright)", (0.90, 0.90, 0.85)),
}


@dataclass(frozen=True)
class TissueThresholds:
    """Intensity limits of the automatic classes: background <= head < t1 <= ... < t2 <= bright."""

    head: float
    t1: float
    t2: float


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Threshold that best separates ``values`` into two classes (maximal between-class variance)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return low
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    mass_low = np.cumsum(counts * centres)
    mean_low = mass_low / np.maximum(weight_low, 1)
    mean_high = (mass_low[-1] - mass_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def three_class_thresholds(values: np.ndarray, bins: int = 128) -> tuple[float, float]:
    """Two thresholds splitting ``values`` into three classes with maximal between-class variance
    (Otsu's criterion, searched exhaustively over a histogram: no k-means local minima)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return low, high
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.concatenate([[0.0], np.cumsum(counts)])
    mass = np.concatenate([[0.0], np.cumsum(counts * centres)])
    total_mean = mass[-1] / weight[-1]
    # class 0 = bins [0, a), class 1 = [a, b), class 2 = [b, bins)
    a, b = np.meshgrid(np.arange(1, bins), np.arange(1, bins), indexing="ij")
    valid = a < b
    score = np.zeros(a.shape)
    for start, stop in ((np.zeros_like(a), a), (a, b), (b, np.full_like(a, bins))):
        w = weight[stop] - weight[start]
        m = np.divide(mass[stop] - mass[start], w, out=np.zeros(a.shape), where=w > 0)
        score += w * (m - total_mean) ** 2
    score[~valid] = -1.0
    best_a, best_b = np.unravel_index(np.argmax(score), score.shape)
    return float(edges[a[best_a, best_b]]), float(edges[b[best_a, best_b]])


def tissue_thresholds(volume: Volume) -> TissueThresholds:
    """Thresholds of the automatic classes, computed on ``volume`` (the real image)."""
    values = np.asarray(volume.array, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0 or values.max() <= values.min():
        raise XDiffusionError("automatic segmentation: the volume is constant, there are no tissues to separate")
    # A few very bright voxels (vessels, artefacts) would squeeze the histogram: clip them.
    values = np.minimum(values, np.percentile(values, 99.9))
    head = otsu_threshold(values)
    inside = values[values > head]
    if inside.size < 3:
        raise XDiffusionError("automatic segmentation: too few voxels above the background threshold")
    t1, t2 = three_class_thresholds(inside)
    return TissueThresholds(head=head, t1=t1, t2=t2)


def tissue_labels(volume: Volume, thresholds: TissueThresholds) -> Volume:
    """Label volume (0 background, 1..3 as TISSUE_CLASSES) on ``volume``'s grid."""
    values = np.asarray(volume.array, dtype=np.float64)
    labels = np.zeros(values.shape, dtype=np.uint8)
    labels[values > thresholds.head] = 1
    labels[values > thresholds.t1] = 2
    labels[values > thresholds.t2] = 3
    return volume.with_array(labels)


def segmentations_logic(scene):
    """Slicer's segmentations logic: the application's one inside Slicer, else a new one on ``scene``."""
    modules = getattr(slicer, "modules", None)
    if modules is not None and hasattr(modules, "segmentations"):
        return modules.segmentations.logic()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    return logic


def segmentation_from_labels(scene, labels: Volume, name: str, reference_node,
                             classes: dict[int, tuple[str, tuple[float, float, float]]] | None = None):
    """New segmentation node with one segment per label value present in ``labels``.

    ``classes`` names and colours the label values (default: TISSUE_CLASSES); other values are
    called "Label <n>". The segmentation takes ``reference_node``'s geometry.
    """
    classes = TISSUE_CLASSES if classes is None else classes
    values = [int(v) for v in np.unique(np.asarray(labels.array)) if v != 0]
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    with _temporary_nodes(scene, keep=segmentation):
        labelmap = add_volume_node(scene, labels.with_array(np.asarray(labels.array).astype(np.int16)),
                                   "__xdiffusion_labelmap__", class_name="vtkMRMLLabelMapVolumeNode")
        colours = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "__xdiffusion_labels__")
        colours.SetTypeToUser()
        colours.SetNumberOfColors(max(values, default=0) + 1)
        colours.SetColor(0, "Background", 0.0, 0.0, 0.0, 0.0)
        for value in range(1, max(values, default=0) + 1):
            label_name, rgb = classes.get(value, (f"Label {value}", _fallback_colour(value)))
            colours.SetColor(value, label_name, *rgb, 1.0)
        labelmap.GetDisplayNode().SetAndObserveColorNodeID(colours.GetID())
        if values and not segmentations_logic(scene).ImportLabelmapToSegmentationNode(labelmap, segmentation):
            scene.RemoveNode(segmentation)
            raise XDiffusionError(f"could not turn the labels of {name!r} into a segmentation")
    segmentation.CreateDefaultDisplayNodes()
    return segmentation


def labels_from_node(scene, node, reference_node) -> tuple[Volume, dict[int, tuple[str, tuple[float, float, float]]]]:
    """Labels of a labelmap or segmentation node on ``reference_node``'s voxel grid, with their names.

    A labelmap must already share the reference's grid (Slicer's "Resample Scalar/Vector/DWI Volume"
    can put it there); a segmentation is exported onto the grid, whatever its own geometry.
    """
    if node is None:
        raise XDiffusionError("no segmentation or labelmap selected")
    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        check_same_grid(node, grid_from_node(reference_node), "labelmap", reference_node.GetName())
        labels = volume_from_node(node)
        return labels.with_array(np.asarray(labels.array).astype(np.int32)), _labelmap_classes(node)
    if node.IsA("vtkMRMLSegmentationNode"):
        segmentation = node.GetSegmentation()
        ids = vtk.vtkStringArray()
        classes = {}
        for n in range(segmentation.GetNumberOfSegments()):
            ids.InsertNextValue(segmentation.GetNthSegmentID(n))
            segment = segmentation.GetNthSegment(n)
            classes[n + 1] = (segment.GetName(), tuple(segment.GetColor()))
        if not classes:
            raise XDiffusionError(f"segmentation {node.GetName()!r} has no segments")
        with _temporary_nodes(scene):
            labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__xdiffusion_export__")
            # Segments become labels 1..N in segment order, on the reference grid.
            if not segmentations_logic(scene).ExportSegmentsToLabelmapNode(node, ids, labelmap, reference_node):
                raise XDiffusionError(f"could not export segmentation {node.GetName()!r} onto {reference_node.GetName()!r}")
            labels = volume_from_node(labelmap)
        return labels.with_array(np.asarray(labels.array).astype(np.int32)), classes
    raise XDiffusionError(f"{node.GetName()!r} is a {node.GetClassName()}: choose a segmentation or a labelmap volume")


def _labelmap_classes(node) -> dict[int, tuple[str, tuple[float, float, float]]]:
    display = node.GetDisplayNode()
    colours = display.GetColorNode() if display is not None else None
    values = [int(v) for v in np.unique(slicer.util.arrayFromVolume(node)) if v != 0]
    classes = {}
    for value in values:
        if colours is not None and value < colours.GetNumberOfColors() and colours.GetColorName(value):
            rgba = [0.0, 0.0, 0.0, 0.0]
            colours.GetColor(value, rgba)
            classes[value] = (colours.GetColorName(value), tuple(rgba[:3]))
        else:
            classes[value] = (f"Label {value}", _fallback_colour(value))
    return classes


@contextmanager
def _temporary_nodes(scene, keep=None):
    """Remove every node added to ``scene`` inside the block (helper labelmaps, colour tables),
    except ``keep`` and its display nodes."""
    before = node_ids(scene)
    try:
        yield
    finally:
        kept = [] if keep is None else [keep] + [keep.GetNthDisplayNode(n) for n in range(keep.GetNumberOfDisplayNodes())]
        remove_nodes_added_since(scene, before, keep=kept)


def _fallback_colour(value: int) -> tuple[float, float, float]:
    # Golden-ratio hue steps: neighbouring labels get clearly different colours.
    hue = (value * 0.618033988749895) % 1.0
    return colorsys.hsv_to_rgb(hue, 0.65, 0.95)
