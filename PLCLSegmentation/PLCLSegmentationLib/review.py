"""The review that guides the eye: each structure's estimated Dice, and the least certain slices first.

The engine describes each prediction (a volume, or a frame of a sequence) in its summary entry
(docs/protocol.md, "summary.json"): ``structures`` (estimated Dice per structure, worst first),
``slice_axis`` (the file's voxel axis, i, j or k, its 2D slices lie across) and ``slices`` (least
certain first). The record keeps the structures (the review table shows them) and, apart, the
slices with those the user has visited (parameters.ModuleState.review); "Next uncertain slice"
walks them in the review table's order, SLICES_PER_PASS of a prediction before the next one's. Qt-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .engine.slicing import AXIS_NAMES
from .parameters import PREDICTED, ModuleState, VolumeRecord

#: The review data's key of a volume's prediction (a frame's is its index as text).
VOLUME_KEY = "volume"
#: "Next uncertain slice" shows this many slices of a prediction, then the next prediction's; once every one
#: has shown as many, each one's next ones. Corrections spread over volumes teach a retrain more than one
#: volume corrected whole, and fix more by hand (docs/results/2026-12-05-review-spread.md); one a prediction
#: more than two, on the reviewed volumes (docs/results/2026-12-07-review-one-slice-a-prediction.md).
SLICES_PER_PASS = 1


def frame_key(frame: int | None) -> str:
    return VOLUME_KEY if frame is None else str(int(frame))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def structures_of(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """A summary entry's structures, worst first (the engine's order; lowest estimate first, none last),
    as the record keeps them: name, value, estimated_dice (or None), uncertainty."""
    structures = []
    for item in entry.get("structures") or []:
        if isinstance(item, dict) and item.get("name") is not None:
            structures.append({"name": str(item["name"]), "value": item.get("value"),
                               "estimated_dice": _number(item.get("estimated_dice")),
                               "uncertainty": _number(item.get("uncertainty"))})
    structures.sort(key=lambda s: (s["estimated_dice"] is None, s["estimated_dice"] or 0.0))
    return structures


def slices_of(entry: dict[str, Any]) -> dict[str, Any] | None:
    """A summary entry's slices to review in the engine's order (least certain first), as stored: {"axis",
    "slices": [[index, uncertainty, structure], ...], "visited": []}; None when the entry has none (an older
    engine)."""
    axis = entry.get("slice_axis")
    if axis not in AXIS_NAMES or not isinstance(entry.get("slices"), list):
        return None
    slices = []
    for item in entry["slices"]:
        if not isinstance(item, dict) or isinstance(item.get("index"), bool) or not isinstance(item.get("index"), int):
            continue
        structure = item.get("structure")
        slices.append([item["index"], _number(item.get("uncertainty")) or 0.0,
                       str(structure) if structure is not None else None])
    return {"axis": axis, "slices": slices, "visited": []}


def worst_estimate(structures: Sequence[dict[str, Any]]) -> float | None:
    """The lowest estimated Dice of a prediction's structures (0 when none is found anywhere); None
    without estimates."""
    if not structures:
        return None
    estimates = [s["estimated_dice"] for s in structures if s.get("estimated_dice") is not None]
    return min(estimates) if estimates else 0.0


def structures_text(structures: Sequence[dict[str, Any]]) -> str:
    """"Myocardium 0.71, Left ventricle 0.88, ..." worst first; a structure predicted nowhere says so."""
    return ", ".join(f"{s['name']} {s['estimated_dice']:.2f}" if s.get("estimated_dice") is not None
                     else f"{s['name']} not found" for s in structures)


@dataclass
class SliceStop:
    """Where "Next uncertain slice" went: a slice of a volume (or of a frame of a sequence)."""

    record: VolumeRecord
    name: str  # the review table's name of the volume or frame
    frame: int | None
    index: int  # the file slice index along ``axis``
    axis: str  # i, j or k
    uncertainty: float
    structure: str | None  # the least certain structure on the slice
    remaining: int  # slices of this prediction not yet visited after this one
    view: str = ""  # the slice view moved there (Axial, Coronal, Sagittal)
    segment_id: str | None = None  # the structure's segment, highlighted



def next_stop(state: ModuleState, rows: Sequence[Any], record_key: str | None = None,
              frame: int | None = None, just_shown: bool = False) -> SliceStop | None:
    """The least certain slice not yet visited of the row (``record_key``, ``frame``), else of the
    rows after it in the review table's order (``rows``: logic.review_rows(), then from the top), in
    passes of SLICES_PER_PASS slices a row: a row that has shown its pass's slices waits for the others.
    ``just_shown``: that row's slice was the last one shown, so a row that has just ended its pass's share
    goes on to the next row rather than open the next pass. None when every predicted slice has been
    visited. :func:`visit` marks it visited once shown."""
    rows = [r for r in rows if r.role == PREDICTED]
    start = next((i for i, r in enumerate(rows) if r.record.key == record_key and r.frame == frame), 0)
    found = []  # (row, its slice axis, its slices not yet seen, how many it has shown)
    for row in rows[start:] + rows[:start]:
        record = row.record
        data = state.review(record.key).get(frame_key(row.frame))
        if not isinstance(data, dict) or data.get("axis") not in AXIS_NAMES:
            continue
        skip = set(data.get("visited", [])) | (set(record.accepted) if row.frame is None else set())
        listed = data.get("slices", [])
        waiting = [s for s in listed if s[0] not in skip]
        if waiting:
            found.append((row, data["axis"], waiting, len(listed) - len(waiting)))
    if not found:
        return None
    first, *others = found
    if just_shown and first[0].record.key == record_key and first[0].frame == frame and first[3] % SLICES_PER_PASS == 0:
        found = [*others, first]  # its share of this pass shown: the next row's turn (then from the top)
    this_pass = min(seen // SLICES_PER_PASS for *_, seen in found)
    row, axis, waiting = next((r, a, w) for r, a, w, seen in found if seen // SLICES_PER_PASS == this_pass)
    index, uncertainty, structure = waiting[0]
    return SliceStop(row.record, row.name, row.frame, int(index), axis, float(uncertainty), structure,
                     len(waiting) - 1)


def visit(state: ModuleState, stop: SliceStop) -> None:
    """The slice of ``stop`` was shown: "Next uncertain slice" skips it from now on (kept in the scene)."""
    review = state.review(stop.record.key)
    data = review.get(frame_key(stop.frame))
    if isinstance(data, dict):
        data["visited"] = sorted(set(data.get("visited", [])) | {stop.index})
        stop.record.review = review
        state.save(stop.record)
