"""The records the module knows, as two kinds of one item: a volume, or a volume sequence (cine).

An item answers what the logic, a run and the panel ask of a record (annotate it, accept its
prediction, export it, import its results, list and show it), so that none of them asks which kind
it is. :func:`item_for` is the one place that tells the kinds apart. A sequence's frames are its own
(cine.py); a volume's annotated slices are counted by slices.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from . import cine, review, scene_io, sequences
from .engine import slicing
from .engine.protocol import frame_name
from .engine_run import RunInputs
from .parameters import (
    ANNOTATED,
    EXCLUDED,
    PREDICTED,
    REVIEWED,
    SEQUENCE,
    SLICE_MODES,
    SLICES_ALL,
    SLICES_AUTO,
    SLICES_PAINTED,
    TARGET_ROLES,
    UNANNOTATED,
    VOLUME,
    VolumeRecord,
)
from .run_results import RunResults
from .scene_io import SceneTransaction, SegmentClass
from .services import PLCLError, SlicerServices, is_owned
from .slices import PaintedSlices, SliceSummary


@dataclass
class ReviewRow:
    record: VolumeRecord
    name: str
    role: str
    score: float | None
    slices: str = ""  # training volumes: which slices are annotated, e.g. "3 of 10 slices (2, 5, 8)"
    frame: int | None = None  # a frame of a sequence, or None: the whole record
    structures: list[dict[str, Any]] = field(default_factory=list)  # estimated Dice, worst first (review.py)

    @property
    def worst(self) -> float | None:
        """The lowest estimated Dice of its structures (review.worst_estimate)."""
        return review.worst_estimate(self.structures)


@dataclass
class AnnotatedRow:
    """A row of the panel's annotated table: a training volume, or a training frame of a sequence."""

    record: VolumeRecord
    cells: list[str]  # name, segmentation, segments, which slices or frames
    frame: int | None = None


class Item(ABC):
    """One record with what can be done with it. Changes are made to ``record``; the caller saves it."""

    kind: str
    #: Volumes go to the engine and come back before sequences.
    order: int

    def __init__(self, services: SlicerServices, record: VolumeRecord, painted: PaintedSlices) -> None:
        self.services = services
        self.record = record
        self.painted = painted

    @property
    def name(self) -> str:
        return self.record.name

    # --- roles ----------------------------------------------------------------------------------
    @abstractmethod
    def settle(self) -> bool | None:
        """Bring the record up to date with its nodes: True if it changed, None if it is no longer valid."""

    @abstractmethod
    def annotate(self, segmentation: Any, segment_ids: Sequence[str] | None) -> None:
        """``segmentation`` annotates the record (a sequence: the frame its browser shows)."""

    @abstractmethod
    def annotate_frame(self, frame: int | None, segmentation: Any, segment_ids: Sequence[str] | None) -> None:
        """``segmentation`` annotates frame ``frame`` (default: the one shown) of a sequence."""

    @abstractmethod
    def remove_frame(self, frame: int) -> None:
        """Frame ``frame`` is no longer training data."""

    @abstractmethod
    def set_role(self, role: str) -> bool:
        """Make the record unannotated or excluded; False if nothing changed."""

    @abstractmethod
    def accept(self, frame: int | None) -> None:
        """The user reviewed (and corrected) the prediction (a sequence: of ``frame``): training data now."""

    def accept_slice(self, index: int | None, frame: int | None) -> int:
        """Slice ``index`` (default: the one the engine's view shows) of the prediction is correct: it alone
        becomes training data. The segmentation is only read, at the next training."""
        raise PLCLError(f"'{self.name}' is a sequence: accept a frame whole.")

    def role_of(self, frame: int | None) -> str:
        """The role of a row: of the frame where there is one, else of the record."""
        info = self.record.frames.get(frame) if frame is not None else None
        return info.role if info is not None else self.record.role

    def current_frame(self) -> int | None:
        """The frame a sequence's browser shows; None for a volume."""
        return None

    @abstractmethod
    def proposed_annotation(self) -> Any:
        """The record's own annotation to propose in the panel (the shown frame's), if any."""

    # --- annotated slices -----------------------------------------------------------------------
    @property
    def paints_slices(self) -> bool:
        """Whether the user chooses its annotated slices (an annotated volume; frames are used whole)."""
        return False

    @abstractmethod
    def slice_summary(self) -> SliceSummary:
        """How many of the volume's slices (along the engine's slicing axis) are annotated."""

    @property
    def paint_segmentation(self) -> Any:
        """The segmentation to show in the paint view."""
        return None

    def set_slice_mode(self, mode: str) -> None:
        if mode not in SLICE_MODES:
            raise PLCLError(f"Unknown choice of slices: {mode!r}.")
        if not self.paints_slices:
            raise PLCLError(f"'{self.name}' is not an annotated volume; accepted predictions and the frames of a "
                            "sequence use every slice.")
        self.record.slices = mode

    def mark_background(self, index: int | None) -> None:
        """Mark a slice (default: the one shown in the paint view) as annotated background."""
        record = self.record
        if not self.paints_slices:
            raise PLCLError(f"Add '{record.name}' with its segmentation to the annotated volumes first (the frames "
                            "of a sequence are used whole).")
        if index is None:
            index = scene_io.current_slice(self.services.scene, record.volume)
            if index is None:
                raise PLCLError(f"The {scene_io.volume_axes(record.volume).view} view does not show a slice of "
                                f"'{record.name}'; set up the paint view first.")
        summary = self.slice_summary()
        if not 0 <= index < summary.total:
            raise PLCLError(f"'{record.name}' has no slice {index} (0 to {summary.total - 1}).")
        if index in summary.painted:
            raise PLCLError(f"Slice {index} of '{record.name}' is painted: it is annotated already.")
        record.background = sorted(set(record.background) | {index})
        record.slices = SLICES_PAINTED

    # --- runs -----------------------------------------------------------------------------------
    @property
    @abstractmethod
    def in_training(self) -> bool:
        """Whether a training run takes it (as training data, or to segment)."""

    @property
    @abstractmethod
    def has_training_data(self) -> bool: ...

    @abstractmethod
    def class_source(self, role: str) -> tuple[Any, list[str]] | None:
        """(segmentation node, segment IDs) of its first annotation of ``role`` (annotated or accepted)."""

    @abstractmethod
    def export_for_training(self, inputs: RunInputs, classes: Sequence[SegmentClass]) -> None: ...

    @abstractmethod
    def export_for_prediction(self, inputs: RunInputs) -> None: ...

    # --- the panel ------------------------------------------------------------------------------
    def review_rows(self) -> list[ReviewRow]:
        record = self.record
        return [ReviewRow(record, record.name, record.role, record.score, self.slices_text(),
                          structures=record.structures if record.role == PREDICTED else [])]

    @abstractmethod
    def annotated_rows(self) -> list[AnnotatedRow]: ...

    @abstractmethod
    def slices_text(self) -> str:
        """Which slices (or frames) are annotated, for the panel; empty where none is."""

    @abstractmethod
    def display(self, frame: int | None, with_uncertainty: bool) -> tuple[Any, Any]:
        """(segmentation, uncertainty or None) to show with the volume (a sequence: at ``frame``)."""

    @abstractmethod
    def shown_segmentation(self) -> Any:
        """The node that shows the segmentation in the views."""

    def volume_curve(self) -> Any:
        """The chart of each structure's volume over the frames (None: none)."""
        return None

    def volume_summary(self) -> str:
        return ""


class VolumeItem(Item):
    kind = VOLUME
    order = 0

    def settle(self) -> bool | None:
        record = self.record
        if not scene_io.is_grayscale_volume(record.volume):  # e.g. a record of an older version
            return None
        if record.role in (PREDICTED, REVIEWED) and record.segmentation is None:  # the user deleted it
            record.role, record.uncertainty, record.score, record.fingerprint = UNANNOTATED, None, None, ""
            record.structures, record.accepted, record.slice_digests = [], [], []
            return True
        if record.role == ANNOTATED and record.segmentation is None:
            record.role, record.segment_ids = UNANNOTATED, []
            return True
        return False

    def annotate(self, segmentation: Any, segment_ids: Sequence[str] | None) -> None:
        ids = list(segment_ids) if segment_ids else scene_io.segment_ids(segmentation)
        if not ids:
            raise PLCLError(f"Segmentation '{segmentation.GetName()}' has no segment.")
        scene_io.classes_from_segments(segmentation, ids)  # checks the IDs and names
        record = self.record
        record.role, record.segmentation, record.segment_ids = ANNOTATED, segmentation, ids
        record.uncertainty, record.score, record.fingerprint = None, None, ""
        record.structures, record.accepted, record.slice_digests = [], [], []

    def annotate_frame(self, frame: int | None, segmentation: Any, segment_ids: Sequence[str] | None) -> None:
        raise PLCLError(f"'{self.name}' is not a sequence.")

    def remove_frame(self, frame: int) -> None:
        raise PLCLError(f"'{self.name}' is not a sequence.")

    def set_role(self, role: str) -> bool:
        record = self.record
        if record.role == PREDICTED and role == UNANNOTATED:
            return False  # already a target
        if record.segmentation is not None and not is_owned(record.segmentation):
            record.segmentation, record.segment_ids = None, []  # forget the user's annotation, never touch it
        record.role, record.slices, record.background, record.accepted = role, SLICES_AUTO, [], []
        return True

    def accept(self, frame: int | None) -> None:
        record = self.record
        if record.role != PREDICTED or record.segmentation is None:
            raise PLCLError(f"'{record.name}' has no prediction to accept.")
        record.role = REVIEWED
        record.segment_ids = scene_io.segment_ids(record.segmentation)
        record.slices, record.background, record.accepted = SLICES_ALL, [], []  # the whole volume is annotated

    def accept_slice(self, index: int | None, frame: int | None) -> int:
        record = self.record
        if record.role != PREDICTED or record.segmentation is None:
            raise PLCLError(f"'{record.name}' has no prediction to accept a slice of.")
        axes = scene_io.volume_axes(record.volume)
        if index is None:
            index = scene_io.current_slice(self.services.scene, record.volume)
            if index is None:
                raise PLCLError(f"The {axes.view} view does not show a slice of '{record.name}'.")
        total = scene_io.slice_total(record.volume, axes.slice_axis)
        if not 0 <= index < total:
            raise PLCLError(f"'{record.name}' has no slice {index} (0 to {total - 1}).")
        if index in record.accepted:
            raise PLCLError(f"Slice {index} of '{record.name}' is accepted already.")
        record.accepted = sorted({*record.accepted, int(index)})
        return int(index)

    def proposed_annotation(self) -> Any:
        record = self.record
        return record.segmentation if record.is_training else None

    @property
    def paints_slices(self) -> bool:
        return self.record.role == ANNOTATED

    def slice_summary(self) -> SliceSummary:
        return self.painted.summary(self.record)

    @property
    def paint_segmentation(self) -> Any:
        return self.record.segmentation

    @property
    def in_training(self) -> bool:
        return self.record.is_training or self.record.role in TARGET_ROLES

    @property
    def has_training_data(self) -> bool:
        return self.record.is_training or self.record.has_accepted_slices

    def class_source(self, role: str) -> tuple[Any, list[str]] | None:
        record = self.record
        accepted = role == REVIEWED and record.has_accepted_slices  # accepted slices: after accepted volumes
        if not accepted and (record.role != role or not record.is_training):
            return None
        return record.segmentation, record.segment_ids or scene_io.segment_ids(record.segmentation)

    def export_for_training(self, inputs: RunInputs, classes: Sequence[SegmentClass]) -> None:
        record = self.record
        if record.has_accepted_slices:  # those slices alone are annotated; the engine segments the others
            image = inputs.image(record)
            label = inputs.label(f"{record.key}.seg.nrrd")
            ids = scene_io.match_segments(record.segmentation, classes, record.segment_ids)
            axis = scene_io.volume_axes(record.volume).slice_axis
            scene_io.write_annotation(self.services, record.segmentation, ids, record.volume, classes, str(label),
                                      only_slices=(axis, record.accepted))
            inputs.labeled.append((image, label, slicing.spec_text(record.accepted)))
            if len(record.accepted) < scene_io.slice_total(record.volume, axis):  # else annotated whole
                inputs.expected[record.key] = VolumeExport(record.key, exported=_slice_digests(
                    self.services, record.segmentation, record.volume))
            return
        if not record.is_training:  # to segment: it teaches the model unlabeled
            self.export_for_prediction(inputs)
            return
        image = inputs.image(record)
        label = inputs.label(f"{record.key}.seg.nrrd")
        ids = scene_io.match_segments(record.segmentation, classes, record.segment_ids)
        scene_io.write_annotation(self.services, record.segmentation, ids, record.volume, classes, str(label))
        inputs.labeled.append((image, label, self.painted.argument(record)))

    def export_for_prediction(self, inputs: RunInputs) -> None:
        inputs.unlabeled.append(inputs.image(self.record))
        inputs.expected[self.record.key] = VolumeExport(self.record.key)

    def annotated_rows(self) -> list[AnnotatedRow]:
        record = self.record
        segmentation = record.segmentation.GetSegmentation()
        names = [segmentation.GetSegment(i).GetName() for i in record.segment_ids
                 if segmentation.GetSegment(i) is not None]
        return [AnnotatedRow(record, [record.name, record.segmentation.GetName(), ", ".join(names),
                                      self.slices_text()])]

    def slices_text(self) -> str:
        if self.record.has_accepted_slices:
            accepted = self.record.accepted
            return f"accepted slice{'s' if len(accepted) > 1 else ''} {', '.join(map(str, accepted))}"
        if not self.record.is_training or self.record.segmentation is None:
            return ""
        try:
            return self.slice_summary().text()
        except PLCLError as error:
            return str(error)

    def display(self, frame: int | None, with_uncertainty: bool) -> tuple[Any, Any]:
        record = self.record
        return record.segmentation, record.uncertainty if with_uncertainty and record.role == PREDICTED else None

    def shown_segmentation(self) -> Any:
        return self.record.segmentation


@dataclass
class VolumeExport:
    """What a run brings back for a volume to segment (run_results.Expected): its segmentation, named
    after the exported file (KEY.nrrd is KEY), and its uncertainty map."""

    key: str
    order: int = VolumeItem.order
    #: A volume with accepted slices: each slice's digest of its prediction as exported for the run (an edit of
    #: an accepted slice during the run is not in the new prediction).
    exported: list[str] = field(default_factory=list)

    def take(self, services: SlicerServices, transaction: SceneTransaction, record: VolumeRecord | None,
             results: RunResults, warnings: list[str]) -> VolumeResult | None:
        if record is None:  # the volume was deleted during the run
            warnings.append(f"a volume was deleted during the run; its result is skipped ({self.key})")
            return None
        info = results.volume(self.key)
        segmentation_path = results.path(info.get("segmentation"))
        if segmentation_path is None:
            raise PLCLError(f"the engine wrote no segmentation for '{record.name}'")
        node = scene_io.add_prediction(services, transaction, record.volume, str(segmentation_path), results.classes)
        uncertainty = None
        uncertainty_path = results.path(info.get("uncertainty"))
        if uncertainty_path is not None:
            uncertainty = scene_io.add_uncertainty(services, transaction, record.volume, str(uncertainty_path))
        score = info.get("uncertainty_score")
        slices = review.slices_of(info)
        kept = info.get("annotated_slices")
        return VolumeResult(record, node, uncertainty, float(score) if score is not None else None,
                            review.structures_of(info), {review.VOLUME_KEY: slices} if slices else {},
                            _slice_digests(services, node, record.volume),
                            sorted({int(i) for i in kept if isinstance(i, int)}) if isinstance(kept, list) else [],
                            self.exported)


def _slice_digests(services: SlicerServices, segmentation: Any, volume: Any) -> list[str]:
    """scene_io.slice_digests, or none where the segmentation cannot be exported on the volume (every edit of
    it then counts as an edit anywhere: nothing is removed on their account)."""
    try:
        return scene_io.slice_digests(services, segmentation, volume)
    except PLCLError:
        return []


@dataclass
class VolumeResult:
    """A volume's new prediction (run_results.Imported)."""

    record: VolumeRecord
    segmentation: Any
    uncertainty: Any
    score: float | None
    structures: list[dict[str, Any]] = field(default_factory=list)  # estimated Dice, worst first
    review: dict[str, Any] = field(default_factory=dict)  # its slices to review (review.py)
    slice_digests: list[str] = field(default_factory=list)  # of the new prediction, as imported
    kept: list[int] = field(default_factory=list)  # the accepted slices it holds as accepted (summary.json)
    exported: list[str] = field(default_factory=list)  # of the previous prediction, as exported (VolumeExport)
    kind: str = VOLUME

    def apply(self, services: SlicerServices, warnings: list[str]) -> None:
        record = self.record
        accepted = sorted(set(record.accepted) & set(self.kept))  # in the new prediction, exactly as accepted
        old = record.segmentation  # the previous prediction (ours) goes, unless edited where nothing keeps it
        if old is not None and is_owned(old) and record.role == PREDICTED:
            edited = self._edited_elsewhere(services, old, accepted)
            if edited:
                warnings.append(f"'{old.GetName()}' was edited {edited}; it is kept beside the new one")
            else:
                scene_io.remove_node(services.scene, old)
        if record.uncertainty is not None and is_owned(record.uncertainty):
            scene_io.remove_node(services.scene, record.uncertainty)
        record.role, record.segmentation, record.uncertainty, record.score = \
            PREDICTED, self.segmentation, self.uncertainty, self.score
        record.structures, record.review, record.accepted = self.structures, self.review, accepted
        record.segment_ids = scene_io.segment_ids(self.segmentation)
        record.fingerprint = scene_io.fingerprint(self.segmentation)
        record.slice_digests = self.slice_digests

    def _edited_elsewhere(self, services: SlicerServices, old: Any, accepted: list[int]) -> str:
        """Where the user edited the previous prediction beyond what the new one keeps ("" nowhere): anywhere
        when it keeps nothing; else slice by slice, a slice not accepted against the digests taken when the
        previous prediction was imported, an accepted one against those taken when it was exported for the
        run (an edit during the run); without those digests, anywhere."""
        record = self.record
        if not record.fingerprint or scene_io.fingerprint(old) == record.fingerprint:
            return ""
        now = _slice_digests(services, old, record.volume) if accepted else []
        if not now or len(now) != len(record.slice_digests) or len(now) != len(self.exported):
            return "but not accepted"
        if any(now[i] != record.slice_digests[i] for i in range(len(now)) if i not in accepted):
            return "on slices not accepted"
        if any(now[i] != self.exported[i] for i in accepted):
            return "on accepted slices during the run"
        return ""


class SequenceItem(Item):
    """A volume sequence in a browser: its volume is the browser's proxy; its frames have their roles."""

    kind = SEQUENCE
    order = 1

    def settle(self) -> bool | None:
        return False  # brought up to date by cine.refresh

    def annotate(self, segmentation: Any, segment_ids: Sequence[str] | None) -> None:
        self.annotate_frame(None, segmentation, segment_ids)

    def annotate_frame(self, frame: int | None, segmentation: Any, segment_ids: Sequence[str] | None) -> None:
        if segmentation is None:
            raise PLCLError("Choose the segmentation of the frame.")
        frame = cine.current_frame(self.record) if frame is None else int(frame)
        cine.set_frame_annotation(self.services.scene, self.record, frame, segmentation, segment_ids)

    def remove_frame(self, frame: int) -> None:
        cine.remove_frame(self.record, int(frame))

    def set_role(self, role: str) -> bool:
        record = self.record  # its annotated frames are forgotten, accepted ones are predictions again
        record.role = role
        cine.forget_training(record, record.training_frames())
        record.role = EXCLUDED if role == EXCLUDED else record.sequence_role()
        return True

    def accept(self, frame: int | None) -> None:
        cine.accept(self.services, self.record, frame)

    def slice_summary(self) -> SliceSummary:
        raise PLCLError(f"'{self.name}' is a sequence: its annotated frames are used whole.")

    def current_frame(self) -> int | None:
        return cine.current_frame(self.record)

    def proposed_annotation(self) -> Any:
        info = self.record.frames.get(cine.current_frame(self.record))
        source = info.source if info is not None else None
        return source if source is not None and not source.IsA("vtkMRMLSequenceNode") else None

    @property
    def in_training(self) -> bool:
        return self.record.role != EXCLUDED

    @property
    def has_training_data(self) -> bool:
        return bool(self.record.training_frames())

    def class_source(self, role: str) -> tuple[Any, list[str]] | None:
        return cine.training_classes_source([self.record], role)

    def export_for_training(self, inputs: RunInputs, classes: Sequence[SegmentClass]) -> None:
        # One 4D file: its annotated frames, or all of it unannotated.
        exported = cine.export(self.services, self.record, inputs.folder, classes, training=True)
        inputs.expected[exported.key] = exported
        for frame, label in sorted(exported.labels.items()):
            inputs.labeled_frames.append((exported.image, frame, label))
        if not exported.labels:
            inputs.unlabeled.append(exported.image)

    def export_for_prediction(self, inputs: RunInputs) -> None:
        exported = cine.export(self.services, self.record, inputs.folder, [], training=False)
        inputs.expected[exported.key] = exported
        inputs.unlabeled.append(exported.image)

    def review_rows(self) -> list[ReviewRow]:
        """One row per frame with results or annotations (named like the engine names frames)."""
        record = self.record
        if not record.frames or record.role == EXCLUDED:
            return super().review_rows()
        count = sequences.frame_count(record.sequence)
        return [ReviewRow(record, frame_name(record.name, i, count), f.role, f.score,
                          "whole frame" if f.is_training else "", frame=i,
                          structures=f.structures if f.role == PREDICTED else [])
                for i, f in sorted(record.frames.items())]

    def annotated_rows(self) -> list[AnnotatedRow]:
        if self.record.sequence is None:
            return []
        return [AnnotatedRow(self.record, row.cells, row.frame) for row in cine.annotated_rows(self.record)]

    def slices_text(self) -> str:
        return cine.slices_text(self.record)

    def display(self, frame: int | None, with_uncertainty: bool) -> tuple[Any, Any]:
        return cine.show_nodes(self.services, self.record, frame, with_uncertainty)

    def shown_segmentation(self) -> Any:
        record = self.record
        if record.segmentation is None or record.browser is None:
            return None
        return record.browser.GetProxyNode(record.segmentation)

    def volume_curve(self) -> Any:
        return cine.volume_curve(self.services.scene, self.record.key)

    def volume_summary(self) -> str:
        """Each structure's largest and smallest volume over the frames and its ejection fraction (the
        engine's summary; meaningful for cavities such as the ventricles), one line each."""
        chart = self.volume_curve()
        if chart is None:
            return ""
        count = sequences.frame_count(self.record.sequence)
        return cine.summary_text(chart, [frame_name(self.name, i, count) for i in range(count)])


def item_for(services: SlicerServices, record: VolumeRecord, painted: PaintedSlices) -> Item:
    """The item of ``record``: the one place where a volume and a sequence are told apart."""
    kind = SequenceItem if record.cine else VolumeItem
    return kind(services, record, painted)
