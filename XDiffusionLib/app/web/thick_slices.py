"""Feature: a thick-slice scan onto a finer grid, in one click (issue 21 item 3).

When the opened volume has one voxel axis coarser than the others (``transforms.thick_slices.
is_thick_slice``: a clinical series of, say, 0.8 x 0.8 x 6.5 mm voxels), the input slices' card offers
every acquired slice onto a grid finer along the slice axis: the library's plan (the in-plane spacing
rounded to a divisor of the slice spacing; each acquired slice a slab as thick as the DICOM header
says, else as the slice spacing). One click starts the run with the model settings of the panel. The
run is the Slicer module's: a ``SceneReconstruction`` with a grid spacing, whose worker calls the
library's ``sampling.thick_slices.reconstruct_thick_slices`` (the same result as ``xdiffusion
reconstruct --all-slices``).

The result lies on the finer grid. The comparison shows it beside the acquired slices as they were
acquired, on the same fine slices (``transforms.thick_slices.as_acquired``: each fine slice shows the
acquired slice whose centre is nearest, nothing interpolated), and the uncertainty. There is no
difference map and no PSNR/SSIM: nothing was measured between the acquired slices. What can be
checked is shown instead: the result averaged over each acquired slab gives back that slice
(``results.slab_metrics``).
"""

from __future__ import annotations

from ...errors import XDiffusionError
from ...io.volume import Volume
from ...slicer.reconstruction import AUTOMATIC, SceneReconstruction
from ...slicer.request_checks import check_model_dir
from ...transforms.thick_slices import ThickSlicePlan, is_thick_slice, plan_thick_slices

# The comparison's title for the acquired slices shown on the finer grid.
ACQUIRED_TITLE = "Acquired ({spacing:g} mm slices)"


def offer_words(plan: ThickSlicePlan) -> str:
    """The button's words: what one click does, short enough for the panel's width."""
    return f"All {plan.acquired} acquired slices onto {plan.spacing:.3g} mm"


class ThickSlices:
    """Offers the run when a volume is loaded (``offer``, ``forget``); ``scene_run`` makes it."""

    def __init__(self, page, workspace, models, launcher):
        self.state, self.page = page.state, page.data
        self.mine = page.data.thick_slices
        self.workspace, self.models, self.launcher = workspace, models, launcher
        self.thickness: float | None = None  # the loaded file's header thickness (DICOM), if any

    def plan(self, model_dir: str | None) -> ThickSlicePlan:
        """The finer grid for the loaded volume and the model in ``model_dir`` (one-line errors)."""
        volume = self.workspace.volume
        if volume is None:
            raise XDiffusionError("load a volume first")
        check_model_dir(model_dir)
        # Any number of acquired slices: more than the model takes go through in windows (the library's).
        return plan_thick_slices(volume.grid, thickness=self.thickness)

    def offer(self, volume: Volume, thickness: float | None) -> None:
        """Offer the run for a thick-slice scan (or say why not); nothing for any other volume."""
        self.thickness = thickness
        button = offer = note = ""
        if is_thick_slice(volume.grid):
            try:
                plan = plan_thick_slices(volume.grid, thickness=thickness)  # the scan's own plan
                check_model_dir(self.models.for_run(self.page.settings.model_dir))
            except XDiffusionError as error:
                note = f"All acquired slices onto a finer grid: not offered ({error})"
            else:  # more acquired slices than the model takes go through in windows
                button = offer_words(plan)
                described = plan.describe()
                offer = (f"{described[0].upper()}{described[1:]}: starts the reconstruction now with the "
                         "model settings below")
        self._show(button, offer, note)

    def forget(self) -> None:
        self.thickness = None
        self._show("", "", "")

    def _show(self, button: str, offer: str, note: str) -> None:
        with self.state:
            self.mine.button, self.mine.offer, self.mine.note = button, offer, note

    def scene_run(self, settings):
        """The ``SceneReconstruction`` of every acquired slice onto the finer grid (not started)."""
        plan = self.plan(settings.model_dir)
        # No reference: the real volume lies on another grid, so there is no difference to show.
        return SceneReconstruction(self.workspace.scene, self.workspace.input_node, settings, reference_node=None,
                                   overlay=AUTOMATIC, launcher=self.launcher, grid_spacing=plan.spacing,
                                   thickness=plan.thickness)
