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


def slice_plane(grid: Grid, plane: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Canonical ``plane`` slice ``index`` as a RAS point on it and its unit normal (the voxel axis
    that holds the plane's slices, so an oblique scan's slices stay oblique)."""
    reorientation = Reorientation.for_grid(grid)
    axis = reorientation.permutation[plane_axis(plane)]
    normal = _LPS_TO_RAS @ np.asarray(grid.direction, dtype=float)[:, axis]
    return ras_point_of_slice(grid, plane, index), normal / np.linalg.norm(normal)


def slice_line_in_view(xy_to_ras, size: tuple[int, int], point, normal) -> tuple[float, float, float, float] | None:
    """Where the plane (``point``, ``normal``, RAS) crosses a slice view, as a segment
    (x1, y1, x2, y2) in the view's pixels with y downwards (the page's coordinates), clipped to
    the view (``size``: width, height); None when the plane misses the view or is the view's own."""
    matrix = np.asarray(xy_to_ras, dtype=float).reshape(4, 4)
    normal = np.asarray(normal, dtype=float)[:3]
    a, b = float(normal @ matrix[:3, 0]), float(normal @ matrix[:3, 1])
    d = float(normal @ (matrix[:3, 3] - np.asarray(point, dtype=float)[:3]))
    width, height = size
    if np.hypot(a, b) < 1e-9 * max(np.linalg.norm(matrix[:3, :2]), 1e-12):
        return None  # parallel to the view: its own plane, not a line
    ends: list[tuple[float, float]] = []
    if abs(b) > 1e-12:  # crossings of the left and right edges
        ends += [(x, -(a * x + d) / b) for x in (0.0, float(width))]
    if abs(a) > 1e-12:  # crossings of the bottom and top edges
        ends += [(-(b * y + d) / a, y) for y in (0.0, float(height))]
    inside = sorted({(round(x, 6), round(y, 6)) for x, y in ends
                     if -1e-6 <= x <= width + 1e-6 and -1e-6 <= y <= height + 1e-6})
    if len(inside) < 2:
        return None
    (x1, y1), (x2, y2) = inside[0], inside[-1]
    return x1, height - y1, x2, height - y2  # VTK's y grows upwards, the page's downwards


QUICK_PICKS = ("all", "every", "spread")  # all acquired slices, every n-th, K spread over the head


def quick_picks(canonical: np.ndarray, plane: str, how: str, n: int = 1) -> list[int]:
    """Input slices of ``plane`` chosen in one go from the volume's canonical (RAS+) voxels:
    ``all`` acquired slices that are not empty, ``every`` n-th of them, or ``n`` ``spread`` over the
    head (the evaluation protocol's choice: bin centres of the head's extent)."""
    from ..evaluation.protocol import choose_indices  # scipy (the evaluation package): only when picking

    if how not in QUICK_PICKS:
        raise XDiffusionError(f"unknown quick pick {how!r}: one of {', '.join(QUICK_PICKS)}")
    if int(n) < 1:
        raise XDiffusionError(f"{'K' if how == 'spread' else 'n'} = {n}: must be at least 1")
    array = np.asarray(canonical)
    axis = plane_axis(plane)
    if how == "spread":
        return sorted(int(i) for i in choose_indices(array, plane, int(n)))
    moved = np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)
    acquired = [int(i) for i in np.flatnonzero(moved.max(axis=1) > moved.min(axis=1))]  # empty slices carry nothing
    if not acquired:
        raise XDiffusionError(f"every {plane} slice is empty: nothing to pick")
    return acquired if how == "all" else acquired[::int(n)]
