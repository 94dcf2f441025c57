"""Jobs from files to files: check every input first, train or load a model, write the outputs.

Output folder layout::

    OUT/job.json                    the job, for --resume
    OUT/checkpoint.pt               training state (also written on cancel)
    OUT/model.pt                    the model file (see modelfile.py)
    OUT/training.json               loss history and timings
    OUT/predictions/<name>.seg.nrrd segmentation of each unannotated volume, on its grid
    OUT/uncertainty/<name>.nrrd     normalised predictive entropy per voxel, on its grid
    OUT/sequences/<name>.seq.nrrd   a 4D input's segmentation, all frames, as a label map sequence
    OUT/sequences/<name>.curve.png  its volume curves (sequence_outputs.py)
    OUT/summary.json                classes, outputs and uncertainty scores (least certain first)
    OUT/.plcl.lock                  held while a run writes here (see outfolder.py)

A new run needs a folder without an earlier run's outputs; ``--resume`` continues in its own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ... import __version__
from .. import slicing
from ..config import TrainConfig
from ..errors import ConfigError, InputError
from ..events import EventSink
from ..files.cine import Sequence, is_sequence, read_sequence
from ..files.outfolder import check_output_folder, hold_output_folder
from ..files.volumes import (
    ClassInfo,
    Volume,
    atomic_path,
    check_annotation,
    read_annotation,
    read_volume,
    volume_name,
    write_image,
    write_segmentation,
)
from ..method.modelfile import ModelInfo, build_model, read_model, save_model
from ..method.predict import keep_largest_components, map_to_volume, predict_slices
from ..method.preprocess import InPlaneFrame, PreparedVolume, in_plane_frame, prepare_volume, slice_layout, stack_mask
from ..method.train import Checkpoint, Trainer
from ..protocol import OUTPUT_KINDS, SUMMARY_FILE
from ..request import TrainJob
from ..runtime import autocast_dtype, precision_name, resolve_device
from .sequence_outputs import SEQUENCES_FOLDER, LabelSequenceWriter, sequence_entry

UNCERTAINTY_MEASURE = ("normalised predictive entropy of the softmax, -sum(p log p) / log(C), per voxel in "
                       "[0, 1]; a volume's score is its mean over the voxels predicted as foreground "
                       "(1.0 when none is)")






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


# --- reading and checking ---------------------------------------------------------------------


def _check_unique_names(volumes: list[Volume]) -> None:
    seen: dict[str, str] = {}
    for v in volumes:
        if v.name in seen:
            raise InputError(v.path, f"has the same name '{v.name}' as {seen[v.name]}; input file names must differ")
        seen[v.name] = v.path


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
    from ..files.volumes import DEFAULT_COLORS

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
    _check_unique_names(volumes + unannotated)
    inputs = TrainingInputs(classes, list(zip(volumes, indexed)), unannotated, initial_model=initial_model,
                            annotated_slices=chosen,
                            sequences=[(sequences[key].header_only(), sorted(frames))
                                       for key, frames in annotated_frames.items()])
    present = set().union(*(set(np.unique(_slices_of(lbl, volume, rows)).tolist())
                            for (volume, lbl), rows in zip(inputs.annotated, chosen)))
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
        inputs.warnings.append("no unannotated volume: training supervised only (no pseudo-labels, no "
                               "contrastive loss)")
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


#: Slices are resampled to the target pixel size; outside these sizes (pixels per side) the
#: spacing is wrong (a typo, a unit error) or the image is no image for this model.
SLICE_PIXELS = (8, 8192)


def check_slice_sizes(volumes: list[Volume], spacing: float, reference: InPlaneFrame | None) -> None:
    """Each volume's slices at the target pixel size, before any allocation: a spacing off by
    orders of magnitude would otherwise mean 1x1-pixel slices or terabytes."""
    low, high = SLICE_PIXELS
    for v in volumes:
        layout = slice_layout(v.grid, reference)
        rows, cols = layout.resampled_shape(spacing)
        if not (low <= rows <= high and low <= cols <= high):
            native = "x".join(f"{s:g}" for s in layout.in_plane_spacing)
            raise InputError(v.path, f"slices would be {rows}x{cols} pixels at {spacing:.4g} mm (its pixels are "
                                     f"{native} mm); {low} to {high} pixels a side are supported: check its spacing")


def _annotated_slices(volume: Volume, label_path: str, labels: np.ndarray, text: str) -> list[int] | None:
    """The file slice indices ``text`` marks as annotated (None: every slice), checked."""
    try:
        spec = slicing.parse_spec(text)
    except slicing.SliceSpecError as error:
        raise ConfigError(f"{volume.path}: {error}") from None
    if spec == slicing.ALL:
        return None
    axes = slicing.canonical(volume.grid.direction_matrix, volume.grid.spacing)
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


def _slice_count(volume: Volume) -> int:
    axis = slicing.canonical(volume.grid.direction_matrix, volume.grid.spacing).slice_axis
    return int(volume.array.shape[axis])


def _slices_of(labels: np.ndarray, volume: Volume, rows: list[int] | None) -> np.ndarray:
    if rows is None:
        return labels
    axis = slicing.canonical(volume.grid.direction_matrix, volume.grid.spacing).slice_axis
    return np.take(labels, rows, axis=axis)


# --- training ---------------------------------------------------------------------------------


def target_spacing(config: TrainConfig, volumes: list[Volume]) -> float:
    if config.target_spacing_mm:
        return float(config.target_spacing_mm)
    return float(statistics.median(float(np.mean(slice_layout(v.grid).in_plane_spacing)) for v in volumes))


def run_training(job: TrainJob, sink: EventSink, cancel: threading.Event | None = None,
                 resume: bool = False) -> dict[str, Any]:
    cancel = cancel or threading.Event()
    job = job.absolute()
    config = job.config
    device = resolve_device(config.device)
    inputs = read_training_inputs(job)
    out = Path(job.out)
    read = job.inputs()
    check_output_folder(out, read, resume)
    spacing = target_spacing(config, [v for v, _ in inputs.annotated])
    initial_info, initial = inputs.initial_model or (None, None)
    reference = reference_frame([v for v, _ in inputs.annotated], initial_info)
    check_slice_sizes([v for v, _ in inputs.annotated] + inputs.unannotated, spacing, reference)
    checkpoint = _read_checkpoint(out / "checkpoint.pt") if resume and (out / "checkpoint.pt").exists() else None
    with hold_output_folder(out, read, resume):
        return _train(job, inputs, sink, cancel, device, spacing, reference, initial, checkpoint)


def _train(job: TrainJob, inputs: TrainingInputs, sink: EventSink, cancel: threading.Event, device: torch.device,
           spacing: float, reference: InPlaneFrame, initial: dict[str, torch.Tensor] | None,
           checkpoint: Checkpoint | None) -> dict[str, Any]:
    started = time.monotonic()
    config = job.config
    out = Path(job.out)
    precision = precision_name(autocast_dtype(config.precision, device))
    sink.emit("start", command="train", version=__version__, device=str(device), precision=precision, out=str(out))
    for message in inputs.warnings:
        sink.emit("warning", message=message)
    if checkpoint is None:  # a resumed run keeps its job.json
        _write_json(out / "job.json", job.to_dict())

    sink.emit("stage", stage="prepare", round=0, total=len(inputs.annotated) + len(inputs.unannotated))
    num_classes = len(inputs.classes) + 1
    annotated = [_prepare(v, spacing, config, sink, labels, num_classes, reference)
                 for v, labels in inputs.annotated]
    for prepared, rows in zip(annotated, inputs.annotated_slices):
        if rows is not None:
            prepared.annotated = stack_mask(prepared.layout, rows)
    # Which slices taught the segmentation loss, for the model's record and the summary.
    slice_record = [{"image": v.path, "spec": spec, "slices": _slice_count(v),
                     "annotated": _slice_count(v) if rows is None else len(rows), "indices": rows}
                    for (v, _), spec, rows in zip(inputs.annotated, job.slice_specs(), inputs.annotated_slices)]
    unannotated = [_prepare(v, spacing, config, sink, reference=reference) for v in inputs.unannotated]
    if config.rounds and not unannotated and not any(v.partial for v in annotated):
        # Nothing to pseudo-label (e.g. "labelled" on volumes labelled on every slice): supervised only.
        config = config.supervised_only()

    trainer = Trainer(config, num_classes, annotated, unannotated, sink, device,
                      checkpoint_path=out / "checkpoint.pt", cancel=cancel, initial_weights=initial)
    if checkpoint is not None:
        trainer.restore(checkpoint)
    train_started = time.monotonic()
    start_iteration = trainer.iteration

    def model_info() -> ModelInfo:
        return ModelInfo(
            classes=inputs.classes, target_spacing_mm=spacing, patch_size=config.patch_size,
            base_channels=config.base_channels, levels=config.levels, embedding_dim=config.embedding_dim,
            intensity_percentiles=tuple(config.intensity_percentiles), inference_tile=config.inference_tile,
            inference_overlap=config.inference_overlap, largest_component=config.largest_component,
            in_plane_reference=reference,
            training={"annotated": [v.path for v, _ in inputs.annotated], "annotated_slices": slice_record,
                      "unannotated": [v.path for v in inputs.unannotated],
                      "iterations": trainer.iteration, "train_seconds": round(time.monotonic() - train_started, 2),
                      "budget": config.budget, "seed": config.seed, "config": config.to_dict(),
                      "date": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def snapshot(index: int, iteration: int) -> None:
        path = out / "snapshots" / f"model_{index:02d}.pt"
        path.parent.mkdir(exist_ok=True)
        save_model(path, trainer.final_model, model_info())
        sink.emit("output", kind="snapshot", path=str(path), name=None)

    trainer.on_snapshot = snapshot
    model = trainer.run()
    train_seconds = time.monotonic() - train_started
    info = model_info()
    save_model(out / "model.pt", model, info)
    sink.emit("output", kind="model", path=str(out / "model.pt"), name=None)
    iterations_run = trainer.iteration - start_iteration
    _write_json(out / "training.json", {
        "device": str(device), "precision": precision, "train_seconds": train_seconds, "iterations": iterations_run,
        "resumed_at_iteration": None if checkpoint is None else start_iteration,
        "slices": trainer.slices_seen, "slices_per_s": trainer.slices_seen / max(train_seconds, 1e-9),
        "seconds_per_iteration": train_seconds / max(1, iterations_run), "losses": trainer.loss_history})

    # Every frame of a 4D input is segmented, its annotated frames too: a curve from predictions alone.
    frame_names = {n for sequence, _ in inputs.sequences for n in sequence.frame_names()}
    by_name = {p.volume.name: p for p in annotated + unannotated}
    to_predict = [p for p in unannotated if p.volume.name not in frame_names]
    to_predict += [by_name[n] for sequence, _ in inputs.sequences for n in sequence.frame_names()]
    entries, sequences = write_predictions(model, info, to_predict, len(to_predict), out, sink, cancel, device,
                                           inputs.sequences)
    summary = _summary("train", out, info, entries, sink, extra={"train_seconds": round(train_seconds, 2),
                                                           "iterations": trainer.iteration,
                                                           "annotated_slices": slice_record,
                                                           "sequences": sequences})
    sink.emit("done", out=str(out), elapsed_s=round(time.monotonic() - started, 2))
    return summary


def _read_checkpoint(path: Path) -> Checkpoint:
    try:
        return Checkpoint.load(path)
    except Exception:  # unpickling errors have many types; a damaged file is the user's to know
        raise InputError(str(path), "cannot be read as a checkpoint of this tool (damaged?); start a new run "
                                    "with another --out folder") from None


def reference_frame(annotated: list[Volume], initial: ModelInfo | None = None) -> InPlaneFrame:
    """The in-plane frame every volume is sliced to match: a warm-started model's, else the first
    annotated volume's."""
    if initial is not None and initial.in_plane_reference is not None:
        return initial.in_plane_reference
    grid = annotated[0].grid
    return in_plane_frame(slice_layout(grid), grid)


def _prepare(volume: Volume, spacing: float, config: TrainConfig, sink: EventSink,
             labels: np.ndarray | None = None, num_classes: int = 0,
             reference: InPlaneFrame | None = None) -> PreparedVolume:
    prepared, has_contrast = prepare_volume(volume, spacing, tuple(config.intensity_percentiles), labels,
                                            num_classes, reference)
    if not has_contrast:
        sink.emit("warning", message=f"{volume.path}: all voxels have the same intensity")
    return prepared


# --- prediction -------------------------------------------------------------------------------


def write_predictions(model: torch.nn.Module, info: ModelInfo, volumes: Iterable[PreparedVolume], count: int,
                      out: Path, sink: EventSink, cancel: threading.Event, device: torch.device,
                      sequences: list[tuple[Sequence, list[int]]] | None = None
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Predict each volume and write its segmentation and uncertainty map; returns the summary's
    ``volumes`` and ``sequences`` entries.

    ``volumes`` may be a generator: each volume is then read, predicted, written and dropped before
    the next is read, so memory does not grow with the number of volumes. The frames of each of
    ``sequences`` (4D inputs, with their annotated frames) come among them, in frame order.
    """
    from ..errors import Cancelled

    sequences = sequences or []
    if not count:
        return [], []
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    (out / "uncertainty").mkdir(parents=True, exist_ok=True)
    if sequences:
        (out / SEQUENCES_FOLDER).mkdir(exist_ok=True)
    frame_of = {name: (sequence, index) for sequence, _ in sequences
                for index, name in enumerate(sequence.frame_names())}
    writers: dict[str, LabelSequenceWriter] = {}
    written: dict[str, Path] = {}
    sink.emit("stage", stage="predict", round=0, total=count)
    model.to(memory_format=torch.channels_last)  # faster convolutions on CPUs and tensor cores
    entries = []
    values = np.array([0] + [c.value for c in info.classes], dtype=np.uint8)
    iterator = iter(volumes)
    while len(entries) < count:
        if cancel.is_set():
            raise Cancelled(None)
        group = [next(iterator)]
        if group[0].volume.name in frame_of:  # the next frames of its sequence follow: one network pass
            sequence, frame = frame_of[group[0].volume.name]
            size = min(_frames_per_pass(group[0], info.num_classes, device), sequence.frame_count - frame,
                       count - len(entries))
            group += [next(iterator) for _ in range(size - 1)]
            names = sequence.frame_names()[frame:frame + size]
            if [p.volume.name for p in group] != names:
                raise RuntimeError(f"frames of {sequence.name} out of order: {[p.volume.name for p in group]}")
        started = time.monotonic()
        probs = predict_slices(model, torch.cat([p.images for p in group]), info.num_classes, info.inference_tile,
                               info.inference_overlap, 2 ** (info.levels - 1), device, channels_last=True,
                               autocast=autocast_dtype("auto", device))
        seconds = (time.monotonic() - started) / len(group)
        offset = 0
        for prepared in group:
            slices = prepared.images.shape[0]
            entry, labels = _write_one(info, prepared, probs[offset:offset + slices], values, out, sink, seconds)
            offset += slices
            if entry["name"] in frame_of:
                sequence, frame = frame_of[entry["name"]]
                entry.update(sequence=sequence.name, frame=frame)
                writer = writers.setdefault(sequence.name, LabelSequenceWriter(
                    out / SEQUENCES_FOLDER / f"{sequence.name}.seq.nrrd", sequence))
                if writer.add(frame, labels):
                    written[sequence.name] = writer.path
                    sink.emit("output", kind="sequence", path=str(writer.path), name=sequence.name)
            entries.append(entry)
            sink.emit("progress", stage="predict", iteration=len(entries), total=count, losses={},
                      elapsed_s=0.0, eta_s=0.0, slices_per_s=0.0)
        del group, probs  # before the next volumes are read
    by_name = {e["name"]: e for e in entries}
    return entries, [sequence_entry(sequence, annotated, by_name, info.classes, written.get(sequence.name), out, sink)
                     for sequence, annotated in sequences]


#: Slices of one network pass over consecutive frames of a 4D image (in batches of predict_slices'
#: size): frames of ten slices would otherwise end each pass with a batch of two, at a quarter of
#: the throughput on a CPU. Bounded also by the probabilities it holds (floats).
PASS_BATCHES = 5
PASS_FLOATS = 2 ** 26


def _frames_per_pass(prepared: PreparedVolume, num_classes: int, device: torch.device) -> int:
    slices, height, width = prepared.images.shape
    batch = 8 if device.type == "cpu" else 64  # predict_slices' default batch sizes
    return max(1, min(PASS_BATCHES * batch // max(1, slices), PASS_FLOATS // max(1, slices * height * width *
                                                                                  num_classes)))


def _write_one(info: ModelInfo, prepared: PreparedVolume, probs: torch.Tensor, values: np.ndarray, out: Path,
               sink: EventSink, network_seconds: float) -> tuple[dict[str, Any], np.ndarray]:
    """Map one volume's slice probabilities onto its grid, write its segmentation and uncertainty;
    returns its summary entry and the label values written."""
    started = time.monotonic() - network_seconds
    result = map_to_volume(prepared, probs)
    del probs
    labels = result.labels
    if info.largest_component:
        labels = keep_largest_components(labels, info.num_classes)
    volume = prepared.volume
    seg_path = out / "predictions" / f"{volume.name}.seg.nrrd"
    unc_path = out / "uncertainty" / f"{volume.name}.nrrd"
    labels_written = values[labels]
    write_segmentation(seg_path, labels_written, volume.grid, info.classes)
    sink.emit("output", kind="prediction", path=str(seg_path), name=volume.name)
    # Two decimals are plenty for review and make the map compress several times smaller.
    write_image(unc_path, np.round(result.uncertainty, 2), volume.grid)
    sink.emit("output", kind="uncertainty", path=str(unc_path), name=volume.name)
    counts = np.bincount(labels.ravel(), minlength=info.num_classes)
    return {"name": volume.name, "image": volume.path, "segmentation": str(seg_path),
            "uncertainty": str(unc_path), "uncertainty_score": round(result.score, 5),
            "voxels": {c.name: int(counts[i]) for i, c in enumerate(info.classes, 1)},
            "seconds": round(time.monotonic() - started, 3)}, labels_written


def run_prediction(model_path: str, images: list[str], out: str, device_name: str, sink: EventSink,
                   cancel: threading.Event | None = None) -> dict[str, Any]:
    cancel = cancel or threading.Event()
    started = time.monotonic()
    device = resolve_device(device_name)
    info, state = read_model(model_path)  # a damaged or malformed model file: an error before any image is read
    # Every image is read and checked first (one at a time, nothing kept but its name and grid) ...
    checked: list[Volume] = []
    sequences: list[tuple[Sequence, list[int]]] = []
    for path in images:
        if is_sequence(path):  # a 4D image: each frame is a volume
            sequence = read_sequence(path).header_only()
            sequences.append((sequence, []))
            checked += [Volume(name, path, np.empty((0, 0, 0), np.float32), sequence.grid)
                        for name in sequence.frame_names()]
            continue
        volume = read_volume(path)
        volume.array = np.empty((0, 0, 0), np.float32)
        checked.append(volume)
    _check_unique_names(checked)
    out_path = Path(out)
    inputs = list(images) + [model_path]
    check_output_folder(out_path, inputs)
    check_slice_sizes(checked, info.target_spacing_mm, info.in_plane_reference)
    with hold_output_folder(out_path, inputs):
        sink.emit("start", command="predict", version=__version__, device=str(device),
                  precision=precision_name(autocast_dtype("auto", device)), out=str(out_path))
        model = build_model(model_path, info, state, device)
        # ... then read, predicted and written one at a time: memory stays flat for any number of images.
        entries, sequence_entries = write_predictions(model, info, _prepared_one_by_one(images, info, sink),
                                                      len(checked), out_path, sink, cancel, device, sequences)
        summary = _summary("predict", out_path, info, entries, sink,
                           extra={"model": str(Path(model_path).resolve()), "sequences": sequence_entries})
        sink.emit("done", out=str(out_path), elapsed_s=round(time.monotonic() - started, 2))
    return summary


def _prepared_one_by_one(images: list[str], info: ModelInfo, sink: EventSink) -> Iterator[PreparedVolume]:
    percentiles = tuple(info.intensity_percentiles)
    for path in images:
        frames = read_sequence(path).frames() if is_sequence(path) else iter([read_volume(path)])
        for volume in frames:  # a 4D image's voxels are read once, its frames made one at a time
            prepared, has_contrast = prepare_volume(volume, info.target_spacing_mm, percentiles,
                                                    reference=info.in_plane_reference)
            if not has_contrast:
                where = path if volume.name == volume_name(path) else f"{path} ({volume.name})"
                sink.emit("warning", message=f"{where}: all voxels have the same intensity")
            del volume
            yield prepared


def _summary(command: str, out: Path, info: ModelInfo, entries: list[dict[str, Any]], sink: EventSink,
             extra: dict[str, Any]) -> dict[str, Any]:
    files = {"model": "model.pt", "checkpoint": "checkpoint.pt", "training": "training.json", "job": "job.json"}
    outputs = {kind: str(out / files[kind]) if command == "train" and (out / files[kind]).is_file() else None
               for kind in OUTPUT_KINDS}
    summary = {
        "version": __version__, "command": command,
        "model": str(out / "model.pt") if command == "train" else extra.pop("model", None),
        "outputs": outputs,
        "classes": [c.to_dict() for c in info.classes],
        "uncertainty_measure": UNCERTAINTY_MEASURE,
        "volumes": sorted(entries, key=lambda e: -e["uncertainty_score"]),
        **extra,
    }
    _write_json(out / SUMMARY_FILE, summary)
    sink.emit("output", kind="summary", path=str(out / SUMMARY_FILE), name=None)
    return summary


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
