"""Tumour-like lesions: necrotic core, enhancing rim, surrounding edema, with mass effect.

Label values follow BraTS 2017-2021: 1 = necrotic / non-enhancing tumour core, 2 = peritumoural
edema, 4 = enhancing tumour (``LESION_LABELS``). A lesion is defined in template coordinates
(irregular smooth blobs around a deep white-matter seed), so it is evaluated at the same
deformed positions as the tissue maps: labels and image stay aligned by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .deform import radial_push
from .tissues import AtlasMaps

NECROTIC, EDEMA, ENHANCING = 1, 2, 4
LESION_LABELS: dict[int, str] = {NECROTIC: "necrotic or non-enhancing tumour core", EDEMA: "edema", ENHANCING: "enhancing tumour"}

_NOISE_POINTS = 6  # coarse boundary-noise grid per lesion (points per axis)


@dataclass(frozen=True)
class Lesion:
    """One tumour in template millimetres (relative to the template centre)."""

    center: np.ndarray  # (3,)
    core_radius: float  # necrotic core; equals tumour_radius when the tumour does not enhance
    tumour_radius: float  # core + enhancing rim
    edema_radius: float
    irregularity: tuple[float, float]  # relative boundary wobble of (tumour, edema)
    mass_effect: float  # 0..0.6: how far nearby tissue is pushed out
    noise: np.ndarray  # (3, m, m, m) smooth boundary noise for core, tumour, edema

    @property
    def enhancing(self) -> bool:
        return self.core_radius < self.tumour_radius

    def params(self) -> dict:
        return {
            "center_mm": [round(float(c), 3) for c in self.center],
            "core_radius_mm": round(self.core_radius, 3),
            "tumour_radius_mm": round(self.tumour_radius, 3),
            "edema_radius_mm": round(self.edema_radius, 3),
            "enhancing": self.enhancing,
            "irregularity": [round(a, 3) for a in self.irregularity],
            "mass_effect": round(self.mass_effect, 3),
        }


def random_lesions(rng: np.random.Generator, atlas: AtlasMaps, multifocal_probability: float = 0.15) -> list[Lesion]:
    """One tumour (sometimes two) seeded in deep white matter of the template."""
    count = 2 if rng.random() < multifocal_probability else 1
    lesions = []
    for index in range(count):
        center = atlas.wm_points_mm[int(rng.integers(len(atlas.wm_points_mm)))].astype(np.float64)
        center = center + rng.uniform(-2.0, 2.0, size=3)
        tumour = float(rng.uniform(6.0, 20.0) * (0.6 if index else 1.0))
        enhancing = rng.random() < 0.75
        core = float(tumour * rng.uniform(0.35, 0.75)) if enhancing else tumour
        core = min(core, tumour - 2.0) if enhancing else core
        edema = float(tumour + rng.uniform(4.0, 25.0))
        coarse = rng.normal(0.0, 1.0, size=(3, _NOISE_POINTS, _NOISE_POINTS, _NOISE_POINTS))
        noise = np.stack([ndimage.zoom(c, 16 / _NOISE_POINTS, order=3, mode="nearest") for c in coarse])
        noise /= max(float(noise.std()), 1e-6)
        lesions.append(Lesion(
            center=center, core_radius=max(core, 1.0), tumour_radius=tumour, edema_radius=edema,
            irregularity=(float(rng.uniform(0.08, 0.3)), float(rng.uniform(0.15, 0.45))),
            mass_effect=float(rng.uniform(0.0, 0.6)),
            noise=noise.astype(np.float32),
        ))
    return lesions


def push_out(positions: np.ndarray, lesions: list[Lesion]) -> np.ndarray:
    """Template positions seen by tissue around tumours (mass effect: tissue pushed outwards)."""
    for lesion in lesions:
        positions = radial_push(positions, lesion.center, lesion.mass_effect, 1.5 * lesion.tumour_radius)
    return positions


def lesion_fractions(positions: np.ndarray, lesions: list[Lesion], spacing: float) -> np.ndarray:
    """Soft voxel fractions (3, *shape) of (necrotic, enhancing, edema-extent) at ``positions``.

    The third channel is the whole edema region (including the tumour); ``subject.py`` decides
    which tissue it replaces. Edges ramp over one voxel (partial volume).
    """
    shape = positions.shape[1:]
    necrotic = np.zeros(shape, np.float32)
    tumour = np.zeros(shape, np.float32)
    edema = np.zeros(shape, np.float32)
    for lesion in lesions:
        offset = positions - lesion.center.astype(np.float32)[:, None, None, None]
        r = np.sqrt(np.einsum("c...,c...->...", offset, offset))
        # Work in the box of voxels the lesion can reach (noise is at most ~5 standard deviations).
        reach = lesion.edema_radius * (1 + 5 * max(lesion.irregularity)) + spacing
        near = np.argwhere(r < reach)
        if len(near) == 0:
            continue
        lo, hi = near.min(axis=0), near.max(axis=0) + 1
        box_slice = tuple(slice(a, b) for a, b in zip(lo, hi))
        offset, r = offset[(slice(None), *box_slice)], r[box_slice]
        box = np.float32(1.6 * lesion.edema_radius)
        noise = _sample_noise(lesion.noise, offset / box)
        a_t, a_e = lesion.irregularity
        core_edge = lesion.core_radius * (1 + a_t * noise[0])
        tumour_edge = lesion.tumour_radius * (1 + a_t * noise[1])
        edema_edge = lesion.edema_radius * (1 + a_e * noise[2])
        ramp = lambda edge: np.clip(0.5 + (edge - r) / np.float32(spacing), 0.0, 1.0)  # noqa: E731
        t = ramp(tumour_edge)
        n = np.minimum(ramp(core_edge), t) if lesion.enhancing else t
        tumour[box_slice] = np.maximum(tumour[box_slice], t)
        necrotic[box_slice] = np.maximum(necrotic[box_slice], n)
        edema[box_slice] = np.maximum(edema[box_slice], np.maximum(ramp(edema_edge), t))
    enhancing = np.clip(tumour - necrotic, 0.0, 1.0)
    return np.stack([necrotic, enhancing, edema])


def _sample_noise(noise: np.ndarray, normalised: np.ndarray) -> np.ndarray:
    """Trilinear samples of a (C, m, m, m) field at positions in [-1, 1] (edge values beyond)."""
    grid = np.stack([normalised[2], normalised[1], normalised[0]], axis=-1)
    sampled = F.grid_sample(
        torch.from_numpy(noise)[None], torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float32))[None],
        mode="bilinear", padding_mode="border", align_corners=True,
    )
    return sampled[0].numpy()


def hard_labels(necrotic: np.ndarray, enhancing: np.ndarray, edema: np.ndarray) -> np.ndarray:
    """BraTS labels from final voxel fractions: the largest lesion part wins where lesion >= 1/2."""
    lesion = necrotic + enhancing + edema
    parts = np.stack([necrotic, edema, enhancing])
    values = np.array([NECROTIC, EDEMA, ENHANCING], dtype=np.uint8)
    labels = values[np.argmax(parts, axis=0)]
    labels[lesion < 0.5] = 0
    return labels
