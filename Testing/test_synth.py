"""Synthetic subjects: reproducibility, geometry, tissue contrasts, lesion labels, and the CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from XDiffusionLib.app.cli import main
from XDiffusionLib.data.samples import sample_path
from XDiffusionLib.errors import XDiffusionError
from XDiffusionLib.io import read_labelmap, read_volume
from XDiffusionLib.synth.contrast import RENDER_CLASSES
from XDiffusionLib.synth.lesions import LESION_LABELS
from XDiffusionLib.synth.subject import subject_rng, synthesize_subject
from XDiffusionLib.synth.tissues import working_shape

SPACING = 4.0  # coarse grid keeps every subject at a fraction of a second
CLASS = {name: i for i, name in enumerate(RENDER_CLASSES)}
BRAIN_CLASSES = [CLASS[n] for n in ("csf", "gm", "wm", "necrotic", "enhancing", "edema")]


def make(seed: int, index: int = 0, **kwargs):
    kwargs.setdefault("spacing", SPACING)
    return synthesize_subject(subject_rng(seed, index), **kwargs)


def class_mean(subject, name: str) -> float:
    mask = subject.classes.array == CLASS[name]
    assert mask.sum() > 20, f"too few {name} voxels to measure"
    return float(subject.image.array[mask].mean())


# --- library ---------------------------------------------------------------------------------


def test_same_seed_gives_identical_subject():
    a, b = make(7, 3, lesion_probability=1.0), make(7, 3, lesion_probability=1.0)
    assert a.image.array.tobytes() == b.image.array.tobytes()
    assert a.labels.array.tobytes() == b.labels.array.tobytes()
    assert a.classes.array.tobytes() == b.classes.array.tobytes()
    assert a.params == b.params
    assert a.image.grid.same_geometry(b.image.grid)


def test_different_seeds_or_indices_differ():
    base = make(7, 0).image.array
    assert not np.array_equal(base, make(8, 0).image.array)
    assert not np.array_equal(base, make(7, 1).image.array)


def test_subject_rng_is_the_spawned_child_whatever_the_run_size():
    for n in (4, 50):
        child = np.random.SeedSequence(11).spawn(n)[3]
        np.testing.assert_array_equal(np.random.default_rng(child).random(5), subject_rng(11, 3).random(5))


def test_image_geometry_and_range():
    subject = make(1)
    grid = subject.image.grid
    assert grid.shape == working_shape(SPACING) == subject.classes.grid.shape
    assert grid.spacing == (SPACING,) * 3
    np.testing.assert_array_equal(grid.direction, np.diag([-1.0, -1.0, 1.0]))
    # The grid is centred on the template's field of view.
    template = read_volume(sample_path("icbm152_t1")).grid
    centre = lambda g: g.index_to_physical @ np.append((np.asarray(g.shape) - 1) / 2.0, 1.0)  # noqa: E731
    np.testing.assert_allclose(centre(grid)[:3], centre(template)[:3], atol=SPACING)
    image = subject.image.array
    assert image.dtype == np.float32 and image.min() >= 0.0 and image.max() <= 1.0
    # Robust normalisation: the head fills a good part of the range, not a few hot voxels.
    head = image[subject.classes.array != CLASS["background"]]
    assert 0.2 < float(np.median(head)) < 0.9


def test_brain_lies_where_the_template_brain_is_in_world_coordinates():
    # Guards against flipped or swapped axes: the deformation is mild (scale <= 15 %, <= 10 deg).
    subject = make(3, lesion_probability=0.0)
    template = read_volume(sample_path("icbm152_t1"))
    grid = subject.image.grid
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), axis=-1).reshape(-1, 3)
    world = ijk @ (grid.direction @ np.diag(grid.spacing)).T + np.asarray(grid.origin)
    to_template = np.linalg.inv(template.grid.index_to_physical)
    index = np.rint(world @ to_template[:3, :3].T + to_template[:3, 3]).astype(int)
    inside = np.all((index >= 0) & (index < np.asarray(template.shape)), axis=1)
    template_brain = np.zeros(len(index), bool)
    template_brain[inside] = template.array[tuple(index[inside].T)] > 0
    subject_brain = np.isin(subject.classes.array.reshape(-1), BRAIN_CLASSES)
    dice = 2 * (template_brain & subject_brain).sum() / (template_brain.sum() + subject_brain.sum())
    assert dice > 0.83  # about 0.88 here; flipping inferior-superior gives 0.76


def test_other_spacing_changes_grid_not_field_of_view():
    subject = make(2, spacing=6.0)
    assert subject.image.shape == working_shape(6.0)
    extent = (np.asarray(subject.image.shape) - 1) * 6.0
    assert np.all(np.abs(extent - np.array([196, 232, 188])) <= 6.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_t1_like_orders_wm_gm_csf(seed):
    subject = make(seed, contrast="t1", lesion_probability=0.0)
    assert subject.params["contrast"] == "t1"
    assert class_mean(subject, "wm") > class_mean(subject, "gm") > class_mean(subject, "csf")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_t2_like_orders_csf_gm_wm(seed):
    subject = make(seed, contrast="t2", lesion_probability=0.0)
    assert class_mean(subject, "csf") > class_mean(subject, "gm") > class_mean(subject, "wm")


@pytest.mark.parametrize("seed", [0, 1])
def test_flair_like_has_dark_csf_and_bright_edema(seed):
    subject = make(seed, contrast="flair", lesion_probability=1.0)
    gm, wm, csf = (class_mean(subject, n) for n in ("gm", "wm", "csf"))
    assert csf < wm and csf < gm
    edema = float(subject.image.array[subject.labels.array == 2].mean())
    assert edema > max(gm, wm) + 0.1


def test_t1_like_lesion_has_bright_rim_and_dark_core():
    # Seed 0 draws an enhancing tumour (checked below, so a change of draws shows up here).
    subject = make(0, contrast="t1", lesion_probability=1.0)
    assert any(lesion["enhancing"] for lesion in subject.params["lesions"])
    labels, image = subject.labels.array, subject.image.array
    assert float(image[labels == 4].mean()) > class_mean(subject, "gm")
    assert float(image[labels == 2].mean()) < class_mean(subject, "wm")


@pytest.mark.parametrize("seed", [0, 3, 5])
def test_lesions_lie_inside_the_brain_with_documented_labels(seed):
    subject = make(seed, lesion_probability=1.0)
    labels = subject.labels
    assert labels is not None and labels.grid.same_geometry(subject.image.grid)
    values = set(np.unique(labels.array).tolist())
    assert values <= {0} | set(LESION_LABELS) and {1, 2} <= values
    enhancing = any(lesion["enhancing"] for lesion in subject.params["lesions"])
    assert (4 in values) == enhancing
    lesion = labels.array > 0
    assert np.isin(subject.classes.array[lesion], BRAIN_CLASSES).all()
    # The lesion is a compact region, not scattered voxels: most of it is one connected blob.
    from scipy import ndimage

    components, count = ndimage.label(lesion)
    largest = np.bincount(components.ravel())[1:].max()
    assert largest >= 0.5 * lesion.sum()


def test_healthy_twin_differs_only_where_the_tumour_is():
    """The twin (same rng, lesion_tissue=False): healthy tissue at the tumour and its edema, the same
    image elsewhere up to the global scale the tumour shifts (the hallucination check's reference)."""
    from scipy import ndimage

    for seed in (3, 8):
        subject = make(seed, lesion_probability=1.0)
        twin = make(seed, lesion_probability=1.0, lesion_tissue=False)
        assert twin.labels is None and twin.params["lesion_tissue"] is False
        assert twin.params["lesions"] == subject.params["lesions"]  # same mass effect
        lesion = subject.labels.array > 0
        assert not np.isin(twin.classes.array, [CLASS["necrotic"], CLASS["enhancing"], CLASS["edema"]]).any()
        far = ~ndimage.binary_dilation(lesion, iterations=3)  # beyond the blur of the lower resolution
        image, healthy = subject.image.array, twin.image.array
        scale = np.median(image[far & (healthy > 0.1)] / healthy[far & (healthy > 0.1)])
        assert 0.3 < scale < 1.02  # a bright tumour raises the top percentile the image is scaled by
        # the same image up to the scale, but for the brightest voxels the twin's lower top clips at 1
        assert np.percentile(np.abs(image - scale * healthy)[far], 99) < 0.02
        assert np.abs(image - scale * healthy)[lesion].mean() > 0.05  # the tumour is what differs


def test_no_lesion_when_probability_is_zero():
    for index in range(4):
        subject = make(4, index, lesion_probability=0.0)
        assert subject.labels is None and subject.params["lesions"] == []
        assert not np.isin(subject.classes.array, [CLASS["necrotic"], CLASS["enhancing"], CLASS["edema"]]).any()


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"contrast": "pd"}, "contrast"),
        ({"lesion_probability": 1.5}, "lesion probability"),
        ({"lesion_probability": -0.1}, "lesion probability"),
        ({"lesion_probability": float("nan")}, "lesion probability"),
        ({"spacing": 0.0}, "spacing"),
        ({"spacing": -2.0}, "spacing"),
        ({"spacing": float("inf")}, "spacing"),
    ],
)
def test_bad_settings_raise_one_line_error(kwargs, fragment):
    with pytest.raises(XDiffusionError) as excinfo:
        synthesize_subject(np.random.default_rng(0), **kwargs)
    assert fragment in str(excinfo.value) and "\n" not in str(excinfo.value)


# --- command line ----------------------------------------------------------------------------


def run_cli(*args: str) -> int:
    return main(["synth", *args])


def test_cli_writes_subjects_labels_and_manifest(tmp_path):
    out = tmp_path / "data"
    assert run_cli("--n", "3", "--out", str(out), "--seed", "5", "--spacing", "4", "--lesion-probability", "0.5",
                   "--quiet") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 5 and manifest["n"] == 3 and manifest["spacing_mm"] == 4.0
    assert manifest["lesion_labels"] == {str(k): v for k, v in LESION_LABELS.items()}
    assert manifest["version"]
    expected = {"manifest.json"}
    for index, entry in enumerate(manifest["subjects"]):
        assert entry["image"] == f"subject_{index:04d}.nii.gz"
        expected.add(entry["image"])
        image = read_volume(out / entry["image"])
        assert image.shape == working_shape(4.0) and image.spacing == pytest.approx((4.0,) * 3)
        assert entry["params"]["contrast"] in ("t1", "t2", "flair", "random")
        if entry["labels"]:
            expected.add(entry["labels"])
            labels = read_labelmap(out / entry["labels"])
            assert labels.grid.same_geometry(image.grid, tol=1e-4)
            assert set(np.unique(labels.array)) <= {0, 1, 2, 4}
            assert entry["params"]["lesions"]
        else:
            assert entry["params"]["lesions"] == []
    assert set(os.listdir(out)) == expected  # no temporary leftovers
    # The file holds exactly what the library makes for that seed and index.
    again = synthesize_subject(subject_rng(5, 1), lesion_probability=0.5, spacing=4.0)
    np.testing.assert_array_equal(read_volume(out / "subject_0001.nii.gz").array, again.image.array)


def test_cli_subject_does_not_depend_on_n_and_files_are_reproducible(tmp_path):
    args = ("--seed", "9", "--spacing", "5", "--lesion-probability", "1", "--contrast", "flair", "--quiet")
    assert run_cli("--n", "2", "--out", str(tmp_path / "a"), *args) == 0
    assert run_cli("--n", "1", "--out", str(tmp_path / "b"), *args) == 0
    for name in ("subject_0000.nii.gz", "subject_0000_seg.nii.gz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    first = json.loads((tmp_path / "a" / "manifest.json").read_text())["subjects"][0]
    assert first == json.loads((tmp_path / "b" / "manifest.json").read_text())["subjects"][0]
    assert first["params"]["contrast"] == "flair"


def test_cli_fills_an_existing_empty_folder_and_writes_a_preview(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    preview = tmp_path / "look.png"
    assert run_cli("--n", "2", "--out", str(out), "--spacing", "6", "--lesion-probability", "0",
                   "--preview", str(preview), "--quiet") == 0
    assert sorted(os.listdir(out)) == ["manifest.json", "subject_0000.nii.gz", "subject_0001.nii.gz"]
    assert preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and preview.stat().st_size > 10_000


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--n", "0"], "--n"),
        (["--n", "-3"], "--n"),
        (["--n", "two"], "--n"),
        (["--spacing", "0"], "spacing"),
        (["--spacing", "-1"], "spacing"),
        (["--spacing", "nan"], "--spacing"),
        (["--lesion-probability", "1.5"], "lesion probability"),
        (["--lesion-probability", "-0.2"], "lesion probability"),
        (["--contrast", "pd"], "contrast"),
        (["--seed", "-1"], "seed"),
        (["--preview", "look.jpg"], "preview"),
    ],
)
def test_cli_bad_values_write_nothing(tmp_path, capsys, args, fragment):
    out = tmp_path / "data"
    full = ["--n", "2", "--out", str(out), "--quiet", *args]
    # Later flags override the defaults above (argparse keeps the last value).
    assert run_cli(*full) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and fragment in error
    assert os.listdir(tmp_path) == []


def test_cli_refuses_a_file_or_a_non_empty_folder(tmp_path, capsys):
    existing = tmp_path / "taken.nii.gz"
    existing.write_bytes(b"data")
    assert run_cli("--n", "1", "--out", str(existing), "--quiet") == 2
    assert "not a folder" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    assert run_cli("--n", "1", "--out", str(busy), "--quiet") == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["busy", "taken.nii.gz"] and os.listdir(busy) == ["notes.txt"]
    assert existing.read_bytes() == b"data"


@pytest.mark.parametrize("existing", [False, True])
def test_failure_midway_leaves_nothing(tmp_path, monkeypatch, existing):
    from XDiffusionLib.synth import dataset

    calls = {"n": 0}
    real = dataset.synthesize_subject

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise XDiffusionError("simulated failure on the second subject")
        return real(*args, **kwargs)

    monkeypatch.setattr(dataset, "synthesize_subject", failing)
    out = tmp_path / "deep" / "data"
    if existing:
        out.mkdir(parents=True)
    with pytest.raises(XDiffusionError, match="simulated"):
        dataset.write_synthetic_dataset(out, 3, seed=1, spacing=6.0)
    if existing:
        assert os.listdir(out) == []
    else:
        assert os.listdir(tmp_path) == []


def test_random_contrast_keeps_brain_tissues_apart():
    from XDiffusionLib.synth.contrast import random_means

    for seed in range(30):
        means = random_means(np.random.default_rng(seed), "random")
        brain = sorted(means[n] for n in ("csf", "gm", "wm"))
        assert brain[1] - brain[0] >= 0.08 and brain[2] - brain[1] >= 0.08 and brain[2] >= 0.4
        assert means["background"] == 0.0 and all(0.0 <= v <= 1.0 for v in means.values())


def test_scanner_like_artefacts_are_drawn_from_their_ranges_and_recorded(tmp_path):
    """Issue 24 item 2: the calibration subjects' preset (noise never absent, stronger bias, more
    thick slices, finer texture); the default preset keeps the training subjects as they were."""
    from XDiffusionLib.synth.artifacts import SCANNER_LIKE
    from XDiffusionLib.synth.dataset import write_synthetic_dataset

    for index in range(3):
        params = make(13, index, artefacts=SCANNER_LIKE).params
        assert SCANNER_LIKE.noise_relative_sigma[0] <= params["noise_relative_sigma"] <= SCANNER_LIKE.noise_relative_sigma[1]
        assert SCANNER_LIKE.bias_log_std[0] <= params["bias_log_std"] <= SCANNER_LIKE.bias_log_std[1]
        assert SCANNER_LIKE.texture_scale_mm[0] <= params["texture_scale_mm"] <= SCANNER_LIKE.texture_scale_mm[1]
    # Same number of random draws: the same anatomy and contrast as the default preset, other artefacts.
    default, scanner = make(13).params, make(13, artefacts=SCANNER_LIKE).params
    assert default["class_means"] == scanner["class_means"] and default["transform"] == scanner["transform"]
    write_synthetic_dataset(tmp_path / "cal", 1, seed=13, spacing=SPACING, artefacts="scanner")
    manifest = json.loads((tmp_path / "cal" / "manifest.json").read_text())
    assert manifest["artefacts"] == "scanner" and manifest["artefact_levels"]["thick_slice_probability"] == 0.75
    with pytest.raises(XDiffusionError, match="unknown artefact preset"):
        write_synthetic_dataset(tmp_path / "bad", 1, artefacts="studio")


def test_default_anatomy_draws_nothing_extra_so_old_subjects_stay_the_same():
    from XDiffusionLib.synth.anatomy import DEFAULT, vary_positions

    rng = np.random.default_rng(5)
    before = rng.bit_generator.state
    positions = np.zeros((3, 4, 4, 4), np.float32)
    out, params = vary_positions(rng, positions, DEFAULT)
    assert out is positions and params == {} and rng.bit_generator.state == before


def test_hemisphere_asymmetry_is_monotone_and_makes_one_side_larger():
    from XDiffusionLib.synth.anatomy import AnatomyRanges, vary_positions

    x = np.linspace(-90.0, 90.0, 181, dtype=np.float32)
    positions = np.stack(np.broadcast_arrays(x[:, None, None], np.zeros((1, 3, 3), np.float32),
                                             np.zeros((1, 3, 3), np.float32))).astype(np.float32)
    out, params = vary_positions(np.random.default_rng(2), positions, AnatomyRanges(hemisphere_asymmetry=0.3))
    a = params["hemisphere_asymmetry"]
    assert abs(a) > 0.01
    sampled = out[0, :, 1, 1]
    assert np.all(np.diff(sampled) > 0)  # no folding
    # Template position +-60 mm is sampled at different distances from the midline on the two sides.
    right, left = np.interp(60.0, sampled, x), -np.interp(-60.0, sampled, x)
    assert (right - left) * a > 0 and abs(right - left) > 60.0 * abs(a)


def test_varied_anatomy_differs_from_the_default_and_is_recorded(tmp_path):
    from XDiffusionLib.synth.anatomy import VARIED
    from XDiffusionLib.synth.dataset import write_synthetic_dataset

    default, varied = make(21), make(21, anatomy_ranges=VARIED)
    assert not np.array_equal(default.image.array, varied.image.array)
    transform = varied.params["transform"]
    assert 10 <= transform["fine_control_points"] <= 14
    assert abs(transform["hemisphere_asymmetry"]) <= VARIED.hemisphere_asymmetry
    assert all(VARIED.scale_range[0] <= s <= VARIED.scale_range[1] for s in transform["scale"])
    assert make(21, anatomy_ranges=VARIED).image.array.tobytes() == varied.image.array.tobytes()
    assert run_cli("--n", "1", "--seed", "21", "--anatomy", "varied", "--spacing", str(SPACING),
                   "--out", str(tmp_path / "v"), "--quiet") == 0
    manifest = json.loads((tmp_path / "v" / "manifest.json").read_text())
    assert manifest["anatomy"] == "varied" and manifest["anatomy_ranges"]["fine_displacement_mm"] == 3.0
    on_disk = read_volume(tmp_path / "v" / "subject_0000.nii.gz").array
    np.testing.assert_allclose(on_disk, make(21, anatomy_ranges=VARIED).image.array, atol=1e-6)


@pytest.mark.parametrize("flag", ["--anatomy", "--artefacts"])
def test_cli_unknown_preset_is_one_line_and_writes_nothing(tmp_path, capsys, flag):
    assert run_cli("--n", "1", flag, "wild", "--out", str(tmp_path / "d"), "--quiet") == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and flag in error and "wild" in error
    assert os.listdir(tmp_path) == []
