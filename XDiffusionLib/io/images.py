"""SimpleITK images as ``Volume``s: voxels in ``array[i, j, k]`` order, geometry as a ``Grid``,
and ITK's error text cut to its one informative line.
"""

from __future__ import annotations

import re

import numpy as np
import SimpleITK as sitk

from .volume import Grid, Volume


def image_to_array(image: sitk.Image, dtype: np.dtype | type | None = np.float32) -> np.ndarray:
    """Voxels of a 3D SimpleITK image as a C-contiguous ``array[i, j, k]`` (ITK's view is [k, j, i])."""
    view = sitk.GetArrayViewFromImage(image)
    return np.ascontiguousarray(view.transpose(2, 1, 0), dtype=dtype)


def grid_from_image(image: sitk.Image) -> Grid:
    """The Grid (shape, spacing, LPS origin, direction columns) of a 3D SimpleITK image."""
    return Grid(
        shape=image.GetSize(),
        spacing=image.GetSpacing(),
        origin=image.GetOrigin(),
        direction=np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3),
    )


def image_to_volume(image: sitk.Image) -> Volume:
    """A 3D scalar SimpleITK image as a float32 Volume (no input checks: for images made in code)."""
    return Volume(image_to_array(image, np.float32), grid_from_image(image))


def itk_reason(error: Exception) -> str:
    """The informative last line of an ITK exception, without source paths and object addresses."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(("Exception thrown", "/", "Reason: Success")) or ".cxx:" in line:
            continue
        reason = re.sub(r"\w+\(0x[0-9a-fA-F]+\): ", "", line.split("ERROR: ", 1)[-1])
        return reason[:160]
    return "ITK could not read it"
