"""Scene logic for 3D Slicer, without Qt: importable with Slicer's core Python (``slicer``, ``vtk``)
and numpy, so the same code runs inside Slicer, in trame-slicer and in tests on a bare MRML scene.

- ``nodes``: volume nodes <-> ``Volume`` with exact geometry (RAS/LPS, [k, j, i] arrays), output names;
- ``slices``: slice views and typed text -> canonical slice indices;
- ``request_checks``: the panel's checks (nothing is created);
- ``reconstruction``: a run from input node to result nodes, through the worker process;
- ``display``: diverging difference and sequential uncertainty colour maps;
- ``segmentation``: overlays from labelmaps/segmentations or automatic tissue classes;
- ``layout``: the real | generated | difference comparison as plain data, Slicer layout XML;
- ``export``: NIfTI/NRRD files and DICOM pseudo-MRI series;
- ``dependencies``: what the worker needs in Slicer's Python (PyTorch, numpy, pip packages), asked before installing;
- ``thick_slices``: the panel's word for the thick-slice workflow (grid spacing, DICOM slice thickness);
- ``sample_data``: the shipped held-out heads as Sample Data sources.

Import the submodules directly; this package imports nothing on its own.
"""
