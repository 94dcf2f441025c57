"""A prediction run (``plcl predict``): check every input first, then segment the volumes one at a
time through a Predictor and write each one's outputs. A training run's final predictions are
written here too (run_training hands over its in-memory model)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ... import __version__
from ..errors import Cancelled, InputError
from ..events import EventSink
from ..files.cine import Sequence, is_sequence, read_sequence
from ..files.outfolder import check_output_folder, hold_output_folder
from ..files.volumes import Volume, read_volume, volume_name, write_image
from ..method.modelfile import ModelInfo
from ..method.predictor import Prediction, Predictor, prepare
from ..method.preprocess import InPlaneFrame, PreparedVolume, slice_layout
from ..protocol import DEFAULT_BACKEND, DEFAULT_ESTIMATE, PREDICTIONS_FOLDER, SEQUENCES_FOLDER, UNCERTAINTY_FOLDER
from ..runtime import resolve_device
from ..slicing import AXIS_NAMES
from ..slicing import keep_annotated_slices as keep_slices
from .memory import release_freed_memory
from .sequence_outputs import LabelSequenceWriter, sequence_entry
from .summary import write_summary
from .writers import DEFAULT_SEG_FRAMES, SegmentationWriters, check_outputs, output_formats

# --- checks made before anything is written (training makes them too) --------------------------


def check_unique_names(volumes: list[Volume]) -> None:
    """Outputs are named after their inputs: two inputs of one name would overwrite each other."""
    seen: dict[str, str] = {}
    for v in volumes:
        if v.name in seen:
            raise InputError(v.path, f"has the same name '{v.name}' as {seen[v.name]}; input file names must differ")
        seen[v.name] = v.path


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


# --- the prediction run -------------------------------------------------------------------------


def run_prediction(model_path: str, images: list[str], out: str, device_name: str, sink: EventSink,
                   cancel: threading.Event | None = None, formats: list[str] | None = None,
                   seg_frames: str = DEFAULT_SEG_FRAMES, backend: str = DEFAULT_BACKEND,
                   precision: str = "auto", estimate: str = DEFAULT_ESTIMATE) -> dict[str, Any]:
    cancel = cancel or threading.Event()
    started = time.monotonic()
    check_outputs(formats, seg_frames, images)  # --format: a usage error before anything is read
    device = resolve_device(device_name)
    # A damaged or malformed model file: an error before any image is read. Loaded once for all images;
    # a backend that is not installed or not for this device is a usage error before that (Predictor.load).
    predictor = Predictor.load(model_path, device, precision, backend, estimate)
    info = predictor.info
    # Every image is read and checked first (one at a time, nothing kept but its name and grid, and
    # the first image's voxels: it is segmented first, so it is not read twice) ...
    checked: list[Volume] = []
    sequences: list[tuple[Sequence, list[int]]] = []
    first: Sequence | Volume | None = None
    for path in images:
        if is_sequence(path):  # a 4D image: each frame is a volume
            whole = read_sequence(path)
            first = whole if first is None else first
            sequence = whole.header_only()
            del whole
            sequences.append((sequence, []))
            checked += [Volume(name, path, np.empty((0, 0, 0), np.float32), sequence.grid)
                        for name in sequence.frame_names()]
            continue
        volume = read_volume(path)
        if first is None:
            first = replace(volume)
        volume.array = np.empty((0, 0, 0), np.float32)
        checked.append(volume)
    check_unique_names(checked)
    check_outputs(formats, seg_frames, images, [sequence for sequence, _ in sequences])
    outputs = SegmentationWriters(output_formats(formats), info.classes, model_path, seg_frames)
    out_path = Path(out)
    inputs = list(images) + [model_path]
    check_output_folder(out_path, inputs)
    check_slice_sizes(checked, info.target_spacing_mm, info.in_plane_reference)
    with hold_output_folder(out_path, inputs):
        sink.emit("start", command="predict", version=__version__, device=str(device),
                  precision=predictor.precision, backend=predictor.backend, out=str(out_path))
        # ... then read, predicted and written one at a time: memory stays flat for any number of images.
        volumes = _prepared_one_by_one(images, info, sink, first)
        del first  # the generator's reference is the only one: dropped once the first image is done
        entries, sequence_entries = write_predictions(predictor, volumes, len(checked), out_path, sink, cancel,
                                                      sequences, outputs)
        summary = write_summary("predict", out_path, info.classes, entries, sink,
                                extra={"model": str(Path(model_path).resolve()), "sequences": sequence_entries,
                                       "backend": predictor.backend, "precision": predictor.precision,
                                       "estimate": predictor.estimate,
                                       "quality_measure": predictor.quality_measure})
        sink.emit("done", out=str(out_path), elapsed_s=round(time.monotonic() - started, 2))
    return summary


def _prepared_one_by_one(images: list[str], info: ModelInfo, sink: EventSink,
                         first: Sequence | Volume | None = None) -> Iterator[PreparedVolume]:
    """Each image read (the first one as the checks read it), its volumes prepared one at a time."""
    for index, path in enumerate(images):
        read = first if index == 0 and first is not None else (read_sequence(path) if is_sequence(path)
                                                               else read_volume(path))
        first = None  # the caller's reference is the only one left: dropped with its frames
        frames = read.frames() if isinstance(read, Sequence) else iter([read])
        del read
        for volume in frames:  # a 4D image's voxels are read once, its frames made one at a time
            prepared, has_contrast = prepare(volume, info)
            if not has_contrast:
                where = path if volume.name == volume_name(path) else f"{path} ({volume.name})"
                sink.emit("warning", message=f"{where}: all voxels have the same intensity")
            del volume
            yield prepared


# --- writing each volume's outputs ----------------------------------------------------------------


@dataclass(frozen=True)
class AnnotatedSlices:
    """A volume annotated on some of its slices (``--annotated-slices``): its annotation's label values
    [k, j, i] on its grid, and those slices' file indices along the engine's slicing axis."""

    values: np.ndarray
    indices: list[int]


def keep_annotated_slices(prediction: Prediction, annotated: AnnotatedSlices,
                          names_values: list[tuple[str, int]]) -> Prediction:
    """The prediction with the annotated slices exactly as annotated: the user's labels, no uncertainty,
    none of them to review. Its structures' estimates stay the network's (a conservative reading of the
    volume: the annotated slices would only raise them)."""
    labels, uncertainty = prediction.labels.copy(), prediction.uncertainty.copy()
    keep_slices(labels, uncertainty, annotated.values, AXIS_NAMES.index(prediction.quality.slice_axis),
                annotated.indices)
    kept = set(annotated.indices)
    quality = replace(prediction.quality, slices=[s for s in prediction.quality.slices if s["index"] not in kept])
    counts = np.bincount(labels.ravel(), minlength=256)
    return replace(prediction, labels=labels, uncertainty=uncertainty, quality=quality,
                   voxels={name: int(counts[value]) for name, value in names_values})


def write_predictions(predictor: Predictor, volumes: Iterable[PreparedVolume], count: int, out: Path,
                      sink: EventSink, cancel: threading.Event,
                      sequences: list[tuple[Sequence, list[int]]] | None = None,
                      outputs: SegmentationWriters | None = None,
                      annotated: dict[str, AnnotatedSlices] | None = None
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Predict each volume and write its segmentation and uncertainty map; returns the summary's
    ``volumes`` and ``sequences`` entries.

    ``volumes`` may be a generator: each volume is then read, predicted, written and dropped before
    the next is read, so memory does not grow with the number of volumes. The frames of each of
    ``sequences`` (4D inputs, with their annotated frames) come among them, in frame order.
    ``outputs`` writes each segmentation in the formats asked for (run/writers.py; default .seg.nrrd).
    ``annotated``: by volume name, the annotated slices a volume's segmentation keeps (a training run's
    volumes annotated on some slices); its summary entry lists them as ``annotated_slices``.
    """
    annotated = annotated or {}
    names_values = [(c.name, c.value) for c in predictor.classes]
    sequences = sequences or []
    outputs = outputs or SegmentationWriters.default(predictor.classes, model_file=None)
    if not count:
        return [], []
    (out / PREDICTIONS_FOLDER).mkdir(parents=True, exist_ok=True)
    (out / UNCERTAINTY_FOLDER).mkdir(parents=True, exist_ok=True)
    if sequences:
        (out / SEQUENCES_FOLDER).mkdir(exist_ok=True)
    frame_of = {name: (sequence, index) for sequence, _ in sequences
                for index, name in enumerate(sequence.frame_names())}
    writers: dict[str, LabelSequenceWriter] = {}
    written: dict[str, Path] = {}
    sink.emit("stage", stage="predict", round=0, total=count)
    entries = []
    iterator = iter(volumes)
    while len(entries) < count:
        if cancel.is_set():
            raise Cancelled(None)
        group = [next(iterator)]
        if group[0].volume.name in frame_of:  # the next frames of its sequence follow: one network pass
            sequence, frame = frame_of[group[0].volume.name]
            size = min(predictor.frames_per_pass(group[0]), sequence.frame_count - frame, count - len(entries))
            group += [next(iterator) for _ in range(size - 1)]
            names = sequence.frame_names()[frame:frame + size]
            if [p.volume.name for p in group] != names:
                raise RuntimeError(f"frames of {sequence.name} out of order: {[p.volume.name for p in group]}")
        # Each volume is mapped onto its grid and written before the next is mapped.
        for prepared, prediction in zip(group, predictor.predict_group(group)):
            frame_info = frame_of.get(prepared.volume.name)
            known = annotated.get(prepared.volume.name)
            if known is not None:
                prediction = keep_annotated_slices(prediction, known, names_values)
            entry = _write_one(prepared.volume, prediction, out, sink, outputs, frame_info)
            if known is not None:
                entry["annotated_slices"] = list(known.indices)
            if frame_info is not None:
                sequence, frame = frame_info
                entry.update(sequence=sequence.name, frame=frame)
                writer = writers.setdefault(sequence.name, LabelSequenceWriter(
                    out / SEQUENCES_FOLDER / f"{sequence.name}.seq.nrrd", sequence))
                if writer.add(frame, prediction.labels):
                    written[sequence.name] = writer.path
                    sink.emit("output", kind="sequence", path=str(writer.path), name=sequence.name)
            entries.append(entry)
            if frame_info is not None and frame_info[1] == frame_info[0].frame_count - 1:  # its SEGs, if asked
                outputs.finish_sequence(frame_info[0], {e["name"]: e for e in entries}, out, sink)
            sink.emit("quality", name=entry["name"], frame=entry.get("frame"), structures=entry["structures"],
                      worst_slice=prediction.quality.worst_slice)
            sink.emit("progress", stage="predict", iteration=len(entries), total=count, losses={},
                      elapsed_s=0.0, eta_s=0.0, slices_per_s=0.0)
        del group, prepared, prediction  # before the next volumes are read
        release_freed_memory()  # the group's arrays' free pages: the next group starts without them
    by_name = {e["name"]: e for e in entries}
    return entries, [sequence_entry(sequence, annotated, by_name, predictor.classes, written.get(sequence.name), out,
                                    sink)
                     for sequence, annotated in sequences]


def _write_one(volume: Volume, prediction: Prediction, out: Path, sink: EventSink, outputs: SegmentationWriters,
               frame: tuple[Sequence, int] | None = None) -> dict[str, Any]:
    """Write one volume's segmentation (in each format) and uncertainty on its grid; returns its summary entry."""
    started = time.monotonic()
    unc_path = out / UNCERTAINTY_FOLDER / f"{volume.name}.nrrd"
    files = outputs.write(volume, prediction.labels, out, sink, frame)
    # Two decimals are plenty for review and make the map compress several times smaller.
    write_image(unc_path, np.round(prediction.uncertainty, 2), volume.grid)
    sink.emit("output", kind="uncertainty", path=str(unc_path), name=volume.name)
    return {"name": volume.name, "image": volume.path, "segmentation": files.get("seg.nrrd", [None])[0],
            "files": files, "uncertainty": str(unc_path), "uncertainty_score": round(prediction.score, 5),
            "voxels": prediction.voxels, "seconds": round(prediction.seconds + time.monotonic() - started, 3),
            "slice_axis": prediction.quality.slice_axis, "structures": prediction.quality.structures,
            "slices": prediction.quality.slices}
