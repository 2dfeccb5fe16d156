"""Calibrated uncertainty: per-voxel intervals at a stated level (``intervals``).

Layer: above ``errors`` (numpy only, no torch); ``model.calibration`` reads and checks the table
shipped beside the weights, ``sampling.reconstructor`` applies it, ``metrics.coverage`` and
``xdiffusion evaluate`` measure it.
"""
