"""The browser app behind ``xdiffusion app`` (trame + 3D Slicer's core libraries).

- ``hub``: the public front server, routing only: ``pool`` (one private session process per
  browser tab), ``admission`` (start tokens, origin policy), ``proxy`` (forwarding to a tab's
  session), ``pages`` (landing and refusal pages); ``origins``: the host and origin checks.
- ``session``: one tab's trame server: Slicer scene, typed state (``state``), the features
  (``loading``, ``picking``, ``thick_slices``, ``running``, ``viewing``, ``exporting``) connected
  by ``signals``, the page's triggers; ``reports``, ``workspace``: what the features share.
- ``ui``: the page layout; ``views``: the input and comparison slice-view layouts.
- ``transfer``: uploads (size limit) and downloads over HTTP; ``results``: metrics and exports.
"""
