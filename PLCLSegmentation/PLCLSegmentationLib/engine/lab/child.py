"""A lab run of ``plcl`` in a child process, measured: its wall time, CPU time and peak memory; the
command and environment that start one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def engine_command(*arguments: str) -> list[str]:
    """``plcl ARGUMENTS`` with this interpreter."""
    return [sys.executable, "-m", "PLCLSegmentationLib.engine", *arguments]


def engine_environment() -> dict[str, str]:
    """This environment with the folder that holds the PLCLSegmentationLib package first on PYTHONPATH."""
    root = str(Path(__file__).resolve().parents[3])  # lab <- engine <- PLCLSegmentationLib <- its folder
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}


def run_child(arguments: list[str], log: Path) -> dict[str, Any]:
    """Run ``plcl`` in a child process; its wall time, CPU time and peak resident memory (from wait4)."""
    started = time.monotonic()
    with open(log, "w") as log_file:
        child = subprocess.Popen(engine_command(*arguments), stdout=log_file, stderr=subprocess.STDOUT,
                                 env=engine_environment())
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        tail = log.read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"plcl {arguments[0]} failed ({child.returncode}): {' | '.join(tail)}")
    return {"seconds": time.monotonic() - started, "peak_rss_mb": usage.ru_maxrss / 1024.0,
            "cpu_seconds": usage.ru_utime + usage.ru_stime}
