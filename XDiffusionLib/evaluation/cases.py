"""Which volumes an evaluation runs on: files, folders of volumes, BraTS folders, or the shipped samples."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..data.samples import samples_with_role
from ..errors import XDiffusionError
from ..inputs import label_map_reason
from ..io.formats import volume_suffix

SAMPLES_KEYWORD = "samples"
# BraTS 2018-2021 name the FLAIR ``*_flair.nii.gz``; BraTS 2023 ``*-t2f.nii.gz``. The paper uses FLAIR.
BRATS_FLAIR_ENDINGS = ("_flair.nii.gz", "_flair.nii", "-t2f.nii.gz", "-t2f.nii")


@dataclass(frozen=True)
class CaseSource:
    """One volume to evaluate. ``explicit``: named by the user (a label map there is an error, not a skip)."""

    name: str
    path: Path
    volume_index: int | None = None
    explicit: bool = False


def folder_volumes(folder: Path) -> list[Path]:
    """Every volume inside ``folder`` (recursive, sorted): files with a known suffix, and DICOM
    folders (one case each). If BraTS FLAIR files are present, only those."""
    files: list[Path] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        names = sorted(n for n in names if not n.startswith("."))
        if any(n.lower().endswith(".dcm") for n in names):
            files.append(Path(root))
        files.extend(Path(root) / n for n in names if volume_suffix(n) not in (None, ".dcm"))
    flair = [f for f in files if f.name.lower().endswith(BRATS_FLAIR_ENDINGS)]
    return flair or files


def _case_name(path: Path) -> str:
    suffix = volume_suffix(path)
    return path.name[: -len(suffix)] if suffix and path.is_file() else path.name


def find_cases(paths: list[str] | None, volume_index: int | None = None) -> list[CaseSource]:
    """The cases named by ``--data``: files, folders (all volumes inside), or ``samples`` (the
    shipped held-out volumes; also the default when ``paths`` is empty)."""
    cases: list[CaseSource] = []
    for entry in paths or [SAMPLES_KEYWORD]:
        if entry == SAMPLES_KEYWORD:
            cases.extend(CaseSource(s.name, s.path) for s in samples_with_role("heldout"))
            continue
        path = Path(entry).expanduser()
        if not path.exists():
            raise XDiffusionError(f"--data {entry}: no such file or folder")
        if path.is_file() or any(p.suffix.lower() == ".dcm" for p in path.iterdir() if p.is_file()):
            cases.append(CaseSource(_case_name(path), path, volume_index, explicit=True))
            continue
        found = folder_volumes(path)
        if not found:
            raise XDiffusionError(f"--data {entry}: the folder holds no volume files (.nii, .nii.gz, .nrrd, .mha, DICOM)")
        cases.extend(CaseSource(_case_name(f), f, volume_index) for f in found)
    return _unique_names(_unique_paths(cases))


def _unique_paths(cases: list[CaseSource]) -> list[CaseSource]:
    seen: set[Path] = set()
    unique = []
    for case in cases:
        key = case.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(case)
    return unique


def _unique_names(cases: list[CaseSource]) -> list[CaseSource]:
    """Case names are table keys and figure file names: make clashes unique with the parent folder, then a number."""
    names = [c.name for c in cases]
    out = []
    for case in cases:
        name = case.name
        if names.count(name) > 1:
            name = f"{case.path.parent.name}_{name}"
        n, candidate = 2, name
        while candidate in (c.name for c in out):
            candidate = f"{name}_{n}"
            n += 1
        out.append(CaseSource(candidate, case.path, case.volume_index, case.explicit))
    return out


def skip_reason(source: CaseSource, array) -> str | None:
    """Why a case's volume is left out of an evaluation (a label map found in a folder), or None. A
    label map the user named (``source.explicit``) is an error: the one rule of every evaluation."""
    reason = label_map_reason(array)
    if reason is not None and source.explicit:
        raise XDiffusionError(f"--data {source.path}: {reason}")
    return reason
