"""A lab run of ``plcl`` in a child process, measured: its wall time, CPU time and peak memory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def run_child(arguments: list[str], log: Path) -> dict[str, Any]:
    """Run ``plcl`` in a child process; its wall time, CPU time and peak resident memory (from wait4)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                       os.environ.get("PYTHONPATH", "")])}
    started = time.monotonic()
    with open(log, "w") as log_file:
        child = subprocess.Popen([sys.executable, "-m", "PLCLSegmentationLib.engine", *arguments],
                                 stdout=log_file, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        tail = log.read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"plcl {arguments[0]} failed ({child.returncode}): {' | '.join(tail)}")
    return {"seconds": time.monotonic() - started, "peak_rss_mb": usage.ru_maxrss / 1024.0,
            "cpu_seconds": usage.ru_utime + usage.ru_stime}
