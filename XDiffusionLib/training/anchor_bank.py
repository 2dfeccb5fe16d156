"""Training data of the residual model: (cube, anchor) pairs made like real use, computed once.

The residual model learns ``truth - anchor`` (``baselines.anchor``). The anchor needs a template
fit per input configuration (about a second), far too slow inside the training loop, so each
training volume gives ``per_volume`` entries up front, each with its own random acquisition and
input slices, and the training loop draws sections (R, d) from these entries:

1. field of view: each side of each axis is padded (empty space, more below the head: the neck
   region of a 256 mm scan) or cropped (part of the head cut off), so the head is not always
   centred and filling the cube as the training templates do;
2. anisotropic voxels: one axis, with probability ``ANISOTROPY_PROBABILITY``, is resampled to
   1.5-3.5x its spacing (thick slices such as 1x1x3 mm);
3. the volume is mapped to the model cube; the input axis is drawn (axial half of the time);
   K from 1 to 31 at the evaluation protocol's spacing (bin centres over the foreground extent)
   with jitter, sometimes over only part of the extent (a user's picks);
4. intensities are normalised on the input slices only (zero floor), as at inference;
5. the anchor is computed from those slices on the cube grid (the head prior placed without its
   deformable stage, see ``build_bank``), with its template part perturbed by
   a random smooth warp and gamma, so the template is no more accurate here than on a real head
   (training subjects are warps of the very template the anchor fits).

The bank is cached in the run folder (``anchor_bank.npz``), so ``--resume`` reuses it, and records
the anchor settings it was made with (the config's decays and ``anchor_weight``): a cached bank made
with others is rebuilt, never trained on as if it were this config's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import XDiffusionError
from ..inputs import SliceInput
from ..io.atomic import atomic_file
from ..io.volume import Grid
from ..model.config import INFERENCE_FIELDS

BANK_FILE = "anchor_bank.npz"
ANISOTROPY_PROBABILITY = 0.35
AXIS_WEIGHTS = (0.25, 0.25, 0.5)  # sagittal, coronal, axial input slices
PROTOCOL_KS = (1, 1, 2, 3, 5, 5, 10, 10, 15, 20, 31, 31)
_POINTS = 2048
ANCHOR_KEYS = ("anchor_decay_inside_mm", "anchor_decay_outside_mm", "anchor_weight")
# A bank saved before it recorded its anchor settings: made with the anchor weight a config of that
# time meant (its decays were not recorded, so they are not compared).
_LEGACY_ANCHOR = {"anchor_weight": INFERENCE_FIELDS["anchor_weight"]}


def anchor_settings(config) -> dict[str, Any]:
    """The config's fields that shape the anchor of an entry (``ANCHOR_KEYS``)."""
    return {key: getattr(config, key) for key in ANCHOR_KEYS}


@dataclass
class AnchorBank:
    """Entries of (normalised cube, anchor cube, input axis, input positions)."""

    cubes: np.ndarray  # (N, S, S, S) float16 in [0, 1]
    anchors: np.ndarray  # (N, S, S, S) float16
    axes: np.ndarray  # (N,) int
    positions: list[list[int]]  # per entry: sorted cube indices along its axis
    points: list[np.ndarray]  # per entry: (P, 3) foreground points, normalised cube coordinates
    sources: list[str]
    anchor: dict[str, Any] = field(default_factory=dict)  # the anchor settings it was made with

    def matches(self, config) -> bool:
        """Whether its anchors were made with ``config``'s anchor settings."""
        wanted = anchor_settings(config)
        return all(wanted[key] == value for key, value in self.anchor.items()) and bool(self.anchor)

    def __len__(self) -> int:
        return int(self.cubes.shape[0])

    @property
    def side(self) -> int:
        return int(self.cubes.shape[1])

    def save(self, path: Path) -> None:
        """Atomic write (temp file in the same folder, then rename)."""
        counts = np.array([len(p) for p in self.positions])
        with atomic_file(path, suffix=".npz") as tmp:
            np.savez(tmp, cubes=self.cubes, anchors=self.anchors, axes=self.axes, counts=counts,
                     positions=np.concatenate([np.asarray(p) for p in self.positions]),
                     points=np.stack(self.points), sources=np.array(self.sources),
                     anchor_settings=np.array(json.dumps(self.anchor, sort_keys=True)))

    @classmethod
    def load(cls, path: Path) -> "AnchorBank":
        try:
            data = np.load(path)
            counts = data["counts"]
            flat = data["positions"].tolist()
            splits = np.cumsum(counts)[:-1]
            positions = [list(map(int, p)) for p in np.split(np.asarray(flat), splits)]
            anchor = json.loads(str(data["anchor_settings"])) if "anchor_settings" in data else dict(_LEGACY_ANCHOR)
            return cls(data["cubes"], data["anchors"], data["axes"], positions, list(data["points"]),
                       [str(s) for s in data["sources"]], anchor)
        except (OSError, KeyError, ValueError) as error:
            raise XDiffusionError(f"{path}: unreadable anchor bank ({error}): delete it to rebuild") from None


def _pad_or_crop(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random field of view: per side, pad up to 30% of the axis (below the head up to 45%) or crop up to 12%."""
    for axis in range(3):
        n = array.shape[axis]
        for side in (0, 1):
            high = 0.45 if (axis == 2 and side == 0) else 0.3
            amount = int(round(rng.uniform(-0.12, high) * n))
            if amount > 0:
                pad = [(0, 0)] * 3
                pad[axis] = (amount, 0) if side == 0 else (0, amount)
                array = np.pad(array, pad)
            elif amount < 0:
                keep = slice(-amount, None) if side == 0 else slice(0, array.shape[axis] + amount)
                index = [slice(None)] * 3
                index[axis] = keep
                array = array[tuple(index)]
    return array


def _thick_slices(array: np.ndarray, spacing: np.ndarray, rng: np.random.Generator):
    """One axis resampled to a coarser spacing (with the blur a thick slice has)."""
    from scipy.ndimage import gaussian_filter1d, zoom  # scipy: loaded when a bank is built, not with BANK_FILE

    axis = int(rng.integers(0, 3))
    factor = float(rng.uniform(1.5, 3.5))
    blurred = gaussian_filter1d(array, sigma=factor / 2.355, axis=axis, mode="nearest")
    zooms = [1.0, 1.0, 1.0]
    zooms[axis] = 1.0 / factor
    out = zoom(blurred, zooms, order=1, mode="nearest")
    spacing = spacing.copy()
    spacing[axis] *= array.shape[axis] / out.shape[axis]
    return out.astype(np.float32), spacing


def input_positions(extent: tuple[int, int], rng: np.random.Generator, k_max: int = 31) -> list[int]:
    """K cube indices at protocol-like spacing (bin centres) with jitter, over all or part of the extent."""
    low, high = extent
    k = int(rng.choice(PROTOCOL_KS)) if rng.random() < 0.7 else int(rng.integers(1, 32))
    k = min(k, int(k_max))
    if rng.random() < 0.25 and high - low > 8:  # a user's picks over part of the head
        span = int(rng.integers((high - low) // 3, high - low + 1))
        low = int(rng.integers(low, high - span + 1))
        high = low + span
    from ..evaluation.protocol import bin_centres  # scipy (the evaluation package), as in _thick_slices

    length = high - low + 1
    k = min(k, length)
    # The evaluation protocol's bin centres, with jitter of up to 30% of a bin.
    centres = bin_centres(low, high, k) + rng.uniform(-0.3, 0.3, size=k) * length / k
    positions = np.unique(np.clip(np.floor(centres + 0.5), low, high).astype(int))
    return [int(p) for p in positions]


def _warp(cube: np.ndarray, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """A smooth random displacement (up to ``amplitude`` voxels) of a cube."""
    from scipy.ndimage import map_coordinates, zoom  # scipy, as in _thick_slices

    side = cube.shape[0]
    coarse = rng.normal(0.0, amplitude / 2.0, size=(3, 4, 4, 4))
    field = np.stack([zoom(c, side / 4.0, order=3, mode="nearest")[:side, :side, :side] for c in coarse])
    grid = np.indices(cube.shape, dtype=np.float32) + field
    return map_coordinates(cube, grid, order=1, mode="nearest").astype(np.float32)


def make_entry(volume, config, rng: np.random.Generator, template=None):
    """One (cube, anchor, axis, positions, points) entry from a canonical ``Volume``."""
    # scipy and SimpleITK: loaded when a bank is built; the command line reads this module's names.
    from ..baselines.anchor import anchor_estimate, blend
    from ..baselines.foreground import bounding_box, foreground_mask
    from ..transforms.intensity import IntensityNormalizer
    from ..transforms.model_space import ModelSpace

    array = np.asarray(volume.array, dtype=np.float32)
    spacing = np.asarray(volume.spacing, dtype=np.float64)
    array = _pad_or_crop(array, rng)
    if rng.random() < ANISOTROPY_PROBABILITY:
        array, spacing = _thick_slices(array, spacing, rng)
    grid = Grid(array.shape, tuple(spacing), (0.0, 0.0, 0.0), np.eye(3))
    space = ModelSpace.for_grid(grid, config.side)
    cube = np.asarray(space.to_cube(array, antialias=True), dtype=np.float32)
    mask = foreground_mask(cube)
    axis = int(rng.choice(3, p=AXIS_WEIGHTS))
    box = bounding_box(mask, axis)
    if box is None:
        raise XDiffusionError(f"{volume}: no foreground in model space")
    positions = input_positions(box, rng, config.max_slices)
    plane = ("sagittal", "coronal", "axial")[axis]
    slices = np.stack([np.take(cube, p, axis=axis) for p in positions])
    normalizer = IntensityNormalizer(zero_floor=True).fit(slices)
    cube = normalizer.forward(cube)
    cube_grid = Grid(cube.shape, (space.cube_spacing,) * 3, (0.0, 0.0, 0.0), np.eye(3))
    inputs = SliceInput(cube_grid, plane, tuple(positions), np.stack([np.take(cube, p, axis=axis) for p in positions]))
    parts = anchor_estimate(inputs, config.anchor_decay_inside_mm, config.anchor_decay_outside_mm, template,
                            config.anchor_weight)
    fitted = parts.template
    if rng.random() < 0.6:
        fitted = _warp(fitted, rng, amplitude=float(rng.uniform(0.5, 2.5)))
    if rng.random() < 0.5:
        fitted = np.clip(fitted, 0.0, None) ** np.float32(math.exp(rng.normal(0.0, 0.15)))
    anchor = blend(inputs, parts.interpolation, fitted, parts.weight, parts.coverage)
    coords = np.argwhere(mask)
    if len(coords) > _POINTS:
        coords = coords[rng.choice(len(coords), _POINTS, replace=False)]
    elif len(coords) < _POINTS:
        coords = coords[rng.choice(len(coords), _POINTS, replace=True)]
    points = (2.0 * coords / (config.side - 1) - 1.0).astype(np.float32)
    return cube.astype(np.float16), anchor.astype(np.float16), axis, positions, points


def build_bank(sources: Sequence[Path], config, per_volume: int, seed: int, progress: bool = True,
               volumes: Sequence[int] | None = None) -> AnchorBank:
    """``per_volume`` entries for each source volume; entry j of volume i depends only on (seed, i, j).

    ``volumes``: only these source indices (a shard; ``merge_banks`` joins shards in order).
    """
    # scipy and SimpleITK, as in make_entry
    from ..baselines.template import TemplateBaseline
    from ..io.readers import read_volume
    from ..transforms.orientation import to_canonical

    # No deformable stage here: it is 80% of an entry's cost, and step 5's random warp already gives
    # the template part misfits at least as large as the ones the deformable stage removes.
    template = TemplateBaseline(deform=False)
    cubes, anchors, axes, positions, points = [], [], [], [], []
    chosen = range(len(sources)) if volumes is None else volumes
    iterator = [(i, sources[i]) for i in chosen]
    if progress:
        from tqdm.auto import tqdm  # only with a progress bar

        iterator = tqdm(iterator, desc="anchor bank", unit="vol")
    for i, source in iterator:
        volume, _ = to_canonical(read_volume(source))
        for j in range(int(per_volume)):
            rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(i, j)))
            cube, anchor, axis, pos, pts = make_entry(volume, config, rng, template)
            cubes.append(cube)
            anchors.append(anchor)
            axes.append(axis)
            positions.append(pos)
            points.append(pts)
    return AnchorBank(np.stack(cubes), np.stack(anchors), np.asarray(axes), positions, points,
                      [str(sources[i]) for i in chosen], anchor_settings(config))


def merge_banks(banks: Sequence[AnchorBank]) -> AnchorBank:
    """Shards joined in the given order (all made with the same anchor settings)."""
    if any(b.anchor != banks[0].anchor for b in banks):
        raise XDiffusionError(f"anchor banks made with different anchor settings: {[b.anchor for b in banks]}")
    return AnchorBank(np.concatenate([b.cubes for b in banks]), np.concatenate([b.anchors for b in banks]),
                      np.concatenate([b.axes for b in banks]), [p for b in banks for p in b.positions],
                      [p for b in banks for p in b.points], [s for b in banks for s in b.sources], banks[0].anchor)


def load_or_build(run_dir: Path, sources: Sequence[Path], config, per_volume: int, seed: int,
                  progress: bool = True) -> AnchorBank:
    """The run's cached bank when its sources, side and anchor settings match, else a new one (cached
    once the run folder exists)."""
    path = Path(run_dir) / BANK_FILE
    if path.is_file():
        bank = AnchorBank.load(path)
        if bank.sources == [str(s) for s in sources] and bank.side == config.side and bank.matches(config):
            return bank
    bank = build_bank(sources, config, per_volume, seed, progress)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    bank.save(path)
    return bank
