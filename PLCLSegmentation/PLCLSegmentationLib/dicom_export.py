"""Export DICOM SEG of an accepted segmentation through Slicer's own DICOM exporter; never written here.

Slicer writes DICOM SEG with its DICOMSegmentationPlugin (dcmqi's ``itkimage2segimage`` under it):
built into Slicer from 5.12, from the QuantitativeReporting extension in Slicer 5.8 and 5.10. Both
register it as ``slicer.modules.dicomPlugins["DICOMSegmentationPlugin"]`` and are driven alike, as
Slicer's DICOM export dialog drives any plugin: ``examineForExport(subject hierarchy item)`` gives the
exportables, each gets its output ``directory``, ``export(exportables)`` writes the SEG, adds it to
the DICOM database and returns "" (or an error message).

The plugin reads the segmentation's reference volume (its reference image geometry node), that
volume's ``DICOM.instanceUIDs`` (set by Slicer's DICOM loader, one per slice) and the files of those
instances in the DICOM database, each segment's terminology, and the segment tags
``DICOM.SegmentAlgorithmType`` and ``DICOM.SegmentAlgorithmName``. :func:`problem` says, as one line,
why a record cannot be exported (or None); :func:`prepare` checks the same and readies this module's
own segmentation node for the plugin (never a node of the user); :func:`run` is the plugin's call and
needs the Slicer application (its DICOM database and plugins): it is checked by hand in Slicer
(docs/slicer-module.md).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import scene_io
from .parameters import REVIEWED, VolumeRecord
from .services import PLCLError, SlicerServices, is_owned

#: The plugin's key in ``slicer.modules.dicomPlugins`` (QuantitativeReporting in 5.8 and 5.10; core from 5.12).
PLUGIN = "DICOMSegmentationPlugin"
#: Volume attribute of the SOP instance UIDs it was loaded from (DICOMScalarVolumePlugin, one per slice).
INSTANCE_UIDS = "DICOM.instanceUIDs"
#: Subject hierarchy attribute of the instances a segmentation refers to
#: (vtkMRMLSubjectHierarchyConstants::GetDICOMReferencedInstanceUIDsAttributeName()).
REFERENCED_INSTANCE_UIDS = "DICOM.ReferencedInstanceUIDs"
#: Segment tags the plugin writes as each segment's algorithm (MANUAL without them).
ALGORITHM_TYPE_TAG = "DICOM.SegmentAlgorithmType"
ALGORITHM_NAME_TAG = "DICOM.SegmentAlgorithmName"
#: A model's prediction that a person reviewed, corrected where needed and accepted.
ALGORITHM_TYPE = "SEMIAUTOMATIC"
ALGORITHM_NAME = "PLCLSegmentation"
#: Where the plugin was when this was written, for the message that it is missing.
PLUGIN_SOURCE = ("Exporting DICOM SEG needs Slicer's DICOM SEG exporter: install the QuantitativeReporting "
                 "extension (Slicer 5.8 and 5.10; it is built into Slicer 5.12 and later) and restart Slicer.")


@dataclass
class SegExport:
    """What the plugin is given: the segmentation's subject hierarchy item, checked and ready."""

    volume: Any
    segmentation: Any
    item: int  # the segmentation's subject hierarchy item (the exportable's subjectHierarchyItemID)
    instance_uids: list[str]  # of the volume's DICOM images, as Slicer's loader recorded them

    @property
    def name(self) -> str:
        return str(self.segmentation.GetName())


def problem(record: VolumeRecord | None, frame: int | None = None) -> str | None:
    """Why ``record`` (a row of the review table: ``frame`` of a sequence) has no DICOM SEG to export,
    as one line; None when it has one."""
    if record is None:
        return "Select a volume in the review table."
    if record.cine or frame is not None:
        return (f"'{record.name}' is a sequence: Slicer's DICOM SEG exporter writes the segmentation of one "
                "volume (save the frame's segmentation, or export it with plcl --format dicom-seg).")
    if record.role != REVIEWED or record.segmentation is None:
        return f"'{record.name}' has no accepted segmentation: review its prediction and Accept it first."
    if not instance_uids(record.volume):
        return (f"'{record.name}' was not loaded from Slicer's DICOM database: DICOM SEG refers to the DICOM "
                "images of a volume (save the segmentation as .seg.nrrd instead).")
    return _segmentation_problem(record.volume, record.segmentation)


def instance_uids(volume: Any) -> list[str]:
    """The SOP instance UIDs Slicer's DICOM loader recorded on ``volume`` (none: not from DICOM)."""
    return str(volume.GetAttribute(INSTANCE_UIDS) or "").split() if volume is not None else []


def _segmentation_problem(volume: Any, segmentation: Any) -> str | None:
    name = segmentation.GetName()
    if not is_owned(segmentation):
        return f"'{name}' is not a segmentation of this module."
    if segmentation.GetNodeReferenceID(segmentation.GetReferenceImageGeometryReferenceRole()) != volume.GetID():
        return (f"'{name}' is not on the grid of '{volume.GetName()}' (its geometry was changed): Slicer's DICOM "
                "SEG exporter writes it on that volume's slices.")
    uids = instance_uids(volume)
    slices = volume.GetImageData().GetDimensions()[2] if volume.GetImageData() is not None else 0
    if len(uids) not in (1, slices):  # one multi-frame image, or one image per slice
        return (f"'{volume.GetName()}' has {slices} slices but was loaded from {len(uids)} DICOM images: it was "
                "resampled or cropped since; export the segmentation of the volume as loaded.")
    ids = scene_io.segment_ids(segmentation)
    if not ids:
        return f"'{name}' has no segment to export."
    segments = segmentation.GetSegmentation()
    for segment_id in ids:
        segment = segments.GetSegment(segment_id)
        if not terminology_codes(scene_io.get_terminology(segment)):
            return (f"Segment '{segment.GetName()}' of '{name}' has no terminology (category and type codes), "
                    "which DICOM SEG needs: set it in the Segment Editor (double-click its colour).")
    if not any(_has_voxels(segments, segment_id) for segment_id in ids):
        return f"'{name}' is empty: none of its segments holds a voxel."
    return None


def _has_voxels(segmentation: Any, segment_id: str) -> bool:
    """Whether a segment holds a voxel: its label value in its binary labelmap (which it may share with
    other segments, each with a value of its own)."""
    from vtk.util.numpy_support import vtk_to_numpy

    segment = segmentation.GetSegment(segment_id)
    labelmap = segment.GetRepresentation(segmentation.GetSourceRepresentationName())
    if labelmap is None or not labelmap.IsA("vtkImageData") or labelmap.GetPointData().GetScalars() is None:
        return False
    return bool((vtk_to_numpy(labelmap.GetPointData().GetScalars()) == segment.GetLabelValue()).any())


def terminology_codes(entry: str) -> tuple[str, str] | None:
    """The category and type codes ("SCHEME^VALUE^MEANING") of a Slicer terminology entry string
    ("context~category~type~modifier~region context~region~region modifier"); None where either is
    missing or incomplete."""
    fields = entry.split("~")
    if len(fields) < 3:
        return None
    category, kind = fields[1], fields[2]
    complete = all(len(code.split("^")) == 3 and all(part.strip() for part in code.split("^"))
                   for code in (category, kind))
    return (category, kind) if complete else None


def prepare(services: SlicerServices, record: VolumeRecord, frame: int | None = None) -> SegExport:
    """Check ``record`` (one line if it cannot be exported) and ready its segmentation, this module's
    own node, for the plugin: under the volume's study in the subject hierarchy (where Slicer's DICOM
    export looks for the patient and study), referring to the volume's DICOM images, each segment with
    its algorithm (a reviewed prediction of PLCLSegmentation)."""
    reason = problem(record, frame)
    if reason:
        raise PLCLError(reason)
    volume, segmentation = record.volume, record.segmentation
    scene_io.place_next_to(services, segmentation, volume)
    hierarchy = services.subject_hierarchy()
    item = hierarchy.GetItemByDataNode(segmentation)
    uids = instance_uids(volume)
    hierarchy.SetItemAttribute(item, REFERENCED_INSTANCE_UIDS, " ".join(uids))
    segments = segmentation.GetSegmentation()
    for segment_id in scene_io.segment_ids(segmentation):
        segment = segments.GetSegment(segment_id)
        segment.SetTag(ALGORITHM_TYPE_TAG, ALGORITHM_TYPE)
        segment.SetTag(ALGORITHM_NAME_TAG, ALGORITHM_NAME)
    return SegExport(volume, segmentation, int(item), uids)


def run(export: SegExport, directory: str | os.PathLike[str]) -> Path:
    """Write the DICOM SEG into ``directory`` with Slicer's plugin (which also adds it to the DICOM
    database); returns its path. The plugin writes into a new folder inside ``directory``; the file
    is then moved into place, so that ``directory`` never holds a partial SEG."""
    import slicer

    directory = Path(directory)
    if not directory.is_dir():
        raise PLCLError(f"{directory}: folder not found.")
    plugin_class = (getattr(slicer.modules, "dicomPlugins", None) or {}).get(PLUGIN)
    if plugin_class is None:
        raise PLCLError(PLUGIN_SOURCE)
    database = slicer.dicomDatabase if hasattr(slicer, "dicomDatabase") else None
    if database is None or not database.isOpen:
        raise PLCLError("Slicer's DICOM database is not open: open it in the DICOM module, where "
                        f"'{export.volume.GetName()}' was loaded from.")
    missing = [uid for uid in export.instance_uids if not database.fileForInstance(uid)]
    if missing:
        raise PLCLError(f"{len(missing)} of the {len(export.instance_uids)} DICOM images of "
                        f"'{export.volume.GetName()}' are no longer in Slicer's DICOM database; import them again.")
    plugin = plugin_class()
    exportables = plugin.examineForExport(export.item)
    if not exportables:
        raise PLCLError(f"Slicer's DICOM SEG exporter does not take '{export.name}'.")
    staging = Path(tempfile.mkdtemp(prefix=".plcl-dicom-seg-", dir=directory))
    try:
        for exportable in exportables:
            exportable.directory = str(staging)
        error = plugin.export(exportables)
        if error:
            raise PLCLError(f"Slicer's DICOM SEG exporter failed for '{export.name}': {' '.join(str(error).split())}")
        written = sorted(staging.iterdir())
        if len(written) != 1:
            raise PLCLError(f"Slicer's DICOM SEG exporter wrote {len(written)} files for '{export.name}', one "
                            "was expected.")
        target = _free_name(directory / written[0].name)
        os.replace(written[0], target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _free_name(path: Path) -> Path:
    """``path``, or ``path`` with _2, _3, ... before its suffix where a file of that name exists."""
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem}_{number}{path.suffix}")
    return candidate
