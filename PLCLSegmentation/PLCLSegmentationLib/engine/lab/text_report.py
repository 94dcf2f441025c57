"""The lab studies' markdown tables: printed, and written whole to a file where asked."""

from __future__ import annotations

from pathlib import Path

from ..files.volumes import atomic_path


def publish(text: str, out: Path | None) -> None:
    """Write ``text`` to ``out`` atomically (a reader never sees half a table), then print it."""
    if out is not None:
        with atomic_path(out) as tmp, open(tmp, "w") as f:
            f.write(text)
    print(text, end="" if text.endswith("\n") else "\n")
