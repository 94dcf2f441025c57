"""The panel's code paths (PLCLSegmentationLib/widget.py) against the real logic and a real scene.

Qt cannot be installed here, so ``qt`` and ``slicer.i18n`` are replaced by small fakes that behave
like the few widgets the panel uses. This catches mistakes in the panel's own code (wrong names,
wrong flow between the logic and the widgets); what Qt itself does is left to PLCLSegmentationTest
in real Slicer.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import types
from unittest import mock

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")

from slicer_support import (  # noqa: E402
    CARDIAC_SEGMENTS,
    FAKE_ENGINE,
    SlicerApp,
    moving_phantom,
    read_labels,
    slice_views,
    snapshot,
    synthetic_case,
)

pytestmark = pytest.mark.mrml



class Signal:
    def __init__(self) -> None:
        self.slots = []

    def connect(self, slot) -> None:
        self.slots.append(slot)

    def emit(self, *args) -> None:
        for slot in self.slots:
            slot(*args)


class FakeTimer:
    def __init__(self) -> None:
        self.timeout = Signal()
        self.active = False

    def setInterval(self, ms: int) -> None:  # noqa: N802 (Qt names)
        self.interval = ms

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False

    @staticmethod
    def singleShot(ms: int, function) -> None:  # noqa: N802
        function()


class FakeItem:
    def __init__(self, text: str) -> None:
        self.text, self.values = text, {}

    def setData(self, role, value) -> None:  # noqa: N802
        self.values[role] = value

    def data(self, role):
        return self.values.get(role)


class FakeTable:
    def __init__(self) -> None:
        self.rowCount, self.cells, self.row = 0, {}, -1
        self.itemSelectionChanged = Signal()

    def setRowCount(self, count: int) -> None:  # noqa: N802
        self.rowCount = count
        self.cells = {k: v for k, v in self.cells.items() if k[0] < count}

    def setItem(self, row: int, column: int, item: FakeItem) -> None:  # noqa: N802
        self.cells[(row, column)] = item

    def item(self, row: int, column: int):
        return self.cells.get((row, column))

    def currentRow(self) -> int:  # noqa: N802
        return self.row if self.row < self.rowCount else -1

    def selectRow(self, row: int) -> None:  # noqa: N802
        self.row = row
        self.itemSelectionChanged.emit()


class FakeCombo:
    def __init__(self) -> None:
        self.items, self.currentIndex = [], -1
        self.currentIndexChanged = Signal()

    def addItem(self, text: str, data) -> None:  # noqa: N802
        self.items.append((text, data))
        if self.currentIndex < 0:
            self.currentIndex = 0

    def findData(self, data) -> int:  # noqa: N802
        return next((i for i, item in enumerate(self.items) if item[1] == data), -1)

    @property
    def currentData(self):  # noqa: N802
        return self.items[self.currentIndex][1] if self.currentIndex >= 0 else None


class FakeLineEdit:
    """The QLineEdit inside a ctkPathLineEdit: its end of editing, and whether it has the focus."""

    def __init__(self) -> None:
        self.editingFinished = Signal()
        self.focused = False

    def hasFocus(self) -> bool:  # noqa: N802
        return self.focused


class FakeNodeCombo(mock.MagicMock):
    def currentNode(self):  # noqa: N802
        return getattr(self, "_node", None)


def fake_qt() -> types.ModuleType:
    qt = types.ModuleType("qt")
    qt.QTimer = FakeTimer
    qt.QTableWidgetItem = FakeItem
    qt.QAbstractItemView = types.SimpleNamespace(ExtendedSelection=3)
    qt.Qt = types.SimpleNamespace(UserRole=32, Checked=2, Unchecked=0)
    qt.QFileDialog = mock.MagicMock()
    qt.QApplication = mock.MagicMock()
    qt.Qt.WaitCursor = 3
    qt.QEventLoop = types.SimpleNamespace(ExcludeUserInputEvents=1)
    return qt


def fake_ui() -> types.SimpleNamespace:
    ui = types.SimpleNamespace()
    for name in ("annotatedTable", "reviewTable"):
        setattr(ui, name, FakeTable())
    for name in ("budgetComboBox", "deviceComboBox", "annotatedSlicesComboBox"):
        setattr(ui, name, FakeCombo())
    for name in ("annotatedVolumeSelector", "annotatedSegmentationSelector"):
        setattr(ui, name, FakeNodeCombo())
    for name in ("segmentsTableView", "unannotatedVolumesSelector", "addAnnotatedButton", "removeAnnotatedButton",
                 "iterationsSpinBox", "pythonPathLineEdit", "showUncertaintyCheckBox", "trainButton", "showPlotButton",
                 "editButton", "acceptButton", "retrainButton", "saveModelButton", "loadModelButton",
                 "applyModelButton", "volumeCurveButton", "progressBar", "statusLabel", "logTextEdit",
                 "modelPathLineEdit", "inputsCollapsibleButton", "trainingCollapsibleButton", "paintViewButton",
                 "markBackgroundButton", "exportDicomSegButton"):
        setattr(ui, name, mock.MagicMock(name=name))
    ui.pythonPathLineEdit.currentPath = ""
    ui.pythonPathLineEdit.comboBox.return_value.lineEdit.return_value = FakeLineEdit()
    ui.segmentsTableView.selectedSegmentIDs.return_value = []
    for name in ("nextSliceButton", "acceptSliceButton"):  # the review's slice by slice buttons
        setattr(ui, name, mock.MagicMock(name=name))
    ui.unannotatedVolumesSelector.checkedNodes.return_value = []
    return ui


@pytest.fixture
def panel(tmp_path, monkeypatch):
    import slicer

    errors: list[str] = []

    @contextlib.contextmanager
    def try_with_error_display(message=None, show=True, waitCursor=False):  # noqa: N803 (Slicer's keyword)
        # As Slicer's own (slicer/util.py, v5.8.0 to main): the dialog, then the exception goes on.
        try:
            yield
        except Exception as error:
            errors.append(f"{message}\n\n{error}")
            raise

    monkeypatch.setitem(sys.modules, "qt", fake_qt())
    monkeypatch.setitem(sys.modules, "slicer.i18n", types.SimpleNamespace(tr=lambda text: text))
    for name, value in (("tryWithErrorDisplay", try_with_error_display), ("errorDisplay",
                        lambda text, **kwargs: errors.append(text)), ("resetSliceViews", lambda: None),
                        ("confirmOkCancelDisplay", lambda text: True)):
        monkeypatch.setattr(slicer.util, name, value, raising=False)
    repaints: list[str] = []  # the progress bar's text each time the panel let Slicer repaint
    ui_box: list = []
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(
        processEvents=lambda flags=None: repaints.append(ui_box[0].progressBar.format), testingEnabled=lambda: True,
        startupEnvironment=lambda: types.SimpleNamespace(keys=lambda: list(os.environ), value=os.environ.get)),
        raising=False)
    monkeypatch.delitem(sys.modules, "PLCLSegmentationLib.widget", raising=False)
    from PLCLSegmentationLib.logic import PLCLSegmentationLogic
    from PLCLSegmentationLib.widget import PLCLSegmentationPanel

    app = SlicerApp()
    chart_shown = []
    slicer.modules.plots = types.SimpleNamespace(logic=lambda: types.SimpleNamespace(
        ShowChartInLayout=chart_shown.append))
    volumes = [app.load_volume(synthetic_case(c)[0], c) for c in ("synthetic_001", "synthetic_002",
                                                               "synthetic_003")]
    annotation = app.add_segmentation(volumes[0], read_labels(synthetic_case("synthetic_001")[1]), CARDIAC_SEGMENTS,
                                      "Annotation")
    logic = PLCLSegmentationLogic(app.services, models_dir=tmp_path / "models",
                                  engine_command=[sys.executable, str(FAKE_ENGINE)],
                                  environment={**os.environ, "FAKE_ENGINE_STEP_S": "0.01"})
    ui = fake_ui()
    ui_box.append(ui)
    panel = PLCLSegmentationPanel(ui, logic)
    before = snapshot(annotation)
    yield types.SimpleNamespace(panel=panel, ui=ui, logic=logic, app=app, volumes=volumes, annotation=annotation,
                                errors=errors, charts=chart_shown, repaints=repaints)
    panel.cleanup()
    if annotation.GetScene() is not None:  # (not after a scene close)
        assert snapshot(annotation) == before


def run_timer(panel, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while panel.timer.active:
        panel.timer.timeout.emit()
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_the_panel_drives_a_whole_session(panel):
    p, ui, logic = panel.panel, panel.ui, panel.logic
    # Every volume is a record; the annotated volume proposes its segmentation.
    assert len(logic.state.records()) == 3
    assert ui.trainButton.enabled is False
    ui.annotatedVolumeSelector._node = panel.volumes[0]
    p.onAnnotatedVolumeChanged(panel.volumes[0])
    ui.annotatedSegmentationSelector.setCurrentNode.assert_called_with(panel.annotation)
    ui.annotatedSegmentationSelector._node = panel.annotation
    p.onAddAnnotated()
    assert not panel.errors, panel.errors
    assert ui.annotatedTable.rowCount == 1 and ui.annotatedTable.item(0, 0).text == "synthetic_001"
    assert ui.annotatedTable.item(0, 2).text == "Right ventricle, Myocardium, Left ventricle"
    assert ui.trainButton.enabled is True

    # Settings go to the parameter node.
    ui.budgetComboBox.currentIndex = ui.budgetComboBox.findData("quick")
    ui.iterationsSpinBox.value = 12
    p.onSettingsChanged()
    assert (logic.state.budget, logic.state.iterations) == ("quick", 12)

    # Train: the button becomes Cancel, the plot is shown, progress and status follow the engine.
    p.onTrainOrCancel()
    assert logic.busy and ui.trainButton.text == "Cancel" and p.timer.active
    assert panel.charts == [logic.job.plot.chart]
    run_timer(p)
    assert not panel.errors, panel.errors
    assert ui.trainButton.text == "Train" and ui.progressBar.value == ui.progressBar.maximum == 12
    assert ui.statusLabel.text.startswith("Training finished")
    assert ui.reviewTable.rowCount == 3 and ui.reviewTable.item(0, 1).text == "predicted"
    # The run's uncertainty maps are volumes too: the annotated-volume selector hides them.
    maps = [r.uncertainty.GetID() for r in logic.state.records() if r.uncertainty is not None]
    assert maps and set(maps) <= set(ui.annotatedVolumeSelector.sortFilterProxyModel().hiddenNodeIDs)
    assert panel.volumes[0].GetID() not in ui.annotatedVolumeSelector.sortFilterProxyModel().hiddenNodeIDs
    logged = [c.args[0] for c in ui.logTextEdit.appendPlainText.call_args_list]
    assert any("stage: warmup" in line for line in logged)

    # Review: the first row (least certain) is shown; accept it; retrain.
    assert ui.reviewTable.currentRow() == 0
    first = p._selectedVolume()
    assert ui.acceptButton.enabled is True
    p.onAccept()
    assert logic.state.record_for(first).role == "reviewed"
    p.onRetrain()
    run_timer(p)
    assert logic.job.warm_start and logic.job.state.value == "done", logic.job.error

    # Cancel a run from the Train button.
    logic.environment["FAKE_ENGINE_STEP_S"] = "0.2"
    ui.iterationsSpinBox.value = 1000
    p.onSettingsChanged()
    p.onTrainOrCancel()
    p.onTrainOrCancel()  # now it reads Cancel
    run_timer(p)
    assert logic.job.state.value == "cancelled" and ui.progressBar.value == 0

    # Save and load the model through the file dialogs.
    import qt

    target = str(logic.models_dir / "saved.pt")
    qt.QFileDialog.getSaveFileName.return_value = target
    p.onSaveModel()
    assert logic.state.model_path == target and ui.modelPathLineEdit.text == target
    qt.QFileDialog.getOpenFileName.return_value = target
    p.onLoadModel()
    assert not panel.errors, panel.errors


def test_the_panel_shows_and_changes_the_annotated_slices(panel):
    p, ui, logic, volume = panel.panel, panel.ui, panel.logic, panel.volumes[0]
    labels = read_labels(synthetic_case("synthetic_001")[1])
    few = np.zeros_like(labels)
    few[[1, 4]] = labels[[1, 4]]
    sparse = panel.app.add_segmentation(volume, few, CARDIAC_SEGMENTS, "Two slices")
    ui.annotatedVolumeSelector._node, ui.annotatedSegmentationSelector._node = volume, sparse
    p.onAddAnnotated()
    assert not panel.errors, panel.errors
    slices = labels.shape[0]  # the first case is stored with its slices along k
    assert ui.annotatedTable.item(0, 3).text == f"2 of {slices} slices (1, 4)"
    assert ui.annotatedSlicesComboBox.enabled is False  # no row selected yet
    ui.annotatedTable.selectRow(0)
    assert ui.annotatedSlicesComboBox.enabled is True and ui.annotatedSlicesComboBox.currentData == "auto"
    ui.annotatedSlicesComboBox.currentIndex = ui.annotatedSlicesComboBox.findData("all")
    p.onSliceModeChanged()
    assert logic.state.record_for(volume).slices == "all"
    assert ui.annotatedTable.item(0, 3).text == f"all {slices} slices"
    row = next(r for r in range(ui.reviewTable.rowCount) if ui.reviewTable.item(r, 0).text == volume.GetName())
    assert ui.reviewTable.item(row, 4).text == f"all {slices} slices"
    # This bare scene has no slice view: the panel says what to do instead of failing.
    p.onMarkBackground()
    assert "set up the paint view first" in panel.errors[-1]


def test_errors_are_shown_not_raised(panel):
    p, ui = panel.panel, panel.ui
    ui.annotatedVolumeSelector._node = panel.volumes[1]
    ui.annotatedSegmentationSelector._node = None
    ui.trainButton.enabled = "stale"
    p.onAddAnnotated()  # nothing escapes the slot, and the panel is refreshed after the error
    assert panel.errors and "Choose an annotated volume" in panel.errors[-1]
    assert ui.trainButton.enabled is False
    p.onRetrain()
    assert panel.errors[-1].startswith("Could not start retraining.")
    assert "Choose at least one annotated volume" in panel.errors[-1]
    np.testing.assert_equal(p.timer.active, False)


def test_export_dicom_seg_is_offered_for_an_accepted_volume_from_dicom_and_says_why_not_otherwise(panel, tmp_path):
    import qt

    from PLCLSegmentationLib import dicom_export
    from PLCLSegmentationLib.widget import DICOM_SEG_TIP

    p, ui, logic = panel.panel, panel.ui, panel.logic
    logic.set_annotation(panel.volumes[0], panel.annotation)
    logic.state.set("iterations", 4)
    p.onTrainOrCancel()
    # Not during a run, and not checked at each poll of it (the check reads the segments' voxels).
    assert ui.exportDicomSegButton.enabled is False and ui.exportDicomSegButton.toolTip == DICOM_SEG_TIP
    run_timer(p)
    row = next(r for r in range(ui.reviewTable.rowCount) if ui.reviewTable.item(r, 1).text == "predicted")
    ui.reviewTable.selectRow(row)
    volume = p._selectedVolume()
    assert ui.exportDicomSegButton.enabled is False and "Accept it first" in ui.exportDicomSegButton.toolTip
    p.onAccept()
    assert p._selectedVolume() is volume
    assert ui.exportDicomSegButton.enabled is False
    assert "not loaded from Slicer's DICOM database" in ui.exportDicomSegButton.toolTip
    # As Slicer's DICOM loader leaves a volume: one SOP instance UID per slice.
    slices = volume.GetImageData().GetDimensions()[2]
    uids = [f"1.2.826.0.1.3680043.2.1125.9.{k}" for k in range(slices)]
    volume.SetAttribute(dicom_export.INSTANCE_UIDS, " ".join(uids))
    p.updateButtons()
    assert ui.exportDicomSegButton.enabled is True and ui.exportDicomSegButton.toolTip == DICOM_SEG_TIP
    # The folder chosen, the export goes to Slicer's exporter: absent here, the panel says what to install.
    qt.QFileDialog.getExistingDirectory.return_value = str(tmp_path)
    p.onExportDicomSeg()
    assert panel.errors[-1] == "Could not export DICOM SEG.\n\n" + dicom_export.PLUGIN_SOURCE
    qt.QFileDialog.getExistingDirectory.return_value = ""  # cancelled: nothing happens
    p.onExportDicomSeg()
    assert len(panel.errors) == 1


def test_the_panel_walks_the_uncertain_slices_and_accepts_one(panel):
    from PLCLSegmentationLib.review import structures_text

    p, ui, logic = panel.panel, panel.ui, panel.logic
    slice_views(panel.app)
    assert ui.nextSliceButton.enabled is False  # nothing predicted yet
    logic.set_annotation(panel.volumes[0], panel.annotation)
    logic.state.set("iterations", 4)
    p.onTrainOrCancel()
    run_timer(p)
    rows = logic.review_rows()
    # The table: each prediction's structures with their estimated Dice, worst first; the worst volume first.
    assert [ui.reviewTable.item(r, 2).text for r in range(ui.reviewTable.rowCount)] == \
        [structures_text(row.structures) for row in rows]
    assert rows[0].worst <= rows[1].worst and ui.reviewTable.item(0, 2).text.split(" ")[0] != ""
    assert ui.nextSliceButton.enabled is True and ui.reviewTable.currentRow() == 0
    p.onNextSlice()
    stop = logic.review_stop
    assert stop.record.key == rows[0].record.key and ui.reviewTable.currentRow() == 0
    assert ui.statusLabel.text.startswith(f"Slice {stop.index} of '{stop.name}' ({stop.view} view): uncertainty")
    # From the second row: its slices first; the table's selection follows.
    ui.reviewTable.selectRow(1)
    p.onNextSlice()
    stop = logic.review_stop
    assert stop.record.key == rows[1].record.key and ui.reviewTable.currentRow() == 1
    assert ui.acceptSliceButton.enabled is True
    p.onAcceptSlice()
    assert not panel.errors, panel.errors
    assert logic.record(stop.record.volume).accepted == [stop.index]
    assert ui.statusLabel.text.startswith(f"Slice {stop.index} of '{stop.record.name}' is training data now")
    assert ui.reviewTable.currentRow() == 1 and ui.reviewTable.item(1, 4).text == f"accepted slice {stop.index}"
    p.onAcceptSlice()  # the same slice again: said, not raised
    assert "accepted already" in panel.errors[-1]
    # Once every slice was seen, the panel says so.
    while logic.review_stop is not None:
        p.onNextSlice()
    assert ui.statusLabel.text == "Every uncertain slice of the predictions has been shown."


def start_slow_training(panel) -> None:
    p, logic = panel.panel, panel.logic
    p.observeScene(panel.app.scene)
    logic.set_annotation(panel.volumes[0], panel.annotation)
    logic.environment["FAKE_ENGINE_STEP_S"] = "0.05"
    logic.state.set("iterations", 40)
    p.onTrainOrCancel()
    assert logic.busy


def test_importing_a_scene_during_a_run_does_not_drop_it(panel, tmp_path):
    """Add Data of a .mrml/.mrb imports into the open scene (Start/EndImportEvent) without closing it."""
    import slicer

    p, logic = panel.panel, panel.logic
    from PLCLSegmentationLib.logic import PLCLSegmentationLogic

    modules = slicer.modules
    other = SlicerApp()  # a scene saved elsewhere, with this module's state in it
    other.add_volume(np.zeros((4, 16, 16), np.int16), "imported volume")
    PLCLSegmentationLogic(other.services, models_dir=tmp_path).refresh()
    other_state = PLCLSegmentationLogic(other.services, models_dir=tmp_path).state
    other_state.set("budget", "full")
    mrml = other.save(tmp_path / "other")
    slicer.mrmlScene, slicer.modules = panel.app.scene, modules
    logic.state.set("budget", "quick")
    start_slow_training(panel)
    job = logic.job
    scene = panel.app.scene
    scene.SetURL(str(mrml))
    assert scene.Import()
    assert logic.job is job and logic.busy, "the run was dropped by a scene import"
    assert p.timer.active
    assert panel.ui.trainButton.text == "Cancel"
    run_timer(p)
    assert job.state.value == "done", job.error
    assert sorted(job.imported) == ["synthetic_002", "synthetic_003"]
    assert not job.inputs_dir.exists()
    names = [r.name for r in logic.state.records()]
    assert sorted(names) == ["imported volume", "synthetic_001", "synthetic_002", "synthetic_003"]
    assert logic.state.budget == "quick", "the imported scene's settings replaced the user's"
    assert not job.warnings, job.warnings


def test_closing_the_scene_during_a_run_ends_it_and_removes_its_files(panel):
    from slicer_support import alive

    start_slow_training(panel)
    job = panel.logic.job
    assert job.inputs_dir.exists() and job.out_dir.exists()
    panel.app.scene.Clear(0)
    assert panel.logic.job is None and not panel.panel.timer.active
    assert job.state.value == "cancelled"
    assert not job.inputs_dir.exists(), "the exported volumes stayed on disk"
    assert not job.out_dir.exists(), "the run folder stayed in the user's data folder"
    assert not alive(job.process.pid)


def type_python(ui, path: str) -> None:
    """The user types ``path`` into Training > Python, letter by letter (ctkPathLineEdit says
    currentPathChanged on each), with the focus in the field."""
    edit = ui.pythonPathLineEdit.comboBox().lineEdit()
    changed = [c.args[1] for c in ui.pythonPathLineEdit.connect.call_args_list
               if c.args[0] == "currentPathChanged(QString)"]
    edit.focused = True
    for end in range(1, len(path) + 1):
        ui.pythonPathLineEdit.currentPath = path[:end]
        for slot in changed:
            slot(path[:end])


def test_the_python_field_probes_once_when_editing_finishes_without_a_thread(panel, tmp_path):
    """Typing a path probes nothing; the end of editing keeps it and starts one probe, a child process
    polled by the panel's timer (Slicer holds the GIL while idle: a thread would hardly run); the status
    says what the Python can do when it answers; Train never waits for it."""
    import threading

    from slicer_support import slow_interpreter

    p, ui, logic = panel.panel, panel.ui, panel.logic
    logic.set_annotation(panel.volumes[0], panel.annotation)
    logic.state.set("iterations", 10)
    python, runs = slow_interpreter(tmp_path)
    threads = set(threading.enumerate())
    type_python(ui, python)
    assert logic.python == "" and not runs.exists(), "a probe started while the path was being typed"
    ui.pythonPathLineEdit.comboBox().lineEdit().editingFinished.emit()
    assert logic.python == python and logic.state.node.GetParameter("python") == ""
    assert set(threading.enumerate()) <= threads, "the probe runs in a Python thread"
    assert ui.statusLabel.text.startswith("Checking the chosen Python") and p.probeTimer.active
    started = time.monotonic()
    p.onTrainOrCancel()
    p.onRetrain()
    p.onApplyModel()
    assert time.monotonic() - started < 0.5, "the GUI froze while probing the interpreter"
    assert not logic.busy and "Checking the chosen Python" in ui.statusLabel.text
    deadline = time.monotonic() + 60
    while p.probeTimer.active:  # Slicer's timer: the status changes when the probe answers
        assert time.monotonic() < deadline, "the probe never answered"
        p.probeTimer.timeout.emit()
        time.sleep(0.05)
    assert ui.statusLabel.text.startswith(f"{python}: Python 3.") and "torch" in ui.statusLabel.text
    p.onTrainOrCancel()
    assert logic.busy, panel.errors
    run_timer(p)
    assert logic.job.state.value == "done", logic.job.error
    assert runs.read_text().count("run") == 1, "the interpreter was probed more than once"


def test_a_python_path_that_is_no_executable_is_never_run(panel, tmp_path):
    p, ui, logic = panel.panel, panel.ui, panel.logic
    not_executable = tmp_path / "python"
    not_executable.write_text("#!/bin/sh\necho run > ran.txt\n")
    for path, message in ((str(tmp_path / "missing" / "python"), "not found"), (str(not_executable), "not found")):
        type_python(ui, path)
        ui.pythonPathLineEdit.comboBox().lineEdit().editingFinished.emit()
        assert logic.python == path and message in ui.statusLabel.text and not p.probeTimer.active
    # The browse button sets the path while the field has no focus: taken at once.
    ui.pythonPathLineEdit.comboBox().lineEdit().focused = False
    ui.pythonPathLineEdit.currentPath = ""
    p.onPythonPathChanged("")
    assert logic.python == "" and ui.statusLabel.text == "The engine runs in Slicer's own Python."


def test_the_panel_annotates_frames_of_a_sequence_and_reviews_them_frame_by_frame(panel):
    """A cine series: add two frames of the browser's sequence, train, review a frame, accept it."""
    from PLCLSegmentationLib import sequences

    p, ui, logic, app = panel.panel, panel.ui, panel.logic, panel.app
    images, labels = moving_phantom(4)
    proxy = app.add_volume_sequence(images, "Cine")
    browser, _ = sequences.browser_of(app.scene, proxy)
    nodes = {}
    for frame in (0, 2):
        browser.SetSelectedItemNumber(frame)
        nodes[frame] = app.add_segmentation(proxy, labels[frame], CARDIAC_SEGMENTS[1:], f"frame {frame}")
        ui.annotatedVolumeSelector._node, ui.annotatedSegmentationSelector._node = proxy, nodes[frame]
        p.onAddAnnotated()
        assert ui.statusLabel.text.startswith(f"Frame {frame} of 'Cine' is annotated by 'frame {frame}'.")
    assert not panel.errors, panel.errors
    browser.SetSelectedItemNumber(0)  # choosing the sequence proposes the shown frame's own segmentation
    p.onAnnotatedVolumeChanged(proxy)
    ui.annotatedSegmentationSelector.setCurrentNode.assert_called_with(nodes[0])
    rows = [[ui.annotatedTable.item(r, c).text for c in range(4)] for r in range(ui.annotatedTable.rowCount)]
    assert rows == [["Cine_t00", "frame 0", "Myocardium, Left ventricle", "whole frame"],
                    ["Cine_t02", "frame 2", "Myocardium, Left ventricle", "whole frame"]]
    ui.annotatedTable.selectRow(1)
    assert ui.annotatedSlicesComboBox.enabled is False  # frames are annotated whole
    p.onRemoveAnnotated()
    assert logic.state.record_for(proxy).training_frames() == [0]
    browser.SetSelectedItemNumber(2)
    p.onAddAnnotated()

    # Train only on the frames (the 3D volumes are not targets here).
    for volume in panel.volumes:
        logic.set_role(volume, "excluded")
    ui.iterationsSpinBox.value = 6
    p.onSettingsChanged()
    p.onTrainOrCancel()
    run_timer(p)
    assert not panel.errors, panel.errors
    assert logic.job.state.value == "done", logic.job.error
    names = [ui.reviewTable.item(r, 0).text for r in range(ui.reviewTable.rowCount)]
    assert {"Cine_t00", "Cine_t01", "Cine_t02", "Cine_t03"} <= set(names)
    # The first row (least certain frame) is shown: the browser is at that frame.
    assert ui.reviewTable.currentRow() == 0 and ui.reviewTable.item(0, 1).text == "predicted"
    frame = int(ui.reviewTable.item(0, 0).text.split("_t")[1])
    assert browser.GetSelectedItemNumber() == frame
    assert ui.acceptButton.enabled is True and ui.editButton.enabled is True
    assert ui.volumeCurveButton.enabled is True
    p.onVolumeCurve()
    assert panel.charts[-1].GetID() == logic.volume_curve(proxy).GetID()
    assert "Left ventricle: " in ui.statusLabel.text and "ejection fraction" in ui.statusLabel.text
    ui.annotatedSegmentationSelector.setCurrentNode.reset_mock()
    p.onAnnotatedVolumeChanged(proxy)  # the shown frame is predicted: the prediction is not proposed
    for call in ui.annotatedSegmentationSelector.setCurrentNode.call_args_list:
        assert call.args[0].GetID() in {n.GetID() for n in nodes.values()}
    p.onAccept()
    assert logic.state.record_for(proxy).frames[frame].role == "reviewed"
    annotated = [ui.annotatedTable.item(r, 0).text for r in range(ui.annotatedTable.rowCount)]
    assert f"Cine_t{frame:02d}" in annotated


def test_the_panel_shows_exports_and_imports_volume_by_volume_and_repaints(panel):
    p, ui, logic = panel.panel, panel.ui, panel.logic
    logic.set_annotation(panel.volumes[0], panel.annotation)
    logic.state.set("iterations", 10)
    p.onTrainOrCancel()
    assert panel.repaints == [f"Exporting {n} of 3 volumes..." for n in (1, 2, 3)], panel.errors
    run_timer(p)
    assert logic.job.state.value == "done", logic.job.error
    assert panel.repaints[3:] == [f"Adding {n} of 2 results to the scene..." for n in (1, 2)]
    assert ui.progressBar.format == "done" and ui.reviewTable.rowCount == 3
