"""Ending the engine with the program that started it.

A caller that keeps the write end of a pipe on the engine's stdin (the Slicer module) sets
``PLCL_PARENT_PIPE=1`` (protocol.PARENT_PIPE_ENV). When that pipe reaches its end (the caller exited,
crashed or was killed: the system closes its end), the engine stops as on SIGINT: it finishes its step,
saves its checkpoint and exits 130. Nobody reads its output any more, so stdout and stderr then go to
the null device (a write to a pipe without a reader would fail the run before its checkpoint).

Off by default: a ``plcl`` typed in a shell, or run with its stdin closed (``< /dev/null``, cron, Slurm),
never reads stdin.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Mapping
from typing import BinaryIO

from .protocol import PARENT_PIPE_ENV


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    return (os.environ if environ is None else environ).get(PARENT_PIPE_ENV, "") == "1"


def watch_parent_pipe(cancel: threading.Event, stream: BinaryIO | None = None,
                      environ: Mapping[str, str] | None = None) -> threading.Thread | None:
    """Where enabled, set ``cancel`` when ``stream`` (default: stdin) reaches its end; else do nothing.
    Only the engine's own stdin silences the outputs at its end (a given stream is a test's)."""
    if not enabled(environ):
        return None
    silence = stream is None
    if stream is None:
        # The descriptor, unbuffered: a reader blocked in sys.stdin would hold its lock and abort the
        # interpreter's shutdown ("could not acquire lock ... at interpreter shutdown").
        try:
            descriptor = sys.stdin.fileno()
        except (AttributeError, OSError, ValueError):  # no stdin at all (pythonw)
            return None

        def read() -> bytes:
            return os.read(descriptor, 4096)
    else:
        read = functools.partial(stream.read, 4096)

    def watch() -> None:
        with contextlib.suppress(OSError, ValueError):
            while read():  # what the caller writes means nothing; only the end does
                pass
        if silence:
            _silence_outputs()
        cancel.set()

    thread = threading.Thread(target=watch, daemon=True, name="plcl-parent-pipe")
    thread.start()
    return thread


def _silence_outputs() -> None:
    """Point stdout and stderr (the file descriptors, so that every writer follows) at the null device."""
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_WRONLY)
        for descriptor in (1, 2):
            os.dup2(null, descriptor)
        os.close(null)
