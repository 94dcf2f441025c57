"""A training run (``plcl train``): check every input first, train (or resume) with checkpoints and
snapshots, save the model file, then segment the unannotated volumes (and those annotated on some
slices, those slices kept) through the prediction run's writer (prediction.py). protocol.py names the
run folder's files."""

from __future__ import annotations

import dataclasses
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ... import __version__
from ..config import TrainConfig
from ..errors import InputError
from ..events import EventSink
from ..files.outfolder import check_output_folder, hold_output_folder
from ..files.volumes import Volume
from ..method.modelfile import ModelInfo, save_model
from ..method.predictor import Predictor
from ..method.preprocess import InPlaneFrame, PreparedVolume, in_plane_frame, prepare_volume, slice_layout, stack_mask
from ..method.quality import annotated_slice_coverage
from ..method.train import Checkpoint, Trainer
from ..protocol import CHECKPOINT_FILE, JOB_FILE, MODEL_FILE, SNAPSHOTS_FOLDER, TRAINING_FILE
from ..request import TrainJob, job_digest
from ..runtime import autocast_dtype, precision_name, resolve_device
from .inputs import SUPERVISED_ONLY_WARNING, TrainingInputs, read_training_inputs, slice_count
from .prediction import AnnotatedSlices, check_slice_sizes, write_predictions
from .summary import write_json, write_summary
from .writers import SegmentationWriters, check_outputs, output_formats


def target_spacing(config: TrainConfig, volumes: list[Volume]) -> float:
    if config.target_spacing_mm:
        return float(config.target_spacing_mm)
    return float(statistics.median(float(np.mean(slice_layout(v.grid).in_plane_spacing)) for v in volumes))


#: The settings that shape the network: a warm start (--init-model) keeps the model's.
ARCHITECTURE_SETTINGS = ("base_channels", "levels", "embedding_dim", "embedding_levels", "slice_context")


def warm_start_config(path: str, info: ModelInfo, config: TrainConfig) -> TrainConfig:
    """``config`` with the network of the warm start's model: settings left at their defaults take the model's
    values (the Slicer module passes none); one set to another value is an InputError naming the file."""
    defaults = TrainConfig()
    differ = [f"{name} {getattr(info, name)} (settings: {getattr(config, name)})" for name in ARCHITECTURE_SETTINGS
              if getattr(config, name) not in (getattr(info, name), getattr(defaults, name))]
    if differ:
        raise InputError(path, f"its network has {', '.join(differ)}; a warm start keeps the model's network: "
                               "drop or match those --set options")
    return dataclasses.replace(config, **{name: getattr(info, name) for name in ARCHITECTURE_SETTINGS})


def run_training(job: TrainJob, sink: EventSink, cancel: threading.Event | None = None,
                 resume: bool = False) -> dict[str, Any]:
    cancel = cancel or threading.Event()
    job = job.absolute()
    device = resolve_device(job.config.device)
    inputs = read_training_inputs(job)
    initial_info, initial = inputs.initial_model or (None, None)
    if initial_info is not None:
        job = dataclasses.replace(job, config=warm_start_config(job.init_model, initial_info, job.config))
    config = job.config
    segmented = (job.unlabeled + [image for image, _, _ in job.labeled_frames]
                 + [inputs.annotated[index][0].path for index in inputs.partly_annotated()])
    check_outputs(job.formats, job.dicom_seg_frames, segmented, [sequence for sequence, _ in inputs.sequences])
    out = Path(job.out)
    read = job.inputs()
    check_output_folder(out, read, resume)
    spacing = target_spacing(config, [v for v, _ in inputs.annotated])
    reference = reference_frame([v for v, _ in inputs.annotated], initial_info)
    check_slice_sizes([v for v, _ in inputs.annotated] + inputs.unannotated, spacing, reference)
    checkpoint = _read_checkpoint(out / CHECKPOINT_FILE) if resume and (out / CHECKPOINT_FILE).exists() else None
    if checkpoint is not None and checkpoint.run not in (None, job_digest(job)):
        raise InputError(str(out / CHECKPOINT_FILE), "was written by another run (its inputs or settings differ "
                                                     "from this folder's job.json); start a new run with another "
                                                     "--out folder")
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
        write_json(out / JOB_FILE, job.to_dict())

    sink.emit("stage", stage="prepare", round=0, total=len(inputs.annotated) + len(inputs.unannotated))
    num_classes = len(inputs.classes) + 1
    annotated = [_prepare(v, spacing, config, sink, labels, num_classes, reference)
                 for v, labels in inputs.annotated]
    for prepared, rows in zip(annotated, inputs.annotated_slices):
        if rows is not None:
            prepared.annotated = stack_mask(prepared.layout, rows)
    # Which slices taught the segmentation loss, for the model's record and the summary.
    slice_record = [{"image": v.path, "spec": spec, "slices": slice_count(v),
                     "annotated": slice_count(v) if rows is None else len(rows), "indices": rows}
                    for (v, _), spec, rows in zip(inputs.annotated, job.slice_specs(), inputs.annotated_slices)]
    unannotated = [_prepare(v, spacing, config, sink, reference=reference) for v in inputs.unannotated]
    if config.rounds and not unannotated and not any(v.partial for v in annotated):
        # Nothing to pseudo-label (e.g. "labelled" on volumes labelled on every slice): supervised only.
        config = config.supervised_only()
        if inputs.annotated_slices and any(rows is not None for rows in inputs.annotated_slices):
            sink.emit("warning", message=SUPERVISED_ONLY_WARNING)

    trainer = Trainer(config, num_classes, annotated, unannotated, sink, device,
                      checkpoint_path=out / CHECKPOINT_FILE, cancel=cancel, initial_weights=initial)
    trainer.run_tag = job_digest(job)
    if checkpoint is not None:
        try:
            trainer.restore(checkpoint)
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError):
            raise InputError(str(out / CHECKPOINT_FILE), "does not fit this run's network and volumes (another "
                                                         "run's checkpoint?); start a new run with another --out "
                                                         "folder") from None
    train_started = time.monotonic()
    start_iteration = trainer.iteration

    # How far each structure reaches in the annotated whole volumes, for the quality estimate of the model's
    # predictions (what each borders: the trainer's, which its clean-up uses too).
    annotated_stacks = [(v.labels.numpy(), None if v.annotated is None else v.annotated.numpy()) for v in annotated]
    coverage = annotated_slice_coverage(annotated_stacks, num_classes)

    def model_info() -> ModelInfo:
        return ModelInfo(
            classes=inputs.classes, target_spacing_mm=spacing, patch_size=config.patch_size,
            base_channels=config.base_channels, levels=config.levels, embedding_dim=config.embedding_dim,
            embedding_levels=config.embedding_levels, slice_context=config.slice_context,
            intensity_percentiles=tuple(config.intensity_percentiles), inference_tile=config.inference_tile,
            inference_overlap=config.inference_overlap, largest_component=config.largest_component,
            in_plane_reference=reference, neighbour_shares=trainer.neighbour_shares, slice_coverage=coverage,
            single_objects=trainer.single_objects,
            training={"annotated": [v.path for v, _ in inputs.annotated], "annotated_slices": slice_record,
                      "unannotated": [v.path for v in inputs.unannotated],
                      "iterations": trainer.iteration, "train_seconds": round(time.monotonic() - train_started, 2),
                      "budget": config.budget, "seed": config.seed, "config": config.to_dict(),
                      "date": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def snapshot(index: int, iteration: int) -> None:
        path = out / SNAPSHOTS_FOLDER / f"model_{index:02d}.pt"
        path.parent.mkdir(exist_ok=True)
        save_model(path, trainer.final_model, model_info())
        sink.emit("output", kind="snapshot", path=str(path), name=None)

    trainer.on_snapshot = snapshot
    model = trainer.run()
    train_seconds = time.monotonic() - train_started
    info = model_info()
    save_model(out / MODEL_FILE, model, info)
    sink.emit("output", kind="model", path=str(out / MODEL_FILE), name=None)
    iterations_run = trainer.iteration - start_iteration
    write_json(out / TRAINING_FILE, {
        "device": str(device), "precision": precision, "train_seconds": train_seconds, "iterations": iterations_run,
        "resumed_at_iteration": None if checkpoint is None else start_iteration,
        "slices": trainer.slices_seen, "slices_per_s": trainer.slices_seen / max(train_seconds, 1e-9),
        "seconds_per_iteration": train_seconds / max(1, iterations_run), "losses": trainer.loss_history})

    # Every frame of a 4D input is segmented, its annotated frames too: a curve from predictions alone.
    # A volume annotated on some slices is segmented too, those slices kept as annotated: the user who
    # annotated (or, in Slicer, accepted) a few slices gets the rest of the volume from this model.
    frame_names = {n for sequence, _ in inputs.sequences for n in sequence.frame_names()}
    by_name = {p.volume.name: p for p in annotated + unannotated}
    values = np.array([0] + [c.value for c in inputs.classes], dtype=np.uint8)
    partial = {annotated[i].volume.name: AnnotatedSlices(values[inputs.annotated[i][1]], inputs.annotated_slices[i])
               for i in inputs.partly_annotated()}
    to_predict = [p for p in unannotated if p.volume.name not in frame_names]
    to_predict += [p for p in annotated if p.volume.name in partial]
    to_predict += [by_name[n] for sequence, _ in inputs.sequences for n in sequence.frame_names()]
    outputs = SegmentationWriters(output_formats(job.formats), info.classes, out / MODEL_FILE, job.dicom_seg_frames)
    predictor = Predictor(model, info, device)
    entries, sequences = write_predictions(predictor, to_predict, len(to_predict), out, sink,
                                           cancel, inputs.sequences, outputs, partial)
    summary = write_summary("train", out, info.classes, entries, sink,
                            extra={"train_seconds": round(train_seconds, 2), "iterations": trainer.iteration,
                                   "annotated_slices": slice_record, "sequences": sequences,
                                   "quality_measure": predictor.quality_measure})
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

