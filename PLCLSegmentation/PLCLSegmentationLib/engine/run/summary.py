"""A run's summary.json: classes, outputs and uncertainty scores (least certain first)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ... import __version__
from ..events import EventSink
from ..files.volumes import ClassInfo, atomic_path
from ..protocol import MODEL_FILE, OUTPUT_FILES, SUMMARY_FILE

UNCERTAINTY_MEASURE = ("normalised predictive entropy of the softmax, -sum(p log p) / log(C), per voxel in "
                       "[0, 1]; a volume's score is its mean over the voxels predicted as foreground "
                       "(1.0 when none is)")


def write_summary(command: str, out: Path, classes: list[ClassInfo], entries: list[dict[str, Any]],
                  sink: EventSink, extra: dict[str, Any]) -> dict[str, Any]:
    """Write and announce ``OUT/summary.json``; a training run lists its own files under ``outputs``,
    a prediction run names the model it applied (``extra["model"]``)."""
    outputs = {kind: str(out / name) if command == "train" and (out / name).is_file() else None
               for kind, name in OUTPUT_FILES.items()}
    summary = {
        "version": __version__, "command": command,
        "model": str(out / MODEL_FILE) if command == "train" else extra.pop("model", None),
        "outputs": outputs,
        "classes": [c.to_dict() for c in classes],
        "uncertainty_measure": UNCERTAINTY_MEASURE,
        "volumes": sorted(entries, key=lambda e: -e["uncertainty_score"]),
        **extra,
    }
    write_json(out / SUMMARY_FILE, summary)
    sink.emit("output", kind="summary", path=str(out / SUMMARY_FILE), name=None)
    return summary


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` as indented JSON, written atomically (a reader never sees half a file)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
