"""The errors the engine reports: each becomes one line naming the file, and an exit code (protocol.py)."""

from __future__ import annotations

import errno
import os


class InputError(ValueError):
    """A problem with a user's file, reported as one line that names the file."""

    def __init__(self, path: str | os.PathLike[str] | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class OutputError(InputError):
    """An output could not be written (the disk is full, ...): one line naming the file."""


#: How writers report a full disk: errno from Python, the C library's text from ITK and torch.
DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class ConfigError(ValueError):
    """An impossible setting or combination of command-line options."""


class Cancelled(Exception):
    """Training stopped on request; a checkpoint was saved."""

    def __init__(self, checkpoint: str | None) -> None:
        super().__init__("cancelled on request")
        self.checkpoint = checkpoint
