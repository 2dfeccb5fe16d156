"""The panel's "all acquired slices onto a finer grid" option: the library's thick-slice workflow.

The plan (the finer grid: the scan's own grid refined along its slice axis, every acquired slice on
it; the slice profile) is ``transforms.thick_slices``; the run is ``sampling.thick_slices.
reconstruct_thick_slices``, which the worker calls when the job carries ``JobSettings.thick_slices``
(``job_settings``). So the Slicer result is the library's, with the same data consistency: every
acquired slab's average in the result equals the acquired slice. Only the panel's word for the
option lives here: a grid spacing in mm, and the slice thickness from the scan's DICOM header in
Slicer's DICOM database (SliceThickness, as the command line's ``--all-slices`` reads it), else
the slice spacing.
"""

from __future__ import annotations

from dataclasses import replace

from ..io.dicom import slice_thickness_value
from ..io.volume import Grid
from ..transforms.thick_slices import MAX_VOXELS, ThickSlicePlan, acquisition_plane, plan_thick_slices
from ..worker.messages import JobSettings

AllSlicesPlan = ThickSlicePlan  # the name the panel's code used


def plan_all_slices(grid: Grid, spacing: float, thickness: float | None = None) -> ThickSlicePlan:
    """All acquired slices of the scan on ``grid`` onto ``spacing`` mm slices (one-line errors; a scan
    longer than the model takes goes through in windows, ``sampling.thick_slices``)."""
    return plan_thick_slices(grid, spacing=spacing, thickness=thickness)


SLICE_THICKNESS_TAG = "0018,0050"  # DICOM SliceThickness, as Slicer's DICOM database names tags


def header_thickness(node, database) -> float | None:
    """The acquired slice thickness (mm) of a volume node loaded from Slicer's DICOM database: the
    SliceThickness of its first instance (the node's ``DICOM.instanceUIDs``, which Slicer's DICOM
    plugin records), or None (not from DICOM, no database, no usable value: the slice spacing)."""
    uids = (node.GetAttribute("DICOM.instanceUIDs") or "").split() if node is not None else []
    if not uids or database is None:
        return None
    path = database.fileForInstance(uids[0])
    return slice_thickness_value(database.fileValue(path, SLICE_THICKNESS_TAG)) if path else None


def job_settings(settings: JobSettings, plan: ThickSlicePlan) -> JobSettings:
    """``settings`` for the worker's thick-slice run of ``plan`` (its plane and slices recorded)."""
    return replace(settings, plane=plan.plane, indices=plan.indices,
                   thick_slices={"factor": plan.factor, "thickness": plan.thickness}).check()


__all__ = ["AllSlicesPlan", "MAX_VOXELS", "SLICE_THICKNESS_TAG", "acquisition_plane", "header_thickness", "job_settings",
           "plan_all_slices"]
