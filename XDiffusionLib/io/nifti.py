"""NIfTI files as stored, read with nibabel where ITK hides the truth: the stored voxel values
(ITK's reader turns NaN into 0 silently) and the file's length against its header (ITK fills a
truncated file with zeros without complaint).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ..errors import XDiffusionError


def nifti_stored_values(path: Path, volume_index: int | None) -> np.ndarray:
    """The NIfTI voxel values as stored (float types only; integers cannot hold NaN or Inf)."""
    import nibabel  # heavy import, needed only when a NIfTI file is read

    proxy = nibabel.load(str(path)).dataobj
    if not np.issubdtype(np.dtype(proxy.dtype), np.floating):
        return np.zeros(1, dtype=np.float32)
    values = np.asanyarray(proxy)
    if values.ndim == 4:
        values = values[..., volume_index or 0]
    return values


def check_nifti_complete(path: Path, label: str) -> None:
    """Refuse a NIfTI file (or gzip stream) shorter than its header promises: ITK fills the rest with zeros."""
    import nibabel  # heavy import, needed only when a NIfTI file is read

    try:
        proxy = nibabel.load(str(path)).dataobj
        expected = int(proxy.offset) + int(np.prod(proxy.shape)) * np.dtype(proxy.dtype).itemsize
    except Exception as error:  # nibabel raises many types for a bad header
        raise XDiffusionError(f"{label} is not a readable NIfTI file ({type(error).__name__}: {error})") from None
    if path.name.lower().endswith(".gz"):
        # Stream through the whole gzip member: detects a cut-off stream and CRC errors too.
        available = 0
        try:
            with gzip.open(path, "rb") as stream:
                while chunk := stream.read(1 << 22):
                    available += len(chunk)
        except (EOFError, OSError, gzip.BadGzipFile) as error:
            raise XDiffusionError(f"{label} is truncated or corrupt: {error}") from None
    else:
        available = path.stat().st_size
    if available < expected:
        raise XDiffusionError(f"{label} is truncated: {available} bytes of data where the header promises {expected}")
