"""The browser app behind ``xdiffusion app`` (trame + 3D Slicer's core libraries).

- ``hub``: the public front server; one private session process per browser tab, forwarded.
- ``session``: one tab's trame server: Slicer scene, state, reconstruction worker, triggers.
- ``ui``: the page layout; ``views``: the input and comparison slice-view layouts.
- ``transfer``: uploads (size limit) and downloads over HTTP; ``results``: metrics and exports.
"""
