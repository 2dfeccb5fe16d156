"""XDiffusion: 3D MRI volumes from one or a few 2D slices with a cross-sectional diffusion model.

Pure-Python library, importable without 3D Slicer. Folders follow the architecture:
io (volumes in and out), transforms (invertible preprocessing), geometry (rotations and
cross-sections in torch), metrics, baselines, evaluation, model (denoisers), sampling
(pipeline and schedulers), training, synth (synthetic subjects), slicer (MRML scene logic),
worker (reconstruction in a subprocess), app (command line and web app).
"""

__version__ = "0.1.0"
