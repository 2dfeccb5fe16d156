"""Reconstruction metrics (numpy; LPIPS uses torch lazily).

PSNR conventions are reported under their own names: "psnr_paper" (paper eq. 4, max(gt)^2 / MSE)
and "psnr_unit" (TPDM: [0, 1] volumes, data range 1).
"""

from .correlation import pearson_r
from .lpips import NO_WEIGHTS_MESSAGE, lpips_per_plane
from .overlap import dice_per_label
from .psnr import PSNR_CONVENTIONS, mse, psnr_all, psnr_from_mse, psnr_paper, psnr_unit, random_pair_psnr, to_unit_range
from .sharpness import sharpness_ratio
from .slice_errors import error_by_distance, mean_error_by_distance
from .ssim import ssim_per_plane, ssim_slices
from .volume import brain_volume_mm3

__all__ = [
    "NO_WEIGHTS_MESSAGE",
    "PSNR_CONVENTIONS",
    "brain_volume_mm3",
    "dice_per_label",
    "error_by_distance",
    "lpips_per_plane",
    "mean_error_by_distance",
    "mse",
    "pearson_r",
    "psnr_all",
    "psnr_from_mse",
    "psnr_paper",
    "psnr_unit",
    "random_pair_psnr",
    "sharpness_ratio",
    "ssim_per_plane",
    "ssim_slices",
    "to_unit_range",
]
