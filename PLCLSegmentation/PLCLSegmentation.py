"""PLCLSegmentation: annotate one or two volumes, train, and segment every other loaded volume.

The behaviour lives in ``PLCLSegmentationLib`` (Qt-free logic, tested against a real MRML scene);
this file only declares the module, its widget, its logic and its self-test to Slicer.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from PLCLSegmentationLib.logic import PLCLSegmentationLogic as QtFreeLogic
from PLCLSegmentationLib.services import SlicerServices


class PLCLSegmentation(ScriptedLoadableModule):
    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("PLCL Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["PLCLSegmentation authors"]
        self.parent.helpText = _(
            "Segment one or two volumes with the Segment Editor, click Train, and every other loaded volume is "
            "segmented by a model trained on them (pseudo-label self-training with a mean teacher). "
            "Review the least certain results first, correct them, accept them and retrain. "
            "Supported: Slicer 5.8 and later.")
        self.parent.acknowledgementText = _(
            "Method: K. Chaitanya et al., Local contrastive loss with pseudo-label based self-training for "
            "semi-supervised medical image segmentation, Medical Image Analysis 87 (2023) 102792.")


class PLCLSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.panel = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        from PLCLSegmentationLib.widget import PLCLSegmentationPanel

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PLCLSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = PLCLSegmentationLogic()
        self.panel = PLCLSegmentationPanel(self.ui, self.logic)
        self.panel.observeScene(slicer.mrmlScene)

    def enter(self) -> None:
        if self.panel is not None:
            self.panel.updateFromState()

    def cleanup(self) -> None:
        self.removeObservers()
        if self.panel is not None:
            self.panel.cleanup()


class PLCLSegmentationLogic(QtFreeLogic, ScriptedLoadableModuleLogic):
    """The Qt-free logic (PLCLSegmentationLib.logic) on Slicer's scene; its state is the module's parameter node."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        QtFreeLogic.__init__(self, SlicerServices.from_slicer())


class PLCLSegmentationTest(ScriptedLoadableModuleTest):
    """The panel and the logic on the scene (always), then annotate, train, review, accept, retrain and save
    through the real engine (where torch is installed). A missing torch is reported, not skipped: the
    Test button shows a skipped test as failed."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_panel_and_logic()
        self.setUp()
        self.test_train_review_retrain()

    def waitFor(self, logic, timeout_s: float = 900.0) -> None:
        deadline = time.monotonic() + timeout_s
        while logic.busy:
            logic.poll()
            slicer.app.processEvents()
            self.assertLess(time.monotonic(), deadline, "the engine did not finish in time")
            time.sleep(0.1)

    def test_panel_and_logic(self) -> None:
        from PLCLSegmentationLib import selftest

        self.delayDisplay("Panel and logic on the scene (no engine)")
        widget = slicer.util.getModuleWidget("PLCLSegmentation")
        volume, other, segmentation = selftest.annotated_scene(slicer.mrmlScene)
        logic = PLCLSegmentationLogic()
        logic.models_dir = Path(tempfile.mkdtemp(prefix="PLCLSegmentationTest-"))
        selftest.check_roles(logic, volume, other, segmentation)
        widget.panel.updateFromState()
        self.assertEqual(widget.ui.annotatedTable.rowCount, 1)
        self.assertEqual(widget.ui.annotatedTable.item(0, 0).text(), volume.GetName())
        self.assertTrue(widget.ui.trainButton.enabled)
        self.assertFalse(widget.ui.retrainButton.enabled)
        self.delayDisplay("A cine sequence in a sequence browser")
        proxy, frame_segmentation = selftest.cine_scene(slicer.mrmlScene, slicer.modules.sequences.logic())
        selftest.check_cine(logic, proxy, frame_segmentation)
        self.delayDisplay("Panel and logic passed")

    def test_train_review_retrain(self) -> None:
        import numpy as np
        import SampleData

        from PLCLSegmentationLib import dependencies, scene_io

        missing = dependencies.missing_modules()
        if missing:
            self.delayDisplay(f"Training not tested: Python packages for the engine are missing ({', '.join(missing)})")
            return
        self.delayDisplay("Loading MRHead and annotating it")
        volume = SampleData.downloadSample("MRHead")
        other = slicer.modules.volumes.logic().CloneVolume(slicer.mrmlScene, volume, "MRHead copy")
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Head")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segmentId = segmentation.GetSegmentation().AddEmptySegment("head", "Head", [0.9, 0.7, 0.5])
        mask = (slicer.util.arrayFromVolume(volume) > 40).astype(np.uint8)
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, segmentId, volume)
        before = scene_io.fingerprint(segmentation)

        self.delayDisplay("Training")
        logic = PLCLSegmentationLogic()
        logic.models_dir = Path(tempfile.mkdtemp(prefix="PLCLSegmentationTest-"))
        logic.refresh()
        logic.set_annotation(volume, segmentation)
        for name, value in (("budget", "quick"), ("device", "cpu"), ("iterations", 6)):
            logic.state.set(name, value)
        logic.train()
        self.waitFor(logic)
        self.assertEqual(logic.job.state.value, "done", logic.job.error)
        record = logic.state.record_for(other)
        self.assertEqual(record.role, "predicted")
        self.assertEqual(record.segmentation.GetSegmentation().GetNthSegment(0).GetName(), "Head")

        self.delayDisplay("Review, accept and retrain")
        self.assertEqual(logic.review_rows()[0].name, "MRHead copy")
        logic.show(other)
        logic.accept(other)
        logic.retrain()
        self.waitFor(logic)
        self.assertEqual(logic.job.state.value, "done", logic.job.error)
        saved = logic.save_model(os.path.join(logic.models_dir, "saved.pt"))
        self.assertTrue(os.path.isfile(saved))
        self.assertEqual(scene_io.fingerprint(segmentation), before, "the user's segmentation changed")
        self.delayDisplay("Test passed")
