"""XDiffusion: a 3D MRI volume from one or a few 2D slices, in 3D Slicer.

The panel (Widget) only shows and forwards; XDiffusionLogic turns the parameter node into requests
for ``XDiffusionLib.slicer`` (scene logic, no Qt) which runs the model in a separate worker process
(``PythonSlicer -m XDiffusionLib.worker``, ``XDiffusionLib.worker.launcher``), so Slicer stays
responsive and a run can be cancelled at any time.

Needs 3D Slicer 5.10 or newer (``XDiffusionLib.slicer.dependencies``): older ones bundle Python 3.9.
The panel still opens there and says so instead of starting a run.

Slicer imports this file at startup, on every Slicer the module is installed in: only the light
vocabulary (errors, planes, settings) is imported here, and the rest of ``XDiffusionLib`` (scene
logic, the worker, exports, the dependency checks), Slicer's other modules and the self-test's
packages where they are used.
"""

from __future__ import annotations

import logging
import os
import tempfile
import unittest
from pathlib import Path
from typing import Annotated, Optional, Union

import numpy as np
import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


try:
    # An extension build installs XDiffusionLib beside this file, and Slicer puts this file's folder on
    # sys.path; a source checkout installs it into Slicer's Python (docs/slicer.md). Nothing is done here.
    from XDiffusionLib.errors import XDiffusionError
    from XDiffusionLib.inputs import PLANE_AXIS, check_slice_indices
    from XDiffusionLib.settings import DEFAULTS, DEVICES as SETTING_DEVICES, MAX_SAMPLES, MAX_STEPS, MAX_VIEWS, SAMPLERS
except ModuleNotFoundError as error:
    if error.name != "XDiffusionLib":
        raise
    raise ModuleNotFoundError(
        "XDiffusion: the XDiffusionLib package is not importable. An extension build installs it next to "
        "XDiffusion.py; with a source checkout, install it into Slicer's Python once (Python console: "
        "slicer.util.pip_install(['--no-deps', '-e', '/path/to/checkout'])) and restart Slicer",
        name="XDiffusionLib") from error

PLANES = list(PLANE_AXIS)
DEVICES = list(SETTING_DEVICES)
OVERLAYS = ["none", "automatic", "selected"]
EXPORT_FORMATS = {"NIfTI (.nii.gz)": ".nii.gz", "NRRD (.nrrd)": ".nrrd", "DICOM series (folder)": "dicom",
                  "DICOM database (Slicer)": "dicomdb"}
# The extension's category in the Extensions Index (CMakeLists.txt), also the module's menu.
CATEGORY = "Image Synthesis"
# The module's documentation, in the repository the Extensions Index builds (EXTENSION_HOMEPAGE).
DOCUMENTATION_URL = "https://github.com/xdiffusion/SlicerXDiffusion/blob/main/docs/slicer.md"
# The same as EXTENSION_CONTRIBUTORS in CMakeLists.txt (scripts/check_extension_index.py checks it).
CONTRIBUTORS = ["XDiffusion contributors"]


#
# XDiffusion
#


class XDiffusion(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("XDiffusion")
        self.parent.categories = [CATEGORY]
        self.parent.dependencies = []
        self.parent.contributors = list(CONTRIBUTORS)
        self.parent.helpText = _(
            "Reconstructs a full 3D MRI volume from one or a few 2D slices with a cross-sectional diffusion "
            "model (X-Diffusion). Pick an input volume, a plane and the input slices (or all acquired slices of "
            "a thick-slice scan, onto a finer grid), run Reconstruct, then compare real, generated and "
            "difference side by side. The result is an AI-generated pseudo-MRI, for research only and not "
            "for diagnosis. Needs 3D Slicer 5.10 or newer. "
            'See the <a href="{url}">module documentation</a>.'
        ).format(url=DOCUMENTATION_URL)
        self.parent.acknowledgementText = _(
            "Based on 'X-Diffusion: Generating Detailed 3D MRI Volumes From a Single Image Using "
            "Cross-Sectional Diffusion Models'. Sample MRI data: ICBM152 (nilearn), ITK examples, "
            "MNI152 (nimare), pydeface; see the licences shipped with XDiffusionLib."
        )
        # Once the application has started: the comparison layout (a saved scene keeps only its number,
        # so its description must exist before such a scene is opened) and the sample heads.
        app = getattr(slicer, "app", None)
        if app is not None:
            app.connect("startupCompleted()", onStartupCompleted)


def onStartupCompleted() -> None:
    registerComparisonLayout()
    registerSampleData()


def registerComparisonLayout() -> None:
    """Register the real | generated | difference layout with Slicer's layout node."""
    # the library where it is used (module docstring)
    from XDiffusionLib.slicer.layout import register_layout

    register_layout(slicer.app.layoutManager().layoutLogic().GetLayoutNode())


def registerSampleData() -> None:
    """The shipped held-out heads in the Sample Data module (category XDiffusion), loaded from the
    installed package without network (``XDiffusionLib.slicer.sample_data``)."""
    import SampleData  # Slicer's Sample Data module

    from XDiffusionLib.slicer.sample_data import sample_data_sources  # the library where it is used (module docstring)

    icons = Path(__file__).resolve().parent / "Resources" / "Icons"
    for source in sample_data_sources(icons):
        SampleData.SampleDataLogic.registerCustomSampleDataSource(**source)


#
# Parameter node: every setting of the panel, saved with the scene
#


@parameterNodeWrapper
class XDiffusionParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    plane: Annotated[str, Choice(PLANES)] = "axial"
    sliceIndices: list[int]
    allSlices: bool = False  # a thick-slice scan: every acquired slice, onto a gridSpacing mm grid
    gridSpacing: Annotated[float, WithinRange(0.05, 50.0)] = 1.0
    useDefaultModel: bool = True
    modelPath: Path
    # Sampling settings: names, defaults and limits from XDiffusionLib.settings (one home).
    views: Annotated[int, WithinRange(1, MAX_VIEWS)] = DEFAULTS.views
    steps: Annotated[int, WithinRange(1, MAX_STEPS)] = DEFAULTS.steps
    sampler: Annotated[str, Choice(list(SAMPLERS))] = DEFAULTS.sampler
    guidance: Annotated[float, WithinRange(0.0, 20.0)] = DEFAULTS.guidance
    samples: Annotated[int, WithinRange(1, MAX_SAMPLES)] = DEFAULTS.samples
    seed: Annotated[int, WithinRange(0, 2147483647)] = DEFAULTS.seed
    device: Annotated[str, Choice(DEVICES)] = DEFAULTS.device
    referenceVolume: vtkMRMLScalarVolumeNode
    overlay: Annotated[str, Choice(OVERLAYS)] = "automatic"
    overlayNode: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None]
    showComparison: bool = True
    exportFormat: Annotated[str, Choice(list(EXPORT_FORMATS))] = "NIfTI (.nii.gz)"
    outputVolume: vtkMRMLScalarVolumeNode
    uncertaintyVolume: vtkMRMLScalarVolumeNode
    differenceVolume: vtkMRMLScalarVolumeNode


#
# XDiffusionWidget
#


class XDiffusionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: shows the parameter node, forwards every action to XDiffusionLogic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._timer = None
        self._lastResult = None
        self._sliceKey = None  # (plane, input volume) the slice list was picked for

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/XDiffusion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = XDiffusionLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.addCurrentSliceButton.connect("clicked(bool)", self.onAddCurrentSlice)
        self.ui.addTypedSlicesButton.connect("clicked(bool)", self.onAddTypedSlices)
        self.ui.typedSlicesLineEdit.connect("returnPressed()", self.onAddTypedSlices)
        self.ui.removeSlicesButton.connect("clicked(bool)", self.onRemoveSlices)
        self.ui.clearSlicesButton.connect("clicked(bool)", self.onClearSlices)
        self.ui.sliceListWidget.connect("itemDoubleClicked(QListWidgetItem*)", self.onJumpToSlice)
        self.ui.applyButton.connect("clicked(bool)", self.onReconstruct)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.showComparisonButton.connect("clicked(bool)", self.onShowComparison)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.exportUncertaintyButton.connect("clicked(bool)", self.onExportUncertainty)

        self.ui.progressBar.setVisible(False)
        self.ui.cancelButton.setEnabled(False)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        if self.logic is not None:
            self.logic.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event) -> None:
        if self.logic is not None:
            self.logic.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode: Optional[XDiffusionParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = inputParameterNode
        self._sliceKey = None
        if self._parameterNode:
            self._parameterNodeGuiTag = connectGui(self._parameterNode, self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        """Slice list, enabled buttons and the validation message (nothing is created here)."""
        p = self._parameterNode
        if p is None:
            return
        # Indices mean something only for one plane of one volume: a new choice starts a new list.
        key = (p.plane, p.inputVolume.GetID() if p.inputVolume else None)
        changed = self._sliceKey is not None and key != self._sliceKey and len(p.sliceIndices) > 0
        self._sliceKey = key
        if changed:
            self.logic.removeSlices(p, list(p.sliceIndices))  # modifies p: this method runs again
            self.ui.statusLabel.text = _("The plane or the input volume changed: the slice list was cleared.")
            return
        self.ui.sliceListWidget.clear()
        for index in p.sliceIndices:
            self.ui.sliceListWidget.addItem(str(index))
        self.ui.modelPathLineEdit.setEnabled(not p.useDefaultModel)
        self.ui.overlayNodeSelector.setEnabled(p.overlay == "selected")
        for widget in (self.ui.planeComboBox, self.ui.addCurrentSliceButton, self.ui.typedSlicesLineEdit,
                       self.ui.addTypedSlicesButton, self.ui.sliceListWidget, self.ui.removeSlicesButton,
                       self.ui.clearSlicesButton):
            widget.setEnabled(not p.allSlices)  # all acquired slices: the plane and slices follow the scan
        self.ui.gridSpacingSpinBox.setEnabled(p.allSlices)
        running = self.logic.isRunning()
        message = self.logic.validate(p)
        self.ui.applyButton.setEnabled(message is None and not running)
        self.ui.applyButton.toolTip = message or _("Reconstruct the volume from the input slices")
        if not running:
            self.ui.statusLabel.text = message or self.logic.readyText(p)
        self.ui.exportButton.setEnabled(p.outputVolume is not None and not running)
        self.ui.exportUncertaintyButton.setEnabled(p.uncertaintyVolume is not None and not running)
        self.ui.showComparisonButton.setEnabled(p.outputVolume is not None and not running)

    # Slices ----------------------------------------------------------------------------------

    def onAddCurrentSlice(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not add the current slice."), waitCursor=True):
            self.logic.addCurrentSlice(self._parameterNode)

    def onAddTypedSlices(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not add these slices."), waitCursor=False):
            self.logic.addTypedSlices(self._parameterNode, self.ui.typedSlicesLineEdit.text)
            self.ui.typedSlicesLineEdit.text = ""

    def onRemoveSlices(self) -> None:
        selected = [int(item.text()) for item in self.ui.sliceListWidget.selectedItems()]
        self.logic.removeSlices(self._parameterNode, selected)

    def onClearSlices(self) -> None:
        self.logic.removeSlices(self._parameterNode, list(self._parameterNode.sliceIndices))

    def onJumpToSlice(self, item) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not show this slice."), waitCursor=False):
            self.logic.jumpToSlice(self._parameterNode, int(item.text()))

    # Running ---------------------------------------------------------------------------------

    def onReconstruct(self) -> None:
        # Asked before the wait cursor: the install confirmations are dialogs the user must answer.
        with slicer.util.tryWithErrorDisplay(_("Reconstruction could not start."), waitCursor=False):
            ready = self.logic.ensureDependencies(confirm=slicer.util.confirmOkCancelDisplay)
        if not ready:
            self.ui.statusLabel.text = _("Reconstruction not started: required Python packages are missing.")
            return
        with slicer.util.tryWithErrorDisplay(_("Reconstruction could not start."), waitCursor=True):
            self.logic.startReconstruction(self._parameterNode)
            self.ui.progressBar.value = 0
            self.ui.progressBar.setVisible(True)
            self.ui.cancelButton.setEnabled(True)
            self.ui.applyButton.setEnabled(False)
            self.ui.statusLabel.text = _("Starting...")
            self._timer.start()

    def onTimer(self) -> None:
        fraction, message, state = self.logic.poll()
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message
        if state == "running":
            return
        self._timer.stop()
        self.ui.cancelButton.setEnabled(False)
        self.ui.progressBar.setVisible(False)
        outcome = None
        try:
            if state == "done":
                self._lastResult = self.logic.finishReconstruction(self._parameterNode)
                outcome = _("Done: {name}{uncertainty}{share}").format(
                    name=self._lastResult.reconstruction.GetName(), uncertainty=self.uncertaintyText(),
                    share=self.shareText())
                if self._parameterNode.showComparison:
                    self.logic.showComparison(self._lastResult.layout)
            elif state == "failed":
                reason = self.logic.lastError() or _("unknown error")
                outcome = _("Failed: {reason}").format(reason=reason)
                slicer.util.errorDisplay(_("Reconstruction failed: {reason}").format(reason=reason))
            else:
                outcome = _("Cancelled.")
        except Exception as error:  # noqa: BLE001 - shown to the user, logged with its traceback
            logging.exception("XDiffusion: adding the results failed")
            slicer.util.errorDisplay(_("Adding the results failed: {error}").format(error=error))
        self.updateGUIFromParameterNode()
        if outcome is not None:  # after the refresh, whose "Ready" line would hide it, until the next change
            self.ui.statusLabel.text = outcome

    def onCancel(self) -> None:
        self.ui.statusLabel.text = _("Cancelling...")
        slicer.app.processEvents()
        self.logic.cancel()
        self.onTimer()

    # Results ---------------------------------------------------------------------------------

    def onShowComparison(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not show the comparison."), waitCursor=True):
            self.logic.showComparison(self.logic.comparisonFromParameterNode(self._parameterNode))

    def uncertaintyText(self) -> str:
        """What the uncertainty volume shows (its colour bar says the same in the slice view)."""
        node = self._lastResult.uncertainty if self._lastResult is not None else None
        if node is None:
            return ""
        # the library where it is used (module docstring)
        from XDiffusionLib.slicer.display import uncertainty_info_of

        return _("; uncertainty = {label}").format(label=uncertainty_info_of(node).label)

    def shareText(self) -> str:
        """A thick-slice run: how much of the result the model generated against interpolation along
        the slice axis (the library's line, as the command line and the web app show it)."""
        share = self._lastResult.share if self._lastResult is not None else None
        return "" if share is None else _("; {share}").format(share=share.label())

    def onExport(self) -> None:
        self.exportVolume(uncertainty=False)

    def onExportUncertainty(self) -> None:
        self.exportVolume(uncertainty=True)

    def exportVolume(self, uncertainty: bool) -> None:
        """Ask where (a file, a new folder for a DICOM series; nothing for Slicer's DICOM database) and export."""
        p = self._parameterNode
        kind = EXPORT_FORMATS[p.exportFormat]
        name = (p.uncertaintyVolume if uncertainty else p.outputVolume).GetName()
        target = None
        if kind == "dicom":
            # The series goes into a new sub-folder named after the volume.
            folder = qt.QFileDialog.getExistingDirectory(None, _("Choose where to create the DICOM series folder"))
            if not folder:
                return
            target = str(Path(folder) / _safeFileName(name))
        elif kind != "dicomdb":
            label = p.exportFormat.split(" (")[0]
            caption = _("Export uncertainty") if uncertainty else _("Export reconstruction")
            target = qt.QFileDialog.getSaveFileName(None, caption, _safeFileName(name) + kind,
                                                    _("{format} (*{suffix});;All files (*)").format(format=label,
                                                                                                   suffix=kind))
            if not target:
                return
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            written = self.logic.export(p, target, uncertainty=uncertainty)
            self.ui.statusLabel.text = _("Exported to {target}").format(target=written)


def _safeFileName(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_") or "xdiffusion"


def connectGui(parameterNode, ui) -> int:
    """Connect the widgets of ``ui`` that name a parameter (SlicerParameterName) and return the tag
    for ``disconnectGui``. ``connectGui`` itself returns None before Slicer 5.10, so its connections
    could never be undone and would pile up each time the module is entered; ``connectParametersToGui``
    returns the tag on every Slicer that has the wrapper (5.4 and newer)."""
    widgets = {}
    for widget in vars(ui).values():
        name = widget.property("SlicerParameterName") if hasattr(widget, "property") else None
        if name:
            widgets[name] = widget
    return parameterNode.connectParametersToGui(widgets)


def slicerVersion() -> Optional[tuple[int, int]]:
    """(major, minor) of the running Slicer application; None without one (tests, trame)."""
    app = getattr(slicer, "app", None)
    if app is None or not hasattr(app, "majorVersion"):
        return None
    return int(app.majorVersion), int(app.minorVersion)


#
# XDiffusionLogic
#


class XDiffusionLogic(ScriptedLoadableModuleLogic):
    """Everything the panel does, without Qt: forwards to XDiffusionLib.slicer.

    Usable from the Python console too::

        logic = slicer.util.getModuleLogic("XDiffusion")
        p = logic.getParameterNode()
        p.inputVolume = volumeNode; p.sliceIndices = [40, 64]
        logic.startReconstruction(p); logic.wait(); result = logic.finishReconstruction(p)
    """

    launcherMode = "auto"  # "subprocess" or "inprocess" elsewhere (tests, consoles)

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.run = None

    def getParameterNode(self) -> XDiffusionParameterNode:
        return XDiffusionParameterNode(super().getParameterNode())

    # Settings ---------------------------------------------------------------------------------

    def jobSettings(self, p: XDiffusionParameterNode):
        """The worker's JobSettings from the parameter node."""
        # the library where it is used (module docstring)
        from XDiffusionLib.worker.messages import JobSettings

        modelDir = None if p.useDefaultModel else str(p.modelPath)
        options = {"views": int(p.views), "steps": int(p.steps), "sampler": p.sampler, "guidance": float(p.guidance),
                   "samples": int(p.samples), "seed": int(p.seed), "device": p.device}
        # With all acquired slices, the plane and the slices come from the scan (checkRequest).
        indices = () if p.allSlices else tuple(sorted(int(i) for i in p.sliceIndices))
        return JobSettings(p.plane, indices, modelDir, options)

    def gridSpacing(self, p: XDiffusionParameterNode) -> Optional[float]:
        """The finer grid's spacing when all acquired slices are the input, else None."""
        return float(p.gridSpacing) if p.allSlices else None

    def sliceThickness(self, p: XDiffusionParameterNode) -> Optional[float]:
        """With all acquired slices: the slice thickness in the input's DICOM header (Slicer's DICOM
        database), as the command line takes it; None: the slice spacing."""
        # the library where it is used (module docstring)
        from XDiffusionLib.slicer.thick_slices import header_thickness

        if not p.allSlices:
            return None
        return header_thickness(p.inputVolume, getattr(slicer, "dicomDatabase", None))

    def overlaySource(self, p: XDiffusionParameterNode):
        # the library where it is used (module docstring)
        from XDiffusionLib.slicer.reconstruction import AUTOMATIC

        if p.overlay == "none":
            return None
        if p.overlay == "automatic":
            return AUTOMATIC
        if p.overlayNode is None:
            raise XDiffusionError(_("no segmentation or labelmap selected for the overlay"))
        return p.overlayNode

    def checkRequest(self, p: XDiffusionParameterNode):
        """Everything a run needs (raises XDiffusionError with the panel's line); with all acquired
        slices, returns the plan of the finer grid (``XDiffusionLib.slicer.thick_slices``), else None."""
        # the library where it is used (module docstring)
        from XDiffusionLib.slicer.dependencies import check_host
        from XDiffusionLib.slicer.request_checks import check_request, plan_request

        check_host(slicerVersion())
        overlay = self.overlaySource(p)
        overlayNode = overlay if overlay is not None and not isinstance(overlay, str) else None
        if p.allSlices:
            return plan_request(p.inputVolume, self.jobSettings(p), p.gridSpacing, p.referenceVolume, overlayNode,
                                self.sliceThickness(p))[0]
        check_request(p.inputVolume, self.jobSettings(p), p.referenceVolume, overlayNode)
        return None

    def validate(self, p: XDiffusionParameterNode) -> Optional[str]:
        """Why a reconstruction cannot start now (one line), or None. Creates and changes nothing."""
        try:
            self.checkRequest(p)
        except XDiffusionError as error:
            return str(error)
        return None

    def readyText(self, p: XDiffusionParameterNode) -> str:
        """The status line when a run can start."""
        try:
            plan = self.checkRequest(p)
        except XDiffusionError as error:
            return str(error)
        return _("Ready: {plan}.").format(plan=plan.describe()) if plan is not None else _("Ready.")

    # Slices -----------------------------------------------------------------------------------

    def addCurrentSlice(self, p: XDiffusionParameterNode) -> int:
        """Add the slice shown in the plane's view (Red axial, Green coronal, Yellow sagittal)."""
        # the library where it is used (module docstring)
        from XDiffusionLib.slicer.nodes import check_scalar_volume, grid_from_node
        from XDiffusionLib.slicer.slices import PLANE_VIEW, slice_index_from_view

        check_scalar_volume(p.inputVolume)
        view = PLANE_VIEW[p.plane]
        sliceNode = slicer.mrmlScene.GetNodeByID(f"vtkMRMLSliceNode{view}")
        if sliceNode is None:
            raise XDiffusionError(_("the {view} slice view is not in the scene: show a layout with the {view} view")
                                 .format(view=view))
        index = slice_index_from_view(grid_from_node(p.inputVolume), p.plane,
                                      self._sliceToVolume(sliceNode, p.inputVolume))
        p.sliceIndices = sorted(set(p.sliceIndices) | {index})
        return index

    def addTypedSlices(self, p: XDiffusionParameterNode, text: str) -> list[int]:
        """Add indices typed as "40, 64" or "30-34"; all are checked against the volume before any is added."""
        # the library where it is used (module docstring)
        from XDiffusionLib.slicer.nodes import check_scalar_volume, grid_from_node
        from XDiffusionLib.slicer.slices import canonical_depth, parse_indices

        indices = parse_indices(text)
        if not indices:
            raise XDiffusionError(_("type slice indices such as 40, 64 or 30-34"))
        check_scalar_volume(p.inputVolume)
        check_slice_indices(indices, canonical_depth(grid_from_node(p.inputVolume), p.plane), p.plane)
        p.sliceIndices = sorted(set(p.sliceIndices) | set(indices))
        return indices

    def removeSlices(self, p: XDiffusionParameterNode, indices) -> None:
        p.sliceIndices = sorted(set(p.sliceIndices) - {int(i) for i in indices})

    def jumpToSlice(self, p: XDiffusionParameterNode, index: int) -> None:
        """Move the plane's slice view onto input slice ``index``."""
        # the library where it is used (module docstring)
        from XDiffusionLib.slicer.nodes import grid_from_node
        from XDiffusionLib.slicer.slices import PLANE_VIEW, ras_point_of_slice

        sliceNode = slicer.mrmlScene.GetNodeByID(f"vtkMRMLSliceNode{PLANE_VIEW[p.plane]}")
        if sliceNode is None or p.inputVolume is None:
            return
        local = list(ras_point_of_slice(grid_from_node(p.inputVolume), p.plane, index)) + [1.0]
        world = self._volumeToWorld(p.inputVolume).MultiplyPoint(local)
        sliceNode.JumpSliceByOffsetting(world[0], world[1], world[2])

    @staticmethod
    def _volumeToWorld(volumeNode) -> vtk.vtkMatrix4x4:
        """The volume's RAS to world; one clear line when a warp lies between them (a view's slice
        is then no slice of the volume, and GetMatrixTransformToWorld would return identity)."""
        matrix = vtk.vtkMatrix4x4()
        parent = volumeNode.GetParentTransformNode()
        if parent is not None and not parent.IsTransformToWorldLinear():
            warp = parent
            while warp.IsLinear() and warp.GetParentTransformNode() is not None:
                warp = warp.GetParentTransformNode()
            raise XDiffusionError(_(
                "the input volume '{volume}' is under the non-linear transform '{transform}': a slice view does not "
                "show one of its slices. Harden the transform (Data module: right-click the volume > Harden "
                "transform) or remove it, or type the slice indices").format(volume=volumeNode.GetName(),
                                                                            transform=warp.GetName()))
        if parent is not None:
            parent.GetMatrixTransformToWorld(matrix)
        return matrix

    def _sliceToVolume(self, sliceNode, volumeNode):
        toWorld = slicer.util.arrayFromVTKMatrix(self._volumeToWorld(volumeNode))
        sliceToRAS = slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS())
        return np.linalg.solve(toWorld, sliceToRAS)

    # Running ----------------------------------------------------------------------------------

    def isRunning(self) -> bool:
        return self.run is not None and self.run.state == "running"

    def startReconstruction(self, p: XDiffusionParameterNode):
        """Check everything, then start the worker. Raises XDiffusionError with the panel's message."""
        # the library where it is used (module docstring)
        from XDiffusionLib.slicer.reconstruction import SceneReconstruction
        from XDiffusionLib.worker.launcher import WorkerLauncher

        if self.isRunning():
            raise XDiffusionError(_("a reconstruction is already running: wait for it or cancel it"))
        self.checkRequest(p)
        self.run = SceneReconstruction(slicer.mrmlScene, p.inputVolume, self.jobSettings(p), p.referenceVolume,
                                       self.overlaySource(p), WorkerLauncher(self.launcherMode),
                                       grid_spacing=self.gridSpacing(p), thickness=self.sliceThickness(p))
        self.run.start()
        return self.run

    def poll(self) -> tuple[float, str, str]:
        """(fraction, message, state) of the current run; state is running, done, failed or cancelled."""
        if self.run is None:
            return 0.0, "", "none"
        self.run.poll()
        return self.run.fraction, self.run.message, self.run.state

    def wait(self, timeout: Optional[float] = None) -> str:
        return self.run.wait(timeout) if self.run is not None else "none"

    def lastError(self) -> Optional[str]:
        return self.run.error if self.run is not None else None

    def cancel(self) -> None:
        if self.run is not None:
            self.run.cancel()

    def finishReconstruction(self, p: XDiffusionParameterNode):
        """Add the result nodes to the scene and remember them in the parameter node."""
        result = self.run.finish()
        p.outputVolume = result.reconstruction
        p.uncertaintyVolume = result.uncertainty
        p.differenceVolume = result.difference
        return result

    # Results ----------------------------------------------------------------------------------

    def comparisonFromParameterNode(self, p: XDiffusionParameterNode):
        """The comparison layout of the results remembered in the parameter node (after a scene reload too)."""
        # the library where it is used (module docstring)
        from XDiffusionLib.slicer.layout import comparison_from_node, comparison_layout

        if p.outputVolume is None:
            raise XDiffusionError(_("no reconstruction yet: run Reconstruct first"))
        remembered = comparison_from_node(p.outputVolume, p.plane)  # the run's own inputs and overlays
        if remembered is not None:
            return remembered
        real = p.referenceVolume or p.inputVolume  # a scene saved before the run's inputs were kept
        return comparison_layout(
            real.GetID() if real is not None else p.outputVolume.GetID(), p.outputVolume.GetID(),
            difference_id=p.differenceVolume.GetID() if p.differenceVolume is not None else None,
            uncertainty_id=p.uncertaintyVolume.GetID() if p.uncertaintyVolume is not None else None,
            plane=p.outputVolume.GetAttribute("XDiffusion.plane") or p.plane,
        )

    def showComparison(self, layout) -> None:
        """Switch to the real | generated | difference layout (linked views) and fill it."""
        # the library where it is used (module docstring)
        from XDiffusionLib.slicer.layout import apply_to_scene, register_layout

        layoutManager = slicer.app.layoutManager()
        register_layout(layoutManager.layoutLogic().GetLayoutNode(), layout)
        layoutManager.setLayout(layout.layout_id)
        slicer.app.processEvents()  # let the layout manager create the views
        apply_to_scene(slicer.mrmlScene, layout)
        slicer.util.resetSliceViews()

    def export(self, p: XDiffusionParameterNode, target: Optional[str], uncertainty: bool = False) -> str:
        """Write the reconstruction (or, with ``uncertainty``, its uncertainty volume, labelled with
        its meaning and level in the header): .nii.gz/.nrrd file, a DICOM series into the new
        folder ``target``, or a DICOM series into Slicer's DICOM database (``target`` unused)."""
        # the library where it is used (module docstring)
        from XDiffusionLib.slicer.display import uncertainty_info_of
        from XDiffusionLib.slicer.export import Provenance, export_dicom_series, export_target, export_volume
        from XDiffusionLib.slicer.nodes import volume_from_node

        node = p.outputVolume
        if node is None:
            raise XDiffusionError(_("no reconstruction to export: run Reconstruct first"))
        info = None
        if uncertainty:
            if p.uncertaintyVolume is None:
                raise XDiffusionError(_("this reconstruction has no uncertainty volume to export"))
            info = uncertainty_info_of(p.uncertaintyVolume)
        volume = volume_from_node(p.uncertaintyVolume if uncertainty else node)
        if EXPORT_FORMATS[p.exportFormat] not in ("dicom", "dicomdb"):
            return str(export_volume(volume, export_target(target, EXPORT_FORMATS[p.exportFormat]), uncertainty=info))
        provenance = Provenance.from_attributes(node.GetAttribute)
        source = self.dicomSource(p.inputVolume)
        if EXPORT_FORMATS[p.exportFormat] == "dicomdb":
            return self.exportToDicomDatabase(volume, provenance, source, info)
        files = export_dicom_series(volume, target, provenance, source=source, uncertainty=info)
        return _("{folder} ({count} files)").format(folder=target, count=len(files))

    @staticmethod
    def exportToDicomDatabase(volume, provenance, source, info) -> str:
        """The DICOM series imported into Slicer's DICOM database (copied in: the temporary folder it
        is written to goes), in the input's study when the input came from that database."""
        # the library where it is used (module docstring)
        from XDiffusionLib.slicer.export import export_dicom_series

        database = getattr(slicer, "dicomDatabase", None)
        if database is None or not database.isOpen:
            raise XDiffusionError(_("Slicer's DICOM database is not open: open the DICOM module once (it creates "
                                    "the database), then export again"))
        from DICOMLib import DICOMUtils  # Slicer's DICOM module, loaded only for this export

        with tempfile.TemporaryDirectory(prefix="XDiffusion-dicom-") as folder:
            files = export_dicom_series(volume, Path(folder) / "series", provenance, source=source, uncertainty=info)
            if not DICOMUtils.importDicom(str(Path(folder) / "series"), database, copyFiles=True):
                raise XDiffusionError(_("importing the series into Slicer's DICOM database failed: see the Python "
                                        "console"))
        return _("Slicer's DICOM database ({count} files)").format(count=len(files))

    @staticmethod
    def dicomSource(volumeNode) -> Optional[str]:
        """A DICOM file of the input when it was loaded from Slicer's DICOM database (keeps its study)."""
        if volumeNode is None:
            return None
        uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
        database = getattr(slicer, "dicomDatabase", None)
        if not uids or database is None:
            return None
        path = database.fileForInstance(uids[0])
        return path or None

    # Dependencies -----------------------------------------------------------------------------

    @staticmethod
    def dependencyProblems() -> list[str]:
        """What the worker lacks in Slicer's Python, one line each ("torch>=2.1 (not installed)")."""
        # the library where it is used (module docstring)
        from XDiffusionLib.slicer.dependencies import dependency_problems

        return dependency_problems()

    def ensureDependencies(self, confirm) -> bool:
        """Install or update PyTorch (through the PyTorch extension) and the other packages (pip);
        ``confirm(text)`` asks the user first. False when the user declined or chose to restart Slicer
        (numpy<2 on macOS); XDiffusionError when a requirement cannot be met
        (``XDiffusionLib.slicer.dependencies.ensure_dependencies``)."""
        # the library where it is used (module docstring)
        from XDiffusionLib.slicer.dependencies import check_host, ensure_dependencies

        check_host(slicerVersion())
        try:
            import PyTorchUtils  # the PyTorch extension's module, where that extension is installed
        except ImportError:
            PyTorchUtils = None
        return ensure_dependencies(confirm, PyTorchUtils, slicer.util.pip_install, restart=slicer.util.restart)


#
# XDiffusionTest
#


class XDiffusionTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Developer mode "Reload and Test", or ctest).

    Without the worker's packages (PyTorch, diffusers, ...) the reconstruction part is SKIPPED, and
    says so (unittest counts it as skipped, not passed); set XDIFFUSION_SELFTEST_REQUIRE_DEPENDENCIES=1
    where they are expected, and it fails instead. With them, it reconstructs Slicer's MRHead sample
    with the shipped model at the smallest settings and checks the result node, the comparison
    layout and a DICOM export.
    """

    REQUIRE_DEPENDENCIES = "XDIFFUSION_SELFTEST_REQUIRE_DEPENDENCIES"

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_validation_messages()
        self.setUp()
        try:
            self.test_reconstruct_MRHead()
        except unittest.SkipTest as skipped:
            # "Reload and Test" calls runTest() outside unittest's runner, where a SkipTest would
            # show as "Reload and Test failed": say it instead. ctest runs each test_ method through
            # unittest, which counts the skip.
            logging.warning(f"XDiffusion self-test passed, reconstruction SKIPPED: {skipped}")

    def _volume(self, shape=(12, 10, 8), name="XDiffusionTest T1"):
        # the library where it is used (module docstring)
        from XDiffusionLib.io.volume import Volume
        from XDiffusionLib.slicer.nodes import add_volume_node

        grid = np.meshgrid(*[np.linspace(0.0, 1.0, n) for n in shape], indexing="ij")
        array = (100 + 40 * np.sin(2.1 * grid[0]) * np.cos(1.7 * grid[1]) + 25 * grid[2] ** 2).astype("float32")
        return add_volume_node(slicer.mrmlScene, Volume.from_array(array, (0.9, 1.3, 2.0)), name)

    def test_validation_messages(self):
        # the library where it is used (module docstring)
        from XDiffusionLib.io.volume import Volume
        from XDiffusionLib.slicer.nodes import add_volume_node

        self.delayDisplay("Validation messages")
        logic = XDiffusionLogic()
        p = logic.getParameterNode()
        volume = self._volume()
        flat = add_volume_node(slicer.mrmlScene, Volume.from_array(np.ones((8, 9, 1), "float32")), "flat")
        nodeCount = slicer.mrmlScene.GetNumberOfNodes()
        self.assertEqual(logic.validate(p), "no input volume selected")
        p.inputVolume = volume
        p.sliceIndices = []
        self.assertEqual(logic.validate(p), "no input slices given: pick at least one slice index")
        p.sliceIndices = [2, 5]
        p.useDefaultModel = False
        p.modelPath = Path(tempfile.mkdtemp()) / "missing"
        self.assertIn("not found", logic.validate(p))
        p.inputVolume = flat
        self.assertIn("is 2D", logic.validate(p))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodeCount)  # validation creates nothing
        self.delayDisplay("Validation messages: passed")

    def test_reconstruct_MRHead(self):
        # the self-test's packages and the library where they are used (module docstring)
        import pydicom

        from XDiffusionLib.slicer.export import SERIES_DESCRIPTION
        from XDiffusionLib.slicer.layout import composite_node
        from XDiffusionLib.slicer.nodes import grid_from_node, volume_from_node
        from XDiffusionLib.slicer.slices import canonical_depth
        from XDiffusionLib.transforms.orientation import to_canonical

        problems = XDiffusionLogic.dependencyProblems()
        if problems:
            reason = "the worker's Python packages are missing: " + "; ".join(problems)
            if os.environ.get(self.REQUIRE_DEPENDENCIES) == "1":
                self.fail(f"XDiffusion self-test: {reason} ({self.REQUIRE_DEPENDENCIES}=1)")
            logging.warning(f"XDiffusion self-test: reconstruction SKIPPED: {reason}")
            self.delayDisplay(f"SKIPPED: reconstruction of MRHead ({reason}). Press Reconstruct once to install them.")
            raise unittest.SkipTest(reason)

        import SampleData  # Slicer's Sample Data module, as in registerSampleData

        self.delayDisplay("Reconstruction of MRHead with the shipped model (smallest settings)")
        head = SampleData.downloadSample("MRHead")
        logic = XDiffusionLogic()
        p = logic.getParameterNode()
        p.inputVolume, p.referenceVolume, p.plane = head, head, "axial"
        middle = canonical_depth(grid_from_node(head), "axial") // 2
        p.sliceIndices = [middle]
        p.useDefaultModel = True
        p.views, p.steps, p.samples, p.overlay = 1, 1, 1, "automatic"
        self.assertIsNone(logic.validate(p))
        logic.startReconstruction(p)
        self.assertEqual(logic.wait(1800), "done", logic.lastError())
        result = logic.finishReconstruction(p)

        # the result node: on the input's grid, the input slice pasted in unchanged
        self.assertEqual(result.reconstruction.GetName(), "MRHead XDiffusion")
        self.assertIs(p.outputVolume, result.reconstruction)
        self.assertTrue(grid_from_node(result.reconstruction).same_geometry(grid_from_node(head), tol=1e-4))
        generated = to_canonical(volume_from_node(result.reconstruction))[0].array
        real = to_canonical(volume_from_node(head))[0].array
        self.assertTrue(np.isfinite(generated).all())
        np.testing.assert_allclose(generated[:, :, middle], real[:, :, middle], atol=1e-3 * float(np.ptp(real)))
        self.assertEqual(result.reconstruction.GetAttribute("XDiffusion.indices"), f"[{middle}]")

        # the comparison layout: real | generated | difference, filled
        logic.showComparison(result.layout)
        layoutNode = slicer.app.layoutManager().layoutLogic().GetLayoutNode()
        self.assertEqual(layoutNode.GetViewArrangement(), result.layout.layout_id)
        shown = [composite_node(slicer.mrmlScene, view.name).GetBackgroundVolumeID() for view in result.layout.views]
        self.assertEqual(shown, [head.GetID(), result.reconstruction.GetID(), result.difference.GetID()])

        # a DICOM export (pydicom 2.4 in Slicer 5.10, 3.x later)
        p.exportFormat = "DICOM series (folder)"
        folder = Path(tempfile.mkdtemp()) / "series"
        logic.export(p, str(folder))
        files = sorted(folder.iterdir())
        self.assertEqual(len(files), grid_from_node(result.reconstruction).shape[2])
        first = pydicom.dcmread(files[0])
        self.assertEqual(first.SeriesDescription, SERIES_DESCRIPTION)
        self.assertEqual(list(first.ImageType)[:2], ["DERIVED", "SECONDARY"])
        self.delayDisplay("Reconstruction of MRHead: passed")
