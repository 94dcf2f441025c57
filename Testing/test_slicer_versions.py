"""What a real Slicer (5.8 and later) does differently from the newest slicer-core: checked on the real scene.

slicer-core from pip is Slicer 5.11-5.13; the module must also run in Slicer 5.8 (Python 3.9). The
Slicer APIs the module calls are listed in slicer_api.py, each checked in Slicer's source at tag v5.8.0.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")

from slicer_support import HEART_TERMINOLOGY, SlicerApp  # noqa: E402

from PLCLSegmentationLib import scene_io  # noqa: E402
from PLCLSegmentationLib.logic import PLCLSegmentationLogic  # noqa: E402

pytestmark = pytest.mark.mrml


def test_terminology_goes_through_the_segment_tag_that_slicer_5_8_has(tmp_path):
    """vtkSegment.Get/Set/HasTerminology first shipped in 5.10; 5.8 has the tag only."""
    import slicer

    app = SlicerApp()
    volume = app.add_volume(np.zeros((3, 8, 8), np.int16), "v")
    labels = np.zeros((3, 8, 8), np.uint8)
    labels[1, 2:5, 2:5] = 1
    node = app.add_segmentation(volume, labels, [("Heart", (0.8, 0.1, 0.1), "")])
    segment = node.GetSegmentation().GetNthSegment(0)
    segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), HEART_TERMINOLOGY)
    classes = scene_io.classes_from_segments(node, scene_io.segment_ids(node))
    assert classes[0].terminology == HEART_TERMINOLOGY
    path = tmp_path / "a.seg.nrrd"
    scene_io.write_annotation(app.services, node, scene_io.segment_ids(node), volume, classes, str(path))
    read = scene_io.read_segmentation(str(path)).GetNthSegment(0)
    assert scene_io.get_terminology(read) == HEART_TERMINOLOGY


def test_only_single_component_scalar_volumes_become_targets(tmp_path):
    """Vector (RGB), tensor and diffusion volumes are vtkMRMLScalarVolumeNode subclasses; the engine
    rejects them, so they must never be records (they would be targets hidden from the selector)."""
    import slicer
    import vtk

    app = SlicerApp()
    grey = app.add_volume(np.zeros((3, 8, 8), np.int16), "grey")
    others = []
    for class_name, components in (("vtkMRMLVectorVolumeNode", 3), ("vtkMRMLDiffusionWeightedVolumeNode", 6),
                                   ("vtkMRMLDiffusionTensorVolumeNode", 1), ("vtkMRMLScalarVolumeNode", 2)):
        node = app.scene.AddNewNodeByClass(class_name, class_name)
        image = vtk.vtkImageData()
        image.SetDimensions(8, 8, 3)
        image.AllocateScalars(vtk.VTK_FLOAT, components)
        node.SetAndObserveImageData(image)
        others.append(node)
    logic = PLCLSegmentationLogic(app.services, models_dir=tmp_path)
    assert [r.volume.GetID() for r in logic.refresh()] == [grey.GetID()]
    # A record of such a volume saved by an earlier version is dropped.
    logic.state.new_record(others[0])
    assert [r.volume.GetID() for r in logic.refresh()] == [grey.GetID()]
    assert slicer.vtkMRMLVectorVolumeNode().IsA("vtkMRMLScalarVolumeNode")


def test_the_uncertainty_overlay_looks_in_slice_views_as_its_colour_table_says(tmp_path):
    """Slice views AND a colour table's alpha with the threshold mask (vtkMRMLScalarVolumeDisplayNode's
    AlphaLogic, v5.8.0 to main): run that real pipeline and compare with the table."""
    import SimpleITK as sitk
    from vtk.util.numpy_support import vtk_to_numpy

    app = SlicerApp()
    volume = app.add_volume(np.zeros((1, 4, 64), np.int16), "case")
    values = np.linspace(0.0, 1.0, 4 * 64, dtype=np.float32).reshape(1, 4, 64)
    sitk.WriteImage(sitk.GetImageFromArray(values), os.path.join(tmp_path, "u.nrrd"))
    node = scene_io.add_uncertainty(app.services, scene_io.SceneTransaction(app.scene), volume,
                                    os.path.join(tmp_path, "u.nrrd"))
    display = node.GetDisplayNode()
    connection = display.GetOutputImageDataConnection()
    producer = connection.GetProducer()
    producer.Update()
    rgba = vtk_to_numpy(producer.GetOutputDataObject(connection.GetIndex()).GetPointData().GetScalars())
    table = display.GetColorNode()
    flat = values.ravel()
    shown = flat >= scene_io.UNCERTAINTY_SHOWN_FROM
    expected_alpha = []
    for value in flat:
        color = [0.0] * 4
        table.GetColor(int(round(value * 255)), color)
        expected_alpha.append(color[3] * 255 if value >= scene_io.UNCERTAINTY_SHOWN_FROM else 0.0)
    np.testing.assert_allclose(rgba[:, 3], expected_alpha, atol=1)
    assert (rgba[~shown, 3] == 0).all() and (rgba[shown, 3] == 255).all()
    # The grade is visible as colour: from pale yellow to dark red, monotonically.
    green = rgba[shown, 1].astype(int)
    assert (np.diff(green) <= 0).all() and green[0] - green[-1] > 150


def test_the_engine_interpreter_is_this_machines_setting_never_the_scenes(tmp_path):
    """A scene is data from anyone: a program it names must not run when the user clicks Train."""
    from PLCLSegmentationLib import dependencies
    from PLCLSegmentationLib.parameters import ModuleState

    app = SlicerApp()
    logic = PLCLSegmentationLogic(app.services, models_dir=tmp_path)
    ModuleState(app.scene).node.SetParameter("python", str(tmp_path / "someone-elses-program"))
    assert logic._command()[0] == dependencies.slicer_python()
    assert logic.python == ""
    logic.set_python(str(tmp_path / "my-python"))
    assert logic._command()[0] == str(tmp_path / "my-python")
    node = ModuleState(app.scene).node
    assert all(str(tmp_path / "my-python") not in node.GetParameter(name) for name in node.GetParameterNames())
    # Another scene on the same machine uses the same interpreter.
    other = SlicerApp()
    other.services.settings = app.services.settings
    assert PLCLSegmentationLogic(other.services, models_dir=tmp_path).python == str(tmp_path / "my-python")


def test_an_external_python_is_probed_once_in_the_background(tmp_path):
    import threading
    import time

    from slicer_support import slow_interpreter

    from PLCLSegmentationLib import dependencies
    from PLCLSegmentationLib.dependencies import InterpreterChecks

    python, runs = slow_interpreter(tmp_path)
    built_by = []

    def environment() -> dict:  # (Slicer's startup environment is a PythonQt call: the main thread's only)
        built_by.append(threading.current_thread())
        return dependencies.child_environment(True)

    checks = InterpreterChecks(environment)
    threads = set(threading.enumerate())
    started = time.monotonic()
    assert checks.check(python) is None and checks.poll()  # being probed
    assert time.monotonic() - started < 0.5, "the probe blocked the caller"
    assert set(threading.enumerate()) <= threads, "the probe runs in a Python thread"
    assert built_by == [threading.main_thread()]
    deadline = time.monotonic() + 60
    while checks.check(python) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    info = checks.check(python)
    assert "missing" in info and info["python"]
    assert checks.check(python) is info and runs.read_text().count("run") == 1
    assert "not found" in _wait_for(checks, str(tmp_path / "missing-python"))["error"]


def _wait_for(checks, python: str) -> dict:
    import time

    deadline = time.monotonic() + 30
    while (info := checks.check(python)) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return info


def slicer_calls() -> tuple[set[str], set[str], set[str]]:
    """Names the module's code takes from Slicer objects: Capitalised attributes (VTK/MRML methods and
    constants, Qt classes), ``slicer.util.<name>`` and ``slicer.<name>``."""
    import ast

    from slicer_support import ROOT

    package = ROOT / "PLCLSegmentation" / "PLCLSegmentationLib"
    files = [*package.glob("*.py"), ROOT / "PLCLSegmentation" / "PLCLSegmentation.py"]
    methods, util, names = set(), set(), set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                base = ast.unparse(node.value)
                if base == "slicer.util":
                    util.add(node.attr)
                elif base == "slicer":
                    names.add(node.attr)
                elif node.attr[:1].isupper():
                    methods.add(node.attr)
    return methods, util, names


def test_every_slicer_api_the_module_calls_exists_in_slicer_5_8():
    import slicer_api

    methods, util, names = slicer_calls()
    assert methods, "no call found: the test looks in the wrong place"
    newer = (methods | util) & slicer_api.NEWER_THAN_5_8
    assert not newer, f"not in Slicer 5.8: {sorted(newer)}"
    unchecked = methods - set(slicer_api.SLICER_5_8) - slicer_api.OTHER
    assert not unchecked, f"check these at Slicer's tag v5.8.0, then list them in slicer_api.py: {sorted(unchecked)}"
    assert util <= slicer_api.SLICER_UTIL_5_8, sorted(util - slicer_api.SLICER_UTIL_5_8)
    assert names <= slicer_api.SLICER_NAMES_5_8, sorted(names - slicer_api.SLICER_NAMES_5_8)


def test_each_listed_api_is_declared_in_its_header_at_v5_8_0():
    """slicer_api.py names the header of each call; with a Slicer source checkout (SLICER_SOURCE, a git
    clone of Slicer/Slicer with the tag v5.8.0) each header must declare it: as a method, or through a
    vtk Set/Get/Boolean macro of its base name."""
    import re
    import subprocess

    import slicer_api

    source = os.environ.get("SLICER_SOURCE")
    if not source:
        pytest.skip("set SLICER_SOURCE to a clone of Slicer/Slicer to check the attributions")
    wrong = []
    for name, header in slicer_api.SLICER_5_8.items():
        text = subprocess.run(["git", "-C", source, "show", f"v5.8.0:{header}"], capture_output=True,
                              text=True).stdout
        text = re.sub(r"//.*", "", text)  # declarations, not comments
        base = re.sub(r"^(Get|Set)|(On|Off)$", "", name)
        declared = re.search(rf"\b{name}\s*\(", text) or re.search(rf"Macro\s*\(\s*{base}\b", text) \
            or re.search(rf"\b{name}\b\s*[=,}}]", text)  # an enum constant
        if not declared:
            wrong.append(f"{name}: {header}")
    for members in slicer_api.WIDGET_API.values():  # the panel's Slicer widgets (CTK and Qt: not in this clone)
        for member, header in members.items():
            if header.startswith(("Libs/", "Modules/")):
                text = subprocess.run(["git", "-C", source, "show", f"v5.8.0:{header}"], capture_output=True,
                                      text=True).stdout
                if not re.search(rf"\b{re.escape(member.split('(')[0])}\b", re.sub(r"//.*", "", text)):
                    wrong.append(f"{member}: {header}")
    assert not wrong, wrong


def widget_calls() -> set[tuple[str, str]]:
    """(class, member) for each ``ui.NAME.MEMBER`` of widget.py and each ``ui.NAME.connect("SIGNAL")``, the
    class being NAME's in the module's .ui."""
    import ast
    import xml.etree.ElementTree as ET

    from slicer_support import ROOT

    ui = {w.get("name"): w.get("class") for w in ET.parse(
        ROOT / "PLCLSegmentation" / "Resources" / "UI" / "PLCLSegmentation.ui").iter("widget")}
    tree = ast.parse((ROOT / "PLCLSegmentation" / "PLCLSegmentationLib" / "widget.py").read_text())
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                and ast.unparse(node.value.value) in ("ui", "self.ui"):
            used.add((ui[node.value.attr], node.attr))
            if node.attr == "connect":
                calls = [c for c in ast.walk(tree) if isinstance(c, ast.Call) and c.func is node]
                used |= {(ui[node.value.attr], c.args[0].value) for c in calls if isinstance(c.args[0], ast.Constant)}
    return used


def test_every_widget_api_the_panel_uses_is_listed_with_its_class():
    """widget.py's calls on the .ui's widgets, each listed in slicer_api.WIDGET_API (checked at v5.8.0)."""
    import slicer_api

    used = widget_calls()
    assert ("qMRMLNodeComboBox", "currentNodeChanged(vtkMRMLNode*)") in used, "the test looks in the wrong place"
    unlisted = sorted(f"{cls}.{member}" for cls, member in used if member not in slicer_api.WIDGET_API.get(cls, {}))
    assert not unlisted, f"check these at Slicer's tag v5.8.0 (CTK: its pinned commit), then list them: {unlisted}"


def test_declining_the_package_installation_installs_nothing_and_says_why_nothing_started(monkeypatch):
    """In the Slicer application a missing package is installed only once the user agrees; outside it (and while
    testing) it is an error naming the packages."""
    from PLCLSegmentationLib import dependencies

    monkeypatch.setattr(dependencies, "missing_modules", lambda names=None: ["torch", "SimpleITK"])
    with pytest.raises(RuntimeError, match="torch, SimpleITK"):
        dependencies.ensure_slicer_packages(confirm=lambda question: True)
    monkeypatch.setattr(dependencies, "testing_enabled", lambda: False)  # as in the application, a user asked
    questions, lines = [], []
    assert dependencies.ensure_slicer_packages(confirm=lambda q: questions.append(q) or False,
                                               log=lines.append) is False
    assert len(questions) == 1 and "torch, SimpleITK" in questions[0]
    assert len(lines) == 1 and lines[0].startswith("Not started") and "torch, SimpleITK" in lines[0]
    monkeypatch.setattr(dependencies, "missing_modules", lambda names=None: [])
    assert dependencies.ensure_slicer_packages(confirm=lambda q: pytest.fail("asked with nothing missing")) is True
