"""slicer."""
