"""The engine ends with its caller (engine/parent_pipe.py): only where asked, on the end of its stdin."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time

from slicer_support import ROOT

from PLCLSegmentationLib.engine.parent_pipe import watch_parent_pipe
from PLCLSegmentationLib.engine.protocol import PARENT_PIPE_ENV


class Pipe(io.RawIOBase):
    """A stdin that gives nothing until it is closed, then its end."""

    def __init__(self) -> None:
        self.ended = threading.Event()
        self.reads = 0

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        self.ended.wait(30)
        return b""


def test_the_end_of_the_pipe_is_a_stop_request_where_asked():
    cancel, pipe = threading.Event(), Pipe()
    thread = watch_parent_pipe(cancel, pipe, environ={PARENT_PIPE_ENV: "1"})
    assert thread is not None and thread.daemon
    time.sleep(0.1)
    assert not cancel.is_set(), "stopped while the caller still holds the pipe"
    pipe.ended.set()  # the caller is gone
    assert cancel.wait(10)


def test_without_the_variable_stdin_is_never_read():
    cancel, pipe = threading.Event(), Pipe()
    pipe.ended.set()
    for environ in ({}, {PARENT_PIPE_ENV: "0"}):
        assert watch_parent_pipe(cancel, pipe, environ=environ) is None
    assert pipe.reads == 0 and not cancel.is_set()


def test_a_plain_plcl_with_its_stdin_at_its_end_runs_on():
    """``plcl`` in a shell with ``< /dev/null`` (cron, Slurm): the end of stdin means nothing."""
    code = ("import sys, threading, time\n"
            "from PLCLSegmentationLib.engine.parent_pipe import watch_parent_pipe\n"
            "cancel = threading.Event()\n"
            "watch_parent_pipe(cancel)\n"
            "time.sleep(0.5)\n"
            "print('cancelled' if cancel.is_set() else 'running', flush=True)\n")
    env = {k: v for k, v in os.environ.items() if k != PARENT_PIPE_ENV}
    env["PYTHONPATH"] = str(ROOT / "PLCLSegmentation")
    plain = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           env=env, timeout=60, check=True)
    assert plain.stdout.strip() == "running"
    asked = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           env={**env, PARENT_PIPE_ENV: "1"}, timeout=60, check=True)
    assert asked.stdout.strip() == "", "the outputs of an engine whose caller is gone go nowhere"
