"""Invertible preprocessing: canonical orientation, resampling, intensity scaling, the model's cube."""

from .intensity import IntensityNormalizer
from .model_space import ModelSpace
from .orientation import Reorientation, orientation_code, to_canonical
from .resample import isotropic_grid, resample_isotropic, resample_to_grid

__all__ = [
    "IntensityNormalizer",
    "ModelSpace",
    "Reorientation",
    "isotropic_grid",
    "orientation_code",
    "resample_isotropic",
    "resample_to_grid",
    "to_canonical",
]
