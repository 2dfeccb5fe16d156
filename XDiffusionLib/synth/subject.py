"""One synthetic subject: deformed template anatomy, random head shells, optional tumour,
random contrast and acquisition artefacts.

Everything random comes from the ``rng`` passed in, so a seed gives identical voxels. The output
grid is RAS+ canonical (LPS direction diag(-1, -1, 1)) at the requested isotropic spacing, covering
the ICBM152 field of view (196 x 232 x 188 mm) around the template's centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import XDiffusionError
from ..io.volume import Grid, Volume
from . import anatomy, artifacts
from .contrast import CONTRASTS, LESION_CLASSES, RENDER_CLASSES, random_means, render
from .deform import random_transform, sample_atlas, smooth_field, template_positions
from .lesions import hard_labels, lesion_fractions, push_out, random_lesions
from .tissues import load_atlas, working_shape

# How often each contrast is drawn when none is asked for.
CONTRAST_WEIGHTS: dict[str, float] = {"t1": 0.3, "t2": 0.2, "flair": 0.3, "random": 0.2}
SKULL_STRIPPED_PROBABILITY = 0.3

# Head layers outside the brain, innermost first: (class, thickness range in mm, variation field).
# Layers of one structure (skull; scalp) share a thickness-variation field.
_LAYERS: tuple[tuple[str, tuple[float, float], int], ...] = (
    ("csf", (1.0, 4.0), 0),  # extra-axial CSF between brain surface and skull
    ("bone", (1.0, 2.5), 1),  # inner table
    ("marrow", (0.0, 4.0), 1),  # diploe (fatty marrow), absent in thin skulls
    ("bone", (1.0, 2.5), 1),  # outer table
    ("muscle", (1.0, 5.0), 2),  # galea, temporal muscle, periosteum
    ("fat", (2.0, 7.0), 2),  # subcutaneous fat
    ("muscle", (1.0, 2.0), 2),  # skin
)
_MUSCLE_LAYER = 4


@dataclass(frozen=True)
class SyntheticSubject:
    """A synthetic head.

    ``image``: float32 in [0, 1]. ``labels``: uint8 lesion labels (``lesions.LESION_LABELS``), or
    None when no lesion was made. ``classes``: uint8 index into ``contrast.RENDER_CLASSES`` of the
    largest voxel fraction (tissues 0-7, lesion parts 8-10). ``params``: every random choice, JSON-ready.
    """

    image: Volume
    labels: Volume | None
    params: dict
    classes: Volume


def subject_rng(seed: int, index: int) -> np.random.Generator:
    """Generator of subject ``index`` in a run seeded with ``seed``: the same whatever the run's size.

    Equal to ``np.random.default_rng(np.random.SeedSequence(seed).spawn(n)[index])`` for any n > index.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def output_grid(spacing: float) -> Grid:
    """RAS+ canonical grid over the template field of view at ``spacing`` mm."""
    shape = working_shape(spacing)
    center = np.asarray(load_atlas(spacing).center_ras)
    first_ras = center - spacing * (np.asarray(shape) - 1) / 2.0
    origin_lps = first_ras * np.array([-1.0, -1.0, 1.0])
    return Grid(shape, (spacing,) * 3, tuple(origin_lps), np.diag([-1.0, -1.0, 1.0]))


def validate_settings(contrast: str | None, lesion_probability: float, spacing: float) -> None:
    """XDiffusionError for values synthesis cannot use."""
    if contrast is not None and contrast not in CONTRASTS:
        raise XDiffusionError(f"unknown contrast {contrast!r}: choose one of {', '.join(CONTRASTS)}")
    if not (isinstance(lesion_probability, (int, float)) and 0.0 <= lesion_probability <= 1.0):
        raise XDiffusionError(f"lesion probability {lesion_probability!r} is outside [0, 1]")
    if not (isinstance(spacing, (int, float)) and math.isfinite(spacing) and spacing > 0):
        raise XDiffusionError(f"spacing {spacing!r} mm must be a positive number")
    if spacing < 0.5 or spacing > 16:
        raise XDiffusionError(f"spacing {spacing!r} mm is outside the supported 0.5-16 mm")


def synthesize_subject(
    rng: np.random.Generator,
    contrast: str | None = None,
    lesion_probability: float = 0.5,
    spacing: float = 2.0,
    lesion_tissue: bool = True,
    artefacts: artifacts.ArtefactLevels = artifacts.DEFAULT,
    anatomy_ranges: anatomy.AnatomyRanges = anatomy.DEFAULT,
) -> SyntheticSubject:
    """Draw one synthetic subject. ``contrast`` None draws one of ``CONTRASTS`` (``CONTRAST_WEIGHTS``).

    ``lesion_tissue`` False gives the subject's healthy twin from the same ``rng`` state: the same
    anatomy (with the tumour's mass effect), contrast, texture, bias, noise and gamma, but healthy
    tissue where the tumour and its edema would be, and no labels. A reference for tumour
    segmentation in synthetic studies (``scripts/hallucination_check.py``): away from the tumour the
    two images differ only by a global intensity scale (a bright tumour raises the top percentile
    each image is normalised by) and where that scale clips the brightest voxels at 1.

    ``artefacts``: the ranges of noise, bias, thick slices and texture scale (``artifacts.ArtefactLevels``;
    the same number of random draws for any of them). ``anatomy_ranges``: how much the anatomy varies
    (``anatomy.AnatomyRanges``; the default draws exactly what versions 1-2's subjects drew).
    """
    validate_settings(contrast, lesion_probability, spacing)
    spacing = float(spacing)
    if contrast is None:
        names = list(CONTRAST_WEIGHTS)
        contrast = names[int(rng.choice(len(names), p=list(CONTRAST_WEIGHTS.values())))]
    atlas = load_atlas(spacing)
    grid = output_grid(spacing)
    shape = grid.shape

    transform = random_transform(rng, scale_range=anatomy_ranges.scale_range)
    positions = template_positions(transform, shape, spacing)
    positions, variation_params = anatomy.vary_positions(rng, positions, anatomy_ranges)
    lesions = random_lesions(rng, atlas) if rng.random() < lesion_probability else []
    gm, wm, csf, distance, ventricle_distance, csf_distance = sample_atlas(atlas, push_out(positions, lesions))
    # Atrophy varies a lot between people: enlarge ventricles and widen sulci (tissue becomes CSF).
    # Squared uniform: most subjects near the template, a few with large ventricles.
    ventricle_growth_mm = float(anatomy_ranges.ventricle_growth_max_mm * rng.uniform(0.0, 1.0) ** 2)
    sulcal_widening_mm = float(rng.uniform(0.0, 1.5))
    ramp = lambda edge, d: np.clip(0.5 + (edge - d) / np.float32(spacing), 0.0, 1.0)  # noqa: E731
    atrophy = np.maximum(ramp(ventricle_growth_mm, ventricle_distance) * (ventricle_growth_mm > 0),
                         ramp(sulcal_widening_mm, csf_distance) * (sulcal_widening_mm > 0))
    csf = csf + atrophy * (gm + wm)
    gm, wm = gm * (1 - atrophy), wm * (1 - atrophy)

    fractions = np.zeros((len(RENDER_CLASSES), *shape), np.float32)
    index = {name: i for i, name in enumerate(RENDER_CLASSES)}
    brain = np.clip(gm + wm + csf, 0.0, 1.0)
    head_params = _head_layers(rng, fractions, index, distance, positions, atlas.center_ras, 1.0 - brain, spacing)

    lesion_params: list[dict] = []
    labels = None
    # The twin keeps the tissue as it is before the tumour replaces it.
    healthy = None if lesion_tissue else (fractions.copy(), gm, wm, csf)
    if lesions:
        necrotic, enhancing, edema_extent = lesion_fractions(positions, lesions, spacing)
        tumour = necrotic + enhancing
        # Tumour replaces brain tissue; edema takes over white matter (and some grey matter).
        gm, wm, csf = gm * (1 - tumour), wm * (1 - tumour), csf * (1 - tumour)
        necrotic, enhancing = necrotic * brain, enhancing * brain
        edema_share = np.clip(edema_extent - tumour, 0.0, 1.0)
        edema = edema_share * (wm + 0.4 * gm)
        wm, gm = wm * (1 - edema_share), gm * (1 - 0.4 * edema_share)
        for name, part in zip(LESION_CLASSES, (necrotic, enhancing, edema)):
            fractions[index[name]] = part
        lesion_params = [lesion.params() for lesion in lesions]
        labels = hard_labels(necrotic, enhancing, edema)
    fractions[index["gm"]] = gm
    fractions[index["wm"]] = wm
    fractions[index["csf"]] += csf
    shown = fractions
    if not lesion_tissue:  # the healthy twin: tissue without the tumour, random draws as with it
        shown, gm, wm, csf = healthy
        shown[index["gm"]], shown[index["wm"]] = gm, wm
        shown[index["csf"]] += csf
        labels = None

    means = random_means(rng, contrast)
    texture_mm = float(rng.uniform(*artefacts.texture_scale_mm))
    image, render_params = render(rng, fractions, means, texture_mm, spacing, shown=shown)
    image, bias_params = artifacts.bias_field(rng, image, artefacts.bias_log_std[1], artefacts.bias_log_std[0])
    image, resolution_params = artifacts.lower_resolution(rng, image, spacing, artefacts.thick_slice_probability)
    image, noise_params = artifacts.rician_noise(rng, image, artefacts.noise_relative_sigma[1],
                                                 artefacts.noise_relative_sigma[0])
    image = artifacts.normalise(image)
    image, gamma_params = artifacts.gamma(rng, image)

    classes = _argmax_classes(shown)
    params = {
        "contrast": contrast,
        "spacing_mm": spacing,
        "shape": list(shape),
        "class_means": {k: round(v, 4) for k, v in means.items() if k in RENDER_CLASSES},
        "texture_scale_mm": round(texture_mm, 3),
        **render_params,
        "transform": {**transform.params, **variation_params},
        "ventricle_growth_mm": round(ventricle_growth_mm, 3),
        "sulcal_widening_mm": round(sulcal_widening_mm, 3),
        "head": head_params,
        "lesions": lesion_params,
        **({} if lesion_tissue else {"lesion_tissue": False}),
        **bias_params, **resolution_params, **noise_params, **gamma_params,
    }
    return SyntheticSubject(
        image=Volume(image.astype(np.float32), grid),
        labels=None if labels is None else Volume(labels, grid),
        params=_jsonable(params),
        classes=Volume(classes, grid),
    )


def _head_layers(
    rng: np.random.Generator, fractions: np.ndarray, index: dict[str, int], distance: np.ndarray,
    positions: np.ndarray, center_ras: tuple[float, float, float], outside_brain: np.ndarray, spacing: float,
) -> dict:
    """Fill CSF/bone/marrow/muscle/fat/background fractions outside the brain from the hull distance.

    Layer thicknesses vary smoothly over the head (a coarse random field per layer); muscle
    thickens below the brain (neck) and at the temples, so the head is not a plain egg shell.
    """
    stripped = bool(rng.random() < SKULL_STRIPPED_PROBABILITY)
    if stripped:
        fractions[index["background"]] = outside_brain
        return {"skull_stripped": True}
    thickness = np.array([rng.uniform(*span) for _, span, _ in _LAYERS], dtype=np.float32)
    wobble = float(rng.uniform(0.1, 0.4))
    neck_mm, temporal_mm = float(rng.uniform(15.0, 40.0)), float(rng.uniform(3.0, 12.0))
    coarse = rng.normal(0.0, 1.0, size=(3, 4, 4, 4)).astype(np.float32)
    # The field is only needed near the head surface, but a coarse grid is cheap everywhere.
    variation = smooth_field(coarse, distance.shape)
    # Template RAS height and lateral distance of each voxel (positions are relative to the centre).
    height = positions[2] + np.float32(center_ras[2])
    lateral = np.abs(positions[0] + np.float32(center_ras[0]))
    extra_muscle = neck_mm / (1.0 + np.exp((height + 35.0) / 6.0)) + temporal_mm * np.exp(
        -(((height - 5.0) / 25.0) ** 2)
    ) * np.clip((lateral - 40.0) / 25.0, 0.0, 1.0)
    ramp = lambda edge: np.clip(0.5 + (edge - distance) / np.float32(spacing), 0.0, 1.0)  # noqa: E731
    edge = np.zeros_like(distance)
    inside_previous = np.zeros_like(distance)
    factors = [np.maximum(1.0 + wobble * v, 0.2) for v in variation]
    for n, (name, _, field) in enumerate(_LAYERS):
        edge = edge + thickness[n] * factors[field]
        if n == _MUSCLE_LAYER:
            edge = edge + extra_muscle.astype(np.float32)
        inside = ramp(edge)
        fractions[index[name]] += outside_brain * (inside - inside_previous)
        inside_previous = inside
    fractions[index["background"]] = outside_brain * (1.0 - inside_previous)
    eyes = _add_eyes(rng, fractions, index, distance, positions, center_ras, outside_brain, spacing)
    return {
        "skull_stripped": False,
        **eyes,
        "layer_thickness_mm": {f"{n}:{layer[0]}": round(float(thickness[n]), 3) for n, layer in enumerate(_LAYERS)},
        "layer_wobble": round(wobble, 3),
        "neck_muscle_mm": round(neck_mm, 3),
        "temporal_muscle_mm": round(temporal_mm, 3),
    }


def _add_eyes(
    rng: np.random.Generator, fractions: np.ndarray, index: dict[str, int], distance: np.ndarray,
    positions: np.ndarray, center_ras: tuple[float, float, float], outside_brain: np.ndarray, spacing: float,
) -> dict:
    """Eyeballs (fluid, drawn as CSF) in orbital fat, below the frontal lobes and clear of the skull."""
    half_distance = float(rng.uniform(29.0, 34.0))
    centre = np.array([0.0, 48.0, -40.0]) + rng.uniform(-3.0, 3.0, size=3)
    eye_radius, orbit_radius = float(rng.uniform(11.0, 12.5)), float(rng.uniform(15.0, 18.0))
    clear_of_skull = np.clip((distance - 6.0) / np.float32(spacing), 0.0, 1.0)
    ramp = lambda edge, r: np.clip(0.5 + (edge - r) / np.float32(spacing), 0.0, 1.0)  # noqa: E731
    eye = np.zeros_like(distance)
    orbit = np.zeros_like(distance)
    for side in (-1.0, 1.0):
        c = centre + np.array([side * half_distance, 0.0, 0.0]) - np.asarray(center_ras)
        offset = positions - c.astype(np.float32)[:, None, None, None]
        r = np.sqrt(np.einsum("c...,c...->...", offset, offset))
        eye = np.maximum(eye, ramp(eye_radius, r))
        orbit = np.maximum(orbit, ramp(orbit_radius, r))
    orbit = orbit * clear_of_skull * outside_brain
    eye = np.minimum(eye * clear_of_skull * outside_brain, orbit)
    for name in ("background", "csf", "bone", "marrow", "muscle", "fat"):  # only head layers so far
        fractions[index[name]] *= 1.0 - orbit / np.maximum(outside_brain, 1e-6)
    fractions[index["csf"]] += eye
    fractions[index["fat"]] += orbit - eye
    return {"eye_centre_ras_mm": [round(float(v), 2) for v in centre], "eye_half_distance_mm": round(half_distance, 2),
            "eye_radius_mm": round(eye_radius, 2), "orbit_radius_mm": round(orbit_radius, 2)}


def _argmax_classes(fractions: np.ndarray) -> np.ndarray:
    """uint8 index of the largest fraction per voxel (a running max: much faster than argmax(axis=0))."""
    best = fractions[0].copy()
    classes = np.zeros(best.shape, np.uint8)
    for c in range(1, len(fractions)):
        larger = fractions[c] > best
        classes[larger] = c
        np.maximum(best, fractions[c], out=best)
    return classes


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value)
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
