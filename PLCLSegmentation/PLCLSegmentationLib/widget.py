"""The module panel: binds the .ui to the Qt-free logic. The only module of the package that uses Qt.

Everything it shows comes from the logic and its parameter node; everything it does is one call of
the logic. A ``qt.QTimer`` drains the running child's events (``logic.poll()``) five times a second,
so Slicer stays responsive while the engine trains in its own process.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Iterator
from typing import Any

import qt
import slicer
import vtk
from slicer.i18n import tr as _

from .engine.protocol import BUDGETS, DEFAULT_BUDGET, DEFAULT_DEVICE, DEVICES
from .jobs import JobState, format_duration
from .parameters import (
    ANNOTATED,
    EXCLUDED,
    PREDICTED,
    REVIEWED,
    SLICES_ALL,
    SLICES_AUTO,
    SLICES_PAINTED,
    TRAINING_ROLES,
    UNANNOTATED,
    VOLUME,
)
from .review import structures_text
from .services import PLCLError

POLL_INTERVAL_MS = 200
#: How often the panel looks whether the probe of a chosen Python has answered.
PROBE_INTERVAL_MS = 250
#: Item data role of a table row's frame (a frame of a sequence; -1: the whole volume).
FRAME_ROLE_OFFSET = 1
DEFAULT_MODEL_FILE = "PLCLSegmentation-model.pt"
ROLE_LABELS = {ANNOTATED: "annotated", REVIEWED: "reviewed", PREDICTED: "predicted", UNANNOTATED: "to segment",
               EXCLUDED: "excluded"}
#: Display labels of the engine's devices and budgets (engine/protocol.py names them).
DEVICE_LABELS = {"auto": "automatic", "cpu": "CPU", "cuda": "GPU (CUDA)", "mps": "GPU (Apple MPS)"}
BUDGET_LABELS = {"full": "full (GPU)"}
DICOM_SEG_TIP = ("Write the accepted segmentation as DICOM SEG with Slicer's DICOM exporter and add it to the "
                 "DICOM database.")
SLICE_CHOICES = ((SLICES_AUTO, "automatic"), (SLICES_ALL, "all slices"), (SLICES_PAINTED, "only painted slices"))


@contextlib.contextmanager
def showingErrors(message: str, waitCursor: bool = False) -> Iterator[None]:  # noqa: N802, N803 (Qt style)
    """Show an exception of the block in a dialog and stop it there.

    Unlike ``slicer.util.tryWithErrorDisplay``, which re-raises after its dialog (and shows none
    while testing): a slot must not leak a traceback to the console, and the panel is refreshed after
    the block whatever happened.
    """
    if waitCursor:
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
    try:
        yield
    except Exception as error:
        if waitCursor:
            qt.QApplication.restoreOverrideCursor()
            waitCursor = False
        logging.debug("PLCLSegmentation: %s", traceback.format_exc())
        slicer.util.errorDisplay("\n\n".join((message, str(error))), windowTitle=_("PLCLSegmentation"),
                                 detailedText=traceback.format_exc() if not isinstance(error, PLCLError) else "")
    finally:
        if waitCursor:
            qt.QApplication.restoreOverrideCursor()


class PLCLSegmentationPanel:
    """Connects the widgets of ``ui`` (from ``slicer.util.childWidgetVariables``) to ``logic``."""

    def __init__(self, ui: Any, logic: Any) -> None:
        self.ui = ui
        self.logic = logic
        self._updating = False
        self._update_scheduled = False
        self._observed: Any = None
        self._observer_tag: int | None = None
        self._scene: Any = None
        self._scene_tags: list[int] = []
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.timeout.connect(self.onTimer)
        self.probeTimer = qt.QTimer()
        self.probeTimer.setInterval(PROBE_INTERVAL_MS)
        self.probeTimer.timeout.connect(self.onProbeTimer)
        logic.progress = self.onWorkProgress  # exports and imports say how far they are

        for value in BUDGETS:
            ui.budgetComboBox.addItem(_(BUDGET_LABELS.get(value, value)), value)
        for value in DEVICES:
            ui.deviceComboBox.addItem(_(DEVICE_LABELS.get(value, value)), value)
        for value, text in SLICE_CHOICES:
            ui.annotatedSlicesComboBox.addItem(_(text), value)
        ui.segmentsTableView.setSelectionMode(qt.QAbstractItemView.ExtendedSelection)

        ui.annotatedVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onAnnotatedVolumeChanged)
        ui.annotatedSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentationChanged)
        ui.unannotatedVolumesSelector.connect("checkedNodesChanged()", self.onTargetsChanged)
        ui.addAnnotatedButton.clicked.connect(self.onAddAnnotated)
        ui.removeAnnotatedButton.clicked.connect(self.onRemoveAnnotated)
        ui.annotatedTable.itemSelectionChanged.connect(self.onAnnotatedSelection)
        ui.annotatedSlicesComboBox.currentIndexChanged.connect(self.onSliceModeChanged)
        ui.paintViewButton.clicked.connect(self.onPaintView)
        ui.markBackgroundButton.clicked.connect(self.onMarkBackground)
        ui.budgetComboBox.currentIndexChanged.connect(self.onSettingsChanged)
        ui.deviceComboBox.currentIndexChanged.connect(self.onSettingsChanged)
        ui.iterationsSpinBox.valueChanged.connect(self.onSettingsChanged)
        # The Python is taken when its editing finishes (ctkPathLineEdit says currentPathChanged on every
        # keystroke), or at once when the browse button sets it.
        ui.pythonPathLineEdit.currentPath = self.logic.python  # an application setting: shown once, kept
        ui.pythonPathLineEdit.connect("currentPathChanged(QString)", self.onPythonPathChanged)
        self._pythonEdit = self._lineEditOf(ui.pythonPathLineEdit)
        if self._pythonEdit is not None:
            self._pythonEdit.editingFinished.connect(self.onPythonEdited)
        ui.showUncertaintyCheckBox.toggled.connect(self.onShowUncertainty)
        ui.trainButton.clicked.connect(self.onTrainOrCancel)
        ui.showPlotButton.clicked.connect(self.onShowPlot)
        ui.reviewTable.itemSelectionChanged.connect(self.onReviewSelection)
        ui.editButton.clicked.connect(self.onEdit)
        ui.acceptButton.clicked.connect(self.onAccept)
        ui.nextSliceButton.clicked.connect(self.onNextSlice)
        ui.acceptSliceButton.clicked.connect(self.onAcceptSlice)
        ui.volumeCurveButton.clicked.connect(self.onVolumeCurve)
        ui.exportDicomSegButton.clicked.connect(self.onExportDicomSeg)
        ui.retrainButton.clicked.connect(self.onRetrain)
        ui.saveModelButton.clicked.connect(self.onSaveModel)
        ui.loadModelButton.clicked.connect(self.onLoadModel)
        ui.applyModelButton.clicked.connect(self.onApplyModel)
        self.observeParameterNode()
        self.updateFromState()

    # --- parameter node <-> GUI -----------------------------------------------------------------
    def observeParameterNode(self) -> None:
        node = self.logic.state.node
        if node is self._observed:
            return
        if self._observed is not None and self._observer_tag is not None:
            self._observed.RemoveObserver(self._observer_tag)
        self._observed = node
        self._observer_tag = node.AddObserver(vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def _onParameterNodeModified(self, caller: Any, event: Any) -> None:
        self.scheduleUpdate()

    def updateFromState(self) -> None:
        if self._updating:
            return
        self._updating = True
        try:
            state = self.logic.state
            records = self.logic.refresh()
            self._setCombo(self.ui.budgetComboBox, state.budget)
            self._setCombo(self.ui.deviceComboBox, state.device)
            self.ui.iterationsSpinBox.value = state.iterations
            self.ui.showUncertaintyCheckBox.checked = state.show_uncertainty
            self.ui.modelPathLineEdit.text = state.model_path
            self._fillAnnotatedTable([r for r in records if r.role in TRAINING_ROLES])
            self._showSliceChoice()
            self._fillTargets(records)
            self._fillReviewTable()
        finally:
            self._updating = False
        self.updateButtons()

    def scheduleUpdate(self) -> None:
        """Update once the scene has settled (many nodes may be added at once, e.g. by a DICOM load)."""
        if not self._update_scheduled:
            self._update_scheduled = True
            qt.QTimer.singleShot(100, self._scheduledUpdate)

    def _scheduledUpdate(self) -> None:
        self._update_scheduled = False
        self.updateFromState()

    def onSettingsChanged(self, *_args: Any) -> None:
        if self._updating:
            return
        self.logic.set_run_settings(self.ui.budgetComboBox.currentData or DEFAULT_BUDGET,
                                    self.ui.deviceComboBox.currentData or DEFAULT_DEVICE,
                                    int(self.ui.iterationsSpinBox.value))

    # --- the engine's Python ---------------------------------------------------------------------
    @staticmethod
    def _lineEditOf(pathLineEdit: Any) -> Any:  # noqa: N803 (Qt style)
        """The QLineEdit inside a ctkPathLineEdit (in its history combo box; None without one)."""
        combo = pathLineEdit.comboBox()
        return combo.lineEdit() if combo is not None else None

    def onPythonPathChanged(self, *_args: Any) -> None:
        """A path typed letter by letter waits for the end of editing; one set while the field has no
        focus (the browse button, the history) is taken at once."""
        if self._updating:
            return
        if self._pythonEdit is None or not self._pythonEdit.hasFocus():
            self.onPythonEdited()

    def onPythonEdited(self) -> None:
        """Keep the chosen Python (this machine's setting) and probe it if it is an executable file."""
        python = self.ui.pythonPathLineEdit.currentPath.strip()
        if self._updating or python == self.logic.python:
            return
        self.logic.set_python(python)
        self._showPythonStatus()

    def _showPythonStatus(self) -> None:
        status = self.logic.python_status()
        if status is None:  # being probed: the timer looks again until it answers
            text = _("Checking the chosen Python ({python})...")
            self.ui.statusLabel.text = text.format(python=self.logic.python)
            self.probeTimer.start()
            return
        self.probeTimer.stop()
        self.ui.statusLabel.text = status or _("The engine runs in Slicer's own Python.")

    def onProbeTimer(self) -> None:
        try:
            self.logic.interpreters.poll()
            self._showPythonStatus()
        except Exception:  # never let an exception escape a timer slot
            logging.exception("PLCLSegmentation: probing the chosen Python failed")
            self.probeTimer.stop()

    @staticmethod
    def _setCombo(combo: Any, value: str) -> None:
        index = combo.findData(value)
        if index >= 0 and combo.currentIndex != index:
            combo.currentIndex = index

    # --- volumes --------------------------------------------------------------------------------
    def onAnnotatedVolumeChanged(self, volume: Any) -> None:
        """Propose the segmentation drawn on this volume."""
        if volume is None:
            return
        proposed = self.logic.proposed_segmentation(volume)
        if proposed is not None:
            self.ui.annotatedSegmentationSelector.setCurrentNode(proposed)
            return
        self.updateButtons()

    def onSegmentationChanged(self, node: Any) -> None:
        self.ui.segmentsTableView.setSegmentationNode(node)
        self.updateButtons()

    def onAddAnnotated(self) -> None:
        volume = self.ui.annotatedVolumeSelector.currentNode()
        segmentation = self.ui.annotatedSegmentationSelector.currentNode()
        ids = list(self.ui.segmentsTableView.selectedSegmentIDs())
        with showingErrors(_("Could not use this annotation."), waitCursor=True):
            record = self.logic.set_annotation(volume, segmentation, ids or None)
            frame = self.logic.current_frame(volume)
            if frame is not None:  # a sequence's shown frame: say which, so that a wrong one is seen
                text = _("Frame {frame} of '{sequence}' is annotated by '{segmentation}'. To annotate another "
                         "frame, move the sequence browser there and paint it in a new segmentation (or in a "
                         "segmentation sequence of the browser).")
                self.ui.statusLabel.text = text.format(frame=frame, sequence=record.name,
                                                       segmentation=segmentation.GetName())
            else:
                self.logic.set_up_paint_view(volume)  # paint further slices where the model learns from them
        self.updateFromState()

    def _selectedAnnotated(self) -> Any:
        return self._rowVolume(self.ui.annotatedTable)

    @staticmethod
    def _rowVolume(table: Any) -> Any:
        row = table.currentRow()
        item = table.item(row, 0) if row >= 0 else None
        return slicer.mrmlScene.GetNodeByID(item.data(qt.Qt.UserRole)) if item is not None else None

    @staticmethod
    def _rowFrame(table: Any) -> Any:
        """The frame of the selected row (a frame of a sequence), or None."""
        row = table.currentRow()
        item = table.item(row, 0) if row >= 0 else None
        frame = item.data(qt.Qt.UserRole + FRAME_ROLE_OFFSET) if item is not None else None
        return int(frame) if frame is not None and int(frame) >= 0 else None

    @staticmethod
    def _setRow(table: Any, row: int, cells: list[str], volume_id: str, frame: Any = None) -> None:
        for column, text in enumerate(cells):
            item = qt.QTableWidgetItem(text)
            item.setData(qt.Qt.UserRole, volume_id)
            item.setData(qt.Qt.UserRole + FRAME_ROLE_OFFSET, -1 if frame is None else int(frame))
            table.setItem(row, column, item)

    def onAnnotatedSelection(self) -> None:
        self._showSliceChoice()
        self.updateButtons()

    def _showSliceChoice(self) -> None:
        """The selected annotated volume's choice of slices, in the combo box (no change event)."""
        volume = self._selectedAnnotated()
        record = self.logic.state.record_for(volume) if volume is not None else None
        if record is not None:
            was, self._updating = self._updating, True
            try:
                self._setCombo(self.ui.annotatedSlicesComboBox, record.slices)
            finally:
                self._updating = was

    def onSliceModeChanged(self, *_args: Any) -> None:
        volume = self._selectedAnnotated()
        if self._updating or volume is None:
            return
        with showingErrors(_("Could not change the annotated slices.")):
            self.logic.set_slice_mode(volume, self.ui.annotatedSlicesComboBox.currentData or SLICES_AUTO)
        self.updateFromState()

    def onPaintView(self) -> None:
        volume = self._selectedAnnotated() or self.ui.annotatedVolumeSelector.currentNode()
        if volume is None:
            return
        with showingErrors(_("Could not set up the paint view.")):
            view = self.logic.set_up_paint_view(volume)
            self.ui.statusLabel.text = _("Paint in the {view} view: the model learns from its slices.").format(
                view=view)

    def onMarkBackground(self) -> None:
        volume = self._selectedAnnotated()
        if volume is None:
            return
        with showingErrors(_("Could not mark the slice as background.")):
            summary = self.logic.mark_background(volume)
            self.ui.statusLabel.text = _("Annotated: {slices}.").format(slices=summary.text())
        self.updateFromState()

    def onRemoveAnnotated(self) -> None:
        volume = self._selectedAnnotated()
        if volume is None:
            return
        frame = self._rowFrame(self.ui.annotatedTable)
        with showingErrors(_("Could not remove the volume from the training set.")):
            if frame is not None:
                self.logic.remove_frame(volume, frame)
            else:
                self.logic.set_role(volume, UNANNOTATED)
        self.updateFromState()

    def onTargetsChanged(self) -> None:
        if self._updating:
            return
        checked = {node.GetID() for node in self.ui.unannotatedVolumesSelector.checkedNodes()}
        with showingErrors(_("Could not change the volumes to segment.")):
            self.logic.set_targets(checked)
        self.updateFromState()

    def _fillAnnotatedTable(self, records: list[Any]) -> None:
        """One row per annotated volume, and per annotated or accepted frame of a sequence."""
        rows = [row for record in records for row in self.logic.item(record).annotated_rows()]
        table = self.ui.annotatedTable
        table.setRowCount(len(rows))
        for index, row in enumerate(rows):
            self._setRow(table, index, row.cells, row.record.volume.GetID(), row.frame)

    def _fillTargets(self, records: list[Any]) -> None:
        # The module's own maps (uncertainty) and other non-grayscale volumes are never annotated.
        self.ui.annotatedVolumeSelector.sortFilterProxyModel().hiddenNodeIDs = self.logic.not_annotatable()
        selector = self.ui.unannotatedVolumesSelector
        selector.sortFilterProxyModel().hiddenNodeIDs = self.logic.not_targets(records)
        for record in records:
            if record.role not in TRAINING_ROLES:
                state = qt.Qt.Unchecked if record.role == EXCLUDED else qt.Qt.Checked
                selector.setCheckState(record.volume, state)

    # --- training -------------------------------------------------------------------------------
    def onTrainOrCancel(self) -> None:
        if self.logic.busy:
            self.logic.cancel()
            self.ui.statusLabel.text = self.logic.job.status_line()
            return
        self._run(lambda: self.logic.train(), _("Could not start training."))

    def onRetrain(self) -> None:
        self._run(lambda: self.logic.retrain(), _("Could not start retraining."))

    def onApplyModel(self) -> None:
        self._run(lambda: self.logic.predict(), _("Could not segment the new volumes."))

    def _run(self, start: Any, error_message: str) -> None:
        if not self._dependenciesReady():
            return
        job = None
        with showingErrors(error_message, waitCursor=True):
            job = start()
        if job is None:
            return
        self.ui.logTextEdit.clear()
        self.ui.progressBar.value = 0
        self._appendLog(" ".join(job.argv))
        if job.plot is not None:
            self.onShowPlot()
        self.onTimer()
        self.timer.start()

    def _dependenciesReady(self) -> bool:
        self.onPythonEdited()  # a path chosen but not yet taken (still in the field) is the one to use
        python = self.logic.python
        try:
            if python:
                info = self.logic.interpreters.check(python)  # never blocks: probed once, in a child process
                if info is None:
                    text = _("Checking the chosen Python ({python}); try again in a moment.")
                    self.ui.statusLabel.text = text.format(python=python)
                    self.probeTimer.start()  # the status says when it has answered
                    return False
                if info.get("error"):
                    raise PLCLError(info["error"])
                if info.get("missing"):
                    raise PLCLError(_("The chosen Python lacks these packages: {packages}").format(
                        packages=", ".join(info["missing"])))
                return True
            return self.logic.install_slicer_packages(
                confirm=lambda question: slicer.util.confirmOkCancelDisplay(question), log=self._appendLog)
        except Exception as error:
            slicer.util.errorDisplay(str(error), windowTitle=_("PLCLSegmentation"))
            return False

    def onTimer(self) -> None:
        job = self.logic.job
        if job is None:
            self.timer.stop()
            return
        try:
            self.logic.poll()  # the job takes in the events: progress, log lines, the loss plot
        except Exception as error:  # never let an exception escape a timer slot
            logging.exception("PLCLSegmentation: polling the engine failed")
            self.timer.stop()
            slicer.util.errorDisplay(str(error))
            return
        for line in job.take_log():
            self._appendLog(line)
        self._showProgress(job)
        self.ui.statusLabel.text = job.status_line()
        if job.state.finished:
            self.timer.stop()
            self._finished(job)
        self.updateButtons()

    def onWorkProgress(self, text: str, done: int, total: int) -> None:
        """A volume is being exported, or a result added to the scene (on this thread, between volumes):
        show it, and let Slicer repaint. User input waits until the step ends, so that no click acts on
        a half-written run."""
        self.ui.statusLabel.text = text
        bar = self.ui.progressBar
        bar.maximum = max(1, total)
        bar.value = min(done, bar.maximum)
        bar.format = text
        slicer.app.processEvents(qt.QEventLoop.ExcludeUserInputEvents)

    def _showProgress(self, job: Any) -> None:
        """Stage, iteration and time left on the bar itself (the status line repeats them in words)."""
        bar = self.ui.progressBar
        bar.maximum = max(1, job.total)
        bar.value = min(job.iteration, bar.maximum)
        text = _("{stage}: %v / %m").format(stage=job.stage.replace("_", " ") or _("starting"))
        if job.eta_s:
            text += _(" (about {duration} left)").format(duration=format_duration(job.eta_s))
        bar.format = text

    def _finished(self, job: Any) -> None:
        for warning in job.warnings:
            self._appendLog(_("warning: ") + warning)
        self.ui.progressBar.format = "%p%"
        if job.state == JobState.DONE:
            self.ui.progressBar.value = self.ui.progressBar.maximum
            self.ui.progressBar.format = _("done")
            self.updateFromState()
            if self.ui.reviewTable.rowCount:
                self.ui.reviewTable.selectRow(0)
        elif job.state == JobState.FAILED:
            self.ui.progressBar.value = 0
            slicer.util.errorDisplay(_("The engine failed: {error}").format(error=job.error),
                                     windowTitle=_("PLCLSegmentation"),
                                     detailedText="\n".join(job.tail) + _("\n\nLog: {path}").format(path=job.log_path))
        else:
            self.ui.progressBar.value = 0

    def onShowPlot(self) -> None:
        job = self.logic.job
        if job is not None and job.plot is not None:
            slicer.modules.plots.logic().ShowChartInLayout(job.plot.chart)

    def _appendLog(self, line: str) -> None:
        self.ui.logTextEdit.appendPlainText(line)

    # --- review ---------------------------------------------------------------------------------
    def _fillReviewTable(self) -> None:
        table = self.ui.reviewTable
        selected, selected_frame = self._selectedVolume(), self._selectedFrame()
        rows = self.logic.review_rows()
        table.setRowCount(len(rows))
        for row, entry in enumerate(rows):
            score = "" if entry.score is None else f"{entry.score:.3f}"
            self._setRow(table, row, [entry.name, _(ROLE_LABELS.get(entry.role, entry.role)),
                                      structures_text(entry.structures), score, entry.slices],
                         entry.record.volume.GetID(), entry.frame)
            if selected is not None and entry.record.volume.GetID() == selected.GetID() \
                    and entry.frame == selected_frame:
                table.selectRow(row)

    def _selectedVolume(self) -> Any:
        return self._rowVolume(self.ui.reviewTable)

    def _selectedFrame(self) -> Any:
        return self._rowFrame(self.ui.reviewTable)

    def onReviewSelection(self) -> None:
        volume = self._selectedVolume()
        if volume is not None and not self._updating:
            with showingErrors(_("Could not show this volume.")):
                self.logic.show(volume, self._selectedFrame())
                slicer.util.resetSliceViews()
        self.updateButtons()

    def onShowUncertainty(self, checked: bool) -> None:
        if self._updating:
            return
        self.logic.state.set("showUncertainty", bool(checked))
        self.onReviewSelection()

    def _selectReviewRow(self, volume: Any, frame: Any) -> None:
        """Select the review table's row of ``volume`` (and ``frame``) without showing it again (the views
        stay where they are)."""
        table = self.ui.reviewTable
        for row in range(table.rowCount):
            item = table.item(row, 0)
            shown = item.data(qt.Qt.UserRole + FRAME_ROLE_OFFSET)
            if item.data(qt.Qt.UserRole) == volume.GetID() and (-1 if frame is None else frame) == shown:
                was, self._updating = self._updating, True
                try:
                    table.selectRow(row)
                finally:
                    self._updating = was
                return

    def onNextSlice(self) -> None:
        """The least certain slice not yet seen: of the selected prediction, then of the next in the table."""
        with showingErrors(_("Could not show the next uncertain slice.")):
            stop = self.logic.next_uncertain_slice(self._selectedVolume(), self._selectedFrame())
            if stop is None:
                self.ui.statusLabel.text = _("Every uncertain slice of the predictions has been shown.")
            else:
                self._selectReviewRow(stop.record.volume, stop.frame)
                text = _("Slice {index} of '{name}' ({view} view): uncertainty {uncertainty:.2f}{structure}; "
                         "{remaining} more uncertain slices of it to see.")
                self.ui.statusLabel.text = text.format(
                    index=stop.index, name=stop.name, view=stop.view, uncertainty=stop.uncertainty,
                    structure=_(", least certain: {name}").format(name=stop.structure) if stop.structure else "",
                    remaining=stop.remaining)
        self.updateButtons()

    def onAcceptSlice(self) -> None:
        """The slice shown in the view of the engine's slicing plane, as corrected, is training data."""
        volume = self._selectedVolume()
        with showingErrors(_("Could not accept this slice.")):
            index = self.logic.accept_slice(volume, None, self._selectedFrame())
            text = _("Slice {index} of '{name}' is training data now: Retrain learns from it (the rest of the "
                     "volume waits for review).")
            self.ui.statusLabel.text = text.format(index=index, name=volume.GetName())
        self.updateFromState()

    def onEdit(self) -> None:
        volume = self._selectedVolume()
        if volume is None or self.logic.shown_segmentation(self.logic.record(volume)) is None:
            return
        # The row shown (a sequence: its browser at the row's frame; its proxies are what the editor paints).
        record = self.logic.show(volume, self._selectedFrame())
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(self.logic.shown_segmentation(record))
        editor.setSourceVolumeNode(record.volume)
        stop = self.logic.review_stop  # the structure Next uncertain slice pointed at, ready to paint
        if stop is not None and stop.segment_id and stop.record.key == record.key \
                and stop.frame == self._selectedFrame():
            editor.setCurrentSegmentID(stop.segment_id)

    def onAccept(self) -> None:
        volume = self._selectedVolume()
        with showingErrors(_("Could not accept this segmentation.")):
            self.logic.accept(volume, self._selectedFrame())
        self.updateFromState()

    def onVolumeCurve(self) -> None:
        volume = self._selectedVolume()
        chart = self.logic.volume_curve(volume) if volume is not None else None
        if chart is not None:
            slicer.modules.plots.logic().ShowChartInLayout(chart)
            self.ui.statusLabel.text = self.logic.volume_summary(volume)

    def onExportDicomSeg(self) -> None:
        """Write the selected accepted segmentation as DICOM SEG through Slicer's own DICOM exporter."""
        volume = self._selectedVolume()
        if volume is None:
            return
        folder = qt.QFileDialog.getExistingDirectory(None, _("Export DICOM SEG into folder"))
        if folder:
            with showingErrors(_("Could not export DICOM SEG."), waitCursor=True):
                path = self.logic.export_dicom_seg(volume, folder, self._selectedFrame())
                self.ui.statusLabel.text = _("DICOM SEG written to {path} and added to the DICOM database.").format(
                    path=path)

    # --- models ---------------------------------------------------------------------------------
    def onSaveModel(self) -> None:
        path = qt.QFileDialog.getSaveFileName(None, _("Save model"), DEFAULT_MODEL_FILE,
                                              _("PyTorch model (*.pt)"))
        if path:
            with showingErrors(_("Could not save the model.")):
                self.logic.save_model(path)
            self.updateFromState()

    def onLoadModel(self) -> None:
        path = qt.QFileDialog.getOpenFileName(None, _("Load model"), "", _("PyTorch model (*.pt)"))
        if path:
            with showingErrors(_("Could not load the model.")):
                self.logic.load_model(path)
            self.updateFromState()

    # --- buttons and lifetime -------------------------------------------------------------------
    def updateButtons(self) -> None:
        busy = self.logic.busy
        state = self.logic.state
        has_model = bool(state.model_path)
        volume = self._selectedVolume()
        record = state.record_for(volume) if volume is not None else None
        item = self.logic.item(record) if record is not None else None
        ui = self.ui
        ui.trainButton.text = _("Cancel") if busy else _("Train")
        ui.trainButton.enabled = busy or bool(self.logic.annotated())
        ui.addAnnotatedButton.enabled = not busy and ui.annotatedVolumeSelector.currentNode() is not None \
            and ui.annotatedSegmentationSelector.currentNode() is not None
        ui.removeAnnotatedButton.enabled = not busy and ui.annotatedTable.currentRow() >= 0
        selected = self._selectedAnnotated()
        selected_record = state.record_for(selected) if selected is not None else None
        painted = not busy and selected_record is not None and self.logic.item(selected_record).paints_slices
        ui.annotatedSlicesComboBox.enabled = painted
        ui.markBackgroundButton.enabled = painted
        ui.paintViewButton.enabled = selected is not None or ui.annotatedVolumeSelector.currentNode() is not None
        ui.retrainButton.enabled = not busy and has_model
        predicted = item is not None and item.role_of(self._selectedFrame()) == PREDICTED
        ui.acceptButton.enabled = not busy and predicted
        ui.acceptSliceButton.enabled = not busy and predicted and item.kind == VOLUME
        ui.nextSliceButton.enabled = any(r.role == PREDICTED or any(f.role == PREDICTED for f in r.frames.values())
                                         for r in state.records())
        ui.editButton.enabled = item is not None and self.logic.editable_segmentation(record) is not None
        ui.volumeCurveButton.enabled = item is not None and item.volume_curve() is not None
        # Offered for an accepted segmentation of a volume from the DICOM database; else the tooltip says why.
        # Not checked while a job runs (the button is off then, and this runs at every poll of the job: the
        # check reads the segments' voxels).
        dicom_seg_problem = None if busy else self.logic.dicom_seg_problem(volume, self._selectedFrame())
        ui.exportDicomSegButton.enabled = not busy and dicom_seg_problem is None
        ui.exportDicomSegButton.toolTip = dicom_seg_problem or _(DICOM_SEG_TIP)
        ui.saveModelButton.enabled = not busy and has_model
        ui.loadModelButton.enabled = not busy
        ui.applyModelButton.enabled = not busy and has_model
        ui.showPlotButton.enabled = self.logic.job is not None and self.logic.job.plot is not None
        for widget in (ui.inputsCollapsibleButton, ui.trainingCollapsibleButton):
            widget.enabled = not busy

    def observeScene(self, scene: Any) -> None:
        """Follow the scene: a close ends the run; an import (Add Data of a .mrml or .mrb, which adds
        to the open scene without closing it) and added or removed nodes only refresh the panel."""
        self._forgetScene()
        self._scene = scene
        for event, slot in ((scene.StartCloseEvent, self.onSceneStartClose),
                            (scene.EndCloseEvent, self.onSceneEndClose),
                            (scene.StartImportEvent, self.logic.before_import),
                            (scene.EndImportEvent, self.onSceneEndImport),
                            (scene.NodeAddedEvent, self.scheduleUpdate),
                            (scene.NodeRemovedEvent, self.scheduleUpdate)):
            self._scene_tags.append(scene.AddObserver(event, lambda caller, name, slot=slot: slot()))

    def _forgetScene(self) -> None:
        if self._scene is not None:
            for tag in self._scene_tags:
                self._scene.RemoveObserver(tag)
        self._scene, self._scene_tags = None, []

    def onSceneStartClose(self) -> None:
        self.timer.stop()
        self.logic.shutdown()  # ends the run and removes its files

    def onSceneEndClose(self) -> None:
        self.logic.forget_run()
        self.observeParameterNode()
        self.updateFromState()

    def onSceneEndImport(self) -> None:
        """A run goes on: its results are imported when it finishes."""
        self.logic.after_import()
        self.observeParameterNode()
        self.scheduleUpdate()

    def cleanup(self) -> None:
        self.logic.progress = None
        self.timer.stop()
        self.probeTimer.stop()
        self.logic.shutdown()
        self._forgetScene()
        if self._observed is not None and self._observer_tag is not None:
            self._observed.RemoveObserver(self._observer_tag)
        self._observed = None
