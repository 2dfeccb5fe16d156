"""A reconstruction in a Slicer scene, from the input node to the result nodes.

``SceneReconstruction`` checks the request, copies the input node's voxels into a ``Volume``
(the input node is only read), starts a worker job (``XDiffusionLib.worker.launcher``) and, when
the job is done, adds the results as new nodes:
- "<input> XDiffusion": the reconstruction, shown with the input's window/level;
- "<input> uncertainty": the calibrated 90% interval half-width (or, for a model without a
  calibration table, the spread across views x samples), sequential colours and a titled colour bar;
  what it means comes with the worker's result (``sampling.result``) and stays on the node;
- "<input> difference": reference - reconstruction (``maps.difference``), dark at 0 (with a reference);
- segmentation overlays on the real and the generated volume (automatic tissue classes, or the
  user's labelmap/segmentation), and the description of the side-by-side layout.
With ``grid_spacing``, the input slices are all the acquired slices of a thick-slice scan (each
averaging ``thickness`` mm; None: the slice spacing) and the results lie on a grid finer along the
slice axis: the worker runs the library's thick-slice workflow (``thick_slices``,
``sampling.thick_slices``); there is no difference map then. How much of that result the model
generated against interpolation along the slice axis (``sampling.result.ModelShare``, read back
from the worker's files) is ``ResultNodes.share``, the reconstruction node's description and a
setting of its provenance (so DICOM exports record it too).
A job that fails or is cancelled adds nothing; if creating the result nodes fails half-way, the
ones already added are removed again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import maps
from ..errors import XDiffusionError
from ..sampling.result import ModelShare, ReconstructionResult
from ..worker.launcher import CANCELLED, DONE, FAILED, RUNNING, WorkerJob, WorkerLauncher
from ..worker.messages import JobSettings
from . import display, segmentation as seg
from .export import Provenance
from .layout import ComparisonLayout, bind_overlays, comparison_layout, remember_comparison
from .nodes import add_volume_node, node_ids, output_name, remove_nodes_added_since, volume_from_node
from .thick_slices import AllSlicesPlan
from .request_checks import check_request, plan_request

AUTOMATIC = "automatic"


@dataclass
class ResultNodes:
    reconstruction: object
    uncertainty: object | None = None
    difference: object | None = None
    segmentation_real: object | None = None
    segmentation_generated: object | None = None
    layout: ComparisonLayout | None = None
    share: ModelShare | None = None  # a thick-slice run: the model's share against slice-axis interpolation


class SceneReconstruction:
    """One run for ``input_node`` in ``scene``.

    ``overlay``: None (no segmentation), ``AUTOMATIC`` (tissue classes computed on the real volume,
    applied to both) or a labelmap/segmentation node (shown on both).
    """

    def __init__(self, scene, input_node, settings: JobSettings, reference_node=None, overlay=None,
                 launcher: WorkerLauncher | None = None, grid_spacing: float | None = None,
                 thickness: float | None = None):
        self.scene = scene
        self.input_node = input_node
        self.settings = settings
        self.reference_node = reference_node
        self.overlay = overlay
        self.launcher = launcher or WorkerLauncher("auto")
        self.job: WorkerJob | None = None
        self.result: ResultNodes | None = None
        self.plan: AllSlicesPlan | None = None  # with grid_spacing: all acquired slices, finer grid
        self.share: ModelShare | None = None  # the finished run's, from the worker's result
        overlay_node = None if overlay in (None, AUTOMATIC) else overlay
        if grid_spacing is None:
            check_request(input_node, settings, reference_node, overlay_node)
        else:
            self.plan, self.settings = plan_request(input_node, settings, grid_spacing, reference_node, overlay_node,
                                                    thickness)
        self._input_name = input_node.GetName()
        self._input_transform = input_node.GetTransformNodeID()

    # -- running ---------------------------------------------------------------------------------

    def start(self) -> "SceneReconstruction":
        volume = volume_from_node(self.input_node)
        self._input = volume  # with a plan, the worker puts it on the finer grid (settings.thick_slices)
        self.job = self.launcher.start(volume, self.settings)
        return self

    @property
    def state(self) -> str:
        return RUNNING if self.job is None else self.job.state

    @property
    def fraction(self) -> float:
        return 0.0 if self.job is None else self.job.fraction

    @property
    def message(self) -> str:
        return "" if self.job is None else self.job.message

    @property
    def error(self) -> str | None:
        return None if self.job is None else self.job.error

    def poll(self) -> list[dict]:
        return [] if self.job is None else self.job.poll()

    def wait(self, timeout: float | None = None) -> str:
        return self.job.wait(timeout) if self.job is not None else RUNNING

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    # -- results ---------------------------------------------------------------------------------

    def provenance(self) -> Provenance:
        """What this run used (recorded on the reconstruction node and in exported DICOM)."""
        model = self.settings.model_dir or "default (shipped compact model)"
        settings = dict(self.settings.options)
        if self.plan is not None:  # the indices are those of the finer grid
            settings["all_acquired_slices_onto_grid_mm"] = self.plan.spacing
            settings["slice_thickness_mm"] = self.plan.thickness
        if self.share is not None:  # known once the run is done
            settings["model_share_against_slice_axis_interpolation"] = round(self.share.weight, 4)
            settings["model_share_checked_on_this_scan"] = self.share.checked
        return Provenance(self.settings.plane, self.settings.indices, model, settings, self._input_name)

    def finish(self) -> ResultNodes:
        """Add the result nodes (once the job is done); raises XDiffusionError if it failed or was cancelled."""
        if self.result is not None:
            return self.result
        if self.job is None:
            raise XDiffusionError("the reconstruction was not started")
        if self.job.state == RUNNING:
            self.job.wait()
        if self.job.state in (FAILED, CANCELLED):
            raise XDiffusionError(self.job.error or f"the reconstruction was {self.job.state}")
        assert self.job.state == DONE
        outputs = self.job.result()
        before = node_ids(self.scene)
        try:
            self.result = self._add_results(outputs)
        except BaseException:
            remove_nodes_added_since(self.scene, before)
            raise
        return self.result

    def _add_results(self, outputs: ReconstructionResult) -> ResultNodes:
        scene = self.scene
        like = self.input_node if self.scene.IsNodePresent(self.input_node) else None

        def add(volume, kind):
            return add_volume_node(scene, volume, output_name(self._input_name, kind), like=like)

        reconstruction = add(outputs.volume.with_array(outputs.volume.array.astype(np.float32)), "reconstruction")
        display.show_like(reconstruction, like)
        self.share = outputs.share
        for key, value in self.provenance().to_attributes().items():
            reconstruction.SetAttribute(key, value)
        if outputs.share is not None:  # in words where Slicer shows a node's description (saved with the scene)
            reconstruction.SetDescription(outputs.share.label())
        result = ResultNodes(reconstruction, share=outputs.share)
        result.uncertainty = add(outputs.uncertainty, "uncertainty")
        # This run's own meaning, carried by the result (calibrated on this scan or on synthetic data
        # only), recorded on the node for every redisplay and export.
        display.show_uncertainty(result.uncertainty, scene, outputs.info)
        real = self._input
        if self.reference_node is not None:
            real = volume_from_node(self.reference_node)
            result.difference = add(real.with_array(maps.difference(real.array, outputs.volume.array)),
                                    "difference")
            display.show_difference(result.difference, scene)
        real_node = self.reference_node if self.reference_node is not None else like
        self._add_overlays(result, real, outputs.volume, real_node)
        result.layout = comparison_layout(
            real_node.GetID() if real_node is not None else reconstruction.GetID(),
            reconstruction.GetID(),
            difference_id=result.difference.GetID() if result.difference is not None else None,
            uncertainty_id=result.uncertainty.GetID() if result.uncertainty is not None else None,
            real_segmentation_id=result.segmentation_real.GetID() if result.segmentation_real is not None else None,
            generated_segmentation_id=(result.segmentation_generated.GetID()
                                       if result.segmentation_generated is not None else None),
            plane=self.settings.plane,
        )
        remember_comparison(reconstruction, result.layout,
                            result.uncertainty.GetID() if result.uncertainty is not None else None)  # "Show side by side" shows this run's inputs
        bind_overlays(scene, result.layout)  # the overlays only in the comparison views, never in every view
        return result

    def _add_overlays(self, result: ResultNodes, real, generated, real_node) -> None:
        if self.overlay is None:
            return
        scene = self.scene
        reference = real_node if real_node is not None else result.reconstruction
        if self.overlay == AUTOMATIC:
            thresholds = seg.tissue_thresholds(real)
            result.segmentation_real = seg.segmentation_from_labels(
                scene, seg.tissue_labels(real, thresholds), output_name(self._input_name, "segmentation_real"), reference)
            result.segmentation_generated = seg.segmentation_from_labels(
                scene, seg.tissue_labels(generated, thresholds),
                output_name(self._input_name, "segmentation_generated"), result.reconstruction)
            return
        # The user's structures: one copy of them, shown on both the real and the generated volume.
        labels, classes = seg.labels_from_node(scene, self.overlay, reference)
        overlay = seg.segmentation_from_labels(scene, labels, f"{self.overlay.GetName()} overlay", reference, classes)
        result.segmentation_real = result.segmentation_generated = overlay


__all__ = ["AUTOMATIC", "ResultNodes", "SceneReconstruction"]
