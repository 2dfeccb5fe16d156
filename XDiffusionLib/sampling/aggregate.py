"""``ViewAggregator``: per-voxel statistics over views x samples, streamed one view at a time.

Each generated view R_i.X is rotated back with R_i^T (``geometry.sections.rotate_back``) and
added; only the voxels the view covers count (same-size rotated cubes cut the corners of oblique
views). Nothing but running sums is kept, so memory does not grow with the number of views:

- ``result``: per sample the views' ``mean`` (the paper's X = 1/N sum_i R_i^T X_{R_i}) or ``max``
  (the max-pool variant of the paper's Table V), then averaged over samples; voxels no view covers
  read ``fill``;
- ``mean`` and ``std``: over every covered (view, sample) value of a voxel (population std), the
  spread the interval calibration (``uncertainty.intervals``) starts from;
- ``coverage``: how many view x sample volumes covered each voxel.

All sums are float64 on the CPU, in the order the pipeline always used, so results do not change.
"""

from __future__ import annotations

import torch

from ..errors import XDiffusionError
from ..geometry.sections import rotate_back
from ..settings import check_aggregate


class ViewAggregator:
    """``start_sample()``, then ``add_view(view, R)`` per view, then ``end_sample()``; repeat per sample."""

    def __init__(self, side: int, aggregate: str = "mean") -> None:
        check_aggregate(aggregate)
        self.side = int(side)
        self.aggregate = aggregate
        shape = (self.side,) * 3
        self.weight = torch.zeros(shape, dtype=torch.float64)
        self._sum = torch.zeros_like(self.weight)
        self._squares = torch.zeros_like(self.weight)
        self._sample_sum = torch.zeros_like(self.weight)  # per-sample aggregates, summed over samples
        self.samples = 0
        self._open = False

    def start_sample(self) -> None:
        if self._open:
            raise XDiffusionError("ViewAggregator: end_sample() before starting another sample")
        self._open = True
        self._best = torch.full((self.side,) * 3, -torch.inf, dtype=torch.float64)
        self._view_weight = torch.zeros_like(self.weight)
        self._view_sum = torch.zeros_like(self.weight)

    def add_view(self, view: torch.Tensor, R: torch.Tensor) -> None:
        """``view``: R.X on its own cube (D, S', S') (any device); ``R``: its rotation (3, 3)."""
        if not self._open:
            raise XDiffusionError("ViewAggregator: start_sample() before add_view()")
        back, covered = rotate_back(view[None].float().cpu(), R, self.side, return_coverage=True)
        back, covered = back[0].double(), covered[0].double()
        self._view_weight += covered
        self._view_sum += back * covered
        self._squares += back * back * covered
        self._best = torch.where(covered > 0, torch.maximum(self._best, back), self._best)

    def end_sample(self) -> None:
        if not self._open:
            raise XDiffusionError("ViewAggregator: end_sample() without start_sample()")
        self._open = False
        self._sum += self._view_sum
        self.weight += self._view_weight
        if self.aggregate == "mean":
            self._sample_sum += self._view_sum / self._view_weight.clamp_min(1.0)
        else:
            self._sample_sum += torch.where(self._view_weight > 0, self._best, torch.zeros_like(self._best))
        self.samples += 1

    def _check(self) -> None:
        if self._open or self.samples == 0:
            raise XDiffusionError("ViewAggregator: no finished sample to read")

    def result(self, fill: float = 0.0) -> torch.Tensor:
        """The aggregate (module docstring), float64; ``fill`` where no view covered a voxel."""
        self._check()
        return torch.where(self.weight > 0, self._sample_sum / self.samples, torch.full_like(self.weight, fill))

    def mean(self) -> torch.Tensor:
        self._check()
        return self._sum / self.weight.clamp_min(1.0)

    def std(self) -> torch.Tensor:
        """Population std over every covered view x sample value (0 where one or none covered it)."""
        mean = self.mean()
        return (self._squares / self.weight.clamp_min(1.0) - mean * mean).clamp_min(0.0).sqrt()

    @property
    def coverage(self) -> torch.Tensor:
        return self.weight


__all__ = ["ViewAggregator"]
