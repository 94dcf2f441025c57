"""Where a segmentation goes: the one table of output formats (``--format``) and their writers.

Every format writes a volume's label map on exactly its grid into ``OUT/predictions/``:

- ``seg.nrrd``: ``NAME.seg.nrrd``, Slicer's segmentation file, one segment per class (the default);
- ``nifti``: ``NAME.nii.gz``, a label map whose values are the model's class values;
- ``dicom-seg``: ``NAME.seg.dcm``, a DICOM SEG of the DICOM images the volume was read from (only for
  DICOM inputs; files/dicom_seg.py). For a cine, one SEG per frame asked for (``--dicom-seg-frames``:
  ED and ES by default), since no library writes one SEG over time.

The summary's per-volume entry lists the files written, by format (``files``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence as Sequence_
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ... import __version__
from ..errors import ConfigError
from ..events import EventSink
from ..files.cine import Sequence
from ..files.dicom import is_dicom_folder, read_dicom_stack
from ..files.dicom_seg import Algorithm, require_highdicom, write_dicom_seg
from ..files.volumes import ClassInfo, Grid, Volume, write_image, write_segmentation
from ..protocol import DEFAULT_DICOM_SEG_FRAMES, DEFAULT_OUTPUT_FORMATS, OUTPUT_FORMATS, PREDICTIONS_FOLDER

DEFAULT_SEG_FRAMES = DEFAULT_DICOM_SEG_FRAMES
_NAMED_FRAMES = ("ed", "es", "all")


def _write_seg_nrrd(writers: Any, path: Path, labels: np.ndarray, grid: Grid, source: str,
                    phase: int) -> None:
    write_segmentation(path, labels, grid, writers.classes)


def _write_nifti(writers: Any, path: Path, labels: np.ndarray, grid: Grid, source: str,
                 phase: int) -> None:
    write_image(path, np.ascontiguousarray(labels, dtype=np.uint8), grid)


def _write_dicom_seg(writers: Any, path: Path, labels: np.ndarray, grid: Grid, source: str,
                     phase: int) -> None:
    stack = read_dicom_stack(source)  # the images of this phase, to be matched to slices by their position
    write_dicom_seg(path, labels, grid, writers.classes, stack.files[phase], writers.algorithm(),
                    "PLCL segmentation")


@dataclass(frozen=True)
class Format:
    extension: str  # after NAME in OUT/predictions/
    #: Whether a frame of a 4D input gets one (dicom-seg: only the frames asked for, at the sequence's end).
    every_frame: bool
    #: (writers, path, labels [k, j, i] in class values, grid, the source image's path, the phase of a cine)
    write: Callable[[Any, Path, np.ndarray, Grid, str, int], None]


#: The output formats, by their ``--format`` name (protocol.OUTPUT_FORMATS): the one table.
FORMATS: dict[str, Format] = {
    "seg.nrrd": Format(".seg.nrrd", True, _write_seg_nrrd),
    "nifti": Format(".nii.gz", True, _write_nifti),
    "dicom-seg": Format(".seg.dcm", False, _write_dicom_seg),
}
assert tuple(FORMATS) == OUTPUT_FORMATS


def output_formats(given: Sequence_[str] | None) -> list[str]:
    """``--format`` values in table order, each once; the default where none is given."""
    chosen = set(given or DEFAULT_OUTPUT_FORMATS)
    unknown = sorted(chosen - set(FORMATS))
    if unknown:
        raise ConfigError(f"--format {unknown[0]}: unknown; choose from {', '.join(FORMATS)}")
    return [name for name in FORMATS if name in chosen]


def parse_seg_frames(text: str) -> list[str | int]:
    """``--dicom-seg-frames``: ed, es, all and 0-based frame indices, comma-separated."""
    items: list[str | int] = []
    for token in (t.strip().lower() for t in str(text).split(",")):
        if token in _NAMED_FRAMES:
            items.append(token)
        elif token.isdigit():
            items.append(int(token))
        else:
            raise ConfigError(f"--dicom-seg-frames {text}: '{token}' is not ed, es, all or a frame index (0 or more)")
    if not items:
        raise ConfigError("--dicom-seg-frames is empty; give ed, es, all or frame indices")
    return items


def check_outputs(formats: Sequence_[str], seg_frames: str, images: Sequence_[str],
                  sequences: Sequence_[Sequence] = ()) -> None:
    """Usage errors before anything is written: a DICOM SEG needs DICOM inputs, highdicom, and frames that exist."""
    formats = output_formats(formats)
    frames = parse_seg_frames(seg_frames)
    if "dicom-seg" not in formats:
        return
    for image in images:
        if not is_dicom_folder(image):
            raise ConfigError(f"--format dicom-seg: {image} is not a DICOM series folder; a DICOM SEG is written only "
                              "for DICOM inputs (use --format seg.nrrd or nifti for it)")
    require_highdicom()
    for sequence in sequences:
        wrong = [f for f in frames if isinstance(f, int) and f >= sequence.frame_count]
        if wrong:
            raise ConfigError(f"--dicom-seg-frames: {sequence.path} has no frame {wrong[0]} (it has "
                              f"{sequence.frame_count}: 0 to {sequence.frame_count - 1})")


def model_identifier(model_file: str | Path) -> str:
    """The model's file name and the start of its SHA-256: which model made a segmentation."""
    digest = hashlib.sha256()
    with open(model_file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"{Path(model_file).name} sha256:{digest.hexdigest()[:16]}"


def end_diastole_systole(voxels: list[dict[str, int]]) -> tuple[int, int]:
    """ED and ES of a cine from its predicted voxel counts per frame: the frames where the class that
    changes most (relative to its largest volume: a ventricle's cavity) is largest and smallest."""
    best, best_change = None, -1.0
    for name in voxels[0] if voxels else []:
        counts = np.asarray([frame.get(name, 0) for frame in voxels], dtype=float)
        change = (counts.max() - counts.min()) / counts.max() if counts.max() > 0 else -1.0
        if change > best_change:
            best, best_change = counts, change
    if best is None or best_change <= 0:
        return 0, 0
    return int(np.argmax(best)), int(np.argmin(best))


@dataclass
class SegmentationWriters:
    """Writes each volume's label map in every format asked for; a cine's DICOM SEGs at its last frame."""

    formats: list[str]
    classes: list[ClassInfo]
    model_file: str | Path
    seg_frames: str = DEFAULT_SEG_FRAMES
    _model_id: str | None = None
    _kept: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)  # a cine's frames, for its SEGs

    @classmethod
    def default(cls, classes: list[ClassInfo], model_file: str | Path) -> SegmentationWriters:
        return cls(list(DEFAULT_OUTPUT_FORMATS), classes, model_file)

    def write(self, volume: Volume, labels: np.ndarray, out: Path, sink: EventSink,
              frame: tuple[Sequence, int] | None = None) -> dict[str, list[str]]:
        """Write one volume (or frame ``frame`` of a 4D input) in each format; returns the files by format."""
        files: dict[str, list[str]] = {}
        for name in self.formats:
            if frame is not None and not FORMATS[name].every_frame:
                self._kept.setdefault(frame[0].name, {})[frame[1]] = labels
                continue
            path = out / PREDICTIONS_FOLDER / f"{volume.name}{FORMATS[name].extension}"
            FORMATS[name].write(self, path, labels, volume.grid, volume.path, 0)
            sink.emit("output", kind="prediction", path=str(path), name=volume.name)
            files[name] = [str(path)]
        return files

    def finish_sequence(self, sequence: Sequence, entries: dict[str, dict[str, Any]], out: Path,
                        sink: EventSink) -> None:
        """After a 4D input's last frame: the DICOM SEGs of the frames asked for, added to their entries."""
        kept = self._kept.pop(sequence.name, {})
        if not kept:
            return
        names = sequence.frame_names()
        frames = self._frames(sequence, [entries[n]["voxels"] for n in names])
        for index in frames:
            path = out / PREDICTIONS_FOLDER / f"{names[index]}{FORMATS['dicom-seg'].extension}"
            FORMATS["dicom-seg"].write(self, path, kept[index], sequence.grid, sequence.path, index)
            sink.emit("output", kind="prediction", path=str(path), name=names[index])
            entries[names[index]].setdefault("files", {})["dicom-seg"] = [str(path)]

    def _frames(self, sequence: Sequence, voxels: list[dict[str, int]]) -> list[int]:
        ed, es = end_diastole_systole(voxels)
        chosen: list[int] = []
        for item in parse_seg_frames(self.seg_frames):
            indices = {"ed": [ed], "es": [es], "all": list(range(sequence.frame_count))}.get(item, [item])
            chosen += [i for i in indices if i not in chosen]
        return chosen

    def algorithm(self) -> Algorithm:
        if self._model_id is None:
            self._model_id = model_identifier(self.model_file)
        return Algorithm("PLCLSegmentation", __version__, self._model_id)
