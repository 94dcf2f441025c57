"""Running the engine as a child process without blocking Slicer.

:class:`EngineProcess` starts the command in its own process group (its own session on POSIX, a new
process group on Windows) so that cancel reaches the whole process tree. Two reader threads turn
stdout (JSON-lines events, see ``engine/events.py``) and stderr (the log) into messages on a
``queue.Queue``; :meth:`EngineProcess.poll` drains it without waiting — Slicer calls it from a
``qt.QTimer``, tests from a loop. The last lines of the log are kept for crash reports.

States::

    idle --start()--> running --exit 0--> done
                         |    --exit 130, or cancel()ed--> cancelled
                         |    --other exit--> failed
                         +--cancel()--> cancelling --exit--> cancelled

``cancel()`` asks the engine itself to stop: it creates the engine's stop file (``stop_file``,
engine/protocol.py: STOP_FILE), which the engine handles like SIGINT: it finishes its step, saves a
checkpoint, says ``cancelled`` and exits 130. The engine takes a stop file that was there before it
started for an earlier run's, so a cancel before the engine's ``start`` event writes it when that
event comes (the kill after ``grace_s`` still applies). A signal would not do: Slicer's ``PythonSlicer`` is a
launcher that starts the real Python and does not forward signals (SIGTERM ends the launcher and
the engine with it, without a checkpoint), and on Windows CTRL_BREAK cannot reach a process started
without a console. Without a stop file (any other command), cancel sends SIGTERM to the group. If
the child is still alive after ``grace_s`` seconds, the whole tree is killed. Whatever the
outcome, processes left in the group after the child exits are killed.

The child's stdin is a pipe this process keeps open and never writes to, with ``PLCL_PARENT_PIPE=1``
(engine/parent_pipe.py): if Slicer crashes or is killed, the system closes its end and the engine stops
as on a stop request instead of training on, unseen, until its budget ends.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from .engine.protocol import EXIT_CANCELLED, PARENT_PIPE_ENV


class RunState(str, Enum):
    IDLE = "idle"
    RUNNING = "running"
    CANCELLING = "cancelling"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (RunState.DONE, RunState.FAILED, RunState.CANCELLED)

    @property
    def active(self) -> bool:
        return self in (RunState.RUNNING, RunState.CANCELLING)


@dataclass
class Message:
    """What the child said: an ``event`` (dict), a ``log`` line (str) or its ``exit`` code (int)."""

    kind: str
    data: Any


class EngineProcess:
    """One run of a command that speaks the engine's JSON-lines protocol on stdout."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None, cwd: str | None = None,
                 log_path: str | os.PathLike[str] | None = None, tail_lines: int = 40, grace_s: float = 20.0,
                 stop_file: str | os.PathLike[str] | None = None) -> None:
        self.argv = [str(a) for a in argv]
        self.env = env
        self.cwd = cwd
        self.log_path = Path(log_path) if log_path else None
        self.grace_s = grace_s
        self.stop_file = Path(stop_file) if stop_file else None
        self.state = RunState.IDLE
        self.returncode: int | None = None
        self.error: str | None = None  # message of the last ``error`` event
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._queue: queue.Queue[Message] = queue.Queue()
        self._process: subprocess.Popen[str] | None = None
        self._cancel_requested = False
        # The engine ignores a stop file that was there before it started (an earlier run's): a
        # request made before its ``start`` event is written when that event comes.
        self._started = False
        self._stop_pending = False
        self._stop_lock = threading.Lock()
        self._kill_timer: threading.Timer | None = None
        self._log_lock = threading.Lock()
        self._log_file: Any = None

    # --- control --------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        if self.state != RunState.IDLE:
            raise RuntimeError(f"cannot start a process that is {self.state.value}")
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 (closed by the waiter)
        kwargs: dict[str, Any] = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # own session and process group: cancel reaches the whole tree
        # The engine ends with this process: the end of its stdin pipe (ours closed by the system) stops it.
        env = {**(os.environ if self.env is None else self.env), PARENT_PIPE_ENV: "1"}
        try:
            self._process = subprocess.Popen(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=env, cwd=self.cwd, text=True, encoding="utf-8", errors="replace", bufsize=1, **kwargs)
        except OSError as error:
            self._close_log()
            self.state = RunState.FAILED
            self.error = f"Could not start {self.argv[0]}: {error.strerror or error}"
            raise
        self.state = RunState.RUNNING
        readers = [threading.Thread(target=self._read_stdout, daemon=True, name="plcl-stdout"),
                   threading.Thread(target=self._read_stderr, daemon=True, name="plcl-stderr")]
        for reader in readers:
            reader.start()
        threading.Thread(target=self._wait, args=(readers,), daemon=True, name="plcl-wait").start()

    def cancel(self) -> None:
        """Ask the engine to stop (it saves a checkpoint); kill the tree if it has not exited after grace_s."""
        if not self.state.active or self._cancel_requested:
            return
        self._cancel_requested = True
        self.state = RunState.CANCELLING
        if self.stop_file is not None:
            with self._stop_lock:
                if self._started:
                    self._write_stop_file()
                else:
                    self._stop_pending = True
        else:
            self._signal_group(terminate=True)
        self._kill_timer = threading.Timer(self.grace_s, self.kill)
        self._kill_timer.daemon = True
        self._kill_timer.start()

    def _write_stop_file(self) -> None:
        assert self.stop_file is not None
        try:
            self.stop_file.parent.mkdir(parents=True, exist_ok=True)
            self.stop_file.touch()
        except OSError:  # the folder is gone or read-only: the signal is better than nothing
            self._signal_group(terminate=True)

    def kill(self) -> None:
        """End the whole process tree now."""
        if self._process is None:
            return
        if self.state == RunState.RUNNING:
            self._cancel_requested = True
            self.state = RunState.CANCELLING
        self._signal_group(terminate=False)

    def poll(self) -> list[Message]:
        """Every message received since the last call (never blocks)."""
        messages = []
        while True:
            try:
                message = self._queue.get_nowait()
            except queue.Empty:
                break
            messages.append(message)
            if message.kind == "event" and message.data.get("event") == "error":
                self.error = str(message.data.get("message", "")) or self.error
            elif message.kind == "exit":
                self._finish(message.data)
        return messages

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the child has exited (for scripts; Slicer polls instead). True if it has."""
        if self._process is None:
            return True
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    # --- internals ------------------------------------------------------------------------------
    def _finish(self, returncode: int) -> None:
        self.returncode = returncode
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        if self._cancel_requested or returncode == EXIT_CANCELLED:
            self.state = RunState.CANCELLED
        elif returncode == 0:
            self.state = RunState.DONE
        else:
            self.state = RunState.FAILED
            if not self.error:
                self.error = _last_meaningful(self.tail) or f"the engine stopped with exit code {returncode}"

    def _signal_group(self, terminate: bool) -> None:
        process = self._process
        if process is None:
            return
        if sys.platform == "win32":
            if terminate and process.poll() is None:
                with contextlib.suppress(OSError):
                    process.send_signal(signal.CTRL_BREAK_EVENT)
            elif not terminate:
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM if terminate else signal.SIGKILL)

    def _write_log(self, line: str) -> None:
        if self._log_file is not None:
            with self._log_lock:
                self._log_file.write(line + "\n")
                self._log_file.flush()

    def _read_stdout(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for raw in self._process.stdout:
            line = raw.rstrip("\r\n")
            event = _parse_event(line)
            if event is not None:
                if event.get("event") == "start":
                    with self._stop_lock:
                        self._started = True
                        if self._stop_pending:
                            self._write_stop_file()
                self._queue.put(Message("event", event))
            elif line.strip():
                self.tail.append(line)
                self._write_log(line)
                self._queue.put(Message("log", line))

    def _read_stderr(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        for raw in self._process.stderr:
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            # progress bars redraw with carriage returns: keep the last state of the line
            line = line.split("\r")[-1]
            self.tail.append(line)
            self._write_log(line)
            self._queue.put(Message("log", line))

    def _wait(self, readers: list[threading.Thread]) -> None:
        assert self._process is not None
        returncode = self._process.wait()
        # Nothing of the run may outlive it: end any process left in its group (they would also
        # keep the pipes open).
        if sys.platform != "win32":
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)
        for reader in readers:
            reader.join(timeout=10)
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        self._close_log()
        self._queue.put(Message("exit", returncode))

    def _close_log(self) -> None:
        with self._log_lock:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None


def _parse_event(line: str) -> dict[str, Any] | None:
    text = line.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) and isinstance(value.get("event"), str) else None


def _last_meaningful(lines: collections.deque[str]) -> str:
    for line in reversed(lines):
        text = line.strip()
        if text and not text.startswith(("File ", "Traceback", "^", "~")):
            return text[:300]
    return ""


ProcessFactory = Callable[..., EngineProcess]
