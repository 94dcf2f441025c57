"""Progress reporting: a progress bar for a person, or JSON lines for a program.

With ``--events jsonl`` every event is one JSON object on its own line on stdout
(human-readable logs go to stderr). The schema, which the Slicer module relies on:

=============  ===============================================================
``event``      other keys
=============  ===============================================================
``start``      ``command`` (train|predict|evaluate|bench), ``version``, ``device``, ``out``;
               train and predict add ``precision`` (bf16|fp32: what the device computes in)
``stage``      ``stage`` (prepare|warmup|pseudo_labels|joint|predict), ``round``, ``total``
``progress``   ``stage``, ``iteration``, ``total`` (all stages together), ``losses``
               {name: float}, ``elapsed_s``, ``eta_s``, ``slices_per_s``
``output``     ``kind`` (model|snapshot|prediction|uncertainty|sequence|curve|summary|metrics),
               ``path``, ``name`` (the volume's name, for prediction and uncertainty; the
               4D input's name, for sequence and curve)
``warning``    ``message``
``done``       ``out``, ``elapsed_s``
``cancelled``  ``checkpoint`` (path to resume from, or null), ``message``
``error``      ``message`` (one line naming the file and the problem), ``file`` (or null)
=============  ===============================================================

Every event also has ``time`` (seconds since the epoch). Exit codes: 0 done, 1 error,
2 command-line usage error, 130 cancelled (SIGINT, SIGTERM or the stop file).

``output`` events report progress; where the outputs are is written once, in ``OUT/summary.json``
(``SUMMARY_FILE``): ``outputs`` {kind: path or null} for the run's files (``OUTPUT_KINDS``) and
``volumes`` [{name, segmentation, uncertainty, uncertainty_score, ...}] for the predictions. Programs
read that file, not file-name conventions.

Cine (4D) images (cine.py). Any image of ``plcl train --unlabeled``, ``--labeled-frame`` and
``plcl predict`` may be a 4D file: NIfTI with time last, or NRRD with one list axis (Slicer's
``.seq.nrrd``, list axis last as Slicer 5 writes it, or first as older writers did). Its frames
share one grid. A sequence's name is ``volumes.volume_name(path)`` (NAME; ``.seq.nrrd`` counts as
one extension); frame i (0-based) is the volume NAME_t<i>, zero-padded to the width of the last
index, at least 2 digits. ``plcl train --labeled-frame IMAGE FRAME LABEL`` (repeatable): frame
FRAME of IMAGE is annotated by LABEL (on that frame's grid); the other frames are unannotated.
``--annotated-slices`` values pair with ``--labeled`` pairs, then ``--labeled-frame`` triples,
then ``--labeled-cases`` cases. Errors (one line naming the file): a 4D file given to
``--labeled`` (exit 1, says to use --labeled-frame); a time axis not equally spaced, frames that
do not share one grid (exit 1); a FRAME out of range (exit 1, names the index and the frame
count); a FRAME that is not a whole number 0 or more (exit 2).

Every frame of every 4D input is segmented (in ``train``, the annotated frames too, so a curve
comes from predictions alone) and written like a volume: its ``volumes`` entry has, besides the
usual keys, ``sequence`` (NAME) and ``frame`` (i). summary.json's ``sequences`` is a list, one
entry per 4D input (empty when none): ``name``, ``image`` (the 4D file), ``frames`` (the frame
volume names in frame order), ``annotated_frames`` (indices annotated in this run; [] for
predict), ``time_step`` and ``time_unit`` (as the file states them, or null), ``segmentation``
(every frame as one label map sequence, ``OUT/sequences/NAME.seq.nrrd``, as Slicer's Sequences
module writes one: Slicer loads it as a sequence of label map volumes whose values are the
``classes`` values; null if not written), ``volume_curve_ml`` {class name: [ml per frame]} (voxels
of the written segmentation x voxel volume; volume_curve.py, numpy only), ``volume_summary``
{class name: {max_ml, max_frame, min_ml, min_frame, ejection_fraction}} (ejection_fraction = 100 *
(max - min) / max in percent, null for a class absent from every frame; meaningful for cavities
such as LV and RV), ``curve_plot`` (a PNG of the curves, ``OUT/sequences/NAME.curve.png``, or null
without matplotlib). The ``output`` events of kind ``sequence`` and ``curve`` report those two files.

Stopping: ``plcl train`` and ``plcl predict`` watch ``OUT/stop.request`` (``STOP_FILE``; with
``--resume DIR``, ``DIR/stop.request``). Its appearance is handled like SIGINT: the step finishes, a
checkpoint is saved, ``cancelled`` is emitted and the exit code is 130. Programs that cannot signal
the engine's own process use it (Slicer's ``PythonSlicer`` is a launcher that starts the real
Python and does not forward signals; on Windows a CTRL_BREAK cannot reach a process without a
console).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO


class EventSink:
    """Receives engine events. The base class writes log lines to stderr and draws a progress bar."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self._bar: Any = None
        self._bar_stage: str | None = None

    def emit(self, event: str, **fields: Any) -> None:
        if event == "progress":
            self._progress(fields)
            return
        if event in ("done", "error", "cancelled"):
            self._close_bar()
        if self.quiet and event not in ("error", "warning"):
            return
        if event == "stage":
            suffix = f" (round {fields['round']})" if fields.get("round") else ""
            self._log(f"stage: {fields['stage']}{suffix}")
        elif event == "output":
            self._log(f"wrote {fields['kind']}: {fields['path']}")
        elif event == "warning":
            self._log(f"warning: {fields['message']}")
        elif event == "error":
            self._log(f"error: {fields['message']}")
        elif event == "cancelled":
            self._log(f"cancelled: {fields.get('message', '')}")
        elif event == "done":
            self._log(f"done in {fields['elapsed_s']:.1f} s: {fields['out']}")
        elif event == "start":
            self._log(f"plcl {fields['command']} {fields['version']} on {fields['device']}")

    def _log(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def _progress(self, fields: dict[str, Any]) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        if self._bar is None or self._bar.total != fields["total"]:
            self._close_bar()
            # disable=None: no bar when stderr is not a terminal (a log file, the Slicer module)
            self._bar = tqdm(total=fields["total"], file=self.stream, leave=False, unit="it", disable=None)
        if self._bar_stage != fields["stage"]:
            self._bar.set_description(fields["stage"], refresh=False)
            self._bar_stage = fields["stage"]
        self._bar.update(fields["iteration"] - self._bar.n)
        self._bar.set_postfix({k: f"{v:.3f}" for k, v in fields.get("losses", {}).items()}, refresh=False)
        self._bar.refresh()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._bar_stage = None

    def close(self) -> None:
        self._close_bar()


class JsonLinesSink(EventSink):
    """One JSON object per line on stdout, for programs (the Slicer module reads these)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream=stream or sys.stdout)

    def emit(self, event: str, **fields: Any) -> None:
        record = {"event": event, "time": round(time.time(), 3), **fields}
        self.stream.write(json.dumps(record, default=_jsonable) + "\n")
        self.stream.flush()


class RecordingSink(EventSink):
    """Keeps events in memory (for tests and the benchmark)."""

    def __init__(self) -> None:
        super().__init__(quiet=True)
        self.events: list[dict[str, Any]] = []

    def emit(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, **fields})


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)
