"""Which slices of an annotated volume the engine trains on (its ``--annotated-slices``), as the panel
shows them: counted from the segmentation once per change of its voxels."""

from __future__ import annotations

from dataclasses import dataclass

from . import scene_io
from .engine import slicing
from .parameters import ANNOTATED, REVIEWED, SLICES_ALL, SLICES_AUTO, SLICES_PAINTED, VolumeRecord
from .services import PLCLError, SlicerServices


@dataclass
class SliceSummary:
    """Which slices of an annotated volume the engine trains on, as file indices along its slicing axis."""

    total: int  # slices along the engine's slicing axis
    painted: list[int]  # slices holding any voxel of the segments to learn
    background: list[int]  # slices the user marked as annotated background
    mode: str  # the record's choice (SLICE_MODES)
    view: str  # the view to paint in: Axial, Coronal or Sagittal

    @property
    def only_painted(self) -> bool:
        """Whether only the painted (and background) slices are annotated: chosen, or "auto" with an
        unpainted slice between painted ones (a structure continues through it, so it is not
        background) or fewer than half of the slices painted. A fully drawn volume, a run of painted
        slices with empty ones above and below, keeps teaching background everywhere."""
        if self.mode == SLICES_AUTO:
            marked = sorted(set(self.painted) | set(self.background))
            gap = any(later - earlier > 1 for earlier, later in zip(marked, marked[1:]))
            return gap or 2 * len(marked) < self.total
        return self.mode == SLICES_PAINTED

    @property
    def annotated(self) -> list[int]:
        return sorted(set(self.painted) | set(self.background)) if self.only_painted else list(range(self.total))

    def text(self) -> str:
        annotated = self.annotated
        if len(annotated) == self.total:
            return f"all {self.total} slices"
        listed = ", ".join(str(i) for i in annotated[:8]) + (", ..." if len(annotated) > 8 else "")
        return f"{len(annotated)} of {self.total} slices ({listed})"


class PaintedSlices:
    """The painted slices of each annotated volume, counted again only when its voxels may have changed
    (the panel asks on every refresh)."""

    def __init__(self, services: SlicerServices) -> None:
        self.services = services
        #: Painted slices per record key, with the content stamp they were counted at.
        self._painted: dict[str, tuple[tuple, list[int]]] = {}

    def summary(self, record: VolumeRecord) -> SliceSummary:
        """How many of the volume's slices (along the engine's slicing axis) are annotated."""
        axes = scene_io.volume_axes(record.volume)
        total = scene_io.slice_total(record.volume, axes.slice_axis)
        if record.role == REVIEWED:  # an accepted prediction covers the whole volume
            return SliceSummary(total, list(range(total)), [], SLICES_ALL, axes.view)
        if record.role != ANNOTATED or record.segmentation is None:
            raise PLCLError(f"'{record.name}' is not an annotated volume.")
        ids = record.segment_ids or scene_io.segment_ids(record.segmentation)
        stamp = scene_io.content_stamp(record.segmentation, ids, record.volume)
        cached = self._painted.get(record.key)
        if cached is not None and cached[0] == stamp:
            painted = cached[1]
        else:
            labels = scene_io.annotation_labels(self.services, record.segmentation, ids, record.volume)
            painted = slicing.labelled_slices(labels, axes.slice_axis)
            self._painted[record.key] = (stamp, painted)
        return SliceSummary(total, painted, [i for i in record.background if i < total], record.slices, axes.view)

    def argument(self, record: VolumeRecord) -> str:
        """The record's --annotated-slices value."""
        if record.role != ANNOTATED:
            return slicing.ALL
        summary = self.summary(record)
        if not summary.only_painted:
            return slicing.ALL
        if not summary.annotated:
            raise PLCLError(f"'{record.name}' has no painted slice: paint some slices in the {summary.view} view.")
        return slicing.spec_text(summary.annotated)
