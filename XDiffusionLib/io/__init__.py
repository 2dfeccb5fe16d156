"""Volumes in and out: one Volume type, readers and writers for NIfTI, NRRD, MHA and DICOM."""

from .volume import Grid, Volume

__all__ = ["Grid", "Volume"]
