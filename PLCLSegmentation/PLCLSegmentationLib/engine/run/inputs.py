"""A training run's inputs, read and checked before anything is written: the annotated volumes and
their annotated slices, the unannotated volumes, 4D inputs' frames, and one list of classes."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import slicing
from ..errors import ConfigError, InputError
from ..files.cine import Sequence, is_sequence, read_sequence
from ..files.volumes import DEFAULT_COLORS, ClassInfo, Volume, check_annotation, read_annotation, read_volume
from ..method.modelfile import ModelInfo, read_model
from ..request import TrainJob
from .prediction import check_unique_names

#: Said wherever a run finds nothing to pseudo-label: no unannotated volume, and no unannotated slice.
SUPERVISED_ONLY_WARNING = ("no unannotated volume or slice to learn from: training supervised only (no "
                           "pseudo-labels, no contrastive loss)")


@dataclass
class TrainingInputs:
    classes: list[ClassInfo]  # in network order
    annotated: list[tuple[Volume, np.ndarray]]  # labels as network indices
    unannotated: list[Volume]
    warnings: list[str] = field(default_factory=list)
    initial_model: tuple[ModelInfo, dict[str, torch.Tensor]] | None = None  # --init-model, read once
    #: Per annotated volume, its annotated slices as file indices along the slicing axis; None: all.
    annotated_slices: list[list[int] | None] = field(default_factory=list)
    #: The 4D inputs (without their voxels: each frame is a volume above) and their annotated frames.
    sequences: list[tuple[Sequence, list[int]]] = field(default_factory=list)

    def partly_annotated(self) -> list[int]:
        """Indices into ``annotated`` of the volumes annotated on some of their slices: a training run segments
        them at the end, those slices kept. A frame of a 4D input is segmented with its sequence instead."""
        frames = {name for sequence, _ in self.sequences for name in sequence.frame_names()}
        return [index for index, ((volume, _), rows) in enumerate(zip(self.annotated, self.annotated_slices))
                if rows is not None and len(rows) < slice_count(volume) and volume.name not in frames]


def resolve_classes(annotations: list[tuple[str, np.ndarray, list[ClassInfo] | None]],
                    fixed: list[ClassInfo] | None) -> tuple[list[ClassInfo], list[np.ndarray]]:
    """One class list for all annotations, and each annotation in network indices (1..n).

    Segments of ``.seg.nrrd`` files are matched by name, plain label maps by value. With ``fixed``
    classes (a dataset.json, or the model being fine-tuned) anything else is an error; otherwise
    new names and values become new classes.
    """
    classes: list[ClassInfo] = list(fixed or [])
    value_maps: list[dict[int, int]] = []
    for path, raw, segments in annotations:
        mapping: dict[int, int] = {}
        if segments is not None:
            for seg in segments:
                match = next((c for c in classes if c.name.casefold() == seg.name.casefold()), None)
                if match is None:
                    if fixed is not None:
                        raise InputError(path, f"segment '{seg.name}' is not one of the classes "
                                               f"({', '.join(c.name for c in classes)})")
                    match = dataclasses.replace(seg, value=max([c.value for c in classes], default=0) + 1)
                    classes.append(match)
                mapping[seg.value] = match.value
        else:
            for value in np.unique(raw).tolist():
                if value == 0 or any(c.value == value for c in classes):
                    mapping[value] = value
                elif fixed is not None:
                    allowed = ", ".join(str(v) for v in [0] + sorted(c.value for c in classes))
                    raise InputError(path, f"has label value {value} outside the classes ({allowed})")
                else:
                    classes.append(ClassInfo(value, f"label {value}", _default_color(value)))
                    mapping[value] = value
        value_maps.append(mapping)
    classes.sort(key=lambda c: c.value)
    to_index = {0: 0, **{c.value: i + 1 for i, c in enumerate(classes)}}
    indexed = []
    for (path, raw, _), mapping in zip(annotations, value_maps):
        lut = np.zeros(256, dtype=np.uint8)
        for source, value in mapping.items():
            lut[source] = to_index[value]
        labels = lut[raw]
        check_annotation(path, labels, [dataclasses.replace(c, value=to_index[c.value]) for c in classes])
        indexed.append(labels)
    return classes, indexed


def _default_color(value: int) -> tuple[float, float, float]:
    return DEFAULT_COLORS[(value - 1) % len(DEFAULT_COLORS)]


def read_training_inputs(job: TrainJob) -> TrainingInputs:
    """Read and check every input before anything is written."""
    if not job.annotated_count():
        raise InputError(None, "no annotated volume given (--labeled IMAGE LABEL)")
    fixed: list[ClassInfo] | None = None
    initial_model = read_model(job.init_model) if job.init_model else None
    if initial_model:
        fixed = initial_model[0].classes
    elif job.class_names:
        fixed = [ClassInfo(v, n, _default_color(v)) for v, n in sorted(job.class_names.items()) if v > 0]
    specs = job.slice_specs()
    if len(specs) != job.annotated_count():
        raise ConfigError(f"{len(specs)} --annotated-slices values for {job.annotated_count()} annotated volumes; "
                          "give one for all or one per annotated volume")
    sequences, annotated_frames = _annotated_sequences(job)
    sources = [(_read_3d(image_path, "--labeled"), label_path) for image_path, label_path in job.labeled]
    sources += [(sequences[os.path.abspath(image)].frame(frame), label) for image, frame, label in job.labeled_frames]
    volumes, raw, chosen = [], [], []
    for (volume, label_path), spec in zip(sources, specs):
        labels, segments = read_annotation(label_path, volume)
        chosen.append(_annotated_slices(volume, label_path, labels, spec))
        volumes.append(volume)
        raw.append((label_path, labels, segments))
    classes, indexed = resolve_classes(raw, fixed)
    unannotated: list[Volume] = []
    for path in job.unlabeled:
        key = os.path.abspath(path)
        if key in sequences:  # also given with --labeled-frame: its other frames are unannotated below
            continue
        if is_sequence(path):
            sequences[key] = read_sequence(path)
            annotated_frames[key] = []
            unannotated += list(sequences[key].frames())
        else:
            unannotated.append(read_volume(path))
    for key, frames in annotated_frames.items():
        if frames:
            unannotated += [sequences[key].frame(i) for i in range(sequences[key].frame_count) if i not in frames]
    check_unique_names(volumes + unannotated)
    inputs = TrainingInputs(classes, list(zip(volumes, indexed)), unannotated, initial_model=initial_model,
                            annotated_slices=chosen,
                            sequences=[(sequences[key].header_only(), sorted(frames))
                                       for key, frames in annotated_frames.items()])
    present = set().union(*(set(np.unique(_slices_of(lbl, volume, rows)).tolist())
                            for (volume, lbl), rows in zip(inputs.annotated, chosen)))
    if present <= {0}:  # annotated slices of background only: a model that segments nothing
        raise InputError(job.labeled[0][1] if job.labeled else job.labeled_frames[0][2],
                         "none of the annotated slices (--annotated-slices) holds a label; annotate at least "
                         "one structure on them")
    for index, c in enumerate(classes, start=1):
        if index not in present:
            inputs.warnings.append(f"class '{c.name}' appears in no annotated volume; it will not be learnt")
    for volume, (label_path, labels, _), rows in zip(volumes, raw, chosen):
        axis = slicing.canonical(volume.grid.direction_matrix, volume.grid.spacing).slice_axis
        ignored = [] if rows is None else sorted(set(slicing.labelled_slices(labels, axis)) - set(rows))
        if ignored:
            inputs.warnings.append(f"{label_path}: the labels of slices {', '.join(map(str, ignored))} are not in "
                                   "--annotated-slices; those slices are trained on as unannotated")
    if not unannotated and all(rows is None for rows in chosen):
        inputs.warnings.append(SUPERVISED_ONLY_WARNING)
    return inputs


def _read_3d(path: str, option: str) -> Volume:
    """A 3D volume; a 4D file is refused with the option that takes its frames."""
    if is_sequence(path):
        raise InputError(path, f"is a 4D image ({read_sequence(path).frame_count} frames); {option} takes a 3D "
                               "volume: give an annotated frame with --labeled-frame IMAGE FRAME LABEL")
    return read_volume(path)


def _annotated_sequences(job: TrainJob) -> tuple[dict[str, Sequence], dict[str, list[int]]]:
    """The 4D images of ``--labeled-frame`` (by absolute path) and their annotated frames, checked."""
    sequences: dict[str, Sequence] = {}
    frames: dict[str, list[int]] = {}
    for image, frame, _ in job.labeled_frames:
        key = os.path.abspath(image)
        if key not in sequences:
            if os.path.isfile(image) and not is_sequence(image):
                raise InputError(image, "is not a 4D image; --labeled-frame takes a frame of a 4D (cine) image "
                                        "(a 3D volume goes with --labeled IMAGE LABEL)")
            sequences[key] = read_sequence(image)
            frames[key] = []
        sequences[key].check_frame(frame)
        if frame in frames[key]:
            raise InputError(image, f"frame {frame} is given twice with --labeled-frame; annotate each frame once")
        frames[key].append(frame)
    return sequences, frames


def _annotated_slices(volume: Volume, label_path: str, labels: np.ndarray, text: str) -> list[int] | None:
    """The file slice indices ``text`` marks as annotated (None: every slice), checked."""
    axes = slicing.canonical(volume.grid.direction_matrix, volume.grid.spacing)
    count = labels.shape[axes.slice_axis]
    try:
        # Checked against the image before a range is expanded.
        spec = slicing.parse_spec(text, count, slicing.AXIS_NAMES[axes.slice_axis])
    except slicing.SliceSpecError as error:
        raise ConfigError(f"--annotated-slices for {volume.path}: {error}") from None
    if spec == slicing.ALL:
        return None
    try:
        rows = slicing.annotated_slices(spec, labels, axes.slice_axis)
    except slicing.SliceSpecError as error:
        raise ConfigError(f"--annotated-slices for {volume.path}: {error}") from None
    across = slicing.drawn_across(labels, axes.slice_axis)
    if across is not None:
        raise InputError(label_path, f"is drawn across the slices the engine trains on (its strokes are one voxel "
                                     f"thin along the {'kji'[across]} axis); paint in the {axes.view} view, "
                                     f"slices along the image's {'kji'[axes.slice_axis]} axis")
    if not rows:
        raise InputError(label_path, "has no annotated slice (--annotated-slices selects none that holds a label)"
                         if spec == slicing.LABELLED else "has no annotated slice")
    return rows


def slice_count(volume: Volume) -> int:
    axis = slicing.canonical(volume.grid.direction_matrix, volume.grid.spacing).slice_axis
    return int(volume.array.shape[axis])


def _slices_of(labels: np.ndarray, volume: Volume, rows: list[int] | None) -> np.ndarray:
    if rows is None:
        return labels
    axis = slicing.canonical(volume.grid.direction_matrix, volume.grid.spacing).slice_axis
    return np.take(labels, rows, axis=axis)

