"""A folder of synthetic subjects: NIfTI images, lesion label maps and a manifest, written atomically.

Layout of ``out``::

    subject_0000.nii.gz        float32 image in [0, 1]
    subject_0000_seg.nii.gz    uint8 lesion labels (only when the subject got a lesion)
    manifest.json              settings, seed, version, per-subject files and random parameters

Subject i is drawn from ``subject_rng(seed, i)`` (= ``SeedSequence(seed).spawn(n)[i]``), so it is the
same whatever ``n`` is. The folder is built under a temporary name and moved into place at the end;
on any error (or Ctrl-C) nothing of it is left.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import __version__
from ..errors import XDiffusionError
from ..io import write_volume
from .anatomy import PRESETS as ANATOMY_PRESETS
from .artifacts import PRESETS
from .lesions import LESION_LABELS
from .subject import CONTRAST_WEIGHTS, SyntheticSubject, subject_rng, synthesize_subject, validate_settings

MANIFEST_NAME = "manifest.json"


def image_name(index: int) -> str:
    return f"subject_{index:04d}.nii.gz"


def labels_name(index: int) -> str:
    return f"subject_{index:04d}_seg.nii.gz"


@dataclass
class DatasetResult:
    folder: Path
    manifest: dict
    preview_subjects: list[SyntheticSubject] = field(default_factory=list)


def validate_dataset_settings(
    out: str | os.PathLike, n: int, seed: int, contrast: str | None, lesion_probability: float, spacing: float
) -> Path:
    """XDiffusionError for anything that would stop the run; returns ``out`` as a Path."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise XDiffusionError(f"number of subjects {n!r} must be a positive integer")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise XDiffusionError(f"seed {seed!r} must be a non-negative integer")
    if isinstance(lesion_probability, float) and math.isnan(lesion_probability):
        raise XDiffusionError("lesion probability nan is outside [0, 1]")
    validate_settings(contrast, lesion_probability, spacing)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise XDiffusionError(f"{out} exists and is not a folder: give a new or empty folder for the subjects")
    if out.is_dir() and any(out.iterdir()):
        raise XDiffusionError(f"{out} is not empty: give a new or empty folder for the subjects")
    for ancestor in out.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise XDiffusionError(f"{out}: cannot write there, {ancestor} is a file, not a folder")
            if not os.access(ancestor, os.W_OK):
                raise XDiffusionError(f"{out}: cannot write in {ancestor} (permission denied)")
            break
    return out


def write_synthetic_dataset(
    out: str | os.PathLike,
    n: int,
    seed: int = 0,
    contrast: str | None = None,
    lesion_probability: float = 0.5,
    spacing: float = 2.0,
    keep: int = 0,
    on_subject: Callable[[int], None] | None = None,
    artefacts: str = "default",
    anatomy: str = "default",
) -> DatasetResult:
    """Generate ``n`` subjects into the new or empty folder ``out``.

    ``contrast`` None mixes contrasts per subject (``CONTRAST_WEIGHTS``). The first ``keep``
    subjects are returned in memory (for a preview). ``on_subject(i)`` is called after each subject.
    ``artefacts``: a preset of ``artifacts.PRESETS`` ("scanner": nearer real scans, for calibration).
    ``anatomy``: a preset of ``anatomy.PRESETS`` ("varied": wider anatomical variety, for training).
    """
    if artefacts not in PRESETS:
        raise XDiffusionError(f"unknown artefact preset {artefacts!r}: choose one of {', '.join(PRESETS)}")
    if anatomy not in ANATOMY_PRESETS:
        raise XDiffusionError(f"unknown anatomy preset {anatomy!r}: choose one of {', '.join(ANATOMY_PRESETS)}")
    out = validate_dataset_settings(out, n, seed, contrast, lesion_probability, spacing)
    created = _missing_ancestors(out)
    build_inside = out.is_dir()
    token = secrets.token_hex(4)
    temp = out / f".tmp-{token}" if build_inside else out.parent / f".{out.name}.tmp-{token}"
    moved: list[Path] = []
    try:
        temp.mkdir(parents=True)
        entries, kept = [], []
        for index in range(n):
            subject = synthesize_subject(subject_rng(seed, index), contrast, lesion_probability, spacing,
                                         artefacts=PRESETS[artefacts], anatomy_ranges=ANATOMY_PRESETS[anatomy])
            write_volume(subject.image, temp / image_name(index))
            seg = None
            if subject.labels is not None:
                seg = labels_name(index)
                write_volume(subject.labels, temp / seg)
            entries.append({"index": index, "image": image_name(index), "labels": seg, "params": subject.params})
            if index < keep:
                kept.append(subject)
            if on_subject is not None:
                on_subject(index)
        manifest = {
            "generator": "xdiffusion synth",
            "version": __version__,
            "seed": seed,
            "n": n,
            "contrast": contrast or "mixed",
            "contrast_weights": CONTRAST_WEIGHTS if contrast is None else None,
            "lesion_probability": float(lesion_probability),
            "spacing_mm": float(spacing),
            **({} if artefacts == "default" else {"artefacts": artefacts, "artefact_levels": PRESETS[artefacts].params()}),
            **({} if anatomy == "default" else {"anatomy": anatomy, "anatomy_ranges": ANATOMY_PRESETS[anatomy].params()}),
            "template": "ICBM152 2009a symmetric T1 + GM/WM maps (nilearn 0.14.1, BSD-3)",
            "seeding": "subject i uses numpy default_rng(SeedSequence(seed).spawn(n)[i])",
            "lesion_labels": {str(k): v for k, v in LESION_LABELS.items()},
            "subjects": entries,
        }
        with open(temp / MANIFEST_NAME, "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=1)
            handle.write("\n")
        if build_inside:
            # Manifest last: a folder with a manifest is complete.
            names = [e[key] for e in entries for key in ("image", "labels") if e[key]] + [MANIFEST_NAME]
            for name in names:
                os.replace(temp / name, out / name)
                moved.append(out / name)
            temp.rmdir()
        else:
            os.rename(temp, out)
    except OSError as error:
        _clean(temp, moved, created)
        raise XDiffusionError(f"{out}: writing failed ({error.strerror or error})") from None
    except BaseException:
        _clean(temp, moved, created)
        raise
    return DatasetResult(out, manifest, kept)


def _missing_ancestors(out: Path) -> list[Path]:
    missing = []
    for ancestor in out.parents:
        if ancestor.exists():
            break
        missing.append(ancestor)
    return missing


def _clean(temp: Path, moved: list[Path], created: list[Path]) -> None:
    shutil.rmtree(temp, ignore_errors=True)
    for path in moved:
        try:
            path.unlink()
        except OSError:
            pass
    for folder in created:  # innermost first
        try:
            folder.rmdir()
        except OSError:
            break
