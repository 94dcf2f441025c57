"""Propagation time: ``plcl predict`` on a whole cine sequence, as a user runs it (issue 13's target:
a 30-frame sequence of ACDC-like size, 10 slices of about 224 x 224, in at most 5 s on 2 CPU cores).

The sequence is a SYNTHETIC beating phantom (synthetic_cine.py) of that size; what it costs does
not depend on its content. ``plcl predict`` runs in a child process, so three times are reported:
the process from start to exit (Python and torch start-up included), the pipeline's own time (the
``done`` event: reading the 4D file, every frame predicted and written, the label map sequence and
the volume curve), and the frames' prediction alone (summary.json's per-frame ``seconds``).
Reported by ``plcl bench``; never asserted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..protocol import SUMMARY_FILE
from .synthetic_cine import make_cine_dataset

#: The target's sequence: frames, slices, pixels per side, and its time limit on 2 CPU cores.
FRAMES, SLICES, PIXELS, TARGET_SECONDS = 30, 10, 224, 5.0


def measure_propagation(model: str | Path, folder: Path, device: str, frames: int = FRAMES, slices: int = SLICES,
                        pixels: int = PIXELS, estimate: str = "off") -> dict[str, Any]:
    """The cine target's time: ``plcl predict`` of one SYNTHETIC cine, by default without the quality estimate
    (one network pass a frame, as the target was set; ``estimate``: plcl predict --estimate)."""
    from .child import run_child

    folder.mkdir(parents=True, exist_ok=True)
    data = make_cine_dataset(folder / "sequence", n_sequences=1, n_frames=frames, seed=0, slices=slices,
                             pixels=pixels)
    entry = json.loads((data / "sequences.json").read_text())["sequences"]["cine_001"]
    out = folder / "predict"
    shutil.rmtree(out, ignore_errors=True)  # this measurement's own earlier run: predict needs a fresh folder
    child = run_child(["predict", "--model", str(model), "--out", str(out), "--device", device, "--events", "jsonl",
                       "--estimate", estimate, str(data / entry["image"])], folder / "predict.log")
    done = [e for e in _events(folder / "predict.log") if e.get("event") == "done"]
    summary = json.loads((out / SUMMARY_FILE).read_text())
    frame_seconds = sum(v["seconds"] for v in summary["volumes"])
    return {
        "model": str(model), "device": device, "estimate": estimate, "frames": frames, "size": entry["size"],
        "spacing_mm": entry["spacing_mm"], "process_seconds": child["seconds"],
        # CPU time of the whole process (all threads): on a busy machine a steadier measure than wall time
        "process_cpu_seconds": child["cpu_seconds"],
        "pipeline_seconds": done[-1]["elapsed_s"] if done else None, "frame_predict_seconds": frame_seconds,
        "seconds_per_frame": frame_seconds / max(1, frames), "peak_rss_mb": child["peak_rss_mb"],
        "target_seconds": TARGET_SECONDS if (frames, slices, pixels) == (FRAMES, SLICES, PIXELS) else None,
    }


def _events(log: Path) -> list[dict[str, Any]]:
    events = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


def markdown(row: dict[str, Any]) -> list[str]:
    """The propagation section of results.md."""
    size = " x ".join(str(n) for n in sorted(row["size"]))
    target = ""
    if row.get("target_seconds"):
        met = row["pipeline_seconds"] is not None and row["pipeline_seconds"] <= row["target_seconds"]
        target = f"; target <= {row['target_seconds']:g} s: {'met' if met else 'not met'} (pipeline time)"
    return [f"## Propagation ({row['device']})", "",
            f"`plcl predict` on a SYNTHETIC {row['frames']}-frame sequence of {size} voxels per frame "
            f"({min(row['spacing_mm']):.2f} mm pixels){target}.", "",
            "| process s (start-up included) | process CPU s | pipeline s | frames' prediction s | s per frame "
            "| peak MB |",
            "|---|---|---|---|---|---|",
            f"| {row['process_seconds']:.1f} | {row['process_cpu_seconds']:.1f} | "
            f"{'-' if row['pipeline_seconds'] is None else format(row['pipeline_seconds'], '.1f')} | "
            f"{row['frame_predict_seconds']:.1f} | {row['seconds_per_frame']:.2f} | {row['peak_rss_mb']:.0f} |", ""]
