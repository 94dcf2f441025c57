"""What a run of the engine brings back, as the module reads it: the run folder's summary (the
engine's one description of its outputs), the files it names, and the two steps by which each
exported item takes its results into the scene (:class:`Expected`, then :class:`Imported`).

Apart from :mod:`.engine_run` so that the items (:mod:`.items`, :mod:`.cine`) can name these types
without depending on how a run is started and polled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .engine.protocol import SUMMARY_FILE
from .parameters import VolumeRecord
from .scene_io import SceneTransaction, SegmentClass
from .services import PLCLError, SlicerServices


@dataclass
class RunResults:
    """What the engine wrote: its run folder, its summary, and the classes the run segments."""

    out_dir: Path
    summary: dict[str, Any]
    classes: list[SegmentClass]

    def path(self, reported: Any) -> Path | None:
        return output_path(self.out_dir, reported)

    def volume(self, name: str) -> dict[str, Any]:
        """The summary's entry of the volume the engine named ``name`` (empty if none)."""
        by_name = {str(v.get("name")): v for v in self.summary.get("volumes", []) if isinstance(v, dict)}
        return by_name.get(name, {})


class Imported(Protocol):
    """One record's new results: in the scene (inside the run's transaction) but not yet in its record."""

    record: VolumeRecord
    kind: str  # parameters.VOLUME or parameters.SEQUENCE

    def apply(self, services: SlicerServices, warnings: list[str]) -> None:
        """The run succeeded: the record takes its new results (its previous ones are removed)."""


class Expected(Protocol):
    """What a run brings back for one exported record."""

    key: str  # the record's key
    order: int  # volumes are imported (and listed) before sequences

    def take(self, services: SlicerServices, transaction: SceneTransaction, record: VolumeRecord | None,
             results: RunResults, warnings: list[str]) -> Imported | None:
        """Add the results to the scene; None (with a warning) when the record went away during the run."""


def read_summary(out_dir: Path) -> dict[str, Any]:
    """The engine's one description of a run's outputs (engine/protocol.py: SUMMARY_FILE)."""
    path = out_dir / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PLCLError(f"the engine wrote no {SUMMARY_FILE} in {out_dir}") from None
    except (OSError, ValueError) as error:
        raise PLCLError(f"{path}: not readable ({error})") from None
    if not isinstance(summary, dict):
        raise PLCLError(f"{path}: not a run summary")
    return summary


def output_path(out_dir: Path, reported: Any) -> Path | None:
    """A file the summary names (relative paths are in the run folder), if it exists."""
    if not reported:
        return None
    path = Path(str(reported))
    path = path if path.is_absolute() else out_dir / path
    return path if path.is_file() else None
