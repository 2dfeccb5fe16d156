"""Volume nodes <-> Volume on a real MRML scene: exact geometry (checked against Slicer's own NRRD
reader and writer), output names, the input left untouched, slice views -> canonical indices."""

from __future__ import annotations

import numpy as np
import pytest

import slicer  # real MRML classes from trame-slicer[standalone] (the project's [slicer] extra)
import vtk
from conftest import rotation, smooth_array

from XDiffusionLib.errors import XDiffusionError
from XDiffusionLib.io import read_volume, write_volume
from XDiffusionLib.io.volume import Volume
from XDiffusionLib.inputs import plane_axis
from XDiffusionLib.slicer import nodes, slices
from XDiffusionLib.transforms.orientation import to_canonical


@pytest.fixture
def scene():
    scene = slicer.vtkMRMLScene()
    yield scene
    scene.Clear(1)


def oblique_volume(shape=(12, 10, 8), direction=None) -> Volume:
    direction = rotation((20.0, -10.0, 35.0)) if direction is None else direction
    return Volume.from_array(smooth_array(shape), (0.9, 1.3, 2.0), (-20.5, 13.25, 7.0), direction)


def read_with_slicer(scene, path):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "read")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    return node


def test_node_from_file_matches_volume_from_same_file(scene, tmp_path):
    """Slicer's NRRD reader (its own LPS->RAS) and our conversion agree voxel for voxel."""
    volume = oblique_volume()
    path = write_volume(volume, tmp_path / "v.nrrd")
    node = read_with_slicer(scene, path)
    converted = nodes.volume_from_node(node)
    assert converted.grid.same_geometry(volume.grid, tol=1e-9)
    np.testing.assert_array_equal(converted.array, volume.array)
    # array order: Volume is [i, j, k], Slicer's numpy view is [k, j, i]
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node)[3, 2, 1], volume.array[1, 2, 3])


@pytest.mark.parametrize("direction", [
    rotation((20.0, -10.0, 35.0)),
    np.array([[-1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]),  # LSA-like, axes permuted and flipped
    np.diag([1.0, 1.0, -1.0]) @ rotation((5.0, 40.0, -15.0)),  # left-handed oblique
])
def test_node_written_by_slicer_reads_back_as_same_volume(scene, tmp_path, direction):
    volume = oblique_volume(direction=direction)
    node = nodes.add_volume_node(scene, volume, "out")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(tmp_path / "slicer.nrrd"))
    assert storage.WriteData(node)
    back = read_volume(tmp_path / "slicer.nrrd")
    assert back.grid.same_geometry(volume.grid, tol=1e-6)
    np.testing.assert_allclose(back.array, volume.array)
    # and exactly through the node itself
    again = nodes.volume_from_node(node)
    assert again.grid.same_geometry(volume.grid, tol=0.0)
    np.testing.assert_array_equal(again.array, volume.array)


def test_node_ijk_to_ras_matrix_is_the_grid_in_ras(scene):
    volume = oblique_volume()
    node = nodes.add_volume_node(scene, volume, "out")
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    from_node = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    np.testing.assert_allclose(lps_to_ras @ volume.grid.index_to_physical, from_node, atol=1e-12)
    ijk = np.array([3.0, 7.0, 5.0, 1.0])
    lps = volume.grid.index_to_physical @ ijk
    np.testing.assert_allclose(from_node @ ijk, [-lps[0], -lps[1], lps[2], 1.0], atol=1e-9)


def test_output_nodes_are_new_named_after_input_and_input_untouched(scene):
    volume = oblique_volume()
    source = nodes.add_volume_node(scene, volume, "T1 head")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    source.SetAndObserveTransformNodeID(transform.GetID())
    before = np.array(slicer.util.arrayFromVolume(source), copy=True)
    grid = nodes.grid_from_node(source)
    displays = source.GetNumberOfDisplayNodes()

    copy = nodes.volume_from_node(source)
    copy.array[:] = 0  # the copy is independent of the node
    first = nodes.add_volume_node(scene, volume, nodes.output_name(source, "reconstruction"), like=source)
    second = nodes.add_volume_node(scene, volume, nodes.output_name(source, "reconstruction"), like=source)

    assert first.GetName() == "T1 head XDiffusion"
    assert second.GetName() != first.GetName() and second.GetName().startswith("T1 head XDiffusion")
    assert nodes.output_name("T1 head", "uncertainty") == "T1 head uncertainty"
    assert nodes.output_name(source, "difference") == "T1 head difference"
    assert first.GetTransformNodeID() == transform.GetID()  # overlays the input exactly
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(source), before)
    assert nodes.grid_from_node(source).same_geometry(grid, tol=0.0)
    assert source.GetNumberOfDisplayNodes() == displays
    assert source.GetTransformNodeID() == transform.GetID()
    assert source.GetName() == "T1 head"


def test_check_scalar_volume_messages(scene):
    with pytest.raises(XDiffusionError, match="no input volume selected"):
        nodes.check_scalar_volume(None)
    flat = nodes.add_volume_node(scene, Volume.from_array(np.ones((8, 9, 1), np.float32)), "scout")
    with pytest.raises(XDiffusionError, match=r"'scout' is 2D \(8x9x1\)"):
        nodes.check_scalar_volume(flat)
    labels = nodes.add_volume_node(scene, Volume.from_array(np.ones((4, 4, 4), np.int16)), "seg",
                                   class_name="vtkMRMLLabelMapVolumeNode")
    with pytest.raises(XDiffusionError, match="needs a scalar volume"):
        nodes.check_scalar_volume(labels)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(XDiffusionError, match="has no voxels"):
        nodes.check_scalar_volume(empty)
    nodes.check_scalar_volume(nodes.add_volume_node(scene, oblique_volume(), "ok"))


@pytest.mark.parametrize("direction", [
    np.eye(3),
    np.array([[-1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]),
    rotation((12.0, -8.0, 25.0)),
])
@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_slice_view_position_gives_the_canonical_index(direction, plane):
    """A view through a voxel centre picks the index whose canonical slice holds that voxel."""
    volume = oblique_volume(shape=(9, 11, 7), direction=direction)
    canonical, reorientation = to_canonical(volume)
    axis = plane_axis(plane)
    for index in range(canonical.shape[axis]):
        centre = slices.ras_point_of_slice(volume.grid, plane, index)
        assert slices.slice_index_at_point(volume.grid, plane, centre) == index
        # the voxel at that RAS point belongs to canonical slice `index`
        lps = np.diag([-1.0, -1.0, 1.0]) @ centre
        ijk = np.linalg.solve(volume.grid.direction @ np.diag(volume.grid.spacing), lps - np.asarray(volume.grid.origin))
        original_axis, original_index = reorientation.original_index(axis, index)
        assert round(ijk[original_axis]) == original_index
    slice_to_ras = np.eye(4)
    normal = np.eye(3)[axis]
    slice_to_ras[:3, 2] = normal
    slice_to_ras[:3, 3] = slices.ras_point_of_slice(volume.grid, plane, 2)
    assert slices.slice_index_from_view(volume.grid, plane, slice_to_ras) == 2


def test_slice_view_errors():
    volume = oblique_volume(direction=np.eye(3))
    far = np.eye(4)
    far[:3, 3] = [0.0, 0.0, 500.0]
    with pytest.raises(XDiffusionError, match="outside the volume: move the Red view"):
        slices.slice_index_from_view(volume.grid, "axial", far)
    sagittal_view = np.eye(4)[:, [1, 2, 0, 3]]  # normal along R
    with pytest.raises(XDiffusionError, match="is not in the axial orientation"):
        slices.slice_index_from_view(volume.grid, "axial", sagittal_view)
    with pytest.raises(XDiffusionError, match="slice index 99 is outside"):
        slices.ras_point_of_slice(volume.grid, "axial", 99)


def test_parse_indices():
    assert slices.parse_indices("40, 64 90;12") == [12, 40, 64, 90]
    assert slices.parse_indices("10-13, 12") == [10, 11, 12, 13]
    assert slices.parse_indices("  ") == []
    with pytest.raises(XDiffusionError, match="'4a' is not a whole number"):
        slices.parse_indices("3, 4a")
    with pytest.raises(XDiffusionError, match="runs backwards"):
        slices.parse_indices("9-3")
    assert slices.format_indices([3, 9]) == "3, 9"


# ------------------------------------------------------------------------------ thick-slice scans


def test_all_acquired_slices_land_exactly_on_the_finer_grid():
    """A 0.9x0.9x5 mm coronal series stored LSA-like (slices along the first voxel axis): the panel's
    plan is the library's, on the scan's own grid refined along the slice axis (issue 21)."""
    from XDiffusionLib.slicer.thick_slices import acquisition_plane, plan_all_slices
    from XDiffusionLib.transforms.thick_slices import place_acquired

    # voxel axes: i = anterior-posterior (the 5 mm slices), j = left-right, k = inferior-superior
    direction = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]) @ rotation((3.0, 2.0, -4.0))
    volume = Volume.from_array(smooth_array((9, 20, 22)), (5.0, 0.9, 0.9), (10.0, -30.0, 40.0), direction)
    assert acquisition_plane(volume.grid) == "coronal"
    plan = plan_all_slices(volume.grid, 1.25)
    assert (plan.plane, plan.factor, plan.slice_spacing, plan.thickness) == ("coronal", 4, 5.0, 5.0)
    assert plan.grid.shape == (33, 20, 22) and plan.grid.spacing == pytest.approx((1.25, 0.9, 0.9))
    assert plan.grid.origin == volume.grid.origin and np.allclose(plan.grid.direction, direction)
    assert plan.indices == tuple(range(0, 33, 4))
    fine = place_acquired(volume, plan)
    np.testing.assert_array_equal(fine.array[::4], volume.array)  # acquired slice i is fine slice 4i
    canonical, _ = to_canonical(fine)
    for index, source in zip(plan.indices, to_canonical(volume)[0].array.transpose(1, 0, 2)):
        np.testing.assert_array_equal(canonical.array[:, index], source)
    assert plan.describe() == ("all 9 acquired coronal slices (5 mm apart, 5 mm thick) onto 1.25 mm slices "
                               "(33x20x22 voxels)")


@pytest.mark.parametrize("spacing, message", [
    (2.0, "spacing 2 mm does not divide the 5 mm between the acquired axial slices: choose 2.5 or 1.667 mm"),
    (3.0, "spacing 3 mm does not divide the 5 mm between the acquired axial slices: choose 2.5 mm"),
    (4.0, "spacing 4 mm is not finer than the 5 mm between the acquired axial slices: choose at most 2.5 mm"),
    (0.0, "the spacing must be a positive number of millimetres, got 0.0"),
    (float("nan"), "the spacing must be a positive number of millimetres, got nan"),
    (5e-5, "slice factor 100000 would give 24x20x500001 voxels (over 128 million): choose a smaller factor or a "
            "larger spacing"),
])
def test_grid_spacing_that_does_not_fit_the_scan_is_one_line(spacing, message):
    from XDiffusionLib.slicer.thick_slices import plan_all_slices

    volume = Volume.from_array(np.zeros((24, 20, 6), np.float32), (1.0, 1.0, 5.0))
    with pytest.raises(XDiffusionError) as error:
        plan_all_slices(volume.grid, spacing)
    assert str(error.value) == message
    assert plan_all_slices(volume.grid, 1.0).indices == (0, 5, 10, 15, 20, 25)


def test_input_slices_cross_other_views_as_lines_and_quick_picks():
    """Issue 22 items 3 and 4: where an axial input slice crosses a coronal view (a row of pixels,
    the page's y downwards), and the quick picks (all acquired, every n-th, K spread)."""
    import numpy as np

    from XDiffusionLib.errors import XDiffusionError
    from XDiffusionLib.io.volume import Volume
    from XDiffusionLib.slicer.slices import quick_picks, slice_line_in_view, slice_plane

    array = np.zeros((10, 12, 20), np.float32)
    array[2:8, 2:10, 3:17] = 50.0
    grid = Volume.from_array(array, (1.0, 1.0, 2.0)).grid
    point, normal = slice_plane(grid, "axial", 5)
    assert abs(abs(normal[2]) - 1.0) < 1e-9
    # A coronal view 100 x 80 pixels, 1 mm per pixel: x = R, y = S, centred on the point's S.
    xy_to_ras = np.eye(4)
    xy_to_ras[:3, :3] = [[1, 0, 0], [0, 0, 1], [0, 1, 0]]
    xy_to_ras[:3, 3] = [-50.0, 0.0, point[2] - 30.0]
    x1, y1, x2, y2 = slice_line_in_view(xy_to_ras, (100, 80), point, normal)
    assert (x1, x2) == (0.0, 100.0) and y1 == y2 == 80 - 30.0
    assert slice_line_in_view(xy_to_ras, (100, 80), point + [0, 0, 100.0], normal) is None  # off the view
    axial_view = np.eye(4)
    assert slice_line_in_view(axial_view, (100, 80), point, normal) is None  # its own plane
    canonical = array  # already RAS+ here
    assert quick_picks(canonical, "axial", "all") == list(range(3, 17))
    assert quick_picks(canonical, "axial", "every", 5) == [3, 8, 13]
    assert len(quick_picks(canonical, "axial", "spread", 4)) == 4
    with pytest.raises(XDiffusionError, match="unknown quick pick"):
        quick_picks(canonical, "axial", "most")


def test_a_removed_result_takes_its_display_legend_and_storage_nodes_with_it(scene):
    """Issue 22 item 5: ``scene.RemoveNode`` leaves a volume's display nodes in the scene, and a
    display node keeps the volume's image alive: a web session grew by its result every run."""
    from XDiffusionLib.slicer import display

    shown = nodes.add_volume_node(scene, oblique_volume(), "uncertainty")
    display.show_uncertainty(shown, scene)  # a display node and a colour legend
    shown.AddDefaultStorageNode()
    kept = nodes.add_volume_node(scene, oblique_volume(), "input")
    before_tables = scene.GetNodesByClass("vtkMRMLColorTableNode").GetNumberOfItems()
    dependents = [shown.GetNthDisplayNode(i) for i in range(shown.GetNumberOfDisplayNodes())] + [shown.GetStorageNode()]
    assert len(dependents) == 3 and any(node.IsA("vtkMRMLColorLegendDisplayNode") for node in dependents)

    nodes.remove_node(scene, shown)
    assert not scene.IsNodePresent(shown)
    assert not any(scene.IsNodePresent(node) for node in dependents)
    assert scene.IsNodePresent(kept) and scene.IsNodePresent(kept.GetDisplayNode())  # nothing else
    # The shared colour tables stay for the next result.
    assert scene.GetNodesByClass("vtkMRMLColorTableNode").GetNumberOfItems() == before_tables
    nodes.remove_node(scene, shown)  # removing twice is harmless
    nodes.remove_node(scene, None)
