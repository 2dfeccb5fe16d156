"""What a volume file's header may declare, checked before any voxel is read.

A 3D scalar volume (or one chosen volume of a 4D or multi-component file: ``MultiVolumeError``
when none was chosen), no more voxels than ``MAX_VOXELS`` (a small compressed file can declare
gigabytes), a voxel spacing inside ``SPACING_RANGE_MM``, and no more voxel bytes than an NRRD or
MetaImage header's data files can hold. Each problem is one ``XDiffusionError`` line naming the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import SimpleITK as sitk

from ..errors import XDiffusionError
from .data_files import data_encoding, detached_data_files


class MultiVolumeError(XDiffusionError):
    """A 4D or multi-component file read without choosing one of its volumes.

    The message names the command line's choice (``--volume N``); callers without that option
    (the browser app, the worker) show ``without_option()`` instead.
    """

    def __init__(self, label: str, what: str, count: int):
        self.label, self.what, self.count = label, what, count
        super().__init__(f"{label} {what}; pick one with volume_index / --volume N (0..{count - 1})")

    def without_option(self) -> XDiffusionError:
        return XDiffusionError(f"{self.label} {self.what}: a single 3D volume is needed; "
                               f"save the one you want (0..{self.count - 1}) as a file of its own")


# A 3D volume larger than this is refused before its voxels are read (a small compressed file can
# declare gigabytes): 2x a 1024^3 head at float32 is 8 GB. Callers serving others pass less.
MAX_VOXELS = 1 << 30


def check_voxel_count(label: str, size, max_voxels: int | None) -> None:
    """Refuse more voxels than ``max_voxels`` (default ``MAX_VOXELS``) before any is read."""
    limit = MAX_VOXELS if max_voxels is None else int(max_voxels)
    count = 1
    for extent in size:
        count *= int(extent)
    if count > limit:
        raise XDiffusionError(f"{label}: {'x'.join(str(int(e)) for e in size)} voxels ({count:,}) is more than "
                              f"the {limit:,} voxels a volume may have here")


# Most bytes one byte of a data file can become when decompressed (deflate's limit is 1032:1).
_MAX_GZIP_RATIO = 1032


def check_data_size(path: Path, label: str, reader: sitk.ImageFileReader) -> None:
    """Refuse an NRRD/MetaImage header declaring more voxel bytes than its data file(s) can hold,
    before ITK allocates the image (a tiny file can declare gigabytes). bzip2 is not bounded here."""
    encoding = data_encoding(path)
    kind = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    bits = re.search(r"(\d+)-bit", kind)
    if encoding is None or bits is None:
        return
    voxels = reader.GetNumberOfComponents() * (2 if kind.startswith("complex") else 1)
    for extent in reader.GetSize():
        voxels *= int(extent)
    needed = {"raw": voxels * int(bits.group(1)) // 8, "hex": voxels * int(bits.group(1)) // 4, "ascii": voxels,
              "gzip": -(-voxels * int(bits.group(1)) // 8 // _MAX_GZIP_RATIO)}.get(encoding)
    files = detached_data_files(path) or [path]
    try:
        available = sum(file.stat().st_size for file in files)
    except OSError:
        return  # a missing data file: reading it says so
    if needed is not None and available < needed:
        named = files[0] if len(files) == 1 else f"its {len(files)} data files"
        raise XDiffusionError(f"{label}: its header declares {'x'.join(str(int(e)) for e in reader.GetSize())} "
                              f"voxels ({encoding}), at least {needed:,} bytes, but {named} holds {available:,}: "
                              "truncated or a wrong header")


# Voxel spacing a scan may have, in mm: outside this a header is wrong (1e-30 or 1e30 mm), and the
# geometry built from it would overflow or divide by nearly zero. The one home of this bound.
SPACING_RANGE_MM = (1e-3, 1e3)


def check_spacing(label: str, spacing) -> None:
    """Refuse a voxel spacing outside ``SPACING_RANGE_MM``: the header is wrong."""
    low, high = SPACING_RANGE_MM
    values = [float(s) for s in spacing]
    if not all(low <= s <= high for s in values):  # NaN fails too
        raise XDiffusionError(f"{label}: voxel spacing {' x '.join(f'{s:g}' for s in values)} mm is outside "
                              f"{low:g}..{high:g} mm: the header is wrong")


def check_dimensions(label: str, dimension: int, size, components: int, volume_index: int | None) -> None:
    """Refuse 2D and >4D images and ambiguous 4D ones before reading any voxels."""
    size = tuple(int(s) for s in size)
    if dimension == 2:
        raise XDiffusionError(f"{label} is a 2D image ({'x'.join(map(str, size))}): a 3D volume is needed")
    if dimension not in (3, 4):
        raise XDiffusionError(f"{label} has {dimension} dimensions: a 3D volume is needed")
    n_volumes = (size[3] if dimension == 4 else 1) * components
    if dimension == 4 and components > 1:
        raise XDiffusionError(f"{label} is 4D with {components}-component voxels: not supported, save one 3D volume")
    if volume_index is None:
        if n_volumes > 1:
            what = f"is 4D with {n_volumes} volumes" if dimension == 4 else f"has {n_volumes} values per voxel"
            raise MultiVolumeError(label, what, n_volumes)
    elif not 0 <= volume_index < n_volumes:
        raise XDiffusionError(
            f"{label}: volume index {volume_index} is out of range; it holds {n_volumes} volume"
            f"{'s' if n_volumes != 1 else ''} (0..{n_volumes - 1})"
        )
    spatial = size[:3]
    if min(spatial) < 2:
        raise XDiffusionError(f"{label} is 2D (size {'x'.join(map(str, spatial))}): a 3D volume is needed")
