"""Rotations and cross-sections of cube volumes (torch). Conventions: see ``geometry.sampling``."""

from .rotation import (
    axis_index,
    azimuth_rotations,
    plane_rotation,
    quaternion_to_matrix,
    random_rotations,
    rotation_6d,
    rotation_about_axis,
    rotation_from_6d,
)
from .sampling import (
    coverage_mask,
    cross_section,
    cross_section_grid,
    depth_index_to_normalised,
    from_grid_sample_order,
    normalised_to_depth_index,
    padded_side,
    plane_hits_cube,
    rotate_back,
    rotate_volume,
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
    "plane_hits_cube",
    "plane_rotation",
    "quaternion_to_matrix",
    "random_rotations",
    "rotate_back",
    "rotate_volume",
    "rotation_6d",
    "rotation_about_axis",
    "rotation_from_6d",
    "to_grid_sample_order",
]
