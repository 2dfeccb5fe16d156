"""Segmentation overlays, difference/uncertainty display and the comparison layout on a real MRML
scene (Slicer's own segmentation, layout, slice and slice-link logic classes)."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
from conftest import rotation

from XDiffusionLib import maps
from XDiffusionLib.errors import XDiffusionError
from XDiffusionLib.io.volume import Volume
from XDiffusionLib.slicer import display, layout, nodes, segmentation as seg


@pytest.fixture
def scene():
    scene = slicer.vtkMRMLScene()
    yield scene
    scene.Clear(1)


def phantom(shape=(20, 18, 16)) -> Volume:
    """Background 0, a 'head' with three nested intensity classes (30, 60, 100), plus mild noise."""
    i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(i**2 + j**2 + k**2)
    array = np.zeros(shape, np.float32)
    array[r < 0.9] = 30
    array[r < 0.65] = 60
    array[r < 0.4] = 100
    array += np.random.default_rng(0).normal(0, 2, shape).astype(np.float32)
    return Volume.from_array(array, (1.1, 0.9, 2.0), (4.0, -3.0, 12.0), rotation((10.0, 0.0, -20.0)))


def node_count(scene, class_name: str) -> int:
    return scene.GetNumberOfNodesByClass(class_name)


def test_automatic_tissue_classes_recover_the_three_shells():
    volume = phantom()
    thresholds = seg.tissue_thresholds(volume)
    assert 2 < thresholds.head < 30 < thresholds.t1 < 60 < thresholds.t2 < 100
    labels = seg.tissue_labels(volume, thresholds)
    assert labels.grid is volume.grid
    i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in volume.shape], indexing="ij")
    r = np.sqrt(i**2 + j**2 + k**2)
    expected = np.select([r < 0.4, r < 0.65, r < 0.9], [3, 2, 1], 0)
    assert (labels.array == expected).mean() > 0.99
    with pytest.raises(XDiffusionError, match="constant"):
        seg.tissue_thresholds(volume.with_array(np.ones(volume.shape, np.float32)))


def test_labels_become_a_segmentation_and_export_back_exactly(scene):
    volume = phantom()
    reference = nodes.add_volume_node(scene, volume, "T1")
    labels = seg.tissue_labels(volume, seg.tissue_thresholds(volume))
    before = scene.GetNumberOfNodes()
    segmentation = seg.segmentation_from_labels(scene, labels, "T1 tissue (real)", reference)
    # only the segmentation (and its display node) were added: helper labelmaps and colours are gone
    assert scene.GetNumberOfNodes() == before + 2
    assert node_count(scene, "vtkMRMLLabelMapVolumeNode") == 0
    names = [segmentation.GetSegmentation().GetNthSegment(n).GetName()
             for n in range(segmentation.GetSegmentation().GetNumberOfSegments())]
    assert names == [seg.TISSUE_CLASSES[v][0] for v in (1, 2, 3)]
    back, classes = seg.labels_from_node(scene, segmentation, reference)
    assert back.grid.same_geometry(volume.grid, tol=1e-6)
    np.testing.assert_array_equal(back.array, labels.array)
    assert [classes[v][0] for v in (1, 2, 3)] == names
    assert scene.GetNumberOfNodes() == before + 2  # exporting left nothing behind


def test_labelmap_node_is_read_on_the_reference_grid_or_refused(scene):
    volume = phantom()
    reference = nodes.add_volume_node(scene, volume, "T1")
    labels = np.zeros(volume.shape, np.int16)
    labels[5:9, 4:8, 3:6] = 7
    labelmap = nodes.add_volume_node(scene, volume.with_array(labels), "lesion",
                                     class_name="vtkMRMLLabelMapVolumeNode")
    back, classes = seg.labels_from_node(scene, labelmap, reference)
    np.testing.assert_array_equal(back.array, labels)
    assert set(classes) == {7}
    shifted = Volume.from_array(labels, volume.spacing, (0.0, 0.0, 0.0), volume.direction)
    moved = nodes.add_volume_node(scene, shifted, "moved", class_name="vtkMRMLLabelMapVolumeNode")
    with pytest.raises(XDiffusionError, match="'moved' has the input's size but another position"):
        seg.labels_from_node(scene, moved, reference)
    with pytest.raises(XDiffusionError, match="choose a segmentation or a labelmap"):
        seg.labels_from_node(scene, reference, reference)


def test_difference_display_is_diverging_and_centred_on_zero(scene):
    rng = np.random.default_rng(1)
    difference = rng.normal(3.0, 10.0, (10, 10, 10)).astype(np.float32)
    node = nodes.add_volume_node(scene, Volume.from_array(difference), "T1 difference")
    shown = display.show_difference(node, scene)
    assert shown.GetLevel() == 0.0
    limit = np.percentile(np.abs(difference), 99.5)
    assert shown.GetWindow() == pytest.approx(2 * limit)
    assert not shown.GetAutoWindowLevel()
    table = shown.GetColorNode()
    assert table.GetName() == display.DIVERGING_NAME
    n = table.GetNumberOfColors()
    low, mid, high = [0.0] * 4, [0.0] * 4, [0.0] * 4
    table.GetColor(0, low)
    table.GetColor(n // 2, mid)
    table.GetColor(n - 1, high)
    assert low[2] > low[0] and high[0] > high[2]  # blue below 0, red above
    # Dark at 0 (a very dark grey: the slice's extent stays visible on the black background), and
    # the very colours of the evaluation figures.
    assert 0.02 < max(mid[:3]) < 0.1
    colours = maps.ramp(maps.DIFFERENCE_COLOURS, n)
    np.testing.assert_allclose([low[:3], high[:3]], colours[[0, -1]], atol=1 / 255)
    # A colour bar says the sign and the units.
    legend = display.color_legend(node, scene)
    assert legend.GetVisibility() and legend.GetPrimaryDisplayNode() is shown
    assert "real - generated" in legend.GetTitleText() and maps.DIFFERENCE_UNITS in legend.GetTitleText()
    # a second difference reuses the same table
    other = nodes.add_volume_node(scene, Volume.from_array(-difference), "other")
    assert display.show_difference(other, scene).GetColorNodeID() == table.GetID()
    assert node_count(scene, "vtkMRMLColorTableNode") == 1


def test_uncertainty_display_starts_at_zero(scene):
    spread = np.abs(np.random.default_rng(2).normal(0, 5, (8, 8, 8))).astype(np.float32)
    node = nodes.add_volume_node(scene, Volume.from_array(spread), "T1 uncertainty")
    shown = display.show_uncertainty(node, scene)
    assert shown.GetWindowLevelMin() == pytest.approx(0.0)
    assert shown.GetWindowLevelMax() == pytest.approx(np.percentile(spread, 99.5), rel=1e-5)
    assert shown.GetColorNode().GetName() == display.SEQUENTIAL_NAME
    zeros = nodes.add_volume_node(scene, Volume.from_array(np.zeros((4, 4, 4), np.float32)), "exact")
    assert display.show_uncertainty(zeros, scene).GetWindowLevelMax() == pytest.approx(1.0)


def show_layout(scene, spec):
    """What Slicer's application does when a layout is chosen: layout node -> views -> slice logics."""
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    link = slicer.vtkMRMLSliceLinkLogic()
    link.SetMRMLScene(scene)
    layout_logic = slicer.vtkMRMLLayoutLogic()
    layout_logic.SetMRMLScene(scene)
    layout_node = layout_logic.GetLayoutNode()
    assert layout_node.AddLayoutDescription(spec.layout_id, layout.layout_xml(spec))
    layout_node.SetViewArrangement(spec.layout_id)
    logics = []
    for view in spec.views:
        slice_logic = slicer.vtkMRMLSliceLogic()
        slice_logic.SetMRMLScene(scene)
        slice_logic.SetSliceNode(scene.GetNodeByID(spec.slice_node_id(view)))
        logics.append(slice_logic)
    return [link, layout_logic, *logics]


def test_comparison_layout_fills_linked_views(scene):
    volume = phantom()
    real = nodes.add_volume_node(scene, volume, "T1")
    generated = nodes.add_volume_node(scene, volume, "T1 XDiffusion")
    difference = nodes.add_volume_node(scene, volume.with_array(np.zeros(volume.shape, np.float32)), "T1 difference")
    thresholds = seg.tissue_thresholds(volume)
    seg_real = seg.segmentation_from_labels(scene, seg.tissue_labels(volume, thresholds), "real", real)
    seg_generated = seg.segmentation_from_labels(scene, seg.tissue_labels(volume, thresholds), "generated", generated)
    spec = layout.comparison_layout(real.GetID(), generated.GetID(), difference_id=difference.GetID(),
                                    real_segmentation_id=seg_real.GetID(),
                                    generated_segmentation_id=seg_generated.GetID(), plane="coronal")
    assert [v.role for v in spec.views] == ["real", "generated", "difference"]
    with pytest.raises(XDiffusionError, match="show the XDiffusion layout first"):
        layout.apply_to_scene(scene, spec)
    keep_alive = show_layout(scene, spec)  # noqa: F841 - the logics must live while the scene is used
    layout.apply_to_scene(scene, spec)

    slice_nodes = [scene.GetNodeByID(spec.slice_node_id(v)) for v in spec.views]
    composites = [layout.composite_node(scene, v.name) for v in spec.views]
    assert [c.GetBackgroundVolumeID() for c in composites] == [real.GetID(), generated.GetID(), difference.GetID()]
    assert all(c.GetLinkedControl() for c in composites)
    assert all(s.GetOrientation() == "Coronal" for s in slice_nodes)
    assert list(seg_real.GetDisplayNode().GetViewNodeIDs()) == [slice_nodes[0].GetID()]
    assert list(seg_generated.GetDisplayNode().GetViewNodeIDs()) == [slice_nodes[1].GetID()]

    # Scrolling one view moves the other two (Slicer's slice link logic), and only them.
    red = scene.GetNodeByID("vtkMRMLSliceNodeRed")
    red_offset = red.GetSliceOffset()
    moved = slice_nodes[1]
    moved.SetInteracting(1)
    moved.SetInteractionFlags(moved.SliceToRASFlag)
    moved.SetSliceOffset(7.5)
    moved.SetInteracting(0)
    assert [s.GetSliceOffset() for s in slice_nodes] == pytest.approx([7.5, 7.5, 7.5])
    assert red.GetSliceOffset() == red_offset

    data = spec.to_dict()
    assert data["orientation"] == "Coronal" and data["linked"] is True
    assert [v["background"] for v in data["views"]] == [real.GetID(), generated.GetID(), difference.GetID()]


def test_layout_without_reference_shows_uncertainty():
    spec = layout.comparison_layout("vtkMRMLScalarVolumeNode1", "vtkMRMLScalarVolumeNode2",
                                    uncertainty_id="vtkMRMLScalarVolumeNode3")
    assert [v.role for v in spec.views] == ["real", "generated", "uncertainty"]
    assert spec.view("uncertainty").background == "vtkMRMLScalarVolumeNode3"
    xml = layout.layout_xml(spec)
    assert xml.count('class="vtkMRMLSliceNode"') == 3 and "Axial" in xml
    with pytest.raises(XDiffusionError, match="unknown plane"):
        layout.comparison_layout("a", "b", plane="oblique")


def test_uncertainty_display_has_a_colour_bar_with_its_level(scene):
    from XDiffusionLib.uncertainty.intervals import UNCALIBRATED, calibrated_info

    width = np.abs(np.random.default_rng(3).normal(0, 5, (8, 8, 8))).astype(np.float32)
    node = nodes.add_volume_node(scene, Volume.from_array(width), "T1 uncertainty")
    display.show_uncertainty(node, scene, calibrated_info(0.9))
    legend = display.color_legend(node, scene)
    assert legend.IsA("vtkMRMLColorLegendDisplayNode") and "90% interval" in legend.GetTitleText()
    assert legend.GetPrimaryDisplayNode() is node.GetDisplayNode()
    assert node.GetAttribute("XDiffusion.uncertainty_level") == "0.9"
    assert display.uncertainty_info_of(node) == calibrated_info(0.9)
    # Issue 22 item 1: shown again without its info (the web's Reset view) keeps the run's meaning,
    # and the web page (which draws its own bars) can hide Slicer's legend.
    display.show_uncertainty(node, scene, legend=False)
    assert "90% interval" in display.color_legend(node, scene).GetTitleText()
    assert not display.color_legend(node, scene).GetVisibility()
    assert display.uncertainty_info_of(node) == calibrated_info(0.9)
    display.show_uncertainty(node, scene, UNCALIBRATED)  # shown again uncalibrated: the same colour bar, retitled
    assert scene.GetNumberOfNodesByClass("vtkMRMLColorLegendDisplayNode") == 1
    assert "not calibrated" in display.color_legend(node, scene).GetTitleText()
    assert node.GetAttribute("XDiffusion.uncertainty_level") == ""


def test_saved_scene_keeps_only_the_layout_number_so_startup_registers_it(scene, tmp_path):
    """Issue 22 item 9. vtkMRMLLayoutNode (Libs/MRML/Core/vtkMRMLLayoutNode.cxx, WriteXML) saves the
    view arrangement but not the descriptions added with AddLayoutDescription: a scene saved with
    the comparison shown opens on a layout number nobody registered, unless start-up did."""
    layout_logic = slicer.vtkMRMLLayoutLogic()
    layout_logic.SetMRMLScene(scene)
    layout.register_layout(layout_logic.GetLayoutNode())
    layout_logic.GetLayoutNode().SetViewArrangement(layout.LAYOUT_ID)
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()

    unregistered = slicer.vtkMRMLScene()
    unregistered_logic = slicer.vtkMRMLLayoutLogic()
    unregistered_logic.SetMRMLScene(unregistered)
    unregistered.SetURL(str(tmp_path / "scene.mrml"))
    assert unregistered.Connect()
    assert unregistered_logic.GetLayoutNode().GetViewArrangement() == layout.LAYOUT_ID
    assert not unregistered_logic.GetLayoutNode().IsLayoutDescription(layout.LAYOUT_ID)  # "Can't find layout:7481"
    unregistered_logic.SetMRMLScene(None)
    unregistered.Clear(1)

    opened = slicer.vtkMRMLScene()
    opened_logic = slicer.vtkMRMLLayoutLogic()  # the application's: it exists before any scene is opened
    opened_logic.SetMRMLScene(opened)
    layout.register_layout(opened_logic.GetLayoutNode())  # what start-up does
    opened.SetURL(str(tmp_path / "scene.mrml"))
    assert opened.Connect()
    layout_node = opened_logic.GetLayoutNode()
    assert layout_node.GetViewArrangement() == layout.LAYOUT_ID
    assert layout_node.IsLayoutDescription(layout.LAYOUT_ID)
    assert layout_node.GetLayoutDescription(layout.LAYOUT_ID) == layout.layout_xml(layout.startup_layout())
    assert [v.role for v in layout.startup_layout().views] == ["real", "generated", "difference"]
    opened_logic.SetMRMLScene(None)
    layout_logic.SetMRMLScene(None)
    opened.Clear(1)


def test_the_runs_comparison_is_kept_on_the_reconstruction_node(scene, tmp_path):
    """Issue 22 item 10: the real volume, difference, uncertainty and overlays of a run are node
    references on its reconstruction (saved with the scene, vtkMRMLNode::WriteXML references)."""
    volume = phantom()
    real = nodes.add_volume_node(scene, volume, "T1")
    generated = nodes.add_volume_node(scene, volume, "T1 XDiffusion")
    difference = nodes.add_volume_node(scene, volume, "T1 difference")
    uncertainty = nodes.add_volume_node(scene, volume, "T1 uncertainty")
    generated.SetAttribute("XDiffusion.plane", "sagittal")
    labels = seg.tissue_labels(volume, seg.tissue_thresholds(volume))
    seg_real = seg.segmentation_from_labels(scene, labels, "real", real)
    seg_generated = seg.segmentation_from_labels(scene, labels, "generated", generated)
    assert layout.comparison_from_node(generated) is None  # an older scene: the caller falls back
    spec = layout.comparison_layout(real.GetID(), generated.GetID(), difference_id=difference.GetID(),
                                    real_segmentation_id=seg_real.GetID(),
                                    generated_segmentation_id=seg_generated.GetID(), plane="sagittal")
    layout.remember_comparison(generated, spec, uncertainty.GetID())
    assert layout.comparison_from_node(generated) == spec
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()
    opened = slicer.vtkMRMLScene()
    opened.SetURL(str(tmp_path / "scene.mrml"))
    assert opened.Connect()
    again = layout.comparison_from_node(opened.GetFirstNodeByName("T1 XDiffusion"))
    assert again == spec
    assert opened.GetFirstNodeByName("T1 XDiffusion").GetNodeReferenceID("XDiffusion.uncertainty") == uncertainty.GetID()
    opened.Clear(1)


def test_overlays_are_bound_to_their_comparison_views(scene):
    """Issue 22 item 11: a segmentation display node with no view IDs draws in every view
    (vtkMRMLDisplayNode::IsDisplayableInView, Libs/MRML/Core/vtkMRMLDisplayNode.cxx): bound, the
    real tissue classes draw only in the Real view and the generated ones only in the Generated view."""
    volume = phantom()
    real = nodes.add_volume_node(scene, volume, "T1")
    generated = nodes.add_volume_node(scene, volume, "T1 XDiffusion")
    labels = seg.tissue_labels(volume, seg.tissue_thresholds(volume))
    seg_real = seg.segmentation_from_labels(scene, labels, "real", real)
    seg_generated = seg.segmentation_from_labels(scene, labels, "generated", generated)
    spec = layout.comparison_layout(real.GetID(), generated.GetID(), real_segmentation_id=seg_real.GetID(),
                                    generated_segmentation_id=seg_generated.GetID())
    assert seg_real.GetDisplayNode().IsDisplayableInView("vtkMRMLSliceNodeRed")  # the default: everywhere
    layout.bind_overlays(scene, spec)
    for node in (seg_real, seg_generated):
        assert not node.GetDisplayNode().IsDisplayableInView("vtkMRMLSliceNodeRed")
    assert seg_real.GetDisplayNode().IsDisplayableInView("vtkMRMLSliceNodeXDiffusionReal")
    assert not seg_real.GetDisplayNode().IsDisplayableInView("vtkMRMLSliceNodeXDiffusionGenerated")
    assert seg_generated.GetDisplayNode().IsDisplayableInView("vtkMRMLSliceNodeXDiffusionGenerated")
