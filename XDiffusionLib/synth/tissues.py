"""Soft tissue maps of the ICBM152 template at a working resolution, derived once and cached.

The shipped ICBM152 2009a T1 is brain-masked (zero outside the brain), so the template gives
three soft brain classes (GM and WM maps; CSF = brain mask minus GM and WM) plus a signed distance
to a smooth "skull inner surface" (the brain mask closed over its sulci). Head tissue outside the
brain (extra-axial CSF, bone, marrow, muscle, fat) is laid out per subject as random-thickness
shells on that distance (``subject.py``), so it deforms with the brain.

Working grids are axis-aligned RAS+ (axis 0 left->right, 1 posterior->anterior, 2
inferior->superior) and centred on the template's field of view; positions are millimetres
relative to that centre (see ``AtlasMaps.center_ras``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from ..data.samples import sample_path
from ..io import read_volume

# Hard tissue label values (index into the class axis of the probability stack).
TISSUE_CLASSES: tuple[str, ...] = ("background", "csf", "gm", "wm", "bone", "marrow", "muscle", "fat")
TISSUE_LABELS: dict[str, int] = {name: i for i, name in enumerate(TISSUE_CLASSES)}

# Channels of the cached atlas stack.
ATLAS_CHANNELS: tuple[str, ...] = ("gm", "wm", "csf", "hull_distance", "ventricle_distance", "csf_distance")

# The brain mask is closed with this radius to get a smooth skull inner surface (bridges sulci).
_HULL_CLOSING_MM = 7.0
# Template RAS height above which white matter counts as cerebral (above cerebellum and pons).
_SUPRATENTORIAL_RAS_Z = -12.0


@dataclass(frozen=True)
class AtlasMaps:
    """Template tissue channels on a working grid.

    ``channels[c, i, j, k]`` for ``ATLAS_CHANNELS``: gm, wm, csf are soft fractions of the voxel
    (gm + wm + csf is the soft brain mask); ``hull_distance`` is the signed distance in mm to the
    closed brain surface (negative inside); ``ventricle_distance`` and ``csf_distance`` are the
    distances in mm to the lateral ventricles and to any CSF or outside of the brain (used to
    enlarge ventricles and widen sulci per subject). Voxel (i, j, k) lies at RAS
    ``center_ras + spacing * ((i, j, k) - (shape - 1) / 2)``.
    """

    channels: np.ndarray
    spacing: float
    center_ras: tuple[float, float, float]
    wm_points_mm: np.ndarray  # (n, 3) positions (mm from centre) of deep white matter: lesion seeds

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.channels.shape[1:])  # type: ignore[return-value]

    @property
    def half_extent_mm(self) -> np.ndarray:
        """Distance (mm) from the centre to the outermost voxel centres, per axis."""
        return self.spacing * (np.asarray(self.shape, dtype=np.float64) - 1) / 2


def working_shape(spacing: float) -> tuple[int, int, int]:
    """Shape of the template field of view (196x232x188 mm between voxel centres) at ``spacing``."""
    extent = np.array([196.0, 232.0, 188.0])
    return tuple(int(n) for n in np.floor(extent / spacing + 1e-6).astype(int) + 1)  # type: ignore[return-value]


@lru_cache(maxsize=1)
def _template_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """T1, GM, WM at 1 mm in RAS+ index order, GM/WM scaled to [0, 1]; plus the RAS of voxel 0."""
    arrays = []
    first = None
    for name in ("icbm152_t1", "icbm152_gm", "icbm152_wm"):
        volume = read_volume(sample_path(name))
        array, ras0 = _to_ras(volume)
        arrays.append(array)
        first = ras0 if first is None else first
    t1, gm, wm = arrays
    scale = max(float(gm.max()), float(wm.max()), 1.0)
    # The maps ship as 0..255 (uint8) or 0..1 (float): bring both to fractions.
    if scale > 1.5:
        gm, wm = gm / 255.0, wm / 255.0
    return t1, gm.astype(np.float32), wm.astype(np.float32), first


def _to_ras(volume) -> tuple[np.ndarray, np.ndarray]:
    """Flip axes so the array is RAS+ (the shipped template is axis-aligned)."""
    direction = volume.direction
    to_ras = np.diag([-1.0, -1.0, 1.0])  # LPS -> RAS
    axes_ras = to_ras @ direction  # columns: RAS direction of each index axis
    if not np.allclose(np.abs(axes_ras), np.eye(3), atol=1e-3):
        raise ValueError("template is expected axis-aligned with RAS axes")
    array = volume.array
    origin_ras = to_ras @ np.asarray(volume.origin)
    for axis in range(3):
        if axes_ras[axis, axis] < 0:
            array = np.flip(array, axis=axis)
            origin_ras[axis] -= volume.spacing[axis] * (volume.shape[axis] - 1)
    return np.ascontiguousarray(array, dtype=np.float32), origin_ras


@lru_cache(maxsize=4)
def load_atlas(spacing: float = 2.0) -> AtlasMaps:
    """Template tissue maps resampled to ``spacing`` mm (anti-aliased), cached per spacing."""
    spacing = float(max(spacing, 1.0))
    t1, gm, wm, ras0 = _template_arrays()
    center = ras0 + (np.asarray(t1.shape) - 1) / 2.0  # 1 mm template
    shape = working_shape(spacing)
    brain_1mm = (t1 > 0).astype(np.float32)
    maps = [_downsample(a, spacing, shape) for a in (gm, wm, brain_1mm)]
    gm_w, wm_w, brain_w = (np.clip(m, 0.0, 1.0) for m in maps)
    # GM/WM maps reach a little past the T1 mask: the brain is whichever is larger.
    tissue = gm_w + wm_w
    over = tissue > 1.0
    gm_w[over] /= tissue[over]
    wm_w[over] /= tissue[over]
    brain = np.maximum(brain_w, np.minimum(tissue, 1.0))
    csf = np.clip(brain - gm_w - wm_w, 0.0, 1.0)
    distance = _hull_distance(brain > 0.5, spacing)
    sampling = (spacing,) * 3
    ventricles = _lateral_ventricles(csf, distance, spacing)
    ventricle_distance = ndimage.distance_transform_edt(~ventricles, sampling=sampling)
    csf_distance = ndimage.distance_transform_edt((csf < 0.5) & (brain > 0.5), sampling=sampling)
    channels = np.stack([gm_w, wm_w, csf, distance, ventricle_distance, csf_distance]).astype(np.float32)

    # Lesion seeds: deep cerebral white matter (adult gliomas are mostly above the tentorium),
    # at least 8 mm inside the hull.
    seeds = np.argwhere((wm_w > 0.6) & (distance < -8.0))
    seeds_mm = (seeds - (np.asarray(shape) - 1) / 2.0) * spacing
    seeds_mm = seeds_mm[seeds_mm[:, 2] + center[2] > _SUPRATENTORIAL_RAS_Z]
    return AtlasMaps(channels, spacing, tuple(float(c) for c in center), seeds_mm.astype(np.float32))


def _downsample(array: np.ndarray, spacing: float, shape: tuple[int, int, int]) -> np.ndarray:
    """Blur (FWHM about one output voxel) and resample a 1 mm array onto the working grid."""
    if spacing > 1.0:
        array = ndimage.gaussian_filter(array, sigma=0.42 * np.sqrt(spacing**2 - 1.0), mode="constant")
    center_index = (np.asarray(array.shape) - 1) / 2.0
    axes = [center_index[a] + spacing * (np.arange(n) - (n - 1) / 2.0) for a, n in enumerate(shape)]
    # Separable linear resampling: the grid is axis-aligned, so zoom each axis in turn.
    out = array
    for axis, positions in enumerate(axes):
        out = _interp_axis(out, positions, axis)
    return out.astype(np.float32)


def _interp_axis(array: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    n = array.shape[axis]
    positions = np.clip(positions, 0, n - 1)
    lo = np.floor(positions).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    w = (positions - lo).astype(np.float32)
    shape = [1, 1, 1]
    shape[axis] = -1
    w = w.reshape(shape)
    return np.take(array, lo, axis=axis) * (1 - w) + np.take(array, hi, axis=axis) * w


def _lateral_ventricles(csf: np.ndarray, distance: np.ndarray, spacing: float) -> np.ndarray:
    """Deep CSF off the midline (the midline holds the interhemispheric fissure): the ventricles."""
    shape = np.asarray(csf.shape)
    lateral_mm = np.abs(spacing * (np.arange(shape[0]) - (shape[0] - 1) / 2.0))[:, None, None]
    deep = (csf > 0.5) & (distance < -18.0) & (lateral_mm >= 3.0)
    labels, count = ndimage.label(deep)
    if count == 0:
        return deep
    volumes_ml = ndimage.sum(deep, labels, np.arange(1, count + 1)) * spacing**3 / 1000.0
    keep = np.flatnonzero(volumes_ml >= 1.0) + 1
    return np.isin(labels, keep)


def _hull_distance(brain: np.ndarray, spacing: float) -> np.ndarray:
    """Signed distance (mm, negative inside) to the brain mask closed over sulci and filled."""
    sampling = (spacing,) * 3
    pad = int(np.ceil(_HULL_CLOSING_MM / spacing)) + 2
    padded = np.pad(brain, pad)
    # Closing by distance thresholds: dilate by r, then erode by r.
    dilated = ndimage.distance_transform_edt(~padded, sampling=sampling) <= _HULL_CLOSING_MM
    closed = ndimage.distance_transform_edt(dilated, sampling=sampling) > _HULL_CLOSING_MM
    closed = ndimage.binary_fill_holes(closed | padded)
    closed = closed[pad:-pad, pad:-pad, pad:-pad]
    outside = ndimage.distance_transform_edt(~closed, sampling=sampling)
    inside = ndimage.distance_transform_edt(closed, sampling=sampling)
    return (outside - inside).astype(np.float32)
