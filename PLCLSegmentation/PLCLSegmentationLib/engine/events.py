"""Progress reporting: a progress bar and log lines for a person, or JSON lines for a program.

With ``--events jsonl`` every event is one JSON object on its own line on stdout (logs go to
stderr). The event names and their keys are owned by ``protocol.py`` (EVENT_KEYS, STAGES,
OUTPUT_EVENT_KINDS); the schema, exit codes, stop file and summary.json are written out in
docs/protocol.md, which a test holds to protocol.py.
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

    def report(self, lines: list[str]) -> None:
        """A short table for a person at the end of a run (the least certain volumes): on this sink's stream."""
        if not self.quiet:
            for line in lines:
                self._log(line)

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

    def report(self, lines: list[str]) -> None:
        """Tables for a person go to stderr, with the logs: stdout holds only events."""
        for line in lines:
            print(line, file=sys.stderr, flush=True)


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
