"""Volumes in and out: one Volume type, readers and writers for NIfTI, NRRD, MHA and DICOM."""

from .readers import read_labelmap, read_volume
from .volume import Grid, Volume
from .writers import write_volume

__all__ = ["Grid", "Volume", "read_labelmap", "read_volume", "write_volume"]
