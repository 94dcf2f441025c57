"""One shard of a cohort (``plcl predict --inputs LIST --shard I/N --skip-existing``).

Inputs are streamed from the list; each one is read, segmented, written and recorded before the
next is read, so memory does not grow with the cohort. An input that cannot be read or makes no
sense (a torn file, an absurd spacing) is recorded in the shard's failures file and the shard goes
on; a full disk or a damaged model stops it. A stop request (SIGTERM from a scheduler, SIGINT, the
stop file) lets the input under way finish and be recorded, then ends the shard with EXIT_CANCELLED:
a requeued task with --skip-existing starts at the next input. The folder's layout is in
cohort_folder.py and docs/protocol.md.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ... import __version__
from ..errors import DISK_FULL_ERRNOS, Cancelled, InputError, OutputError
from ..events import EventSink
from ..files.cine import is_sequence, read_sequence
from ..files.input_list import Entry, check_entry, read_inputs, unique_inputs
from ..files.outfolder import check_inputs_outside_outputs
from ..files.volumes import Volume, check_writable_folder, read_volume
from ..method.predictor import Predictor, prepare
from ..protocol import (
    DEFAULT_ESTIMATE,
    EXIT_DONE_WITH_FAILURES,
    EXIT_OK,
    PREDICTIONS_FOLDER,
    SEQUENCES_FOLDER,
    UNCERTAINTY_FOLDER,
)
from ..runtime import resolve_device
from .cohort_folder import (
    append_record,
    claim_cohort_folder,
    cohort_description,
    completed_names,
    failures_path,
    hold_shard,
    results_path,
)
from .memory import release_freed_memory
from .prediction import check_slice_sizes, write_predictions
from .shard import parse_shard
from .volume_curve import voxel_volume_ml


class _PerInputSink(EventSink):
    """Passes one input's events on, less the stage and progress of its own small run: the shard
    reports its progress over all its inputs."""

    def __init__(self, inner: EventSink) -> None:
        super().__init__(quiet=True)
        self.inner = inner

    def emit(self, event: str, **fields: Any) -> None:
        if event not in ("stage", "progress"):
            self.inner.emit(event, **fields)


def run_cohort_prediction(model_path: str, images: list[str], inputs: str | None, shard_text: str | None,
                          skip_existing: bool, out: str, device_name: str, sink: EventSink,
                          cancel: threading.Event | None = None, estimate: str = DEFAULT_ESTIMATE) -> int:
    """Segment this shard's inputs into ``out``; EXIT_OK, or EXIT_DONE_WITH_FAILURES when some failed."""
    cancel = cancel or threading.Event()
    started = time.monotonic()
    shard = parse_shard(shard_text)
    out_path = Path(out)
    # Checks before anything is written: the list (names of all inputs unique), this shard's files there.
    _, mine = unique_inputs(read_inputs(images, inputs), inputs, lambda entry: shard.holds(entry.position))
    for entry in mine:
        check_entry(entry)
    device = resolve_device(device_name)
    predictor = Predictor.load(model_path, device, estimate=estimate)  # a damaged model: an error before any output
    check_inputs_outside_outputs(out_path, [e.path for e in mine] + [model_path])
    check_writable_folder(out_path)
    wanted = cohort_description(model_path, [c.to_dict() for c in predictor.classes], inputs, images, shard.count)
    claim_cohort_folder(out_path, wanted)
    with hold_shard(out_path, shard):
        names = {entry.name for entry in mine}
        remove_own_partial_files(out_path, names)
        done = completed_names(out_path, names) if skip_existing else set()
        todo = [entry for entry in mine if entry.name not in done]
        sink.emit("start", command="predict", version=__version__, device=str(device),
                  precision=predictor.precision, backend=predictor.backend, out=str(out_path))
        if done:
            sink.emit("warning", message=f"shard {shard}: {len(done)} of {len(mine)} inputs are complete already "
                                         f"(--skip-existing); doing the other {len(todo)}")
        sink.emit("stage", stage="predict", round=0, total=len(todo))
        failed = 0
        per_input = _PerInputSink(sink)
        for number, entry in enumerate(todo, 1):
            if cancel.is_set():
                raise Cancelled(None)
            input_started = time.monotonic()
            try:
                record = predict_input(predictor, entry, out_path, per_input)
            except Exception as error:  # this input's problem, unless the disk or the machine is at fault
                if isinstance(error, OutputError) or (isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS):
                    raise
                failed += 1
                reason = _one_line(error)
                append_record(failures_path(out_path, shard), {"name": entry.name, "input": entry.path,
                                                               "listed_at": entry.origin, "reason": reason,
                                                               "shard": str(shard)})
                sink.emit("warning", message=f"{entry.path}: {reason} (recorded in "
                                             f"{failures_path(out_path, shard)}; going on)")
                release_freed_memory()
                continue
            record.update(shard=str(shard), seconds=round(time.monotonic() - input_started, 3))
            append_record(results_path(out_path, shard), record)
            # write_predictions trimmed its group's arrays; this input's voxels were held here until now.
            release_freed_memory()  # the next input starts from a heap without this one's free pages
            elapsed = time.monotonic() - started
            sink.emit("progress", stage="predict", iteration=number, total=len(todo), losses={},
                      elapsed_s=round(elapsed, 2), eta_s=round(elapsed / number * (len(todo) - number), 1),
                      slices_per_s=0.0)
        sink.emit("done", out=str(out_path), elapsed_s=round(time.monotonic() - started, 2))
    return EXIT_DONE_WITH_FAILURES if failed else EXIT_OK


def predict_input(predictor: Predictor, entry: Entry, out: Path, sink: EventSink) -> dict[str, Any]:
    """Read, check, segment and write one input (a volume, or every frame of a 4D image); its record."""
    finish = threading.Event()  # never set: a stop request ends the shard after this input, not inside it
    info = predictor.info
    if is_sequence(entry.path):
        sequence = read_sequence(entry.path)
        header = sequence.header_only()
        frames = [Volume(name, entry.path, np.empty((0, 0, 0), np.float32), header.grid)
                  for name in header.frame_names()]
        check_slice_sizes(frames[:1], info.target_spacing_mm, info.in_plane_reference)
        prepared = (_prepared(volume, predictor, sink) for volume in sequence.frames())
        volumes, sequences = write_predictions(predictor, prepared, len(frames), out, sink, finish, [(header, [])])
        del sequence
        return _sequence_record(entry, header.grid, volumes, sequences[0], out)
    volume = read_volume(entry.path)
    check_slice_sizes([volume], info.target_spacing_mm, info.in_plane_reference)
    volumes, _ = write_predictions(predictor, [_prepared(volume, predictor, sink)], 1, out, sink, finish)
    (result,) = volumes
    unit = voxel_volume_ml(volume.grid.spacing)
    return {"name": entry.name, "input": entry.path, "kind": "volume", "size": list(volume.grid.size),
            "spacing_mm": [round(s, 6) for s in volume.grid.spacing],
            "uncertainty_score": result["uncertainty_score"], "dice_est": estimates([result]),
            "voxels": result["voxels"],
            "ml": {name: round(count * unit, 4) for name, count in result["voxels"].items()},
            "files": [_relative(result["segmentation"], out), _relative(result["uncertainty"], out)]}


def _prepared(volume: Volume, predictor: Predictor, sink: EventSink):
    prepared, has_contrast = prepare(volume, predictor.info)
    if not has_contrast:
        sink.emit("warning", message=f"{volume.path} ({volume.name}): all voxels have the same intensity")
    return prepared


def _sequence_record(entry: Entry, grid, volumes: list[dict[str, Any]], sequence: dict[str, Any],
                     out: Path) -> dict[str, Any]:
    scores = [v["uncertainty_score"] for v in volumes]
    files = [_relative(v[key], out) for v in volumes for key in ("segmentation", "uncertainty")]
    files += [_relative(sequence[key], out) for key in ("segmentation", "curve_plot") if sequence[key]]
    return {"name": entry.name, "input": entry.path, "kind": "sequence", "size": list(grid.size),
            "spacing_mm": [round(s, 6) for s in grid.spacing], "frames": len(volumes),
            "time_step": sequence["time_step"], "time_unit": sequence["time_unit"],
            "uncertainty_score": round(float(np.mean(scores)), 5), "frame_scores": scores,
            "dice_est": estimates(volumes),
            "volume_curve_ml": {k: [round(v, 4) for v in values] for k, values in sequence["volume_curve_ml"].items()},
            "volume_summary": sequence["volume_summary"], "files": files}


def estimates(entries: list[dict[str, Any]]) -> dict[str, float | None]:
    """Each structure's estimated Dice (summary.json's ``structures``): the lowest over a sequence's frames;
    None where no frame has it."""
    found: dict[str, float | None] = {}
    for entry in entries:
        for structure in entry["structures"]:
            value, known = structure["estimated_dice"], found.get(structure["name"])
            found[structure["name"]] = value if known is None else known if value is None else min(known, value)
    return found


def _relative(path: str, out: Path) -> str:
    return Path(os.path.relpath(path, out)).as_posix()


def _one_line(error: BaseException) -> str:
    if isinstance(error, InputError):
        return error.problem.splitlines()[0] if error.problem else type(error).__name__
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


#: A temporary file of an atomic write: ``.TARGET.XXXX.partial.EXT`` (files/volumes.atomic_path).
_PARTIAL = re.compile(r"^\.(?P<target>.+)\.[^.]+\.partial")
_FRAME = re.compile(r"^(?P<name>.+)_t\d+$")
_OUTPUT_SUFFIXES = (".seg.nrrd", ".seq.nrrd", ".curve.png", ".nrrd")


def remove_own_partial_files(out: Path, names: set[str]) -> None:
    """Temporary files left by a killed task of this shard (of its inputs only: other shards write
    beside it at the same time)."""
    for folder in (PREDICTIONS_FOLDER, UNCERTAINTY_FOLDER, SEQUENCES_FOLDER):
        if not (out / folder).is_dir():
            continue
        for item in os.scandir(out / folder):
            match = _PARTIAL.match(item.name)
            if match and _owned(match.group("target"), names):
                with contextlib.suppress(OSError):
                    os.unlink(item.path)


def _owned(target: str, names: set[str]) -> bool:
    """Whether an output file named ``target`` belongs to one of ``names`` (or a frame of it)."""
    name = next((target[: -len(s)] for s in _OUTPUT_SUFFIXES if target.endswith(s)), target)
    frame = _FRAME.match(name)
    return name in names or bool(frame and frame.group("name") in names)
