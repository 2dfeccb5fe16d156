"""Which input slices: slice views and typed text -> canonical slice indices, and back.

Indices are canonical (see ``XDiffusionLib.methods`` and ``XDiffusionLib.transforms.orientation``):
along the RAS+ axis of the plane, i.e. the volume's voxel axis closest to that anatomical direction,
counted from the left / posterior / inferior end. Slicer's slice views show the same anatomical
planes, so the Red (axial), Green (coronal) and Yellow (sagittal) views map directly onto them.
"""

from __future__ import annotations

import re

import numpy as np

from ..errors import XDiffusionError
from ..io.volume import Grid
from ..inputs import check_slice_indices, plane_axis
from ..transforms.orientation import Reorientation

# The default slice view that shows each plane.
PLANE_VIEW: dict[str, str] = {"axial": "Red", "coronal": "Green", "sagittal": "Yellow"}

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def slice_index_at_point(grid: Grid, plane: str, ras_point) -> int:
    """Canonical index of the ``plane`` slice through ``ras_point`` (RAS millimetres)."""
    reorientation = Reorientation.for_grid(grid)
    axis = reorientation.permutation[plane_axis(plane)]
    lps = _LPS_TO_RAS @ np.asarray(ras_point, dtype=float)[:3]
    ijk = np.linalg.solve(grid.direction @ np.diag(grid.spacing), lps - np.asarray(grid.origin))
    index = int(np.floor(ijk[axis] + 0.5))
    if not 0 <= index < grid.shape[axis]:
        raise XDiffusionError(
            f"the {plane} slice at {_fmt(ras_point)} mm is outside the volume: move the {PLANE_VIEW[plane]} view into it")
    return reorientation.canonical_index(axis, index)[1]


def slice_index_from_view(grid: Grid, plane: str, slice_to_ras) -> int:
    """Canonical index of the slice a slice view shows (``slice_to_ras``: the view's 4x4 SliceToRAS)."""
    matrix = np.asarray(slice_to_ras, dtype=float).reshape(4, 4)
    normal = matrix[:3, 2] / np.linalg.norm(matrix[:3, 2])
    expected = np.eye(3)[plane_axis(plane)]
    if abs(float(normal @ expected)) < 0.9:
        raise XDiffusionError(f"the slice view is not in the {plane} orientation: use the {PLANE_VIEW[plane]} view "
                              f"or set the view orientation to {plane.capitalize()}")
    return slice_index_at_point(grid, plane, matrix[:3, 3])


def ras_point_of_slice(grid: Grid, plane: str, index: int) -> np.ndarray:
    """RAS centre of canonical slice ``index`` of ``plane`` (to move a slice view onto it)."""
    reorientation = Reorientation.for_grid(grid)
    depth = reorientation.canonical.shape[plane_axis(plane)]
    (index,) = check_slice_indices([index], depth, plane)
    axis, original = reorientation.original_index(plane_axis(plane), index)
    ijk = (np.asarray(grid.shape, dtype=float) - 1.0) / 2.0
    ijk[axis] = original
    lps = np.asarray(grid.origin) + grid.direction @ (np.asarray(grid.spacing) * ijk)
    return _LPS_TO_RAS @ lps


def canonical_depth(grid: Grid, plane: str) -> int:
    """Number of ``plane`` slices of ``grid``."""
    return Reorientation.for_grid(grid).canonical.shape[plane_axis(plane)]


def parse_indices(text: str) -> list[int]:
    """Indices typed by a user: ``"40, 64 90"`` or ranges ``"10-14"``; sorted, without repeats."""
    indices: set[int] = set()
    for token in re.split(r"[,;\s]+", text.strip()):
        if not token:
            continue
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", token)
        if match is None:
            raise XDiffusionError(f"slice index {token!r} is not a whole number or a range like 10-14")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise XDiffusionError(f"slice range {token!r} runs backwards")
        indices.update(range(first, last + 1))
    return sorted(indices)


def format_indices(indices) -> str:
    return ", ".join(str(int(i)) for i in indices)


def _fmt(point) -> str:
    return "(" + ", ".join(f"{float(v):.1f}" for v in np.asarray(point)[:3]) + ")"
