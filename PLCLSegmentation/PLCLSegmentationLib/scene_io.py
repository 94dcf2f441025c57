"""Moving data between the MRML scene and the engine's files, without touching the user's nodes.

* Export: a volume is written as NRRD on its own voxel grid; the chosen segments of a segmentation
  are exported to a label map on that volume's grid (``ExportSegmentsToLabelmapNode``) and written
  as a Slicer ``.seg.nrrd`` with their names, colours and terminology. Temporary nodes live in a
  private scratch scene, so the user's scene sees nothing.
* Import: a ``.seg.nrrd`` prediction becomes a new segmentation node named after its volume, its
  segments carrying the training segments' names, colours and terminology, its reference geometry
  set from the volume, placed next to the volume in the subject hierarchy; the uncertainty map
  becomes a scalar volume with a colour table, shown as a foreground overlay on request.

Qt-free; ``slicer`` is imported inside functions so that this module imports without Slicer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import scratch
from .engine import slicing
from .services import OWNER_ATTRIBUTE, PLCLError, SlicerServices, is_owned, mark_owned

#: Node attribute value (see services.OWNER_ATTRIBUTE) of each kind of node this module creates.
PREDICTION = "prediction"
UNCERTAINTY = "uncertainty"
COLOR_TABLE = "uncertaintyColors"
UNCERTAINTY_COLORS_NAME = "PLCLSegmentation uncertainty"


@dataclass
class SegmentClass:
    """A structure to learn: label value (1, 2, ...) and the segment's look and meaning."""

    value: int
    name: str
    color: tuple[float, float, float]
    terminology: str = ""  # Slicer's terminology entry string; empty if none

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "name": self.name, "color": list(self.color), "terminology": self.terminology}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SegmentClass:
        terminology = values.get("terminology") or ""
        return cls(int(values["value"]), str(values["name"]), tuple(float(c) for c in values["color"]),
                   terminology if isinstance(terminology, str) else "")


# --- finding nodes ------------------------------------------------------------------------------


def is_grayscale_volume(node: Any) -> bool:
    """A single-component scalar volume the engine can segment.

    Label maps, vector (RGB), tensor and diffusion volumes are all subclasses of
    vtkMRMLScalarVolumeNode: only the class itself, with one scalar component, qualifies.
    """
    if node is None or node.GetClassName() != "vtkMRMLScalarVolumeNode":
        return False
    image = node.GetImageData()
    return image is not None and image.GetNumberOfScalarComponents() == 1


def scalar_volumes(scene: Any) -> list[Any]:
    """The scene's grayscale volumes that can be segmented (not label maps, not our uncertainty maps)."""
    volumes = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        if is_grayscale_volume(node) and not is_owned(node) and not node.GetHideFromEditors():
            volumes.append(node)
    return volumes


def segment_ids(segmentation_node: Any) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


def classes_from_segments(segmentation_node: Any, ids: Sequence[str]) -> list[SegmentClass]:
    """The classes to learn, numbered 1, 2, ... in the order of ``ids``."""
    segmentation = segmentation_node.GetSegmentation()
    classes = []
    for value, segment_id in enumerate(ids, start=1):
        segment = segmentation.GetSegment(segment_id)
        if segment is None:
            raise PLCLError(f"Segmentation '{segmentation_node.GetName()}' has no segment '{segment_id}'.")
        classes.append(SegmentClass(value, segment.GetName(), tuple(segment.GetColor()), get_terminology(segment)))
    names = [c.name.strip().lower() for c in classes]
    if len(set(names)) != len(names):
        raise PLCLError(f"Segmentation '{segmentation_node.GetName()}': the segments to learn must have "
                        "different names.")
    return classes


def get_terminology(segment: Any) -> str:
    """A segment's terminology entry string ("" if none).

    Through the segment's tag, which every supported Slicer has (``vtkSegment.Get/Set/HasTerminology``
    only exist since Slicer 5.10 and are thin wrappers of this tag).
    """
    import slicer
    import vtk

    name = slicer.vtkSegment.GetTerminologyEntryTagName()
    value = vtk.reference("")
    if not segment.HasTag(name) or not segment.GetTag(name, value):
        return ""
    return str(value)


def set_terminology(segment: Any, terminology: str) -> None:
    import slicer

    segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), terminology)


def match_segments(segmentation_node: Any, classes: Sequence[SegmentClass],
                   candidates: Sequence[str] = ()) -> list[str]:
    """The IDs of ``segmentation_node``'s segments named like ``classes`` (in class order), chosen among
    ``candidates`` (default: all its segments)."""
    by_name = {}
    segmentation = segmentation_node.GetSegmentation()
    chosen = [i for i in candidates if segmentation.GetSegment(i) is not None] or segment_ids(segmentation_node)
    for segment_id in chosen:
        by_name.setdefault(segmentation.GetSegment(segment_id).GetName().strip().lower(), segment_id)
    missing = [c.name for c in classes if c.name.strip().lower() not in by_name]
    if missing:
        raise PLCLError(f"Segmentation '{segmentation_node.GetName()}' has no segment named "
                        f"{', '.join(repr(m) for m in missing)}; every annotated volume needs the same segments.")
    return [by_name[c.name.strip().lower()] for c in classes]


# --- export -------------------------------------------------------------------------------------


def write_volume(volume_node: Any, path: str) -> None:
    """Write a volume on its own grid (no parent transform applied). The node is not modified."""
    import slicer

    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)  # temporary file: speed over size
    if not storage.WriteData(volume_node):
        raise PLCLError(f"Could not write volume '{volume_node.GetName()}' to {path}.")


def _export_labelmap(services: SlicerServices, segmentation_node: Any, ids: Sequence[str], reference_volume: Any,
                     classes: Sequence[SegmentClass] | None = None, segmentation_placed: Any = None,
                     volume_placed: Any = None) -> tuple[Any, Any]:
    """Export segments ``ids`` (``ids[i]`` as label value ``i + 1``) to a label map exactly on
    ``reference_volume``'s own lattice (no parent transform), in a private scratch scene:
    (scratch copy, label map node).

    The export works on a copy of the segmentation placed on the volume's lattice (scratch.py), so the
    user's node gets no representation or display node, and a transform between the volume and the
    segmentation is resampled once. The scene holds a colour table (naming the values after ``classes``,
    so that the label map imports back with their names) and a display node, else the export would add
    a colour table to the user's scene or look for a default one there. ``*_placed``: see
    scratch.on_volume_lattice.
    """
    import slicer
    import vtk

    copy = scratch.on_volume_lattice(segmentation_node, reference_volume, segmentation_placed, volume_placed)
    colors = copy.scene.AddNewNodeByClass("vtkMRMLColorTableNode")
    colors.SetTypeToUser()
    colors.SetNumberOfColors(len(ids) + 1)
    if classes is not None:
        colors.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
        for value, info in enumerate(classes, start=1):
            colors.SetColor(value, info.name, *info.color, 1.0)
    labelmap = copy.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    display = copy.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeDisplayNode")
    display.SetAndObserveColorNodeID(colors.GetID())
    labelmap.SetAndObserveDisplayNodeID(display.GetID())
    id_array = vtk.vtkStringArray()
    for segment_id in ids:
        id_array.InsertNextValue(segment_id)
    if not ids or not services.segmentations.ExportSegmentsToLabelmapNode(
            copy.segmentation, id_array, labelmap, copy.volume, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY):
        raise PLCLError(f"Could not export the segments of '{segmentation_node.GetName()}' "
                        f"on the grid of '{reference_volume.GetName()}'.")
    return copy, labelmap


def write_annotation(services: SlicerServices, segmentation_node: Any, ids: Sequence[str], reference_volume: Any,
                     classes: Sequence[SegmentClass], path: str, segmentation_placed: Any = None,
                     volume_placed: Any = None, only_slices: tuple[int, Sequence[int]] | None = None) -> None:
    """Write the segments ``ids`` of ``segmentation_node`` as a ``.seg.nrrd`` exactly on ``reference_volume``'s
    grid, segment ``ids[i]`` as label value ``i + 1`` with the name, colour and terminology of ``classes[i]``.

    The user's segmentation node is only read: the label map is exported into a private scratch scene.
    ``*_placed``: see scratch.on_volume_lattice (a frame of a sequence: its browser's proxy nodes).
    ``only_slices``: (array axis of [k, j, i], slice indices): only those slices' labels are written, the
    others are 0 (slices accepted alone; they may hold background only).
    """
    import slicer

    if len(ids) != len(classes) or not ids:
        raise PLCLError(f"Segmentation '{segmentation_node.GetName()}': {len(ids)} segments for "
                        f"{len(classes)} classes.")
    copy, labelmap = _export_labelmap(services, segmentation_node, ids, reference_volume, classes,
                                      segmentation_placed, volume_placed)
    image = labelmap.GetImageData()
    if image is not None and only_slices is not None:
        axis, kept = only_slices
        labels = slicer.util.arrayFromVolume(labelmap)  # a view of the scratch label map's voxels
        outside = np.ones(labels.shape[axis], bool)
        outside[[i for i in kept if 0 <= i < labels.shape[axis]]] = False
        labels[(slice(None),) * axis + (outside,)] = 0
        slicer.util.arrayFromVolumeModified(labelmap)
    target = copy.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    if image is None or (image.GetScalarRange()[1] <= 0 and only_slices is None):
        raise PLCLError(f"Segmentation '{segmentation_node.GetName()}' has nothing painted on "
                        f"'{reference_volume.GetName()}' in the segments to learn.")
    if image.GetScalarRange()[1] > 0 and not services.segmentations.ImportLabelmapToSegmentationNode(labelmap,
                                                                                                     target):
        raise PLCLError(f"Could not convert the segments of '{segmentation_node.GetName()}'.")
    # A class with no voxel here (background only: accepted empty slices) is written on the grid's whole
    # extent, so that the file is the whole volume's and its segments lie on the volume's lattice.
    blank = services.segmentations.CreateOrientedImageDataFromVolumeNode(labelmap)
    blank.GetPointData().GetScalars().Fill(0)
    segmentation = target.GetSegmentation()
    # The import names each segment after the colour table (its class) but may number its label values
    # afresh (values 2 and 3 come back as 1 and 2 where no voxel holds 1): segments are matched by name.
    by_name = {}
    for segment_id in segment_ids(target):
        segment = segmentation.GetSegment(segment_id)
        by_name[segment.GetName()] = segment
    unknown = sorted(set(by_name) - {info.name for info in classes})
    if unknown:
        raise PLCLError(f"Could not convert the segments of '{segmentation_node.GetName()}' (unnamed: "
                        f"{', '.join(unknown)}).")
    for value, info in enumerate(classes, start=1):
        segment = by_name.get(info.name)
        if segment is None:  # the segment is empty on this grid: keep the class, with no voxels
            segment = slicer.vtkSegment()
            segment.SetName(info.name)
            segment.SetLabelValue(value)
            segment.AddRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(), blank)
            segmentation.AddSegment(segment)
        segment.SetName(info.name)
        segment.SetColor(*info.color)
        if info.terminology:
            set_terminology(segment, info.terminology)
        segmentation.SetSegmentIndex(segmentation.GetSegmentIdBySegment(segment), value - 1)  # in class order
    target.SetReferenceImageGeometryParameterFromVolumeNode(copy.volume)  # the lattice, no transform
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    storage.SetCropToMinimumExtent(False)  # exactly the volume's grid
    storage.SetUseCompression(True)
    if not storage.WriteData(target):
        raise PLCLError(f"Could not write the annotation of '{reference_volume.GetName()}' to {path}.")


# --- import -------------------------------------------------------------------------------------


class SceneTransaction:
    """Adds nodes to the scene; :meth:`rollback` removes all of them again (with their display nodes)."""

    def __init__(self, scene: Any) -> None:
        self.scene = scene
        self.added: list[Any] = []

    def add(self, node: Any) -> Any:
        node = self.scene.AddNode(node)
        self.added.append(node)
        return node

    def rollback(self) -> None:
        for node in reversed(self.added):
            remove_node(self.scene, node)
        self.added.clear()


def remove_node(scene: Any, node: Any) -> None:
    """Remove a node this module created, with its display and storage nodes."""
    if node is None or node.GetScene() is None:
        return
    dependents = []
    if node.IsA("vtkMRMLDisplayableNode"):
        dependents += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if node.IsA("vtkMRMLStorableNode"):
        dependents += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    scene.RemoveNode(node)
    for dependent in dependents:
        if dependent is not None and dependent.GetScene() is not None:
            scene.RemoveNode(dependent)


def read_segmentation(path: str) -> Any:
    """Read a ``.seg.nrrd`` into a new ``vtkSegmentation`` (no scene involved)."""
    import slicer

    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise PLCLError(f"Could not read the segmentation {path}.")
    segmentation = slicer.vtkSegmentation()
    segmentation.DeepCopy(node.GetSegmentation())
    return segmentation


def read_volume(path: str) -> Any:
    """Read a scalar volume file into a new node that is not in any scene."""
    import slicer

    node = slicer.vtkMRMLScalarVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise PLCLError(f"Could not read the volume {path}.")
    return node


def apply_classes(segmentation: Any, classes: Sequence[SegmentClass]) -> None:
    """Give each segment the name, colour and terminology of the class with its label value."""
    by_value = {c.value: c for c in classes}
    by_name = {c.name.strip().lower(): c for c in classes}
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        info = by_value.get(segment.GetLabelValue()) or by_name.get(segment.GetName().strip().lower())
        if info is None:
            continue
        segment.SetName(info.name)
        segment.SetColor(*info.color)
        if info.terminology:
            set_terminology(segment, info.terminology)


def add_prediction(services: SlicerServices, transaction: SceneTransaction, volume: Any, segmentation_path: str,
                   classes: Sequence[SegmentClass]) -> Any:
    """Add the prediction of ``volume`` as a new segmentation node next to it."""
    import slicer

    segmentation = read_segmentation(segmentation_path)
    if classes:
        apply_classes(segmentation, classes)
    node = slicer.vtkMRMLSegmentationNode()
    node.SetName(services.scene.GenerateUniqueName(f"{volume.GetName()} segmentation"))
    node.GetSegmentation().DeepCopy(segmentation)
    mark_owned(node, PREDICTION)
    node = transaction.add(node)
    node.CreateDefaultDisplayNodes()
    # Under the volume's transform first: the reference geometry is then the volume's own lattice (set
    # before, it would fold the transform in, and Segment Editor edits would land on a shifted grid).
    node.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    place_next_to(services, node, volume)
    return node


def add_uncertainty(services: SlicerServices, transaction: SceneTransaction, volume: Any, path: str) -> Any:
    """Add the uncertainty map of ``volume`` (values in [0, 1]) with the module's colour table."""
    node = read_volume(path)
    node.SetName(services.scene.GenerateUniqueName(f"{volume.GetName()} uncertainty"))
    mark_owned(node, UNCERTAINTY)
    node = transaction.add(node)
    style_uncertainty(services, transaction, node)
    node.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
    place_next_to(services, node, volume)
    return node


def style_uncertainty(services: SlicerServices, transaction: SceneTransaction, node: Any) -> None:
    """Give the uncertainty volume ``node`` (in the scene) its display: the module's colour table,
    values 0 to 1, certain voxels hidden."""
    import slicer

    colors = uncertainty_color_table(services.scene, transaction)
    display = slicer.vtkMRMLScalarVolumeDisplayNode()
    display = transaction.add(display)
    display.SetAndObserveColorNodeID(colors.GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.SetApplyThreshold(True)  # certain voxels transparent: the only alpha slice views honour
    display.AutoThresholdOff()
    display.SetThreshold(UNCERTAINTY_SHOWN_FROM, 1.0)
    node.SetAndObserveDisplayNodeID(display.GetID())


#: Uncertainty below this is not drawn (the overlay shows only where the model hesitates).
UNCERTAINTY_SHOWN_FROM = 0.05


def uncertainty_color_table(scene: Any, transaction: SceneTransaction | None = None) -> Any:
    """The module's colour table for uncertainty: opaque, pale yellow (a little uncertain) to dark red.

    Slice views do not use a colour table's alpha for grades: a scalar volume's display pipeline
    (vtkMRMLScalarVolumeDisplayNode, Slicer 5.8 and later) ANDs it with the threshold mask, so any
    alpha above 0 is drawn opaque. The grade is therefore in the colour; certain voxels are hidden
    by the display node's threshold (see add_uncertainty) and the whole overlay is blended with the
    slice views' foreground opacity.
    """
    import slicer

    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLColorTableNode")
        if node.GetAttribute(OWNER_ATTRIBUTE) == COLOR_TABLE:
            if not _has_uncertainty_colors(node):  # a scene saved without the table's file
                _fill_uncertainty_colors(node)
            node.SetHideFromEditors(False)
            return node
    table = slicer.vtkMRMLColorTableNode()
    table.SetName(UNCERTAINTY_COLORS_NAME)
    table.SetTypeToUser()
    # Shown to the Save dialog (colour nodes are hidden by default): File > Save writes its colours.
    table.SetHideFromEditors(False)
    _fill_uncertainty_colors(table)
    mark_owned(table, COLOR_TABLE)
    return transaction.add(table) if transaction is not None else scene.AddNode(table)


#: Entries of the uncertainty colour table (values 0 to 1 in 256 steps).
UNCERTAINTY_COLORS = 256


def _uncertainty_color(index: int) -> tuple[float, float, float]:
    t = index / (UNCERTAINTY_COLORS - 1.0)
    return 1.0 - 0.45 * t, 0.95 * (1.0 - t), 0.55 * (1.0 - t) ** 2


def _fill_uncertainty_colors(table: Any) -> None:
    table.SetNumberOfColors(UNCERTAINTY_COLORS)
    for i in range(UNCERTAINTY_COLORS):
        table.SetColor(i, f"{i / (UNCERTAINTY_COLORS - 1.0):.2f}", *_uncertainty_color(i), 1.0)


def _has_uncertainty_colors(table: Any) -> bool:
    """Whether ``table`` holds the module's colours (a table reopened without its file has others)."""
    if table.GetNumberOfColors() != UNCERTAINTY_COLORS:
        return False
    lookup = table.GetLookupTable()
    return all(np.allclose(lookup.GetTableValue(i)[:3], _uncertainty_color(i), atol=1e-3)
               for i in range(0, UNCERTAINTY_COLORS, 15))


def place_next_to(services: SlicerServices, node: Any, volume: Any) -> None:
    """Put ``node`` under the same subject hierarchy parent as ``volume`` (its study or folder)."""
    hierarchy = services.subject_hierarchy()
    if hierarchy is None:
        return
    volume_item = hierarchy.GetItemByDataNode(volume)
    parent = hierarchy.GetItemParent(volume_item) if volume_item else hierarchy.GetSceneItemID()
    node_item = hierarchy.GetItemByDataNode(node)
    if node_item:
        hierarchy.SetItemParent(node_item, parent)
    else:  # the Slicer application adds items for new nodes; a bare scene does not
        hierarchy.CreateItem(parent, node)


# --- review -------------------------------------------------------------------------------------


def _segment_header(segmentation: Any, segment_id: str, label_value: bool = True) -> bytes:
    segment = segmentation.GetSegment(segment_id)
    header = f"{segment_id}|{segment.GetName()}|{segment.GetColor()}"
    return (f"{header}|{segment.GetLabelValue()}" if label_value else header).encode()


def fingerprint(segmentation_node: Any) -> str:
    """A digest of every segment's voxels, name and colour: changes when the user edits the node."""
    from vtk.util.numpy_support import vtk_to_numpy

    digest = hashlib.sha1()
    segmentation = segmentation_node.GetSegmentation()
    for segment_id in segment_ids(segmentation_node):
        segment = segmentation.GetSegment(segment_id)
        digest.update(_segment_header(segmentation, segment_id))
        labelmap = segment.GetRepresentation(segmentation.GetSourceRepresentationName())
        if labelmap is None or not labelmap.IsA("vtkImageData"):
            continue
        digest.update(str(labelmap.GetExtent()).encode())
        scalars = labelmap.GetPointData().GetScalars()
        if scalars is not None:
            digest.update(vtk_to_numpy(scalars).tobytes())
    return digest.hexdigest()


def slice_digests(services: SlicerServices, segmentation_node: Any, volume: Any) -> list[str]:
    """A digest of each slice (along the engine's slicing axis) of the node's segments on ``volume``'s own
    lattice, each with the segments' names and colours: tells which slices the user edited since. The
    node is only read (exported in a private scratch scene)."""
    ids = segment_ids(segmentation_node)
    if not ids:
        return []
    segmentation = segmentation_node.GetSegmentation()
    # Without the segments' label values: an edit moves a segment to a layer of its own, where its value
    # changes though none of its voxels do (the exported labels say what the voxels are).
    header = b"".join(_segment_header(segmentation, segment_id, label_value=False) for segment_id in ids)
    labels = annotation_labels(services, segmentation_node, ids, volume).astype(np.uint16)
    axis = volume_axes(volume).slice_axis
    return [hashlib.sha1(header + np.ascontiguousarray(np.take(labels, index, axis=axis)).tobytes()).hexdigest()[:16]
            for index in range(labels.shape[axis])]


def show_in_views(scene: Any, volume: Any, segmentation: Any = None, uncertainty: Any = None,
                  opacity: float = 0.4, hide: Sequence[Any] = ()) -> None:
    """Show ``volume`` in every slice view, ``uncertainty`` as the foreground overlay (or none), and
    ``segmentation`` visible; the nodes in ``hide`` (other predictions of this module) are hidden."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        composite.SetBackgroundVolumeID(volume.GetID() if volume is not None else None)
        composite.SetForegroundVolumeID(uncertainty.GetID() if uncertainty is not None else None)
        composite.SetForegroundOpacity(opacity if uncertainty is not None else 0.0)
        composite.SetLabelVolumeID(None)
    for node in hide:
        if node is not None and node is not segmentation and is_owned(node) and node.GetDisplayNode() is not None:
            node.GetDisplayNode().SetVisibility(False)
    if segmentation is not None and is_owned(segmentation) and segmentation.GetDisplayNode() is not None:
        segmentation.GetDisplayNode().SetVisibility(True)


# --- the engine's slices ------------------------------------------------------------------------

#: The slice view whose default orientation is each of the engine's slicing planes, and its one-up layout
#: (vtkMRMLLayoutNode.SlicerLayoutOneUp{Red,Yellow,Green}SliceView: 6, 7, 8 from v5.8.0 on).
VIEW_LAYOUTS = {"Axial": ("Red", 6), "Sagittal": ("Yellow", 7), "Coronal": ("Green", 8)}


def volume_axes(volume: Any) -> slicing.Canonical:
    """The axis the engine slices ``volume`` along (its own grid, as exported: no parent transform)."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASDirectionMatrix(matrix)
    direction = np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)])
    direction[:2] *= -1.0  # RAS -> LPS, the engine's world
    return slicing.canonical(direction, tuple(volume.GetSpacing()))


def annotation_labels(services: SlicerServices, segmentation_node: Any, ids: Sequence[str],
                      reference_volume: Any) -> np.ndarray:
    """The segments ``ids`` as a label map [k, j, i] on ``reference_volume``'s own lattice (segment n: value
    n + 1). The user's node is only read: the label map lives in a private scratch scene."""
    import slicer

    _, labelmap = _export_labelmap(services, segmentation_node, ids, reference_volume)
    return np.array(slicer.util.arrayFromVolume(labelmap))


def content_stamp(segmentation_node: Any, ids: Sequence[str], volume: Any) -> tuple:
    """Changes whenever the segments' voxels or the volume's grid may have changed (VTK modification
    times): what was counted from them can be reused until then."""
    segmentation = segmentation_node.GetSegmentation()
    stamps = [segmentation_node.GetID(), volume.GetID(), volume.GetMTime(), segmentation.GetMTime()]
    for segment_id in ids:
        segment = segmentation.GetSegment(segment_id)
        labelmap = segment.GetRepresentation(segmentation.GetSourceRepresentationName()) if segment else None
        stamps += [segment_id, labelmap.GetMTime() if labelmap is not None else 0]
    return tuple(stamps)


def slice_node(scene: Any, layout_name: str) -> Any:
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLSliceNode")
        if node.GetLayoutName() == layout_name:
            return node
    return None


def set_up_paint_view(scene: Any, volume: Any, segmentation: Any = None) -> str:
    """Show ``volume`` alone in the slice view of the engine's slicing plane, turned to the volume's own
    slices (oblique stacks too), one view filling the layout. Returns the view's orientation name."""
    view = volume_axes(volume).view
    layout_name, arrangement = VIEW_LAYOUTS[view]
    node = slice_node(scene, layout_name)
    if node is not None:
        node.SetOrientation(view)
        node.RotateToVolumePlane(volume)
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        if composite.GetLayoutName() == layout_name:
            composite.SetBackgroundVolumeID(volume.GetID())
    if segmentation is not None and segmentation.GetDisplayNode() is not None:
        segmentation.GetDisplayNode().SetVisibility(True)
    if scene.GetNumberOfNodesByClass("vtkMRMLLayoutNode"):
        scene.GetNthNodeByClass(0, "vtkMRMLLayoutNode").SetViewArrangement(arrangement)
    return view


def current_slice(scene: Any, volume: Any) -> int | None:
    """The file slice index (along the engine's slicing axis) shown at the centre of the engine's view,
    or None when that view does not cross the volume."""
    import vtk

    axes = volume_axes(volume)
    node = slice_node(scene, VIEW_LAYOUTS[axes.view][0])
    if node is None:
        return None
    centre = node.GetSliceToRAS().MultiplyPoint((0.0, 0.0, 0.0, 1.0))  # world
    ras_to_ijk = vtk.vtkMatrix4x4()
    volume.GetRASToIJKMatrix(ras_to_ijk)  # the volume's own RAS, before its parent transform
    ijk = ras_to_ijk.MultiplyPoint((*scratch.world_to_local(volume, centre[:3]), 1.0))
    index = int(round(ijk[2 - axes.slice_axis]))  # array axis a is ITK index axis 2 - a
    return index if 0 <= index < slice_total(volume, axes.slice_axis) else None


def slice_total(volume: Any, axis: int) -> int:
    """How many slices ``volume`` has along array ``axis`` of [k, j, i] (ITK index axis 2 - axis)."""
    return int(volume.GetImageData().GetDimensions()[2 - axis])


def user_segmentation_of(scene: Any, volume: Any, exclude: Sequence[Any] = ()) -> Any:
    """A segmentation the user drew on ``volume`` (its reference geometry), if any; not this module's, nor
    one of ``exclude``."""
    excluded = {node.GetID() for node in exclude}
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLSegmentationNode")
        if is_owned(node) or node.GetID() in excluded:  # this module's results are accepted, not added
            continue
        if node.GetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole()) == volume.GetID():
            return node
    return None


def not_segmentable(scene: Any) -> list[str]:
    """IDs of the scalar volumes that are this module's or not grayscale."""
    hidden = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        if is_owned(node) or not is_grayscale_volume(node):
            hidden.append(node.GetID())
    return hidden
