"""The head prior (baselines.head_prior): template choice, per-tissue contrast, field of view."""

from __future__ import annotations

import numpy as np
import pytest

from XDiffusionLib.baselines.anchor import anchor_estimate, inside_inputs
from XDiffusionLib.baselines.head_prior import (
    TISSUES,
    HeadTemplate,
    brain_voxels,
    fit_contrast,
    fit_head_prior,
    shipped_head_template,
)
from XDiffusionLib.baselines.template import TemplateBaseline
from XDiffusionLib.data.samples import SAMPLES
from XDiffusionLib.inputs import SliceInput
from XDiffusionLib.io.volume import Volume

RAS = np.diag([-1.0, -1.0, 1.0])


def test_shipped_template_has_scalp_brain_and_every_tissue_class():
    template = shipped_head_template()
    assert template.t1.shape == template.tissues.shape
    counts = np.bincount(template.tissues.ravel(), minlength=len(TISSUES))
    assert (counts[1:] > 100_000).all(), dict(zip(TISSUES, counts))
    # Scalp: fat lies outside the brain, above the top of the brain.
    brain = np.isin(template.tissues, [1, 2, 3])
    top_brain = np.flatnonzero(brain.any(axis=(0, 1)))[-1]
    assert (template.tissues[..., top_brain + 2:] == TISSUES.index("fat")).any()
    assert SAMPLES["icbm152_2009c_t1_head"].role == "training" and SAMPLES["icbm152_2009c_tissues"].role == "training"


def test_contrast_fit_follows_the_inputs_whatever_their_contrast():
    rng = np.random.default_rng(0)
    tissues = rng.integers(0, len(TISSUES), 20_000).astype(np.uint8)
    template_levels = np.array([0, 30, 65, 85, 20, 45, 70], float)  # a T1-like template
    t1 = template_levels[tissues] + rng.normal(0, 2, tissues.size)
    # T2-like inputs: CSF brightest, WM darker than GM, on another scale.
    input_levels = np.array([3, 900, 500, 350, 60, 250, 600], float)
    values = input_levels[tissues] + rng.normal(0, 10, tissues.size)
    centres = np.array([np.median(t1[tissues == c]) for c in range(len(TISSUES))])
    contrast = fit_contrast(t1, tissues, values, centres)
    np.testing.assert_allclose(contrast.level, input_levels, atol=5)
    synthesised = contrast(t1, tissues)
    assert np.corrcoef(synthesised, values)[0, 1] > 0.99


def test_a_class_missing_from_the_inputs_falls_back_to_the_template_line():
    tissues = np.repeat(np.arange(4, dtype=np.uint8), 500)  # no bone, muscle or fat at the inputs
    t1 = np.array([0, 30, 65, 85], float)[tissues]
    values = 2.0 * t1 + 10.0
    centres = np.array([0, 30, 65, 85, 20, 45, 70], float)
    contrast = fit_contrast(t1, tissues, values, centres)
    assert contrast.level[TISSUES.index("fat")] == pytest.approx(2.0 * 70 + 10.0, abs=1.0)


def _template_as_subject(skull_stripped: bool) -> Volume:
    """The shipped template itself at 2 mm, shifted by 6 mm: a subject the prior must place."""
    template = shipped_head_template()
    t1 = template.t1[::2, ::2, ::2].astype(np.float32) * 3.0
    if skull_stripped:
        brain = np.isin(template.tissues[::2, ::2, ::2], [1, 2, 3])
        t1 = np.where(brain, t1, 0.0).astype(np.float32)
    shifted = np.zeros_like(t1)
    shifted[3:] = t1[:-3]
    return Volume.from_array(shifted, spacing=(2.0, 2.0, 2.0), direction=RAS)


@pytest.mark.parametrize("skull_stripped, variant", [(False, "head"), (True, "brain")])
def test_the_prior_picks_the_head_or_the_brain_only_template_from_the_inputs(skull_stripped, variant):
    volume = _template_as_subject(skull_stripped)
    inputs = SliceInput.from_volume(volume, "axial", (35, 50, 65))
    fit = fit_head_prior(shipped_head_template(), inputs, deform=False)
    assert fit.variant == variant
    assert fit.correlation > 0.9
    truth = np.asarray(volume.array)
    prior = fit.prior
    head = truth > 30
    assert np.abs(prior[head] - truth[head]).mean() < 0.2 * truth[head].mean()


@pytest.mark.slow  # head-prior fits on a real-size head: several seconds on a 2-core CPU
def test_the_deformable_stage_never_lowers_the_fit_at_the_inputs():
    volume = _template_as_subject(False)
    inputs = SliceInput.from_volume(volume, "coronal", (40, 60))
    rigid = fit_head_prior(shipped_head_template(), inputs, deform=False)
    deformed = fit_head_prior(shipped_head_template(), inputs, deform=True)
    assert deformed.correlation >= rigid.correlation


@pytest.mark.slow  # head-prior fits on a real-size head: several seconds on a 2-core CPU
def test_below_the_templates_field_of_view_the_anchor_uses_the_inputs():
    # A long grid: the head template (with its neck cut at its field of view) covers only the top.
    volume = _template_as_subject(False)
    array = np.asarray(volume.array)
    tall = np.concatenate([np.repeat(array[:, :, :1], 60, axis=2), array], axis=2)
    volume = Volume.from_array(tall, spacing=(2.0, 2.0, 2.0), direction=RAS)
    inputs = SliceInput.from_volume(volume, "axial", (20, 40, 100))
    prior = TemplateBaseline().fit(inputs)
    assert not prior.coverage.all() and prior.coverage.any()
    anchor = anchor_estimate(inputs)
    uncovered = ~prior.coverage & np.broadcast_to(inside_inputs(inputs)[None, None, :], tall.shape)
    np.testing.assert_allclose(anchor.volume.array[uncovered], anchor.interpolation[uncovered], rtol=1e-5)


def test_a_user_atlas_without_labels_gets_intensity_classes():
    atlas = Volume.from_array(np.pad(np.linspace(10, 90, 8000, dtype=np.float32).reshape(20, 20, 20), 4),
                              direction=RAS)
    template = HeadTemplate.from_volume(atlas)
    assert set(np.unique(template.tissues)) == {0, 1, 2, 3}
    assert template.variant == "atlas"


def test_the_bias_field_is_flat_along_the_slice_axis_for_one_input_slice():
    from XDiffusionLib.baselines.head_prior import bias_degrees

    assert all(d[2] == 0 for d in bias_degrees(2, 1))
    assert max(d[2] for d in bias_degrees(2, 2)) == 1
    assert max(d[0] for d in bias_degrees(2, 5)) == 2 and len(bias_degrees(2, 5)) == 10


def test_the_same_inputs_reuse_one_prior_fit_and_other_inputs_do_not():
    volume = _template_as_subject(False)
    baseline = TemplateBaseline(deform=False)
    first = baseline.fit(SliceInput.from_volume(volume, "axial", (40, 60)))
    again = TemplateBaseline(deform=False).fit(SliceInput.from_volume(volume, "axial", (40, 60)))
    other = baseline.fit(SliceInput.from_volume(volume, "axial", (40, 61)))
    assert again is first and other is not first
    assert not first.prior.flags.writeable


def _synthetic_validation_subject(index: int):
    """Subject ``index`` of the synthetic validation set (seed 12, 2 mm), as `xdiffusion synth` makes it."""
    from XDiffusionLib.synth.subject import subject_rng, synthesize_subject

    return synthesize_subject(subject_rng(12, index), spacing=2.0)


def _brain_dice(fit, subject) -> float:
    from XDiffusionLib.synth.contrast import RENDER_CLASSES

    truth = np.isin(subject.classes.array, [RENDER_CLASSES.index(n) for n in ("csf", "gm", "wm")])
    placed = brain_voxels(fit.tissues)
    return 2.0 * float((placed & truth).sum()) / float(placed.sum() + truth.sum())


def test_one_t2_slice_places_the_template_brain_on_the_scan_not_above_it():
    """Synthetic validation subject 6 (a T2 head with scalp), one axial slice through the ventricles:
    the slice correlated about as well with the template's neck, and the whole template went above
    the scan (brain Dice 0.25). The placement now keeps the template's brain inside the scan's field
    of view and is refined at the slice's own contrast."""
    from XDiffusionLib.evaluation import protocol

    subject = _synthetic_validation_subject(6)
    indices = protocol.choose_indices(np.asarray(subject.image.array), "axial", 1)
    fit = fit_head_prior(shipped_head_template(), SliceInput.from_volume(subject.image, "axial", indices), deform=False)
    assert _brain_dice(fit, subject) > 0.6
