"""Which axis a volume is sliced along, and which of its slices are annotated (numpy only).

The engine trains on 2D slices along a volume's coarsest axis after a canonical reorientation
(preprocess.py). An annotation may cover only some of those slices; the others are neither
background nor foreground. Torch-free, so the Slicer module counts painted slices with the same
rules the engine applies.

Slice indices are those of the image file: the 0-based voxel index along the file's own array
axis that the engine slices on (k for an axial stack stored with k along S, whatever its sign).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: ``--annotated-slices`` values besides an explicit list of slice indices.
ALL = "all"
LABELLED = "labelled"
#: The contract's names of a file's voxel axes (summary.json's ``slice_axis``), by the array axis of
#: [k, j, i]: array axis a is IJK (ITK index) axis 2 - a.
AXIS_NAMES = ("k", "j", "i")
#: Slicer's names of the views, by the world axis (L, P, S) a slice is perpendicular to.
VIEW_OF_AXIS = {0: "Sagittal", 1: "Coronal", 2: "Axial"}
#: A stroke is "thin" along an in-plane axis when fewer of its voxels than this share have a labelled
#: neighbour along that axis: painted in a view across the engine's slices, one voxel deep.
THIN_SHARE = 0.5


class SliceSpecError(ValueError):
    """An ``--annotated-slices`` value that cannot be read or does not fit the image."""


@dataclass(frozen=True)
class Canonical:
    """The nearest canonical [S, P, L] order of an array [k, j, i] and its slicing axis."""

    axes: tuple[int, int, int]  # array axis at canonical position S, P, L
    flips: tuple[bool, bool, bool]
    spacing: tuple[float, float, float]
    slice_position: int  # canonical position (0 S, 1 P, 2 L) of the coarsest axis

    @property
    def slice_axis(self) -> int:
        """The array axis of [k, j, i] (0 k, 1 j, 2 i) the engine slices along."""
        return self.axes[self.slice_position]

    @property
    def view(self) -> str:
        """The view whose slices are the engine's slices: Axial, Coronal or Sagittal."""
        return VIEW_OF_AXIS[2 - self.slice_position]


def canonical(direction: np.ndarray, spacing: Sequence[float]) -> Canonical:
    """``direction``: 3x3 LPS direction matrix, column a the direction of index axis a (i, j, k)."""
    magnitude = np.abs(direction)
    # Assign each index axis (i, j, k) to a physical axis (L, P, S), strongest alignment first.
    physical_of = [-1, -1, -1]
    used: set[int] = set()
    for flat in np.argsort(-magnitude, axis=None):
        physical, index = divmod(int(flat), 3)
        if physical_of[index] < 0 and physical not in used:
            physical_of[index] = physical
            used.add(physical)
    # Canonical array order is [S, P, L]; the array axis of index axis a is 2 - a.
    axes, flips, spacings = [0, 0, 0], [False, False, False], [0.0, 0.0, 0.0]
    for index in range(3):
        position = 2 - physical_of[index]
        axes[position] = 2 - index
        flips[position] = bool(direction[physical_of[index], index] < 0)
        spacings[position] = float(spacing[index])
    # Coarsest axis first; a tie keeps the canonical order, so S (axial) wins.
    slice_position = max(range(3), key=lambda p: (round(spacings[p], 4), -p))
    return Canonical(tuple(axes), tuple(flips), tuple(spacings), slice_position)


def parse_spec(text: str, count: int | None = None, axis: str = "") -> str | list[int]:
    """``all``, ``labelled`` (or ``labeled``), or slice indices such as ``0,4,7-9`` (sorted, unique).

    With ``count`` (the image's slices along its slicing ``axis``: k, j or i) every index is checked against it
    before a range is expanded: ``0-999999999999`` is an error, not a list too large for memory."""
    value = text.strip().lower()
    if value in (ALL, LABELLED, "labeled"):
        return ALL if value == ALL else LABELLED
    ranges = parse_ranges(text)
    if count is not None:
        check_in_range(ranges, count, axis)
    indices: set[int] = set()
    for low, high in ranges:
        indices.update(range(low, high + 1))
    return sorted(indices)


def parse_ranges(text: str) -> list[tuple[int, int]]:
    """The (first, last) ranges of a list of slice indices such as ``0,4,7-9``, not expanded."""
    ranges = []
    for part in text.strip().lower().split(","):
        first, dash, last = part.strip().partition("-")
        try:
            low = int(first)
            high = int(last) if dash else low
        except ValueError:
            raise SliceSpecError(f"--annotated-slices {text!r}: expected all, labelled or slice indices "
                                 "such as 0,4,7-9") from None
        if low < 0 or high < low:
            raise SliceSpecError(f"--annotated-slices {text!r}: {part.strip()!r} is not a slice index or an "
                                 "increasing range of them")
        ranges.append((low, high))
    return ranges


def check_in_range(ranges: list[tuple[int, int]], count: int, axis: str = "") -> None:
    beyond = sorted(high for _, high in ranges if high >= count)
    if beyond:
        along = f" along its {axis} axis" if axis else ""
        raise SliceSpecError(f"slice {beyond[-1]} is out of range: the image has {count} slices{along} "
                             f"(0-based indices 0-{count - 1})")


#: More slice indices than any volume has: a list this long is kept as given and checked against the image.
EXPAND_LIMIT = 1 << 16


def spec_text(spec: str | list[int]) -> str:
    return spec if isinstance(spec, str) else ",".join(str(i) for i in spec)


def keep_annotated_slices(labels: np.ndarray, uncertainty: np.ndarray, annotation: np.ndarray, slice_axis: int,
                          indices: Sequence[int]) -> None:
    """In place: slices ``indices`` along ``slice_axis`` of a segmentation and its uncertainty map [k, j, i] take
    the annotation's label values, certain (a partly annotated volume's segmentation keeps them as annotated)."""
    where = (slice(None),) * slice_axis + (list(indices),)
    labels[where] = annotation[where]
    uncertainty[where] = 0.0


def labelled_slices(labels: np.ndarray, slice_axis: int) -> list[int]:
    """File slice indices along ``slice_axis`` holding any non-zero label."""
    others = tuple(a for a in range(3) if a != slice_axis)
    return np.flatnonzero(np.any(labels != 0, axis=others)).tolist()


def annotated_slices(spec: str | list[int], labels: np.ndarray, slice_axis: int) -> list[int]:
    """The file slice indices that ``spec`` marks as annotated, checked against the image."""
    count = labels.shape[slice_axis]
    if spec == ALL:
        return list(range(count))
    if spec == LABELLED:
        return labelled_slices(labels, slice_axis)
    outside = [i for i in spec if i >= count]
    if outside:
        raise SliceSpecError(f"slice {outside[0]} is out of range: the image has {count} slices along its "
                             f"{AXIS_NAMES[slice_axis]} axis (0-based indices 0-{count - 1})")
    return list(spec)


def drawn_across(labels: np.ndarray, slice_axis: int) -> int | None:
    """An in-plane array axis along which the annotation's strokes are one voxel thin (painted in
    a view across the engine's slices), or None."""
    mask = labels != 0
    total = int(mask.sum())
    if total == 0:
        return None
    for axis in (a for a in range(3) if a != slice_axis):
        if mask.shape[axis] < 2:
            continue
        head = [slice(None)] * 3
        tail = [slice(None)] * 3
        head[axis], tail[axis] = slice(0, -1), slice(1, None)
        pairs = mask[tuple(head)] & mask[tuple(tail)]
        # Voxels with a labelled neighbour along the axis (either side).
        neighboured = np.zeros_like(mask)
        neighboured[tuple(head)] |= pairs
        neighboured[tuple(tail)] |= pairs
        if neighboured.sum() < THIN_SHARE * total:
            return axis
    return None
