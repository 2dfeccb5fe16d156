"""XDiffusion/XDiffusion.py under Slicer's API shape, without the Slicer application.

The MRML classes, ``slicer.util`` and the scene are real (trame-slicer[standalone]). Only what no
PyPI package provides is stood in for, minimally: ``qt``, ``ctk``, ``slicer.ScriptedLoadableModule``
(base classes; the logic's parameter node is created the way Slicer does it), and
``slicer.parameterNodeWrapper`` (typed properties stored in the vtkMRMLScriptedModuleNode, with the
Choice/WithinRange validators). The PyTorch extension's ``PyTorchUtils`` is stood in for only in the
dependency test.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re
import sys
import types
import typing
import unittest
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
import slicer
import slicer.util
from conftest import rotation, smooth_array

from XDiffusionLib.io.volume import Volume
from XDiffusionLib.slicer import nodes, validation

MODULE_DIR = Path(__file__).resolve().parents[1] / "XDiffusion"
MODULE_FILE = MODULE_DIR / "XDiffusion.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "XDiffusion.ui"


# ----------------------------------------------------------------------------- stand-ins


class Choice:
    def __init__(self, choices):
        self.choices = list(choices)


class WithinRange:
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum


def _split(hint):
    if typing.get_origin(hint) is typing.Annotated:
        base, *extras = typing.get_args(hint)
        return base, extras
    return hint, []


def _is_node_type(base) -> bool:
    options = typing.get_args(base) if typing.get_origin(base) is typing.Union else (base,)
    return all(o is type(None) or (isinstance(o, type) and issubclass(o, slicer.vtkMRMLNode)) for o in options)


def parameterNodeWrapper(cls):
    """Typed properties over a vtkMRMLScriptedModuleNode: nodes as references, the rest as JSON text."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {}
    for name, hint in hints.items():
        base, extras = _split(hint)
        if _is_node_type(base):
            default = None
        elif typing.get_origin(base) is list:
            default = []
        elif base is pathlib.Path:
            default = pathlib.Path()
        else:
            default = getattr(cls, name, base())
        fields[name] = (base, extras, default)

    def check(name, value):
        base, extras, _ = fields[name]
        for extra in extras:
            if isinstance(extra, Choice) and value not in extra.choices:
                raise ValueError(f"{name}: {value!r} not in {extra.choices}")
            if isinstance(extra, WithinRange) and not extra.minimum <= value <= extra.maximum:
                raise ValueError(f"{name}: {value!r} outside {extra.minimum}..{extra.maximum}")
        if _is_node_type(base):
            if value is not None and not isinstance(value, typing.get_args(base) or (base,)):
                raise TypeError(f"{name}: {type(value).__name__} is not {base}")
        elif base in (int, str, bool) and not isinstance(value, base):
            raise TypeError(f"{name}: {value!r} is not {base.__name__}")
        elif base is float and not isinstance(value, (int, float)):
            raise TypeError(f"{name}: {value!r} is not float")

    def make_property(name):
        base, _, default = fields[name]

        def get(self):
            if _is_node_type(base):
                return self.parameterNode.GetNodeReference(name)
            text = self.parameterNode.GetParameter(name)
            if not text:
                return default
            value = json.loads(text)
            if base is pathlib.Path:
                return pathlib.Path(value)
            return [int(v) for v in value] if typing.get_origin(base) is list else base(value)

        def set(self, value):
            check(name, value)
            if _is_node_type(base):
                self.parameterNode.SetNodeReferenceID(name, value.GetID() if value is not None else None)
            else:
                self.parameterNode.SetParameter(name, json.dumps(str(value) if base is pathlib.Path else value))

        return property(get, set)

    def __init__(self, parameterNode):
        self.parameterNode = parameterNode
        for name, (base, _, default) in fields.items():
            if not _is_node_type(base) and not parameterNode.GetParameter(name):
                setattr(self, name, default)

    namespace = {name: make_property(name) for name in fields}
    namespace["__init__"] = __init__
    namespace["allParameters"] = fields
    return type(cls.__name__, (), namespace)


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        name = type(self).__name__
        self.moduleName = name[: -len("Logic")] if name.endswith("Logic") else name

    def getParameterNode(self):
        """One vtkMRMLScriptedModuleNode per module, tagged with its name (as Slicer does)."""
        scene = slicer.mrmlScene
        node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(self.moduleName)
            node.SetModuleName(self.moduleName)
            node.SetName(scene.GenerateUniqueName(self.moduleName))
            node = scene.AddNode(node)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, msec=None):
        print(message)


@pytest.fixture
def scene(monkeypatch):
    scene = slicer.vtkMRMLScene()
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    yield scene
    scene.Clear(1)


@pytest.fixture
def xd(scene, monkeypatch):
    """XDiffusion.py imported as Slicer would, with the stand-ins above."""
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(scripted, cls.__name__, cls)
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper, wrapper.Choice, wrapper.WithinRange = parameterNodeWrapper, Choice, WithinRange
    for name, module in {"qt": types.ModuleType("qt"), "ctk": types.ModuleType("ctk"),
                         "slicer.ScriptedLoadableModule": scripted, "slicer.parameterNodeWrapper": wrapper}.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(slicer, "ScriptedLoadableModule", scripted, raising=False)
    monkeypatch.setattr(slicer, "parameterNodeWrapper", wrapper, raising=False)
    spec = importlib.util.spec_from_file_location("XDiffusion", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "XDiffusion", module)
    spec.loader.exec_module(module)
    return module


def snapshot(scene) -> list[str]:
    return sorted(scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes()))


def add_volume(scene, name="T1", shape=(12, 10, 8), spacing=(0.9, 1.3, 2.0), direction=None):
    direction = rotation((20.0, -10.0, 35.0)) if direction is None else direction
    volume = Volume.from_array(smooth_array(shape), spacing, (-20.5, 13.25, 7.0), direction)
    return nodes.add_volume_node(scene, volume, name)


@pytest.fixture
def tiny_model(tmp_path_factory) -> Path:
    import torch

    from XDiffusionLib.model.checkpoint import save_pretrained
    from XDiffusionLib.model.config import XDiffusionConfig
    from XDiffusionLib.model.factory import build_denoiser

    torch.manual_seed(0)
    config = XDiffusionConfig(side=16, block_out_channels=(8, 16), attention_levels=(1,), max_slices=4,
                              depth_frequencies=4)
    return save_pretrained(build_denoiser(config), config, tmp_path_factory.mktemp("model") / "tiny")


# ----------------------------------------------------------------------------- structure


def test_module_has_slicer_shape(xd):
    assert issubclass(xd.XDiffusionWidget, ScriptedLoadableModuleWidget)
    assert issubclass(xd.XDiffusionLogic, ScriptedLoadableModuleLogic)
    assert issubclass(xd.XDiffusionTest, ScriptedLoadableModuleTest)
    parent = types.SimpleNamespace()
    xd.XDiffusion(parent)
    assert parent.title == "XDiffusion" and parent.categories == ["Reconstruction"]
    assert "not for diagnosis" in parent.helpText
    p = xd.XDiffusionLogic().getParameterNode()
    assert (p.plane, p.views, p.steps, p.sampler, p.guidance, p.samples, p.seed, p.device) == (
        "axial", 4, 10, "dpmpp", 1.0, 1, 0, "auto")
    assert p.sliceIndices == [] and p.useDefaultModel and p.overlay == "automatic"


def test_settings_are_stored_in_the_scene(xd, scene, tmp_path):
    """Every setting lives in the module's vtkMRMLScriptedModuleNode, so a saved scene restores it."""
    logic = xd.XDiffusionLogic()
    p = logic.getParameterNode()
    volume = add_volume(scene)
    p.inputVolume, p.plane, p.sliceIndices, p.steps, p.device = volume, "coronal", [3, 7], 25, "cpu"
    again = logic.getParameterNode()  # a new wrapper over the same node
    assert again.parameterNode is p.parameterNode
    assert (again.inputVolume, again.plane, again.sliceIndices, again.steps, again.device) == (
        volume, "coronal", [3, 7], 25, "cpu")
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()
    text = (tmp_path / "scene.mrml").read_text()
    assert 'singletonTag="XDiffusion"' in text and "coronal" in text
    with pytest.raises(ValueError):
        p.plane = "oblique"


def test_ui_matches_parameters_and_code(xd):
    """Each SlicerParameterName names a parameter, on a widget the wrapper can connect to it;
    every self.ui.<name> the widget uses exists in the .ui file."""
    tree = ElementTree.parse(UI_FILE)
    hints = xd.XDiffusionParameterNode.allParameters  # (type, annotations, default) per parameter
    connected = {}
    for widget in tree.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                connected[prop.find("string").text] = widget.get("class")
    assert set(connected) <= set(hints)
    expected = {int: {"QSpinBox", "QSlider"}, float: {"QDoubleSpinBox", "ctkSliderWidget"}, bool: {"QCheckBox"},
                pathlib.Path: {"ctkPathLineEdit"}}
    for name, widget_class in connected.items():
        base, extras, _ = hints[name]
        if _is_node_type(base):
            assert widget_class == "qMRMLNodeComboBox", name
        elif any(isinstance(e, Choice) for e in extras):
            assert widget_class == "QComboBox", name
        elif typing.get_origin(base) is list:
            raise AssertionError(f"{name}: a list parameter has no automatic widget")
        else:
            assert widget_class in expected.get(base, {"QLineEdit"}), name
    names = {w.get("name") for w in tree.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text()))
    assert used <= names, used - names
    assert {"inputVolume", "plane", "modelPath", "views", "steps", "sampler", "guidance", "samples", "seed",
            "device", "referenceVolume", "overlay", "overlayNode"} <= set(connected)


def test_resources_where_slicer_expects_them():
    icon = MODULE_DIR / "Resources" / "Icons" / "XDiffusion.png"
    import matplotlib.image

    assert matplotlib.image.imread(icon).shape[:2] == (128, 128)
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    assert "Resources/UI/${MODULE_NAME}.ui" in cmake and "Resources/Icons/${MODULE_NAME}.png" in cmake
    assert "WITH_GENERIC_TESTS" in cmake and "XDiffusionLib/*.py" in cmake
    top = (MODULE_DIR.parent / "CMakeLists.txt").read_text()
    for needle in ("project(XDiffusion)", 'EXTENSION_CATEGORY "Reconstruction"', 'EXTENSION_DEPENDS "PyTorch"',
                   "find_package(Slicer REQUIRED)", "add_subdirectory(XDiffusion)"):
        assert needle in top
    assert "slicer_add_python_unittest" in (MODULE_DIR / "Testing" / "Python" / "CMakeLists.txt").read_text()


def test_model_file_names_match_the_checkpoint_module():
    from XDiffusionLib.model import checkpoint

    assert validation.MODEL_FILES == (checkpoint.CONFIG_NAME, checkpoint.WEIGHTS_NAME)
    assert validation.default_model_dir() == checkpoint.default_model_dir()


# ----------------------------------------------------------------------------- logic


def test_validation_messages_create_nothing(xd, scene, tmp_path, monkeypatch, tiny_model):
    logic = xd.XDiffusionLogic()
    p = logic.getParameterNode()
    volume = add_volume(scene)
    flat = nodes.add_volume_node(scene, Volume.from_array(np.ones((8, 9, 1), np.float32)), "scout")
    smaller = add_volume(scene, "small", shape=(12, 10, 6))
    shifted = add_volume(scene, "shifted", spacing=(1.0, 1.3, 2.0))
    no_segments = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty seg")
    before = snapshot(scene)

    def message():
        return logic.validate(p)

    assert message() == "no input volume selected"
    p.inputVolume = volume
    assert message() == "no input slices given: pick at least one slice index"
    p.sliceIndices = [2, 50]
    assert message().startswith("slice index 50 is outside the volume: axial indices run 0..")
    p.sliceIndices = [2, 5]
    empty = tmp_path / "empty_default"
    monkeypatch.setattr(validation, "default_model_dir", lambda: empty)
    assert message().startswith("the default model is not installed")
    p.useDefaultModel = False
    p.modelPath = tmp_path / "nowhere"
    assert message() == f"model folder {tmp_path / 'nowhere'} not found"
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    p.modelPath = tmp_path / "half"
    assert "has no model.safetensors" in message()
    p.modelPath = tiny_model
    assert message() is None
    p.referenceVolume = smaller
    assert message() == ("reference volume 'small' is 12x10x6 voxels but the input 'T1' is 12x10x8: "
                         "resample it onto the input first")
    p.referenceVolume = shifted
    assert "has the input's size but another position, spacing or orientation" in message()
    p.referenceVolume = volume
    assert message() is None
    p.overlay = "selected"
    assert message() == "no segmentation or labelmap selected for the overlay"
    p.overlayNode = no_segments
    assert message() == "segmentation 'empty seg' has no segments to overlay"
    p.overlay = "automatic"
    p.inputVolume = flat
    assert message() == "input volume 'scout' is 2D (8x9x1): XDiffusion needs a 3D volume"
    assert snapshot(scene) == before
    assert nodes.volume_from_node(volume).array.shape == (12, 10, 8)


def test_settings_become_the_reconstructor_options(xd, scene, tiny_model):
    from XDiffusionLib.sampling.reconstructor import ReconstructionSettings

    logic = xd.XDiffusionLogic()
    p = logic.getParameterNode()
    p.sliceIndices = [4, 1]
    p.views, p.steps, p.sampler, p.guidance, p.samples, p.seed, p.device = 2, 12, "ddim", 2.5, 3, 7, "cpu"
    settings = logic.jobSettings(p)
    assert settings.model_dir is None  # the shipped default
    assert settings.indices == (1, 4) and settings.plane == "axial"
    checked = ReconstructionSettings.from_options(settings.options)  # the names the reconstructor takes
    assert (checked.views, checked.steps, checked.sampler, checked.guidance, checked.samples, checked.seed,
            checked.device) == (2, 12, "ddim", 2.5, 3, 7, "cpu")
    p.useDefaultModel = False
    p.modelPath = tiny_model
    assert logic.jobSettings(p).model_dir == str(tiny_model)


@pytest.mark.parametrize("plane, view", [("axial", "Red"), ("coronal", "Green"), ("sagittal", "Yellow")])
def test_add_current_slice_and_jump(xd, scene, plane, view):
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    layout_logic = slicer.vtkMRMLLayoutLogic()  # creates the Red, Green and Yellow views like the application
    layout_logic.SetMRMLScene(scene)
    logic = xd.XDiffusionLogic()
    p = logic.getParameterNode()
    p.inputVolume = add_volume(scene, direction=np.array([[-1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]))
    p.plane = plane
    # the volume sits under a linear transform: the view's world position must be mapped back
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = np.eye(4)
    shift[:3, 3] = [5.0, -7.0, 11.0]
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    p.inputVolume.SetAndObserveTransformNodeID(transform.GetID())
    slice_node = scene.GetNodeByID(f"vtkMRMLSliceNode{view}")
    assert slice_node.GetOrientation() == plane.capitalize()
    for index in (1, 4):
        logic.jumpToSlice(p, index)
        assert logic.addCurrentSlice(p) == index
    assert p.sliceIndices == [1, 4]
    from XDiffusionLib.errors import XDiffusionError
    from XDiffusionLib.slicer.slices import PLANE_VIEW

    p.plane = {"axial": "coronal", "coronal": "sagittal", "sagittal": "axial"}[plane]
    other_view = scene.GetNodeByID(f"vtkMRMLSliceNode{PLANE_VIEW[p.plane]}")
    other_view.SetOrientation(plane.capitalize())  # the new plane's view shows another orientation

    with pytest.raises(XDiffusionError, match=f"not in the {p.plane} orientation"):
        logic.addCurrentSlice(p)


def test_typed_slices_and_remove(xd, scene):
    from XDiffusionLib.errors import XDiffusionError

    logic = xd.XDiffusionLogic()
    p = logic.getParameterNode()
    p.inputVolume = add_volume(scene)
    depth = 8  # axial slices of the volume
    assert logic.addTypedSlices(p, "5, 1-2") == [1, 2, 5]
    assert p.sliceIndices == [1, 2, 5]
    with pytest.raises(XDiffusionError, match=f"slice index {depth + 1} is outside"):
        logic.addTypedSlices(p, f"3, {depth + 1}")
    assert p.sliceIndices == [1, 2, 5]  # nothing added when one index is bad
    with pytest.raises(XDiffusionError, match="not a whole number"):
        logic.addTypedSlices(p, "x")
    logic.removeSlices(p, [2, 9])
    assert p.sliceIndices == [1, 5]


def test_logic_runs_a_reconstruction_and_exports(xd, scene, tiny_model, tmp_path):
    import pydicom

    logic = xd.XDiffusionLogic()
    logic.launcherMode = "inprocess"  # same launcher API; the subprocess path is tested in test_worker.py
    p = logic.getParameterNode()
    source = add_volume(scene)
    p.inputVolume, p.referenceVolume, p.sliceIndices = source, source, [2, 5]
    p.useDefaultModel, p.modelPath = False, tiny_model
    p.views, p.steps, p.device = 1, 2, "cpu"
    assert logic.validate(p) is None
    logic.startReconstruction(p)
    assert logic.wait(120) == "done", logic.lastError()
    fraction, _, state = logic.poll()
    assert (fraction, state) == (1.0, "done")
    result = logic.finishReconstruction(p)
    assert p.outputVolume is result.reconstruction and p.differenceVolume is result.difference
    assert p.uncertaintyVolume is result.uncertainty
    layout = logic.comparisonFromParameterNode(p)
    assert [v.background for v in layout.views] == [source.GetID(), result.reconstruction.GetID(),
                                                    result.difference.GetID()]
    p.exportFormat = "NRRD (.nrrd)"
    written = logic.export(p, str(tmp_path / "out.nrrd"))
    from XDiffusionLib.io import read_volume

    assert read_volume(written).grid.same_geometry(nodes.grid_from_node(source), tol=1e-4)
    p.exportFormat = "DICOM series (folder)"
    logic.export(p, str(tmp_path / "dicom"))
    first = pydicom.dcmread(sorted((tmp_path / "dicom").iterdir())[0])
    assert "[2, 5]" in first.DerivationDescription and "model tiny (weights sha256 " in first.DerivationDescription
    assert str(tiny_model.parent) not in first.DerivationDescription  # no server path in exports (issue 9)


def test_dependencies_follow_the_pytorch_extension_flow(xd, monkeypatch):
    calls = []

    class PyTorchUtilsLogic:
        installed = False

        def torchInstalled(self):
            return self.installed

        def installTorch(self, askConfirmation=False, torchVersionRequirement=None):
            calls.append(("installTorch", askConfirmation, torchVersionRequirement))
            return types.ModuleType("torch")

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    real_find_spec = importlib.util.find_spec
    absent = {"torch", "diffusers"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in absent else real_find_spec(name, *a))
    monkeypatch.setattr(slicer.util, "pip_install", lambda requirements: calls.append(("pip", requirements)) or
                        absent.discard("diffusers"))
    logic = xd.XDiffusionLogic()
    questions = []

    assert logic.ensureDependencies(confirm=lambda text: questions.append(text) or False) is False
    assert calls == [] and "PyTorch" in questions[0]  # asked first, declined: nothing installed

    assert logic.ensureDependencies(confirm=lambda text: questions.append(text) or True) is True
    assert calls == [("installTorch", False, ">=2.1"), ("pip", ["diffusers>=0.30"])]
    assert "diffusers>=0.30" in questions[-1]

    monkeypatch.delitem(sys.modules, "PyTorchUtils")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real_find_spec(name, *a))
    from XDiffusionLib.errors import XDiffusionError

    with pytest.raises(XDiffusionError, match="install the 'PyTorch' extension"):
        logic.ensureDependencies(confirm=lambda text: True)


def test_in_slicer_self_test_validation_part(xd, scene):
    """The module's own ScriptedLoadableModuleTest (what ctest runs inside Slicer), validation part."""
    test = xd.XDiffusionTest()
    test.setUp = lambda: None
    test.test_validation_messages()
