"""Random MRI-like contrasts: one mean intensity per class, smooth texture within each class.

Rendering mixes class means by the soft voxel fractions, so boundaries get partial volume for
free. Ranges are chosen so the tissue order of each named contrast always holds:
- ``t1``: fat > WM > GM > CSF > bone; lesions as on post-contrast T1 (dark core, bright rim).
- ``t2``: CSF > GM > WM; fluid-rich core and edema bright.
- ``flair``: CSF dark, GM > WM; edema brightest.
- ``random``: every class uniform in [0, 1] (SynthSeg-style), background still zero; redrawn
  until CSF, GM and WM differ by at least 0.08 and the brightest of them reaches 0.4.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .tissues import TISSUE_CLASSES

CONTRASTS: tuple[str, ...] = ("t1", "t2", "flair", "random")
LESION_CLASSES: tuple[str, ...] = ("necrotic", "enhancing", "edema")
# Class index of the render stack (and of ``SyntheticSubject.classes`` values).
RENDER_CLASSES: tuple[str, ...] = TISSUE_CLASSES + LESION_CLASSES

_RANDOM_TRIES = 100
# (low, high) mean intensity per tissue; lesions are set relative to tissues below.
_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "t1": {"csf": (0.08, 0.25), "gm": (0.40, 0.56), "wm": (0.68, 0.82), "bone": (0.01, 0.07),
           "marrow": (0.45, 0.80), "muscle": (0.22, 0.38), "fat": (0.85, 1.00)},
    "t2": {"csf": (0.85, 1.00), "gm": (0.50, 0.65), "wm": (0.30, 0.44), "bone": (0.01, 0.06),
           "marrow": (0.30, 0.55), "muscle": (0.14, 0.28), "fat": (0.55, 0.85)},
    "flair": {"csf": (0.03, 0.15), "gm": (0.50, 0.64), "wm": (0.34, 0.46), "bone": (0.01, 0.06),
              "marrow": (0.30, 0.55), "muscle": (0.18, 0.34), "fat": (0.55, 0.85)},
}


def random_means(rng: np.random.Generator, contrast: str) -> dict[str, float]:
    """Mean intensity of every render class for one subject of ``contrast``."""
    if contrast not in CONTRASTS:
        raise ValueError(f"unknown contrast {contrast!r}")
    if contrast == "random":
        # Redraw until brain tissues are told apart and not all dim: an image with no visible
        # anatomy teaches nothing. Bounded, so the draw count stays deterministic per seed.
        for _ in range(_RANDOM_TRIES):
            means = {name: float(rng.uniform(0.0, 1.0)) for name in RENDER_CLASSES}
            brain = sorted(means[n] for n in ("csf", "gm", "wm"))
            if min(b - a for a, b in zip(brain, brain[1:])) >= 0.08 and brain[-1] >= 0.4:
                break
        means["background"] = 0.0
        return means
    means = {"background": 0.0}
    means.update({name: float(rng.uniform(*span)) for name, span in _RANGES[contrast].items()})
    csf, gm, wm = means["csf"], means["gm"], means["wm"]
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    if contrast == "t1":
        means["necrotic"] = csf + (gm - csf) * u(0.2, 0.8)
        means["enhancing"] = wm * u(1.05, 1.35)
        means["edema"] = gm * u(0.75, 1.0)
    elif contrast == "t2":
        means["necrotic"] = gm + (csf - gm) * u(0.4, 0.9)
        means["enhancing"] = gm * u(0.9, 1.2)
        means["edema"] = gm + (csf - gm) * u(0.3, 0.75)
    else:  # flair
        means["necrotic"] = csf + (gm - csf) * u(0.2, 1.0)
        means["enhancing"] = gm * u(1.0, 1.3)
        means["edema"] = max(gm, wm) * u(1.4, 1.8)
    return means


def render(
    rng: np.random.Generator, fractions: np.ndarray, means: dict[str, float], texture_scale_mm: float, spacing: float,
    shown: np.ndarray | None = None,
) -> tuple[np.ndarray, dict]:
    """Image = sum over classes of fraction * mean * (1 + smooth texture).

    The random draws follow ``fractions``; the image is made of ``shown`` (default ``fractions``),
    so another tissue layout (a subject's healthy twin) gets exactly the same texture.

    ``fractions`` is (len(RENDER_CLASSES), *shape). Texture is a per-class smooth random field with
    correlation length about ``texture_scale_mm`` and a random relative strength (stronger in
    lesions, which are heterogeneous).
    """
    shape = fractions.shape[1:]
    present = [c for c in range(len(RENDER_CLASSES)) if means[RENDER_CLASSES[c]] > 0 and fractions[c].max() > 0]
    coarse_shape = tuple(max(2, int(round(n * spacing / texture_scale_mm)) + 1) for n in shape)
    coarse = rng.normal(0.0, 1.0, size=(2, *coarse_shape)).astype(np.float32)
    strengths = np.array([
        rng.uniform(0.05, 0.15) if RENDER_CLASSES[c] in LESION_CLASSES else rng.uniform(0.01, 0.06)
        for c in present
    ], dtype=np.float32)
    # Each class mixes two shared fields at its own angle: distinct textures for the price of two.
    angles = rng.uniform(0.0, 2.0 * np.pi, size=len(present))
    # Trilinear upsampling of unit noise loses variance; the strengths are relative, so it is fine.
    fields = F.interpolate(torch.from_numpy(coarse)[None], size=tuple(shape), mode="trilinear", align_corners=True)[0].numpy()
    shown = fractions if shown is None else shown
    image = np.zeros(shape, np.float32)
    for n, c in enumerate(present):
        a, b = np.float32(strengths[n] * np.cos(angles[n])), np.float32(strengths[n] * np.sin(angles[n]))
        image += shown[c] * np.float32(means[RENDER_CLASSES[c]]) * (1.0 + a * fields[0] + b * fields[1])
    params = {"texture_strength": {RENDER_CLASSES[c]: round(float(s), 4) for c, s in zip(present, strengths)}}
    return np.maximum(image, 0.0), params
