"""A run's summary.json: classes, outputs and uncertainty scores (least certain first)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ... import __version__
from ..events import EventSink
from ..files.volumes import ClassInfo, atomic_path
from ..method.quality import QUALITY_MEASURE
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
        "quality_measure": QUALITY_MEASURE,
        "volumes": sorted(entries, key=lambda e: -e["uncertainty_score"]),
        **extra,
    }
    write_json(out / SUMMARY_FILE, summary)
    sink.emit("output", kind="summary", path=str(out / SUMMARY_FILE), name=None)
    sink.report(worst_lines(entries, estimated=summary.get("estimate") != "off"))
    return summary


#: Volumes the end-of-run table lists.
WORST_VOLUMES = 5


def review_order(entries: list[dict[str, Any]], estimated: bool = True) -> list[dict[str, Any]]:
    """The entries with review data (``structures``) in the order review pays first: lowest estimated
    Dice first, a volume where no structure was found at all before every other; without estimates
    (``--estimate off``) the highest uncertainty first."""
    def lowest(entry: dict[str, Any]) -> float:
        estimates = [s["estimated_dice"] for s in entry.get("structures", []) if s["estimated_dice"] is not None]
        return min(estimates) if estimates else -1.0  # nothing found at all: first

    def uncertain(entry: dict[str, Any]) -> float:
        return -entry["uncertainty_score"]

    return sorted((e for e in entries if "structures" in e), key=lowest if estimated else uncertain)


def worst_lines(entries: list[dict[str, Any]], count: int = WORST_VOLUMES, estimated: bool = True) -> list[str]:
    """The volumes (and frames) of lowest estimated Dice (without estimates, ``--estimate off``: of highest
    uncertainty), each with its worst structures and least certain slice: where review pays first. [] when
    nothing was segmented."""
    ranked = review_order(entries, estimated)[:count]
    if not ranked:
        return []
    width = max(len("volume"), *(len(e["name"]) for e in ranked))
    order, measure = ("lowest estimated Dice", "estimated Dice") if estimated else ("most uncertain", "uncertainty")
    lines = [f"review first ({len(ranked)} of {len(entries)} volumes, {order} first):",
             f"  {'volume':<{width}}  {f'worst structures ({measure})':<45}  least certain slice"]
    for entry in ranked:
        worst = ", ".join(_estimate_text(s) if estimated else _uncertainty_text(s) for s in entry["structures"][:2])
        where = entry["slices"][0]["index"] if entry.get("slices") else None
        slice_text = "-" if where is None else f"{entry['slice_axis']} = {where}"
        lines.append(f"  {entry['name']:<{width}}  {worst:<45}  {slice_text}")
    return lines


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` as indented JSON, written atomically (a reader never sees half a file)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def _estimate_text(structure: dict[str, Any]) -> str:
    estimate = structure["estimated_dice"]
    return f"{structure['name']} " + ("none found" if estimate is None else f"{estimate:.2f}")


def _uncertainty_text(structure: dict[str, Any]) -> str:
    return f"{structure['name']} " + ("none found" if structure["uncertainty"] >= 1.0 else
                                      f"{structure['uncertainty']:.2f}")
