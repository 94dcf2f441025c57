"""Memory handed back to the operating system between the inputs of a long run.

A shard segments thousands of inputs in one process. Each input's arrays (hundreds of megabytes
for a large volume) are freed when it is done, but glibc keeps freed heap memory in the process
and the heap fragments as volumes of other sizes come and go: a task's resident memory, and its
peak, crept up with the number of inputs (about +11 % from 100 to 1,000 SYNTHETIC volumes,
docs/results/2026-12-03-cohort-scale.md). ``malloc_trim(0)`` returns the free pages, so the peak is
set by the largest input, not by how many came before it: run/prediction.py's write_predictions
calls it after each group of volumes (``plcl predict``, a training run's final predictions, each
input of a shard), and a shard once more after each input, when the input's own voxels are dropped
too. Elsewhere (macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from typing import Any


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # no C library found, or one without malloc_trim (musl)
        return None


def release_freed_memory() -> bool:
    """Give the C heap's free pages back to the operating system; whether it could be done here."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
