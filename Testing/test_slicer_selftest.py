"""The module's own self-test (PLCLSegmentationTest) on slicer-core: its steps without torch run here."""

from __future__ import annotations

import ast

import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")

from slicer_support import ROOT, SlicerApp  # noqa: E402

from PLCLSegmentationLib import selftest  # noqa: E402
from PLCLSegmentationLib.logic import PLCLSegmentationLogic  # noqa: E402

pytestmark = pytest.mark.mrml


def test_the_self_test_steps_pass_on_a_real_scene(tmp_path):
    app = SlicerApp()
    volume, other, segmentation = selftest.annotated_scene(app.scene)
    logic = PLCLSegmentationLogic(app.services, models_dir=tmp_path)
    selftest.check_roles(logic, volume, other, segmentation)


def test_the_cine_self_test_steps_pass_on_a_real_scene(tmp_path):
    app = SlicerApp()
    proxy, segmentation = selftest.cine_scene(app.scene, app.sequences)
    logic = PLCLSegmentationLogic(app.services, models_dir=tmp_path)
    selftest.check_cine(logic, proxy, segmentation)


def test_the_self_test_steps_fail_when_the_logic_misbehaves(tmp_path):
    app = SlicerApp()
    volume, other, segmentation = selftest.annotated_scene(app.scene)
    logic = PLCLSegmentationLogic(app.services, models_dir=tmp_path)
    logic.retrain = lambda: None  # no error where one is due
    with pytest.raises(AssertionError, match="Retrain needs a trained model"):
        selftest.check_roles(logic, volume, other, segmentation)



def test_the_cine_self_test_steps_fail_when_the_logic_misbehaves(tmp_path):
    app = SlicerApp()
    proxy, segmentation = selftest.cine_scene(app.scene, app.sequences)
    logic = PLCLSegmentationLogic(app.services, models_dir=tmp_path)
    logic.accept_slice = lambda *args: None  # a frame's slice accepted without a word
    with pytest.raises(AssertionError, match="accept a frame whole"):
        selftest.check_cine(logic, proxy, segmentation)

def test_the_module_test_never_skips_and_always_tests_the_panel():
    """A skipped ScriptedLoadableModuleTest shows as "Test failed" in the GUI's Test button."""
    tree = ast.parse((ROOT / "PLCLSegmentation" / "PLCLSegmentation.py").read_text())
    test = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PLCLSegmentationTest")
    calls = {ast.unparse(n.func) for n in ast.walk(test) if isinstance(n, ast.Call)}
    assert not {c for c in calls if c.endswith(("skipTest", "skip"))}, calls
    run = next(n for n in test.body if isinstance(n, ast.FunctionDef) and n.name == "runTest")
    run_calls = [ast.unparse(n.func) for n in ast.walk(run) if isinstance(n, ast.Call)]
    assert "self.test_panel_and_logic" in run_calls and "self.test_train_review_retrain" in run_calls
    panel = next(n for n in test.body if isinstance(n, ast.FunctionDef) and n.name == "test_panel_and_logic")
    used = ast.unparse(panel)
    assert "selftest.check_roles" in used and "getModuleWidget" in used and "torch" not in used
    assert "selftest.check_cine" in used
