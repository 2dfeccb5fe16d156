"""Rotations and cross-sections of cube volumes (torch). Conventions: see ``geometry.sections``."""

from .rotation import (
    axis_index,
    azimuth_rotations,
    quaternion_to_matrix,
    random_rotations,
    rotation_6d,
    rotation_about_axis,
    rotation_from_6d,
)
from .sections import (
    coverage_mask,
    cross_section,
    cross_section_grid,
    depth_index_to_normalised,
    from_grid_sample_order,
    normalised_to_depth_index,
    padded_side,
    rotate_back,
    to_grid_sample_order,
)

__all__ = [
    "axis_index",
    "azimuth_rotations",
    "coverage_mask",
    "cross_section",
    "cross_section_grid",
    "depth_index_to_normalised",
    "from_grid_sample_order",
    "normalised_to_depth_index",
    "padded_side",
    "quaternion_to_matrix",
    "random_rotations",
    "rotate_back",
    "rotation_6d",
    "rotation_about_axis",
    "rotation_from_6d",
    "to_grid_sample_order",
]
