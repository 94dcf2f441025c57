"""Outputs of a 4D input beyond its frames' own files: the segmentation sequence, the volume curve
and its plot, and the summary's ``sequences`` entry (events.py documents the keys).

The segmentation sequence is written as Slicer's Sequences module writes a label map volume
sequence (``OUT/sequences/NAME.seq.nrrd``: ``kinds: domain domain domain list``,
``DataNodeClassName:=vtkMRMLLabelMapVolumeNode``, the frame times in ``axis 3 index values``), so
Slicer loads it as one sequence of label maps; its values are the class values of summary.json's
``classes``. Slicer's segmentation storage cannot hold a sequence (only a ``.seq.mrb`` scene bundle
can), hence a label map sequence.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..events import EventSink
from ..files.cine import Sequence
from ..files.volumes import ClassInfo, Grid, atomic_path
from ..protocol import SEQUENCES_FOLDER
from .volume_curve import curve_from_counts, curve_summary


class LabelSequenceWriter:
    """Collects a sequence's label maps frame by frame (compressed as they come: memory stays small)
    and writes them as one ``.seq.nrrd`` when the last frame is in."""

    def __init__(self, path: Path, sequence: Sequence) -> None:
        self.path = path
        self.sequence = sequence
        self._zip = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: a gzip stream, NRRD's "gzip"
        self._chunks: list[bytes] = []
        self.frames = 0

    def add(self, index: int, labels: np.ndarray) -> bool:
        """Add frame ``index`` (frames come in order); True once the file is written."""
        if index != self.frames:
            raise ValueError(f"frame {index} of {self.sequence.name} came after {self.frames - 1}")
        self._chunks.append(self._zip.compress(np.ascontiguousarray(labels, dtype=np.uint8).tobytes()))
        self.frames += 1
        if self.frames < self.sequence.frame_count:
            return False
        self._chunks.append(self._zip.flush())
        with atomic_path(self.path) as tmp, open(tmp, "wb") as f:
            f.write(label_sequence_header(self.sequence.grid, self.sequence.frame_count, self.sequence.time_step,
                                          self.sequence.time_unit).encode())
            for chunk in self._chunks:
                f.write(chunk)
        self._chunks = []
        return True


def label_sequence_header(grid: Grid, frames: int, time_step: float | None, time_unit: str | None) -> str:
    """The NRRD header of a uint8 label map sequence, list axis last, in LPS."""
    axes = grid.ijk_to_lps()[:3, :3]
    directions = " ".join("(" + ",".join(repr(float(v)) for v in axes[:, a]) + ")" for a in range(3))
    times = [index * time_step for index in range(frames)] if time_step else list(range(frames))
    name, unit = ("time", time_unit or "") if time_step else ("frame", "")
    lines = ["NRRD0004", "type: unsigned char", "dimension: 4", "space: left-posterior-superior",
             f"sizes: {grid.size[0]} {grid.size[1]} {grid.size[2]} {frames}",
             f"space directions: {directions} none", "kinds: domain domain domain list",
             f'labels: "" "" "" "{name}"', f'units: "" "" "" "{unit}"', "endian: little", "encoding: gzip",
             "space origin: (" + ",".join(repr(float(v)) for v in grid.origin) + ")",
             "DataNodeClassName:=vtkMRMLLabelMapVolumeNode", "axis 3 index type:=numeric",
             "axis 3 index values:=" + " ".join(f"{t:g}" for t in times)]
    return "\n".join(lines) + "\n\n"


def sequence_entry(sequence: Sequence, annotated: list[int], entries: dict[str, dict[str, Any]],
                   classes: list[ClassInfo], segmentation: Path | None, out: Path,
                   sink: EventSink) -> dict[str, Any]:
    """The summary's entry of one sequence; draws its volume curves (``curve`` output) if it can."""
    names = sequence.frame_names()
    curve = curve_from_counts((entries[n]["voxels"] for n in names), sequence.grid.spacing,
                              [c.name for c in classes])
    plot = _plot(sequence, curve, classes, out / SEQUENCES_FOLDER / f"{sequence.name}.curve.png")
    if plot is not None:
        sink.emit("output", kind="curve", path=str(plot), name=sequence.name)
    return {"name": sequence.name, "image": sequence.path, "frames": names, "annotated_frames": sorted(annotated),
            "time_step": sequence.time_step, "time_unit": sequence.time_unit,
            "segmentation": None if segmentation is None else str(segmentation),
            "volume_curve_ml": curve, "volume_summary": curve_summary(curve),
            "curve_plot": None if plot is None else str(plot)}


def _plot(sequence: Sequence, curve: dict[str, list[float]], classes: list[ClassInfo], path: Path) -> Path | None:
    try:
        import matplotlib  # noqa: F401 - optional: no plot without it
    except ImportError:
        return None
    from .curve_plot import volume_curves

    return volume_curves(curve, {c.name: c.color for c in classes}, path, sequence.time_step, sequence.time_unit,
                         title=sequence.name)
