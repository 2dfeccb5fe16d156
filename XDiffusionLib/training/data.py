"""Training volumes: found on disk, read once, canonicalised, mapped to the model cube, kept in memory.

Each volume becomes one float32 cube (side x side x side, ``ModelSpace``) scaled to [0, 1] by its
own robust range. That scale is only for storage: every training example re-normalises its cube
with an ``IntensityNormalizer`` fitted on that example's input slices, exactly as inference fits
it on the user's input slices (see ``examples.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..baselines.foreground import bounding_box, foreground_mask
from ..errors import XDiffusionError
from ..io.formats import is_volume_file, volume_suffix
from ..io.readers import read_volume
from ..transforms.model_space import ModelSpace
from ..transforms.orientation import to_canonical

_BRATS_SUFFIX = "_flair.nii.gz"
_FOREGROUND_POINTS = 4096


def _is_volume_file(path: Path) -> bool:
    # Hidden names are never data (a killed writer's temporary, macOS "._" files): is_volume_file.
    return is_volume_file(path) and volume_suffix(path) != ".dcm"


def _holds_dicom(folder: Path) -> bool:
    return any(p.suffix.lower() == ".dcm" and not p.name.startswith(".") for p in folder.iterdir() if p.is_file())


def find_volume_sources(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Volumes named by ``--data``: files, folders of files, BraTS folders, DICOM series folders.

    - a file: itself;
    - a folder with BraTS subjects (``*_flair.nii.gz`` in it or in its subfolders): the FLAIR
      volumes only (the paper's sequence; seg/t1/t2 files are skipped);
    - a folder of NIfTI/NRRD/MetaImage files (e.g. ``xdiffusion synth`` output): every volume
      file in it, except label maps (``*seg*``/``*label*``) ;
    - a folder holding .dcm files: one DICOM series; a folder of such folders: one series each.
    """
    if not paths:
        raise XDiffusionError("no training data given: pass --data PATH (a volume file or a folder)")
    sources: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise XDiffusionError(f"{path}: no such file or folder")
        if path.is_file():
            if not _is_volume_file(path) and path.suffix.lower() != ".dcm":
                raise XDiffusionError(f"{path}: not a volume file (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd, .dcm)")
            sources.append(path.parent if path.suffix.lower() == ".dcm" else path)
            continue
        found = _volumes_in_folder(path)
        if not found:
            raise XDiffusionError(f"{path}: no volumes found in this folder (NIfTI, NRRD, MetaImage or DICOM)")
        sources.extend(found)
    unique = list(dict.fromkeys(p.resolve() for p in sources))
    return unique


def _volumes_in_folder(folder: Path) -> list[Path]:
    brats = [p for p in sorted(folder.glob(f"*{_BRATS_SUFFIX}")) + sorted(folder.glob(f"*/*{_BRATS_SUFFIX}"))
             if not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    if brats:
        return brats
    files = sorted(p for p in folder.iterdir() if p.is_file() and _is_volume_file(p))
    images = [p for p in files if not any(tag in p.name.lower() for tag in ("seg", "label", "mask"))]
    if images:
        return images
    if _holds_dicom(folder):
        return [folder]
    return [sub for sub in sorted(folder.iterdir()) if sub.is_dir() and not sub.name.startswith(".") and _holds_dicom(sub)]


@dataclass(frozen=True)
class CachedVolume:
    """One training volume in model space."""

    source: str
    cube: np.ndarray  # (S, S, S) float32 in [0, 1]
    extent: tuple[tuple[int, int], ...]  # per cube axis: first and last slice holding foreground
    points: np.ndarray  # (P, 3) float32 foreground positions in normalised cube coordinates [-1, 1]


def load_cube(path: Path, side: int, rng: np.random.Generator) -> CachedVolume:
    """Read, canonicalise and map one volume to the model cube; find its foreground."""
    volume, _ = to_canonical(read_volume(path))
    space = ModelSpace.for_grid(volume.grid, side)
    cube = np.asarray(space.to_cube(volume.array), dtype=np.float32)
    # Scale only (no shift) when intensities are non-negative, so zero background stays exactly
    # zero: the IntensityNormalizer fitted per example ignores zeros, as it does at inference.
    low = min(float(cube.min()), 0.0)
    high = float(cube.max())
    if not high > low:
        raise XDiffusionError(f"{path} is constant in model space: it holds no image")
    cube = ((cube - low) / (high - low)).astype(np.float32)
    mask = foreground_mask(cube)
    boxes = [bounding_box(mask, axis) for axis in range(3)]
    if any(box is None for box in boxes):
        raise XDiffusionError(f"{path} has no foreground above the background level: nothing to learn from")
    coords = np.argwhere(mask)
    if len(coords) > _FOREGROUND_POINTS:
        coords = coords[rng.choice(len(coords), _FOREGROUND_POINTS, replace=False)]
    # voxel index -> normalised cube coordinate (geometry.sections convention: 2i/(S-1) - 1)
    points = (2.0 * coords / (side - 1) - 1.0).astype(np.float32)
    return CachedVolume(str(path), cube, tuple(boxes), points)  # type: ignore[arg-type]


class VolumeDataset:
    """All training volumes as model-space cubes in memory.

    ``VolumeDataset(paths, side)`` reads every volume found under ``paths`` (see
    ``find_volume_sources``) once. Errors name the offending file.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], side: int, progress: bool = False) -> None:
        if int(side) < 8:
            raise XDiffusionError(f"model cube side must be at least 8, got {side}")
        self.side = int(side)
        self.sources = find_volume_sources(paths)
        rng = np.random.default_rng(0)  # foreground point subsample only; fixed so every rank agrees
        iterator: Iterable[Path] = self.sources
        if progress:
            iterator = tqdm(self.sources, desc="reading volumes", unit="vol", leave=False)
        volumes = [load_cube(path, self.side, rng) for path in iterator]
        self.cubes = np.stack([v.cube for v in volumes])  # (N, S, S, S) for batched gathers
        # one copy of the voxels: each volume's cube becomes a view into the stack
        self.volumes = [replace(v, cube=self.cubes[i]) for i, v in enumerate(volumes)]

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, index: int) -> CachedVolume:
        return self.volumes[index]
