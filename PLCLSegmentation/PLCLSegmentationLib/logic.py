"""The module's behaviour, without Qt: the user's actions on roles, training, propagation, review, models.

Each record is an item (:mod:`.items`: a volume or a volume sequence) that knows how it is
annotated, exported, imported and shown; a run of the engine, from exporting its inputs to
importing its results, is an :class:`.engine_run.EngineRun`. Cancel or failure leave the scene as it
was. The user's own segmentation nodes are only ever read.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable

from . import cine, dependencies, dicom_export, models, review, scene_io, slice_view
from .engine_run import EngineRun, RunInputs, new_run_folder, remove_stale_inputs
from .items import AnnotatedRow, Item, ReviewRow, item_for
from .jobs import PREDICT, TRAIN, Job
from .parameters import (
    ANNOTATED,
    EXCLUDED,
    PREDICTED,
    REVIEWED,
    TRAINING_ROLES,
    UNANNOTATED,
    ModuleState,
    VolumeRecord,
)
from .plots import LossPlot
from .process import EngineProcess, Message
from .scene_io import SegmentClass
from .services import PYTHON_SETTING, PLCLError, SlicerServices, is_owned
from .slices import PaintedSlices, SliceSummary


class PLCLSegmentationLogic:
    """Qt-free logic. In Slicer, the module's logic class derives from it (see PLCLSegmentation.py)."""

    def __init__(self, services: SlicerServices | None = None, *, models_dir: str | os.PathLike[str] | None = None,
                 engine_command: Sequence[str] | None = None, environment: dict[str, str] | None = None,
                 process_factory: Callable[..., EngineProcess] = EngineProcess, grace_s: float = 20.0) -> None:
        self.services = services or SlicerServices.from_slicer()
        self.models_dir = Path(models_dir) if models_dir else dependencies.default_models_dir()
        #: Command that starts the engine (tests put a fake here); default: the chosen Python -m engine.
        self.engine_command = list(engine_command) if engine_command else None
        self.environment = environment
        self.process_factory = process_factory
        self.grace_s = grace_s
        #: The latest run (its job stays after it finished, for the panel).
        self.run: EngineRun | None = None
        #: What each chosen interpreter can do, probed once in a child process (never a thread).
        self.interpreters = dependencies.InterpreterChecks()
        self._before_import: dict[str, Any] | None = None
        #: Called with (text, done, total) before each volume is exported or each result added to the scene;
        #: the panel shows it and lets Slicer repaint (these steps run on the GUI thread).
        self.progress: Callable[[str, int, int], None] | None = None
        self._exporting = False  # while a run's inputs are written: no other action (the GUI repaints meanwhile)
        self.painted = PaintedSlices(self.services)
        #: Where "Next uncertain slice" went last (None: nowhere yet).
        self.review_stop: review.SliceStop | None = None
        remove_stale_inputs()  # patients' volumes exported by a Slicer that crashed or was killed

    @property
    def scene(self) -> Any:
        return self.services.scene

    @property
    def state(self) -> ModuleState:
        return ModuleState(self.scene)

    @property
    def job(self) -> Job | None:
        return self.run.job if self.run is not None else None

    @property
    def busy(self) -> bool:
        return self._exporting or (self.run is not None and not self.run.finished)

    # --- volumes and roles ----------------------------------------------------------------------
    def refresh(self) -> list[VolumeRecord]:
        """Bring the records up to date with the scene: forget deleted volumes, add new ones as unannotated."""
        state = self.state
        if self.scene.IsImporting() or self.scene.IsClosing():  # settle once the scene has
            return state.records()
        state.prune()
        records, proxies = cine.refresh(state, self.scene, state.records())
        known = {r.volume.GetID() for r in records}
        changed = []
        for record in records:
            settled = self.item(record).settle()
            if settled is None:
                state.remove(record.key)
            elif settled:
                changed.append(record)
        if changed:
            state.save(*changed)
        for volume in scene_io.scalar_volumes(self.scene):
            if volume.GetID() not in known and volume.GetID() not in proxies:
                state.new_record(volume, UNANNOTATED)
        return state.records()

    def record(self, volume: Any) -> VolumeRecord:
        record = self.state.record_for(volume)
        if record is None:
            self.refresh()
            record = self.state.record_for(volume)
        if record is None:
            raise PLCLError(f"'{volume.GetName() if volume else None}' is not a grayscale volume of this scene.")
        return record

    def item(self, volume_or_record: Any) -> Item:
        """The item of a record, or of the record of a volume node."""
        record = volume_or_record if isinstance(volume_or_record, VolumeRecord) else self.record(volume_or_record)
        return item_for(self.services, record, self.painted)

    def _change(self, volume: Any, change: Callable[[Item], Any]) -> VolumeRecord:
        """Apply a user's change to the record of ``volume`` (never during a run) and save it."""
        self._check_idle()
        item = self.item(volume)
        if change(item) is not False:
            self.state.save(item.record)
        return item.record

    def set_annotation(self, volume: Any, segmentation: Any, segment_ids: Sequence[str] | None = None) -> VolumeRecord:
        """Mark ``volume`` as annotated by ``segmentation`` (only ``segment_ids`` are learnt; default: all).
        For a sequence's proxy volume: the frame the browser shows (see :meth:`set_frame_annotation`)."""
        self._check_idle()
        if volume is None or segmentation is None:
            raise PLCLError("Choose an annotated volume and its segmentation.")
        return self._change(volume, lambda item: item.annotate(segmentation, segment_ids))

    def set_frame_annotation(self, volume: Any, frame: int | None, segmentation: Any,
                             segment_ids: Sequence[str] | None = None) -> VolumeRecord:
        """Frame ``frame`` (default: the one the browser shows) of the sequence whose proxy volume is
        ``volume`` is annotated by ``segmentation``: a segmentation drawn on that frame, or the proxy of a
        segmentation sequence in the same browser. Each frame keeps its own segmentation."""
        return self._change(volume, lambda item: item.annotate_frame(frame, segmentation, segment_ids))

    def remove_frame(self, volume: Any, frame: int) -> VolumeRecord:
        """Frame ``frame`` of a sequence is no longer training data (its segmentation is not touched)."""
        return self._change(volume, lambda item: item.remove_frame(frame))

    def set_role(self, volume: Any, role: str) -> VolumeRecord:
        """Make ``volume`` unannotated (segmented by the next run) or excluded (ignored)."""
        self._check_idle()
        if role not in (UNANNOTATED, EXCLUDED):
            raise PLCLError(f"Use set_annotation or accept to make a volume {role}.")
        return self._change(volume, lambda item: item.set_role(role))

    def set_targets(self, checked: set[str]) -> None:
        """The volumes (node IDs) to segment; the other records that are not training data are excluded."""
        for record in self.state.records():
            if record.role in TRAINING_ROLES:
                continue
            wanted = UNANNOTATED if record.volume.GetID() in checked else EXCLUDED
            if (wanted == EXCLUDED) != (record.role == EXCLUDED):
                self.set_role(record.volume, wanted)

    def annotated(self) -> list[VolumeRecord]:
        return [r for r in self.state.records() if r.is_training]

    def current_frame(self, volume: Any) -> int | None:
        """The frame the browser of a sequence shows; None for a volume."""
        return self.item(volume).current_frame()

    def proposed_segmentation(self, volume: Any) -> Any:
        """The segmentation to propose as the annotation of ``volume``: its own (a sequence: the shown
        frame's), else the user's segmentation drawn on it."""
        record = self.state.record_for(volume)
        proposed = self.item(record).proposed_annotation() if record is not None else None
        if proposed is not None:
            return proposed
        # Never a node that annotates another frame already (a plain node does not follow the browser).
        taken = [f.source for f in record.frames.values() if f.source is not None] if record is not None else []
        return scene_io.user_segmentation_of(self.scene, volume, exclude=taken)

    def not_annotatable(self) -> list[str]:
        """IDs of the scalar volumes the annotated-volume selector hides: this module's (uncertainty maps)
        and those that are not grayscale."""
        return scene_io.not_segmentable(self.scene)

    def not_targets(self, records: Sequence[VolumeRecord]) -> list[str]:
        """IDs of the scalar volumes that cannot be segmented: training data, this module's, not grayscale."""
        return [r.volume.GetID() for r in records if r.role in TRAINING_ROLES] + scene_io.not_segmentable(self.scene)

    # --- annotated slices -----------------------------------------------------------------------
    def slice_summary(self, volume: Any) -> SliceSummary:
        """How many of the volume's slices (along the engine's slicing axis) are annotated."""
        return self.item(volume).slice_summary()

    def paints_slices(self, volume: Any) -> bool:
        """Whether the user chooses the annotated slices of ``volume`` (frames of a sequence are used whole)."""
        return self.item(volume).paints_slices

    def set_slice_mode(self, volume: Any, mode: str) -> VolumeRecord:
        """Train on every slice of the volume ("all") or on its painted slices only ("painted")."""
        return self._change(volume, lambda item: item.set_slice_mode(mode))

    def mark_background(self, volume: Any, index: int | None = None) -> SliceSummary:
        """Mark a slice (default: the one shown in the paint view) as annotated background: nothing to
        segment there. Only painted slices and such slices are then annotated."""
        self._change(volume, lambda item: item.mark_background(index))
        return self.slice_summary(volume)

    def _slice_argument(self, record: VolumeRecord) -> str:
        """The record's --annotated-slices value."""
        return self.painted.argument(record)

    def set_up_paint_view(self, volume: Any) -> str:
        """Show ``volume`` in the view of the engine's slicing plane; returns the view's name."""
        item = self.item(volume)
        return scene_io.set_up_paint_view(self.scene, item.record.volume, item.paint_segmentation)

    # --- runs -----------------------------------------------------------------------------------
    def train(self, warm_start: bool = False) -> Job:
        """Start training on the annotated and reviewed volumes (and frames); the others are segmented at
        the end."""
        self._check_idle()
        items = [self.item(r) for r in self.refresh()]
        # Training volumes (annotated ones first), volumes to segment, then the sequences.
        taken = sorted((i for i in items if i.in_training), key=lambda i: (i.order, i.record.role != ANNOTATED))
        if not any(i.has_training_data for i in taken):
            raise PLCLError("Choose at least one annotated volume (or frame) with its segmentation first.")
        state = self.state
        init_model = ""
        if warm_start:
            init_model = state.model_path
            if not init_model or not Path(init_model).is_file():
                raise PLCLError("Retrain needs a trained model: train first, or load a model.")
        classes = self._training_classes(taken, warm_start)
        with self._exporting_inputs() as inputs:
            for index, item in enumerate(taken):
                self.report_progress("Exporting {done} of {total} volumes...", index, len(taken))
                item.export_for_training(inputs, classes)
            out = new_run_folder(self.models_dir, TRAIN)
        argv = self._command() + ["train", *inputs.train_arguments(), "--out", str(out), "--budget", state.budget,
                                  "--device", state.device, "--events", "jsonl"]
        if state.iterations:  # the same budget as a first training: the engine shortens a warm start
            argv += ["--iterations", str(state.iterations)]
        if init_model:
            argv += ["--init-model", init_model]
        job = Job(TRAIN, argv, inputs.folder, out, inputs.expected, classes, warm_start=warm_start,
                  model_path=init_model)
        job.plot = LossPlot(self.scene)
        return self._start(job)

    def retrain(self) -> Job:
        """Train again from the current model with the reviewed volumes (the engine's warm-start schedule)."""
        return self.train(warm_start=True)

    def predict(self, volumes: Sequence[Any] | None = None, model_path: str | None = None) -> Job:
        """Segment ``volumes`` (default: the unannotated volumes without a prediction) with a saved model."""
        self._check_idle()
        records = self.refresh()
        model = model_path or self.state.model_path
        if not model or not Path(model).is_file():
            raise PLCLError(f"Model file not found: {model}" if model else "Load or train a model first.")
        if volumes:
            targets = [self.record(v) for v in volumes]
            if any(r.is_training or r.has_accepted_slices for r in targets):
                raise PLCLError("Annotated and reviewed volumes are not segmented again, and those with accepted "
                                "slices are segmented by Retrain (around those slices); choose other volumes.")
        else:
            targets = [r for r in records if r.role == UNANNOTATED]
        if not targets:
            raise PLCLError("No volume to segment: load volumes first (annotated ones are left as they are).")
        with self._exporting_inputs() as inputs:
            for index, record in enumerate(targets):
                self.report_progress("Exporting {done} of {total} volumes...", index, len(targets))
                self.item(record).export_for_prediction(inputs)
        out = new_run_folder(self.models_dir, PREDICT)
        argv = self._command() + ["predict", "--model", str(model), "--out", str(out), "--device", self.state.device,
                                  "--events", "jsonl", *(str(path) for path in inputs.unlabeled)]
        same_model = Path(model) == Path(self.state.model_path) if self.state.model_path else False
        classes = [SegmentClass.from_dict(c) for c in self.state.classes] if same_model else []
        return self._start(Job(PREDICT, argv, inputs.folder, out, inputs.expected, classes, model_path=str(model)))

    def cancel(self) -> None:
        """Stop the run: the child finishes its step and exits, the whole tree is ended; nothing is imported."""
        if self.busy:
            self.run.cancel()

    def poll(self) -> list[Message]:
        """Take in what the child said since the last call; on its exit, import or clean up. Never blocks."""
        return self.run.poll() if self.run is not None else []

    def wait(self, timeout_s: float = 600.0, interval_s: float = 0.05,
             on_messages: Callable[[list[Message]], None] | None = None) -> Job:
        """Poll until the run finishes (tests and scripts; the widget polls from a timer)."""
        if self.run is None:
            raise PLCLError("Nothing is running.")
        return self.run.wait(timeout_s, interval_s, on_messages)

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """End a running child at once (Slicer closes, the scene is closed), and with it the run: its
        exported inputs and its folder are removed, nothing is imported."""
        if self.run is not None:
            self.run.shutdown(timeout_s)

    def forget_run(self) -> None:
        """The scene was closed: the latest run is no longer shown."""
        self.run = None

    def before_import(self) -> None:
        """A scene is about to be imported into this one (Add Data of a .mrml or .mrb)."""
        self._before_import = self.state.snapshot()

    def after_import(self) -> None:
        """Keep our state (a running job's records among it) beside what the imported scene brought."""
        before, self._before_import = self._before_import, None
        if before is not None:
            self.state.merge_import(before)
        self.refresh()

    # --- review ---------------------------------------------------------------------------------
    def review_rows(self) -> list[ReviewRow]:
        """Every volume with its role, its structures' estimated Dice and its uncertainty score: the lowest
        estimated Dice first, then (predictions without estimates) the least certain. A sequence with
        results or annotations has one row per such frame (named like the engine names frames)."""
        rows = [row for record in self.refresh() for row in self.item(record).review_rows()]
        order = {PREDICTED: 0, UNANNOTATED: 1, REVIEWED: 2, ANNOTATED: 3, EXCLUDED: 4}
        rows.sort(key=lambda row: (row.worst is None, row.worst or 0.0, row.score is None, -(row.score or 0.0),
                                   order.get(row.role, 5), row.name))
        return rows

    def next_uncertain_slice(self, volume: Any = None, frame: int | None = None) -> review.SliceStop | None:
        """Show the least certain slice not yet visited of the prediction of ``volume`` (a sequence: of
        ``frame``), else of the next prediction in the review table's order (review.next_stop: one slice of a
        prediction, then the next one's), in the view of the engine's slicing plane, its least certain
        structure visible and selected; None once every one was seen."""
        record = self.state.record_for(volume) if volume is not None else None
        last = self.review_stop  # the selection follows a shown slice: from there, the walk goes on
        just_shown = last is not None and record is not None and (last.record.key, last.frame) == (record.key, frame)
        stop = review.next_stop(self.state, self.review_rows(), record.key if record else None, frame, just_shown)
        if stop is not None:
            shown = self.show(stop.record.volume, stop.frame)
            stop.view, _ = slice_view.show_slice(self.scene, shown.volume, stop.axis, stop.index)
            stop.segment_id = slice_view.highlight(self.scene, self.shown_segmentation(shown), stop.structure)
            review.visit(self.state, stop)
        self.review_stop = stop
        return stop

    def accept_slice(self, volume: Any, index: int | None = None, frame: int | None = None) -> int:
        """Slice ``index`` (default: the one shown in the view of the engine's slicing plane) of the prediction
        of ``volume``, as corrected, is training data on its own (the engine's annotated slices); the rest
        of the volume waits for review. The segmentation is read at the next Train or Retrain."""
        accepted: list[int] = []
        self._change(volume, lambda item: accepted.append(item.accept_slice(index, frame)))
        return accepted[0]

    def annotated_rows(self) -> list[AnnotatedRow]:
        """One row per training volume, and per annotated or accepted frame of a sequence."""
        return [row for record in self.annotated() for row in self.item(record).annotated_rows()]

    def slices_text(self, record: VolumeRecord) -> str:
        """Which slices (frames) of a training volume (sequence) are annotated, for the panel."""
        return self.item(record).slices_text()

    def role_of(self, volume: Any, frame: int | None = None) -> str:
        """The role of a row of the review table: the frame's where there is one, else the record's."""
        return self.item(volume).role_of(frame)

    def show(self, volume: Any, frame: int | None = None) -> VolumeRecord:
        """Show ``volume`` in the slice views with its segmentation (and the uncertainty overlay if chosen).
        A sequence: its browser moves to ``frame`` (if given), its segmentation follows the frame."""
        item = self.item(volume)
        state = self.state
        others = [self.shown_segmentation(other) for other in state.records() if other.key != item.record.key]
        segmentation, uncertainty = item.display(frame, state.show_uncertainty)
        scene_io.show_in_views(self.scene, item.record.volume, segmentation, uncertainty,
                               state.uncertainty_opacity, hide=others)
        return item.record

    def shown_segmentation(self, record: VolumeRecord) -> Any:
        """The node that shows a record's segmentation in the views (a sequence's: its browser's proxy)."""
        return self.item(record).shown_segmentation()

    def editable_segmentation(self, volume: Any) -> Any:
        """The prediction of ``volume`` shown in the views, if it is this module's (the user edits it)."""
        shown = self.item(volume).shown_segmentation()
        return shown if is_owned(shown) else None

    def accept(self, volume: Any, frame: int | None = None) -> VolumeRecord:
        """The user reviewed (and corrected) the prediction of ``volume``: it becomes training data.
        A sequence: the prediction of ``frame`` (default: the frame its browser shows), whole."""
        return self._change(volume, lambda item: item.accept(frame))

    def volume_curve(self, volume: Any) -> Any:
        """The chart of the volume of each structure over the frames of a sequence (None before a run)."""
        return self.item(volume).volume_curve()

    def volume_summary(self, volume: Any) -> str:
        """Each structure's largest and smallest volume over a sequence's frames and its ejection fraction
        (the engine's summary; meaningful for cavities such as the ventricles), one line each."""
        return self.item(volume).volume_summary()

    # --- DICOM SEG ------------------------------------------------------------------------------
    def dicom_seg_problem(self, volume: Any, frame: int | None = None) -> str | None:
        """Why the review row of ``volume`` (``frame`` of a sequence) offers no DICOM SEG export, as one
        line; None where it does: an accepted segmentation of a volume loaded from the DICOM database."""
        record = self.state.record_for(volume) if volume is not None else None
        return dicom_export.problem(record, frame)

    def prepare_dicom_seg(self, volume: Any, frame: int | None = None) -> dicom_export.SegExport:
        """Check the row (one line where it cannot be exported) and ready its segmentation for Slicer's
        DICOM SEG exporter; the user's own nodes are never touched."""
        self._check_idle()
        return dicom_export.prepare(self.services, self.record(volume), frame)

    def export_dicom_seg(self, volume: Any, directory: str | os.PathLike[str], frame: int | None = None) -> Path:
        """Write the accepted segmentation of ``volume`` as DICOM SEG into ``directory`` through Slicer's
        own exporter (which adds it to the DICOM database too); returns the file written."""
        return dicom_export.run(self.prepare_dicom_seg(volume, frame), directory)

    # --- settings and models --------------------------------------------------------------------
    def set_run_settings(self, budget: str, device: str, iterations: int) -> None:
        """The training budget, the device and the iterations (0: the budget's own), in one change."""
        state = self.state
        node = state.node
        was_modifying = node.StartModify()
        try:
            state.set("budget", budget)
            state.set("device", device)
            state.set("iterations", int(iterations))
        finally:
            node.EndModify(was_modifying)

    def save_model(self, path: str | os.PathLike[str]) -> str:
        """Copy the current model to ``path`` (and make it the model the scene refers to)."""
        return models.save_model(self.state, path)

    def load_model(self, path: str | os.PathLike[str]) -> str:
        """Use the model file ``path`` for predictions and retraining."""
        self._check_idle()
        return models.load_model(self.state, path)

    # --- the engine's interpreter (an application setting, never the scene's) -------------------
    @property
    def python(self) -> str:
        """The Python interpreter the user chose on this machine to run the engine ("" : Slicer's)."""
        value = self.services.settings.value(PYTHON_SETTING, "")
        return str(value or "").strip()

    def set_python(self, path: str) -> None:
        self.services.settings.setValue(PYTHON_SETTING, str(path or "").strip())
        if self.python:
            self.interpreters.check(self.python)  # the probe starts now (a child process): Train finds the answer

    def python_status(self) -> str | None:
        """One line on the chosen Python: its versions and devices, what it lacks, or why it cannot run the
        engine; None while it is probed; "" without one (Slicer's own runs the engine)."""
        python = self.python
        if not python:
            return ""
        info = self.interpreters.check(python)
        if info is None:
            return None
        if info.get("error"):
            return str(info["error"])
        if info.get("missing"):
            return f"{python} lacks these packages: {', '.join(info['missing'])}"
        devices = [name for name, key in (("CUDA", "cuda"), ("Apple MPS", "mps")) if info.get(key)] or ["CPU only"]
        return f"{python}: Python {info.get('python')}, torch {info.get('torch')} ({', '.join(devices)})"

    def install_slicer_packages(self, confirm: Callable[[str], bool], log: Callable[[str], None]) -> bool:
        """Without a chosen Python: whether Slicer's own has the engine's packages, installed once the user
        ``confirm``s."""
        return dependencies.ensure_slicer_packages(confirm=confirm, log=log)

    # --- internals ------------------------------------------------------------------------------
    def report_progress(self, text: str, index: int, total: int) -> None:
        """Say that item ``index`` (from 0) of ``total`` is under way: ``text`` names it as {done} of {total}."""
        if self.progress is not None:
            self.progress(text.format(done=index + 1, total=total), index, total)

    @contextlib.contextmanager
    def _exporting_inputs(self) -> Iterator[RunInputs]:
        self._exporting = True
        try:
            with RunInputs.exporting() as inputs:
                yield inputs
        finally:
            self._exporting = False

    def _check_idle(self) -> None:
        if self.busy:
            raise PLCLError("A run is in progress: wait for it to finish or cancel it.")

    def _command(self) -> list[str]:
        return list(self.engine_command) if self.engine_command else dependencies.engine_command(self.python)

    def _training_classes(self, items: Sequence[Item], warm_start: bool) -> list[SegmentClass]:
        """The classes: the model's on a warm start, else those of the first annotation, by role (annotated,
        then accepted) and kind (volumes, then frames)."""
        if warm_start and self.state.classes:
            return [SegmentClass.from_dict(c) for c in self.state.classes]
        for role in (ANNOTATED, REVIEWED):
            for item in items:
                source = item.class_source(role)
                if source is not None:
                    return scene_io.classes_from_segments(*source)
        raise PLCLError("Choose at least one annotated volume (or frame) with its segmentation first.")

    def _start(self, job: Job) -> Job:
        environment = self.environment
        if environment is None:
            environment = dependencies.child_environment(external_python=bool(self.python))
        run = EngineRun(self.services, job, self.process_factory, environment, self.grace_s,
                        progress=self.report_progress)
        run.start()
        self.run = run
        return job
