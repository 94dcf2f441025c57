"""One run of the engine as the module sees it: its files, its command line, its progress.

States (the logic moves a job through them)::

    preparing --start--> running --child exits 0--> importing --> done
                            |                            +--import fails--> failed
                            |--cancel--> cancelling --child exits--> cancelled
                            +--child fails--> failed

Only ``done`` changes the user's scene (new nodes, roles); ``cancelled`` and ``failed`` leave it as
it was before the run.
"""

from __future__ import annotations

import collections
import re
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from .parameters import SEQUENCE
from .scene_io import SegmentClass

TRAIN = "train"
PREDICT = "predict"


class JobState(str, Enum):
    PREPARING = "preparing"
    RUNNING = "running"
    CANCELLING = "cancelling"
    IMPORTING = "importing"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


@dataclass
class Job:
    kind: str  # TRAIN or PREDICT
    argv: list[str]
    inputs_dir: Path  # private temporary folder with the exported volumes (always deleted)
    out_dir: Path  # the engine's --out (kept for a trained model; deleted after a prediction)
    expected: dict[str, Any]  # record key -> what the run brings back for it (run_results.Expected)
    classes: list[SegmentClass]
    warm_start: bool = False
    model_path: str = ""  # predict: the model used
    state: JobState = JobState.PREPARING
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    stage: str = ""
    round: int | None = None
    iteration: int = 0
    total: int = 0
    eta_s: float | None = None
    losses: dict[str, float] = field(default_factory=dict)
    device: str = ""
    error: str = ""
    warnings: list[str] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)  # files of the run folder kept after success (the model)
    log: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=2000))
    pending: list[str] = field(default_factory=list)  # log lines not yet shown (see take_log)
    tail: list[str] = field(default_factory=list)  # last lines of the engine's log (on failure)
    imported: list[str] = field(default_factory=list)  # names of the volumes (and sequences) that got a segmentation
    imported_kinds: list[str] = field(default_factory=list)  # their kinds (parameters.VOLUME, SEQUENCE)
    process: Any = None  # EngineProcess
    plot: Any = None  # LossPlot (training only)

    @property
    def log_path(self) -> Path:
        return self.out_dir / "engine.log"

    @property
    def elapsed_s(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def fraction(self) -> float:
        return min(1.0, self.iteration / self.total) if self.total else 0.0

    def status_line(self) -> str:
        """One line for the status label: what happens now and how long it should take."""
        if self.state == JobState.PREPARING:
            return "Exporting volumes..."
        if self.state == JobState.IMPORTING:
            return "Importing the segmentations..."
        if self.state == JobState.CANCELLING:
            return "Cancelling: the engine finishes its step..."
        if self.state == JobState.DONE:
            what = "Training" if self.kind == TRAIN else "Segmentation"
            done = f"{what} finished in {format_duration(self.elapsed_s)}: "
            sequences = self.imported_kinds.count(SEQUENCE)
            if not sequences:
                return done + f"{len(self.imported)} volume(s) segmented."
            volumes = len(self.imported) - sequences
            return done + f"{volumes} volume(s) and {sequences} sequence(s), every frame, segmented."
        if self.state == JobState.CANCELLED:
            return "Cancelled; the scene is unchanged."
        if self.state == JobState.FAILED:
            return f"Failed: {self.error}"
        parts = [self.stage.replace("_", " ") or "starting"]
        if self.round:
            parts[0] += f" (round {self.round})"
        if self.total:
            parts.append(f"iteration {self.iteration}/{self.total}")
        if self.eta_s is not None and self.eta_s > 0:
            parts.append(f"about {format_duration(self.eta_s)} left")
        return ", ".join(parts)

    def add_log(self, line: str) -> None:
        # A cancelled run's folder is removed (its checkpoint holds data derived from the patients'
        # volumes): the engine's "resume with --resume DIR" would name a folder that is gone.
        line = RESUME_HINT.sub("", line)
        self.log.append(line)
        self.pending.append(line)

    def take_log(self) -> list[str]:
        """The log lines added since the last call (for a log view)."""
        lines, self.pending = self.pending, []
        return lines

    def handle(self, event: dict[str, Any]) -> tuple[int, dict[str, float]] | None:
        """Take in one engine event; returns (iteration, losses) for the loss plot, if any."""
        kind = event.get("event")
        if kind == "progress":
            self.stage = str(event.get("stage", self.stage))
            self.iteration = int(event.get("iteration", self.iteration) or 0)
            self.total = int(event.get("total", self.total) or 0)
            self.eta_s = _float(event.get("eta_s"))
            losses = {str(k): float(v) for k, v in (event.get("losses") or {}).items() if _float(v) is not None}
            self.losses = losses
            return (self.iteration, losses) if losses else None
        if kind == "stage":
            self.stage = str(event.get("stage", ""))
            self.round = event.get("round")
            self.add_log(f"stage: {self.stage}" + (f" (round {self.round})" if self.round else ""))
        elif kind == "start":
            self.device = str(event.get("device", ""))
            self.add_log(f"engine {event.get('version', '')} started on {self.device}")
        elif kind == "warning":
            self.warnings.append(str(event.get("message", "")))
            self.add_log(f"warning: {event.get('message', '')}")
        elif kind == "error":
            self.error = str(event.get("message", "")) or self.error
            self.add_log(f"error: {self.error}")
        elif kind == "cancelled":
            self.add_log(f"cancelled: {event.get('message', '')}")
        elif kind == "done":
            self.add_log(f"engine done in {format_duration(_float(event.get('elapsed_s')) or 0.0)}")
        return None


#: The engine's hint after a stop (engine/cli.py), dropped from what the panel shows.
RESUME_HINT = re.compile(r";?\s*resume with --resume\s+\S+")


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
