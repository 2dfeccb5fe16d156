"""Everything the panel checks before a run, without torch and without touching the scene.

Each check raises one XDiffusionError whose message the panel shows as it is: no model, no
slices, a 2D input, a reference or labelmap on another voxel grid, a slice outside the volume, a
grid spacing that does not fit a thick-slice scan (``plan_request``).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import XDiffusionError
from ..inputs import check_slice_indices
from ..io.volume import Grid
from ..model.files import MODEL_FILES, default_model_dir
from ..worker.messages import JobSettings
from .nodes import check_scalar_volume, grid_from_node
from .slices import canonical_depth
from .thick_slices import AllSlicesPlan, job_settings, plan_all_slices


def check_model_dir(model_dir: str | os.PathLike | None) -> Path:
    """The model folder to use (None or "": the shipped default), or a clear error if it is unusable."""
    if model_dir is None or str(model_dir).strip() == "":
        directory = default_model_dir()
        if not all((directory / name).is_file() for name in MODEL_FILES):
            raise XDiffusionError(f"the default model is not installed (no weights in {directory}): "
                                  "choose a model folder (config.json + model.safetensors)")
        return directory
    directory = Path(model_dir).expanduser()
    if not directory.is_dir():
        raise XDiffusionError(f"model folder {directory} not found")
    missing = [name for name in MODEL_FILES if not (directory / name).is_file()]
    if missing:
        raise XDiffusionError(f"model folder {directory} has no {' and no '.join(missing)}: "
                              "choose a folder written by 'xdiffusion train' (config.json + model.safetensors)")
    return directory


def check_same_grid(node, grid: Grid, role: str, input_name: str) -> None:
    """``node`` lies on exactly ``grid`` (voxel-by-voxel comparable), else a clear error."""
    other = grid_from_node(node)
    if other.shape != grid.shape:
        raise XDiffusionError(
            f"{role} {node.GetName()!r} is {_size(other.shape)} voxels but the input {input_name!r} is "
            f"{_size(grid.shape)}: resample it onto the input first")
    if not other.same_geometry(grid, tol=1e-3):
        raise XDiffusionError(
            f"{role} {node.GetName()!r} has the input's size but another position, spacing or orientation: "
            "resample it onto the input first")


def check_request(input_node, settings: JobSettings, reference_node=None, segmentation_node=None) -> Grid:
    """Check a whole request before anything is created; returns the input's grid."""
    check_scalar_volume(input_node, "input volume")
    grid = grid_from_node(input_node)
    settings.check()
    check_slice_indices(settings.indices, canonical_depth(grid, settings.plane), settings.plane)
    check_model_dir(settings.model_dir)
    if reference_node is not None:
        check_scalar_volume(reference_node, "reference volume")
        check_same_grid(reference_node, grid, "reference volume", input_node.GetName())
    _check_overlay(segmentation_node, grid, input_node.GetName())
    return grid


def plan_request(input_node, settings: JobSettings, grid_spacing: float, reference_node=None,
                 segmentation_node=None, thickness: float | None = None) -> tuple[AllSlicesPlan, JobSettings]:
    """Check a request that takes all acquired slices of a thick-slice scan onto a ``grid_spacing``
    mm grid (``thick_slices``), each averaging ``thickness`` mm (None: the slice spacing); returns
    the plan and ``settings`` with its plane and slices."""
    check_scalar_volume(input_node, "input volume")
    grid = grid_from_node(input_node)
    check_model_dir(settings.model_dir)
    # Any number of acquired slices: more than the model takes go through in windows (the library's).
    plan = plan_all_slices(grid, grid_spacing, thickness=thickness)
    settings = job_settings(settings, plan)
    if reference_node is not None:
        raise XDiffusionError("a reference volume cannot be compared with a reconstruction from all acquired slices "
                              "(it lies on a new, finer grid): choose no reference volume")
    _check_overlay(segmentation_node, grid, input_node.GetName())
    return plan, settings


def _check_overlay(segmentation_node, grid: Grid, input_name: str) -> None:
    if segmentation_node is not None and segmentation_node.IsA("vtkMRMLLabelMapVolumeNode"):
        check_same_grid(segmentation_node, grid, "labelmap", input_name)
    if (segmentation_node is not None and segmentation_node.IsA("vtkMRMLSegmentationNode")
            and segmentation_node.GetSegmentation().GetNumberOfSegments() == 0):
        raise XDiffusionError(f"segmentation {segmentation_node.GetName()!r} has no segments to overlay")


def _size(shape) -> str:
    return "x".join(str(int(s)) for s in shape)
