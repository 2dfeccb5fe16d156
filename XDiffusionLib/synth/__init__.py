"""Synthetic training subjects from the ICBM152 template (SynthSeg-style): deformed anatomy, head
layers, atrophy, optional tumours with BraTS labels, random contrasts and acquisition artefacts.

Main entry points: ``synthesize_subject`` (one subject in memory), ``write_synthetic_dataset``
(a folder of NIfTI files + manifest, what ``xdiffusion synth`` runs) and ``save_preview`` (PNG).
"""

from .contrast import CONTRASTS, RENDER_CLASSES
from .dataset import write_synthetic_dataset
from .figure import save_preview
from .lesions import LESION_LABELS
from .subject import SyntheticSubject, subject_rng, synthesize_subject

__all__ = [
    "CONTRASTS",
    "LESION_LABELS",
    "RENDER_CLASSES",
    "SyntheticSubject",
    "save_preview",
    "subject_rng",
    "synthesize_subject",
    "write_synthetic_dataset",
]
