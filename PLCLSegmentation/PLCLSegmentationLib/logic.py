"""The module's behaviour, without Qt: roles, training, propagation, review, models.

A run: export the training volumes with their chosen segments and the volumes to segment into a
private temporary folder (each on its own grid), start the engine as a child process
(:mod:`.process`), take in its events on each :meth:`PLCLSegmentationLogic.poll` (the loss plot
grows, the job's progress moves), and only when the child has finished successfully import the
predictions as new nodes. Cancel or failure leave the scene as it was. The user's own segmentation
nodes are only ever read.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import cine, dependencies, scene_io, sequences
from .engine import slicing
from .engine.protocol import STOP_FILE, SUMMARY_FILE, frame_name
from .jobs import PREDICT, TRAIN, Job, JobState
from .parameters import (
    ANNOTATED,
    EXCLUDED,
    PREDICTED,
    REVIEWED,
    SLICE_MODES,
    SLICES_ALL,
    SLICES_AUTO,
    SLICES_PAINTED,
    TARGET_ROLES,
    UNANNOTATED,
    ModuleState,
    VolumeRecord,
)
from .plots import LOSS_CHART, LOSS_SERIES, LOSS_TABLE, LossPlot
from .process import EngineProcess, Message, RunState
from .scene_io import SceneTransaction, SegmentClass
from .services import OWNER_ATTRIBUTE, PYTHON_SETTING, PLCLError, SlicerServices, is_owned


@dataclass
class ReviewRow:
    record: VolumeRecord
    name: str
    role: str
    score: float | None
    slices: str = ""  # training volumes: which slices are annotated, e.g. "3 of 10 slices (2, 5, 8)"
    frame: int | None = None  # a frame of a sequence (record.is_sequence), or the whole record


@dataclass
class SliceSummary:
    """Which slices of an annotated volume the engine trains on, as file indices along its slicing axis."""

    total: int  # slices along the engine's slicing axis
    painted: list[int]  # slices holding any voxel of the segments to learn
    background: list[int]  # slices the user marked as annotated background
    mode: str  # the record's choice (SLICE_MODES)
    view: str  # the view to paint in: Axial, Coronal or Sagittal

    @property
    def only_painted(self) -> bool:
        """Whether only the painted (and background) slices are annotated: chosen, or "auto" with an
        unpainted slice between painted ones (a structure continues through it, so it is not
        background) or fewer than half of the slices painted. A fully drawn volume, a run of painted
        slices with empty ones above and below, keeps teaching background everywhere."""
        if self.mode == SLICES_AUTO:
            marked = sorted(set(self.painted) | set(self.background))
            gap = any(later - earlier > 1 for earlier, later in zip(marked, marked[1:]))
            return gap or 2 * len(marked) < self.total
        return self.mode == SLICES_PAINTED

    @property
    def annotated(self) -> list[int]:
        return sorted(set(self.painted) | set(self.background)) if self.only_painted else list(range(self.total))

    def text(self) -> str:
        annotated = self.annotated
        if len(annotated) == self.total:
            return f"all {self.total} slices"
        listed = ", ".join(str(i) for i in annotated[:8]) + (", ..." if len(annotated) > 8 else "")
        return f"{len(annotated)} of {self.total} slices ({listed})"


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
        self.job: Job | None = None
        #: What each chosen interpreter can do, probed once in the background.
        self.interpreters = dependencies.InterpreterChecks()
        self._before_import: dict[str, Any] | None = None
        #: Painted slices per record, with the content stamp they were counted at (slice_summary).
        self._painted: dict[str, tuple[tuple, list[int]]] = {}

    @property
    def scene(self) -> Any:
        return self.services.scene

    @property
    def state(self) -> ModuleState:
        return ModuleState(self.scene)

    @property
    def busy(self) -> bool:
        return self.job is not None and not self.job.state.finished

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
        for record in records:  # a prediction the user deleted: the volume waits for the next run
            if record.is_sequence:  # brought up to date by cine.refresh
                continue
            if not scene_io.is_grayscale_volume(record.volume):  # e.g. a record of an older version
                state.remove(record.key)
            elif record.role in (PREDICTED, REVIEWED) and record.segmentation is None:
                record.role, record.uncertainty, record.score, record.fingerprint = UNANNOTATED, None, None, ""
                changed.append(record)
            elif record.role == ANNOTATED and record.segmentation is None:
                record.role, record.segment_ids = UNANNOTATED, []
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

    def set_annotation(self, volume: Any, segmentation: Any, segment_ids: Sequence[str] | None = None) -> VolumeRecord:
        """Mark ``volume`` as annotated by ``segmentation`` (only ``segment_ids`` are learnt; default: all).
        For a sequence's proxy volume: the frame the browser shows (see :meth:`set_frame_annotation`)."""
        self._check_idle()
        if volume is None or segmentation is None:
            raise PLCLError("Choose an annotated volume and its segmentation.")
        if self.record(volume).is_sequence:
            return self.set_frame_annotation(volume, None, segmentation, segment_ids)
        ids = list(segment_ids) if segment_ids else scene_io.segment_ids(segmentation)
        if not ids:
            raise PLCLError(f"Segmentation '{segmentation.GetName()}' has no segment.")
        scene_io.classes_from_segments(segmentation, ids)  # checks the IDs and names
        record = self.record(volume)
        record.role, record.segmentation, record.segment_ids = ANNOTATED, segmentation, ids
        record.uncertainty, record.score, record.fingerprint = None, None, ""
        self.state.save(record)
        return record

    def set_frame_annotation(self, volume: Any, frame: int | None, segmentation: Any,
                             segment_ids: Sequence[str] | None = None) -> VolumeRecord:
        """Frame ``frame`` (default: the one the browser shows) of the sequence whose proxy volume is
        ``volume`` is annotated by ``segmentation``: a segmentation drawn on that frame, or the proxy of a
        segmentation sequence in the same browser. Each frame keeps its own segmentation."""
        self._check_idle()
        record = self.record(volume)
        if not record.is_sequence:
            raise PLCLError(f"'{record.name}' is not a sequence.")
        if segmentation is None:
            raise PLCLError("Choose the segmentation of the frame.")
        frame = cine.current_frame(record) if frame is None else int(frame)
        cine.set_frame_annotation(self.scene, record, frame, segmentation, segment_ids)
        self.state.save(record)
        return record

    def remove_frame(self, volume: Any, frame: int) -> VolumeRecord:
        """Frame ``frame`` of a sequence is no longer training data (its segmentation is not touched)."""
        self._check_idle()
        record = self.record(volume)
        if not record.is_sequence:
            raise PLCLError(f"'{record.name}' is not a sequence.")
        cine.remove_frame(record, int(frame))
        self.state.save(record)
        return record

    def set_role(self, volume: Any, role: str) -> VolumeRecord:
        """Make ``volume`` unannotated (segmented by the next run) or excluded (ignored)."""
        self._check_idle()
        if role not in (UNANNOTATED, EXCLUDED):
            raise PLCLError(f"Use set_annotation or accept to make a volume {role}.")
        record = self.record(volume)
        if record.is_sequence:  # its annotated frames are forgotten, accepted ones are predictions again
            record.role = role
            cine.forget_training(record, record.training_frames())
            record.role = EXCLUDED if role == EXCLUDED else record.sequence_role()
            self.state.save(record)
            return record
        if record.role == PREDICTED and role == UNANNOTATED:
            return record  # already a target
        if record.segmentation is not None and not is_owned(record.segmentation):
            record.segmentation, record.segment_ids = None, []  # forget the user's annotation, never touch it
        record.role, record.slices, record.background = role, SLICES_AUTO, []
        self.state.save(record)
        return record

    def annotated(self) -> list[VolumeRecord]:
        return [r for r in self.state.records() if r.is_training]

    # --- annotated slices -----------------------------------------------------------------------
    def slice_summary(self, volume: Any) -> SliceSummary:
        """How many of the volume's slices (along the engine's slicing axis) are annotated."""
        record = self.record(volume)
        if record.is_sequence:
            raise PLCLError(f"'{record.name}' is a sequence: its annotated frames are used whole.")
        axes = scene_io.volume_axes(record.volume)
        total = int(record.volume.GetImageData().GetDimensions()[2 - axes.slice_axis])
        if record.role == REVIEWED:  # an accepted prediction covers the whole volume
            return SliceSummary(total, list(range(total)), [], SLICES_ALL, axes.view)
        if record.role != ANNOTATED or record.segmentation is None:
            raise PLCLError(f"'{record.name}' is not an annotated volume.")
        ids = record.segment_ids or scene_io.segment_ids(record.segmentation)
        # The panel asks on every refresh: count again only when the voxels may have changed.
        stamp = scene_io.content_stamp(record.segmentation, ids, record.volume)
        cached = self._painted.get(record.key)
        if cached is not None and cached[0] == stamp:
            painted = cached[1]
        else:
            labels = scene_io.annotation_labels(self.services, record.segmentation, ids, record.volume)
            painted = slicing.labelled_slices(labels, axes.slice_axis)
            self._painted[record.key] = (stamp, painted)
        return SliceSummary(total, painted, [i for i in record.background if i < total], record.slices, axes.view)

    def set_slice_mode(self, volume: Any, mode: str) -> VolumeRecord:
        """Train on every slice of the volume ("all") or on its painted slices only ("painted")."""
        self._check_idle()
        if mode not in SLICE_MODES:
            raise PLCLError(f"Unknown choice of slices: {mode!r}.")
        record = self.record(volume)
        if record.role != ANNOTATED or record.is_sequence:
            raise PLCLError(f"'{record.name}' is not an annotated volume; accepted predictions and the frames of a "
                            "sequence use every slice.")
        record.slices = mode
        self.state.save(record)
        return record

    def mark_background(self, volume: Any, index: int | None = None) -> SliceSummary:
        """Mark a slice (default: the one shown in the paint view) as annotated background: nothing to
        segment there. Only painted slices and such slices are then annotated."""
        self._check_idle()
        record = self.record(volume)
        if record.role != ANNOTATED or record.is_sequence:
            raise PLCLError(f"Add '{record.name}' with its segmentation to the annotated volumes first (the frames "
                            "of a sequence are used whole).")
        if index is None:
            index = scene_io.current_slice(self.scene, record.volume)
            if index is None:
                raise PLCLError(f"The {scene_io.volume_axes(record.volume).view} view does not show a slice of "
                                f"'{record.name}'; set up the paint view first.")
        summary = self.slice_summary(volume)
        if not 0 <= index < summary.total:
            raise PLCLError(f"'{record.name}' has no slice {index} (0 to {summary.total - 1}).")
        if index in summary.painted:
            raise PLCLError(f"Slice {index} of '{record.name}' is painted: it is annotated already.")
        record.background = sorted(set(record.background) | {index})
        record.slices = SLICES_PAINTED
        self.state.save(record)
        return self.slice_summary(volume)

    def set_up_paint_view(self, volume: Any) -> str:
        """Show ``volume`` in the view of the engine's slicing plane; returns the view's name."""
        record = self.record(volume)
        segmentation = None if record.is_sequence else record.segmentation
        return scene_io.set_up_paint_view(self.scene, record.volume, segmentation)

    def _slice_argument(self, record: VolumeRecord) -> str:
        """The record's --annotated-slices value."""
        if record.role != ANNOTATED:
            return slicing.ALL
        summary = self.slice_summary(record.volume)
        if not summary.only_painted:
            return slicing.ALL
        if not summary.annotated:
            raise PLCLError(f"'{record.name}' has no painted slice: paint some slices in the {summary.view} view.")
        return slicing.spec_text(summary.annotated)

    # --- runs -----------------------------------------------------------------------------------
    def train(self, warm_start: bool = False) -> Job:
        """Start training on the annotated and reviewed volumes; the others are segmented at the end."""
        self._check_idle()
        records = self.refresh()
        training = sorted((r for r in records if r.is_training and not r.is_sequence),
                          key=lambda r: r.role != ANNOTATED)
        cines = [r for r in records if r.is_sequence and r.role != EXCLUDED]
        if not training and not any(r.training_frames() for r in cines):
            raise PLCLError("Choose at least one annotated volume (or frame) with its segmentation first.")
        targets = [r for r in records if r.role in TARGET_ROLES and not r.is_sequence]
        state = self.state
        init_model = ""
        if warm_start:
            init_model = state.model_path
            if not init_model or not Path(init_model).is_file():
                raise PLCLError("Retrain needs a trained model: train first, or load a model.")
        classes = self._training_classes(training, cines, warm_start)
        argv = self._command() + ["train"]
        inputs = Path(tempfile.mkdtemp(prefix="plcl-inputs-"))
        slices: list[str] = []
        exports: dict[str, cine.Export] = {}
        unlabeled: list[str] = []
        try:
            for record in training:
                image = self._export_image(record, inputs)
                label = inputs / "labels" / f"{record.key}.seg.nrrd"
                label.parent.mkdir(exist_ok=True)
                ids = scene_io.match_segments(record.segmentation, classes, record.segment_ids)
                scene_io.write_annotation(self.services, record.segmentation, ids, record.volume, classes, str(label))
                argv += ["--labeled", str(image), str(label)]
                slices.append(self._slice_argument(record))
            for record in cines:  # one 4D file each: its annotated frames, or all of it unannotated
                exported = cine.export(self.services, record, inputs, classes, training=True)
                exports[exported.key] = exported
                for frame, label in sorted(exported.labels.items()):
                    argv += ["--labeled-frame", str(exported.image), str(frame), str(label)]
                    slices.append(slicing.ALL)  # a frame is annotated whole
                if not exported.labels:
                    unlabeled.append(str(exported.image))
            if any(spec != slicing.ALL for spec in slices):  # one per --labeled pair, then --labeled-frame
                argv += [arg for spec in slices for arg in ("--annotated-slices", spec)]
            unlabeled = [str(self._export_image(r, inputs)) for r in targets] + unlabeled
            if unlabeled:
                argv += ["--unlabeled", *unlabeled]
            out = self._run_folder(TRAIN)
            argv += ["--out", str(out), "--budget", state.budget, "--device", state.device, "--events", "jsonl"]
            if state.iterations:  # the same budget as a first training: the engine shortens a warm start
                argv += ["--iterations", str(state.iterations)]
            if init_model:
                argv += ["--init-model", init_model]
        except BaseException:
            shutil.rmtree(inputs, ignore_errors=True)
            raise
        job = Job(TRAIN, argv, inputs, out, {r.key: r.key for r in targets}, classes, warm_start=warm_start,
                  model_path=init_model, sequences=exports)
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
            if any(r.is_training for r in targets):
                raise PLCLError("Annotated and reviewed volumes are not segmented again; choose other volumes.")
        else:
            targets = [r for r in records if r.role == UNANNOTATED]
        if not targets:
            raise PLCLError("No volume to segment: load volumes first (annotated ones are left as they are).")
        inputs = Path(tempfile.mkdtemp(prefix="plcl-inputs-"))
        exports: dict[str, cine.Export] = {}
        try:
            images = []
            for record in targets:
                if record.is_sequence:
                    exported = cine.export(self.services, record, inputs, [], training=False)
                    exports[exported.key] = exported
                    images.append(str(exported.image))
                else:
                    images.append(str(self._export_image(record, inputs)))
        except BaseException:
            shutil.rmtree(inputs, ignore_errors=True)
            raise
        out = self._run_folder(PREDICT)
        argv = self._command() + ["predict", "--model", str(model), "--out", str(out), "--device", self.state.device,
                                  "--events", "jsonl", *images]
        same_model = Path(model) == Path(self.state.model_path) if self.state.model_path else False
        classes = [SegmentClass.from_dict(c) for c in self.state.classes] if same_model else []
        job = Job(PREDICT, argv, inputs, out, {r.key: r.key for r in targets if not r.is_sequence}, classes,
                  model_path=str(model), sequences=exports)
        return self._start(job)

    def cancel(self) -> None:
        """Stop the run: the child finishes its step and exits, the whole tree is ended; nothing is imported."""
        if self.busy and self.job is not None and self.job.state == JobState.RUNNING:
            self.job.state = JobState.CANCELLING
            self.job.process.cancel()

    def poll(self) -> list[Message]:
        """Take in what the child said since the last call; on its exit, import or clean up. Never blocks."""
        job = self.job
        if job is None or job.state.finished:
            return []
        messages = job.process.poll()
        points = []
        for message in messages:
            if message.kind == "event":
                point = job.handle(message.data)
                if point is not None:
                    points.append(point)
            elif message.kind == "log":
                job.add_log(message.data)
        if points and job.plot is not None:
            job.plot.append(points)
        if job.process.state.finished:
            self._finish(job)
        return messages

    def wait(self, timeout_s: float = 600.0, interval_s: float = 0.05,
             on_messages: Callable[[list[Message]], None] | None = None) -> Job:
        """Poll until the run finishes (tests and scripts; the widget polls from a timer)."""
        if self.job is None:
            raise PLCLError("Nothing is running.")
        deadline = time.monotonic() + timeout_s
        while not self.job.state.finished:
            messages = self.poll()
            if on_messages is not None and messages:
                on_messages(messages)
            if self.job.state.finished:
                break
            if time.monotonic() > deadline:
                self.job.process.kill()
                self.job.process.wait(30)
                self.poll()
                raise TimeoutError(f"the run did not finish within {timeout_s:.0f} s and was stopped")
            time.sleep(interval_s)
        return self.job

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """End a running child at once (Slicer closes, the scene is closed), and with it the run: its
        exported inputs and its folder are removed, nothing is imported."""
        job = self.job
        if job is None or job.state.finished:
            return
        if job.process is not None:
            job.process.kill()
            deadline = time.monotonic() + timeout_s
            while not job.process.state.finished and time.monotonic() < deadline:
                self.poll()  # the exit arrives once the child's output is read to its end
                time.sleep(0.02)
        if not job.state.finished:  # the child did not report its exit in time: forget the run anyway
            job.state = JobState.CANCELLED
            job.finished = time.monotonic()
            self._discard(job, keep_out=False)
            shutil.rmtree(job.inputs_dir, ignore_errors=True)

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
        """Every volume with its role and uncertainty score, the least certain first. A sequence with
        results or annotations has one row per such frame (named like the engine names frames)."""
        rows = []
        for r in self.refresh():
            if r.is_sequence and r.frames and r.role != EXCLUDED:
                count = sequences.frame_count(r.sequence)
                rows += [ReviewRow(r, frame_name(r.name, i, count), f.role, f.score,
                                   "whole frame" if f.is_training else "", frame=i)
                         for i, f in sorted(r.frames.items())]
            else:
                rows.append(ReviewRow(r, r.name, r.role, r.score, self.slices_text(r)))
        order = {PREDICTED: 0, UNANNOTATED: 1, REVIEWED: 2, ANNOTATED: 3, EXCLUDED: 4}
        rows.sort(key=lambda row: (row.score is None, -(row.score or 0.0), order.get(row.role, 5), row.name))
        return rows

    def slices_text(self, record: VolumeRecord) -> str:
        """Which slices of a training volume are annotated, for the panel; empty for other volumes."""
        if record.is_sequence:
            return cine.slices_text(record)
        if not record.is_training or record.segmentation is None:
            return ""
        try:
            return self.slice_summary(record.volume).text()
        except PLCLError as error:
            return str(error)

    def show(self, volume: Any, frame: int | None = None) -> VolumeRecord:
        """Show ``volume`` in the slice views with its segmentation (and the uncertainty overlay if chosen).
        A sequence: its browser moves to ``frame`` (if given), its segmentation follows the frame."""
        record = self.record(volume)
        state = self.state
        others = []
        for other in state.records():
            if other.key != record.key:
                others.append(self.shown_segmentation(other))
        if record.is_sequence:
            segmentation, uncertainty = cine.show_nodes(self.services, record, frame, state.show_uncertainty)
        else:
            segmentation = record.segmentation
            uncertainty = record.uncertainty if state.show_uncertainty and record.role == PREDICTED else None
        scene_io.show_in_views(self.scene, record.volume, segmentation, uncertainty,
                               state.uncertainty_opacity, hide=others)
        return record

    def shown_segmentation(self, record: VolumeRecord) -> Any:
        """The node that shows a record's segmentation in the views (a sequence's: its browser's proxy)."""
        if record.is_sequence:
            if record.segmentation is None or record.browser is None:
                return None
            return record.browser.GetProxyNode(record.segmentation)
        return record.segmentation

    def accept(self, volume: Any, frame: int | None = None) -> VolumeRecord:
        """The user reviewed (and corrected) the prediction of ``volume``: it becomes training data.
        A sequence: the prediction of ``frame`` (default: the frame its browser shows), whole."""
        self._check_idle()
        record = self.record(volume)
        if record.is_sequence:
            cine.accept(self.services, record, frame)
            self.state.save(record)
            return record
        if record.role != PREDICTED or record.segmentation is None:
            raise PLCLError(f"'{record.name}' has no prediction to accept.")
        record.role = REVIEWED
        record.segment_ids = scene_io.segment_ids(record.segmentation)
        record.slices, record.background = SLICES_ALL, []  # the whole volume is annotated
        self.state.save(record)
        return record

    def frame_rows(self, record: VolumeRecord) -> list[cine.FrameRow]:
        """The annotated and accepted frames of a sequence record, as the panel lists them."""
        return cine.annotated_rows(record) if record.is_sequence and record.sequence is not None else []

    def volume_curve(self, volume: Any) -> Any:
        """The chart of the volume of each structure over the frames of a sequence (None before a run)."""
        record = self.record(volume)
        return cine.volume_curve(self.scene, record.key) if record.is_sequence else None

    def volume_summary(self, volume: Any) -> str:
        """Each structure's largest and smallest volume over a sequence's frames and its ejection fraction
        (the engine's summary; meaningful for cavities such as the ventricles), one line each."""
        chart = self.volume_curve(volume)
        if chart is None:
            return ""
        record = self.record(volume)
        count = sequences.frame_count(record.sequence)
        return cine.summary_text(chart, [frame_name(record.name, i, count) for i in range(count)])

    # --- models ---------------------------------------------------------------------------------
    def save_model(self, path: str | os.PathLike[str]) -> str:
        """Copy the current model to ``path`` (and make it the model the scene refers to)."""
        source = self.state.model_path
        if not source or not Path(source).is_file():
            raise PLCLError("There is no trained model to save yet.")
        target = Path(path)
        if target.suffix != ".pt":
            target = target.with_name(target.name + ".pt")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.resolve() != Path(source).resolve():  # the model file carries its classes: nothing else
            partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:6]}.part")
            try:
                shutil.copyfile(source, partial)
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)
        self.state.set("modelPath", str(target))
        return str(target)

    def load_model(self, path: str | os.PathLike[str]) -> str:
        """Use the model file ``path`` for predictions and retraining."""
        self._check_idle()
        model = Path(path)
        if not model.is_file():
            raise PLCLError(f"Model file not found: {model}")
        # Its classes are in the file, read by the engine: a prediction's segments carry their names,
        # colours and terminology; a retrain matches the annotations to them by name.
        self.state.set("modelPath", str(model.resolve()))
        self.state.set("classes", [])
        return str(model)

    # --- the engine's interpreter (an application setting, never the scene's) -------------------
    @property
    def python(self) -> str:
        """The Python interpreter the user chose on this machine to run the engine ("" : Slicer's)."""
        value = self.services.settings.value(PYTHON_SETTING, "")
        return str(value or "").strip()

    def set_python(self, path: str) -> None:
        self.services.settings.setValue(PYTHON_SETTING, str(path or "").strip())
        if self.python:
            self.interpreters.check(self.python)  # in the background, so that Train finds the answer

    # --- internals ------------------------------------------------------------------------------
    def _check_idle(self) -> None:
        if self.busy:
            raise PLCLError("A run is in progress: wait for it to finish or cancel it.")

    def _command(self) -> list[str]:
        return list(self.engine_command) if self.engine_command else dependencies.engine_command(self.python)

    def _training_classes(self, training: list[VolumeRecord], cines: list[VolumeRecord],
                          warm_start: bool) -> list[SegmentClass]:
        """The classes: the model's on a warm start, else the first annotated volume's (or frame's) segments."""
        if warm_start and self.state.classes:
            return [SegmentClass.from_dict(c) for c in self.state.classes]
        # An annotated volume, else an annotated frame, else an accepted volume, else an accepted frame.
        first = next((r for r in training if r.role == ANNOTATED), None)
        if first is None:
            source = cine.training_classes_source(cines, ANNOTATED)
            if source is None and not training:
                source = cine.training_classes_source(cines, REVIEWED)
            if source is not None:
                return scene_io.classes_from_segments(*source)
            first = training[0]
        ids = first.segment_ids or scene_io.segment_ids(first.segmentation)
        return scene_io.classes_from_segments(first.segmentation, ids)

    def _export_image(self, record: VolumeRecord, inputs: Path) -> Path:
        path = inputs / "images" / f"{record.key}.nrrd"
        path.parent.mkdir(exist_ok=True)
        if not path.exists():
            scene_io.write_volume(record.volume, str(path))
        return path

    def _run_folder(self, kind: str) -> Path:
        folder = self.models_dir / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{uuid.uuid4().hex[:6]}"
        folder.mkdir(parents=True)
        return folder

    def _start(self, job: Job) -> Job:
        environment = self.environment
        if environment is None:
            environment = dependencies.child_environment(external_python=bool(self.python))
        job.process = self.process_factory(job.argv, env=environment, log_path=job.log_path, grace_s=self.grace_s,
                                           stop_file=job.out_dir / STOP_FILE)
        try:
            job.process.start()
        except OSError as error:
            self._discard(job, keep_out=False)
            raise PLCLError(f"Could not start the engine ({job.argv[0]}): {error.strerror or error}") from None
        job.state = JobState.RUNNING
        self.job = job
        return job

    def _finish(self, job: Job) -> None:
        outcome = job.process.state
        try:
            if outcome == RunState.DONE:
                job.state = JobState.IMPORTING
                try:
                    self._import(job)
                except Exception as error:  # nothing was added: the transaction rolled back
                    job.error = f"the results could not be imported: {error}"
                    job.state = JobState.FAILED
                    self._discard(job, keep_out=True)
                else:
                    job.state = JobState.DONE
                    self._tidy_after_success(job)
            elif outcome == RunState.CANCELLED:
                job.state = JobState.CANCELLED
                self._discard(job, keep_out=False)
            else:
                job.error = job.process.error or job.error or "the engine failed"
                job.tail = list(job.process.tail)
                job.state = JobState.FAILED
                self._discard(job, keep_out=True)
        finally:
            job.finished = time.monotonic()
            shutil.rmtree(job.inputs_dir, ignore_errors=True)

    def _discard(self, job: Job, keep_out: bool) -> None:
        """Undo everything the run added to the scene; keep its folder (with the log) only if asked."""
        if job.plot is not None:
            for node in job.plot.nodes:
                scene_io.remove_node(self.scene, node)
            job.plot = None
        if not keep_out:
            shutil.rmtree(job.out_dir, ignore_errors=True)

    def _import(self, job: Job) -> None:
        summary = read_summary(job.out_dir)
        by_name = {str(v.get("name")): v for v in summary.get("volumes", []) if isinstance(v, dict)}
        records = {r.key: r for r in self.state.records()}
        transaction = SceneTransaction(self.scene)
        updates = []
        try:
            for stem, key in job.targets.items():
                record = records.get(key)
                if record is None:  # the volume was deleted during the run
                    job.warnings.append(f"a volume was deleted during the run; its result is skipped ({stem})")
                    continue
                info = by_name.get(stem, {})
                segmentation_path = output_path(job.out_dir, info.get("segmentation"))
                if segmentation_path is None:
                    raise PLCLError(f"the engine wrote no segmentation for '{record.name}'")
                node = scene_io.add_prediction(self.services, transaction, record.volume, str(segmentation_path),
                                               job.classes)
                uncertainty = None
                uncertainty_path = output_path(job.out_dir, info.get("uncertainty"))
                if uncertainty_path is not None:
                    uncertainty = scene_io.add_uncertainty(self.services, transaction, record.volume,
                                                           str(uncertainty_path))
                score = info.get("uncertainty_score")
                updates.append((record, node, uncertainty, float(score) if score is not None else None))
            imported = []
            for key, exported in job.sequences.items():
                record = records.get(key)
                if record is None or not record.is_sequence or record.sequence is None or record.browser is None:
                    job.warnings.append(f"a sequence or its browser was deleted during the run; its result is "
                                        f"skipped ({key})")
                    continue
                if sequences.frame_count(record.sequence) != exported.frames:
                    job.warnings.append(f"'{record.name}' got frames added or removed during the run; its result "
                                        "is skipped")
                    continue
                imported.append(cine.import_results(self.services, transaction, record, exported,
                                                    sequence_name(summary, exported), summary, job.out_dir,
                                                    job.classes, output_path))
        except BaseException:
            transaction.rollback()
            raise
        for record, node, uncertainty, score in updates:
            self._replace_prediction(job, record)
            record.role, record.segmentation, record.uncertainty, record.score = PREDICTED, node, uncertainty, score
            record.segment_ids = scene_io.segment_ids(node)
            record.fingerprint = scene_io.fingerprint(node)
            job.imported.append(record.name)
        for result in imported:
            cine.apply(result, job.warnings, self.services)
            job.imported.append(result.record.name)
            job.imported_sequences.append(result.record.name)
        state = self.state
        if updates or imported:
            state.save(*(u[0] for u in updates), *(r.record for r in imported))
        if job.kind == TRAIN:
            model = output_path(job.out_dir, (summary.get("outputs") or {}).get("model"))
            if model is None:
                raise PLCLError(f"the engine wrote no model file in {job.out_dir}")
            job.kept = [model]
            state.set("modelPath", str(model))
            state.set("classes", [c.to_dict() for c in job.classes])
            self._remove_old_plots(keep=job.plot.nodes if job.plot is not None else [])
        state.set("lastRun", {"kind": job.kind, "elapsed_s": round(job.elapsed_s, 1), "out": str(job.out_dir),
                              "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "warm_start": job.warm_start})

    def _replace_prediction(self, job: Job, record: VolumeRecord) -> None:
        """Remove the volume's previous prediction (ours), unless the user edited it without accepting."""
        old = record.segmentation
        if old is not None and is_owned(old) and record.role == PREDICTED:
            if record.fingerprint and scene_io.fingerprint(old) != record.fingerprint:
                job.warnings.append(f"'{old.GetName()}' was edited but not accepted; it is kept beside the new one")
            else:
                scene_io.remove_node(self.scene, old)
        if record.uncertainty is not None and is_owned(record.uncertainty):
            scene_io.remove_node(self.scene, record.uncertainty)

    def _remove_old_plots(self, keep: Sequence[Any]) -> None:
        keep_ids = {n.GetID() for n in keep}
        stale = []
        for node_class in ("vtkMRMLTableNode", "vtkMRMLPlotChartNode", "vtkMRMLPlotSeriesNode"):
            for index in range(self.scene.GetNumberOfNodesByClass(node_class)):
                node = self.scene.GetNthNodeByClass(index, node_class)
                if node.GetAttribute(OWNER_ATTRIBUTE) in (LOSS_TABLE, LOSS_CHART, LOSS_SERIES) \
                        and node.GetID() not in keep_ids:
                    stale.append(node)
        for node in stale:
            scene_io.remove_node(self.scene, node)

    def _tidy_after_success(self, job: Job) -> None:
        """A prediction's folder goes; a training's keeps its model, summary and log. Everything else
        (the checkpoint with pseudo-labels derived from the patients' volumes, the imported
        predictions) is removed from the user's data folder."""
        if job.kind == PREDICT:
            shutil.rmtree(job.out_dir, ignore_errors=True)
            return
        keep = {p.resolve() for p in [*job.kept, job.out_dir / SUMMARY_FILE, job.log_path]}
        for path in job.out_dir.iterdir():
            if path.resolve() in keep:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()


def read_summary(out_dir: Path) -> dict[str, Any]:
    """The engine's one description of a run's outputs (engine/events.py: SUMMARY_FILE)."""
    path = out_dir / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PLCLError(f"the engine wrote no {SUMMARY_FILE} in {out_dir}") from None
    except (OSError, ValueError) as error:
        raise PLCLError(f"{path}: not readable ({error})") from None
    if not isinstance(summary, dict):
        raise PLCLError(f"{path}: not a run summary")
    return summary


def sequence_name(summary: dict[str, Any], exported: cine.Export) -> str:
    """The engine's name of an exported sequence: its summary entry's (matched by file), else the file's
    stem (the engine names a sequence after its file: KEY.nrrd is KEY)."""
    for entry in summary.get("sequences", []) or []:
        if isinstance(entry, dict) and entry.get("image") and entry.get("name") is not None:
            with contextlib.suppress(OSError):
                if Path(str(entry["image"])).resolve() == exported.image.resolve():
                    return str(entry["name"])
    return exported.key


def output_path(out_dir: Path, reported: Any) -> Path | None:
    """A file the summary names (relative paths are in the run folder), if it exists."""
    if not reported:
        return None
    path = Path(str(reported))
    path = path if path.is_absolute() else out_dir / path
    return path if path.is_file() else None
