"""What the page shows and offers after a reconstruction: the metrics table and the exports.

Metrics (``XDiffusionLib.metrics``) compare the reconstruction with the reference in canonical
RAS+ voxel order (``transforms.orientation.to_canonical``), so "axial" SSIM means the same slices
the views show. Both PSNR conventions are shown under their own names, and ``psnr_paper`` also
over the generated slices only (the input slices are copied into the result, so they are exact).

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
from ...io.volume import Volume
from ...methods import plane_axis

EXPORT_FORMATS: dict[str, str] = {"nifti": ".nii.gz", "nrrd": ".nrrd", "dicom": ".zip"}
EXPORT_FORMAT_TITLES = {"nifti": "NIfTI (.nii.gz)", "nrrd": "NRRD (.nrrd)", "dicom": "DICOM pseudo-MRI series (.zip)"}


@dataclass(frozen=True)
class MetricRow:
    key: str
    title: str
    value: float
    unit: str
    note: str

    def to_dict(self) -> dict:
        if math.isinf(self.value) or math.isnan(self.value):
            shown = "inf" if math.isinf(self.value) else "n/a"
        else:
            shown = f"{self.value:.{2 if self.unit else 4}f}"
        return {"key": self.key, "title": self.title, "value": shown + (f" {self.unit}" if self.unit else ""),
                "note": self.note}


def compute_metrics(reference: Volume, reconstruction: Volume, plane: str, indices) -> list[MetricRow]:
    """PSNR (paper eq. 4, also on generated slices only; TPDM unit range) and SSIM per plane."""
    from ...metrics import psnr_all, psnr_paper, ssim_per_plane
    from ...transforms.orientation import to_canonical

    gt = np.asarray(to_canonical(reference)[0].array, dtype=np.float32)
    pred = np.asarray(to_canonical(reconstruction)[0].array, dtype=np.float32)
    if gt.shape != pred.shape:
        raise XDiffusionError(f"the reference is {gt.shape} voxels and the reconstruction {pred.shape}: cannot compare")
    both = psnr_all(gt, pred)
    generated = np.ones(gt.shape[plane_axis(plane)], dtype=bool)
    generated[list(indices)] = False
    mask = np.broadcast_to(np.expand_dims(generated, tuple(a for a in range(3) if a != plane_axis(plane))), gt.shape)
    rows = [
        MetricRow("psnr_paper", "PSNR, paper convention", both["psnr_paper"], "dB",
                  "10 log10(max(real)^2 / MSE), all voxels (paper eq. 4)"),
        MetricRow("psnr_paper_generated", "PSNR, paper convention, generated slices",
                  psnr_paper(gt, pred, mask) if mask.any() else math.nan, "dB",
                  "the same without the input slices (copied into the result)"),
        MetricRow("psnr_unit", "PSNR, unit-range convention", both["psnr_unit"], "dB",
                  "real's min..max mapped to 0..1 for both, data range 1 (TPDM)"),
    ]
    try:
        ssim = ssim_per_plane(gt, pred)
    except XDiffusionError as error:  # e.g. slices smaller than the SSIM window
        rows.append(MetricRow("ssim", "SSIM", math.nan, "", str(error)))
    else:
        for name in ("axial", "coronal", "sagittal"):
            rows.append(MetricRow(f"ssim_{name}", f"SSIM, {name}", ssim[name], "",
                                  f"mean 2D SSIM over all {name} slices"))
    return rows


def export_result(volume: Volume, fmt: str, folder: Path, stem: str, provenance=None) -> Path:
    """Write ``volume`` as ``fmt`` (see EXPORT_FORMATS) into ``folder``; returns the file to download."""
    from ...slicer.export import export_dicom_series, export_volume

    if fmt not in EXPORT_FORMATS:
        raise XDiffusionError(f"unknown export format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    target = Path(folder) / (stem + EXPORT_FORMATS[fmt])
    if fmt != "dicom":
        return export_volume(volume, target)
    if provenance is None:
        raise XDiffusionError("only the reconstruction itself can be exported as a DICOM pseudo-MRI series")
    series = Path(folder) / stem
    files = export_dicom_series(volume, series, provenance)
    partial = target.with_name("." + target.name + ".part")
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for file in files:
                archive.write(file, f"{stem}/{file.name}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
        shutil.rmtree(series, ignore_errors=True)
    return target
