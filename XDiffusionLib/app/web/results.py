"""What the page shows and offers after a reconstruction: the metrics table and the exports.

Metrics are the evaluation protocol's own (``evaluation.protocol.score``, the numbers of
``xdiffusion evaluate``), computed in canonical RAS+ voxel order so that "axial" SSIM means the
slices the views show. Both PSNR conventions are shown under their own names, and ``psnr_paper``
also over the non-input slices only (the input slices are copied into the result: they are exact).

Exports are written with the Slicer module's exporter (``XDiffusionLib.slicer.export``): NIfTI,
NRRD, or a DICOM series marked as an AI-generated pseudo-MRI (zipped for the download).
"""

from __future__ import annotations

import math
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import XDiffusionError
from ...io.atomic import temporary_file
from ...io.volume import Volume
from ...slicer.export import export_dicom_series, export_volume
from ...transforms.thick_slices import slab_average
from ...uncertainty.intervals import UncertaintyInfo

EXPORT_FORMATS: dict[str, str] = {"nifti": ".nii.gz", "nrrd": ".nrrd", "dicom": ".zip"}
EXPORT_FORMAT_TITLES = {"nifti": "NIfTI (.nii.gz)", "nrrd": "NRRD (.nrrd)", "dicom": "DICOM pseudo-MRI (.zip)"}


@dataclass(frozen=True)
class MetricRow:
    key: str
    title: str
    value: float
    unit: str
    note: str
    short: str = ""

    def to_dict(self) -> dict:
        """For the page: the value as shown, and ``why`` it shows "inf" or "n/a" (empty otherwise)."""
        if math.isinf(self.value) or math.isnan(self.value):
            shown = "inf" if math.isinf(self.value) else "n/a"
        else:
            shown = f"{self.value:.{2 if self.unit else 4}f}"
        unit = f" {self.unit}" if self.unit and not math.isnan(self.value) else ""  # "n/a", never "n/a dB"
        return {"key": self.key, "title": self.title, "short": self.short or self.title, "value": shown + unit,
                "note": self.note,
                "why": not_a_number_reason(self.key, self.value)}


def not_a_number_reason(key: str, value: float) -> str:
    """Why a score is "inf" or "n/a", in the words the page shows beside it ("" for a number)."""
    if math.isinf(value):
        return ("inf dB: no difference at all from the loaded volume (the error is 0: every slice scored "
                "was an input slice, copied unchanged)")
    if math.isnan(value):
        if key == "psnr_paper_noninput":
            return "n/a: every slice was an input slice, so there is no other slice to score"
        return "n/a: not defined for this volume (a slice without contrast)"
    return ""


def reasons_shown(rows: list[dict]) -> str:
    """The reasons of the rows' "inf" and "n/a", each once, for the line beside the metrics."""
    return "; ".join(dict.fromkeys(row["why"] for row in rows if row["why"]))


# Each row of the table: the protocol's metric name, its title, a short title for the page's one
# line of metrics, its unit, and what it measures (the page shows it on hover).
METRIC_ROWS = (
    ("psnr_paper", "PSNR, paper convention", "PSNR", "dB", "10 log10(max(real)^2 / MSE), all voxels (paper eq. 4)"),
    ("psnr_paper_noninput", "PSNR, paper convention, non-input slices", "PSNR non-input", "dB",
     "the same without the input slices (copied into the result, so exact)"),
    ("psnr_unit", "PSNR, unit-range convention", "PSNR unit range", "dB",
     "real's min..max mapped to 0..1 for both, data range 1 (TPDM)"),
    ("ssim_axial", "SSIM, axial", "SSIM axial", "", "mean 2D SSIM over all axial slices"),
    ("ssim_coronal", "SSIM, coronal", "SSIM coronal", "", "mean 2D SSIM over all coronal slices"),
    ("ssim_sagittal", "SSIM, sagittal", "SSIM sagittal", "", "mean 2D SSIM over all sagittal slices"),
)


def compute_metrics(reference: Volume, reconstruction: Volume, plane: str, indices) -> list[MetricRow]:
    """The evaluation protocol's scores (``evaluation.protocol.score``, what ``xdiffusion evaluate``
    reports), in canonical RAS+ voxel order so that "axial" means the slices the views show."""
    # scipy: loaded with the first metrics, not as the session starts
    from ...evaluation.protocol import canonical_case, score

    gt = canonical_case(reference).array
    pred = canonical_case(reconstruction).array
    if gt.shape != pred.shape:
        raise XDiffusionError(f"the reference is {gt.shape} voxels and the reconstruction {pred.shape}: cannot compare")
    scores = score(gt, pred, plane, indices)
    return [MetricRow(key, title, float(scores[key]), unit, f"{title}: {note}", short)
            for key, title, short, unit, note in METRIC_ROWS]


def slab_metrics(acquired: Volume, reconstruction: Volume, plan) -> list[MetricRow]:
    """What a thick-slice result can be checked against: the acquired slices. The result averaged
    over each acquired slab (``transforms.thick_slices.slab_average``, the slice profile of the run)
    against the acquired slice, the largest difference relative to the acquired range."""
    if reconstruction.shape != plan.grid.shape:
        raise XDiffusionError(f"the reconstruction is {reconstruction.shape} voxels, not the finer grid's "
                              f"{plan.grid.shape}: cannot compare")
    real = np.asarray(acquired.array, dtype=np.float64)
    error = np.abs(slab_average(reconstruction.array, plan) - real)
    span = max(float(real.max() - real.min()), 1e-12)
    return [MetricRow("slab_error", "acquired slabs, largest difference", 100.0 * float(error.max()) / span, "%",
                      f"the result averaged over each {plan.thickness:g} mm slab against that acquired slice: the "
                      "largest difference over all voxels, in % of the acquired intensity range (0: every "
                      "acquired slice given back)", "slabs max |diff|")]


def export_result(volume: Volume, fmt: str, folder: Path, stem: str, provenance=None, what: str = "reconstruction",
                  info: UncertaintyInfo | None = None) -> Path:
    """Write ``volume`` (the ``what`` of a run; ``info``: what its uncertainty means) as ``fmt``
    (see EXPORT_FORMATS) into ``folder``, saying inside the file what it is; returns the file to download."""
    if fmt not in EXPORT_FORMATS:
        raise XDiffusionError(f"unknown export format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    target = Path(folder) / (stem + EXPORT_FORMATS[fmt])
    if fmt != "dicom":
        return export_volume(volume, target, uncertainty=info, what=what)
    if provenance is None:
        raise XDiffusionError("only the reconstruction itself can be exported as a DICOM pseudo-MRI series")
    series = Path(folder) / stem
    files = export_dicom_series(volume, series, provenance)
    partial = temporary_file(target, suffix=".zip")
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for file in files:
                archive.write(file, f"{stem}/{file.name}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
        shutil.rmtree(series, ignore_errors=True)
    return target
