"""Volume sequences (cine MRI) in the scene: finding them, exporting them to the engine, and adding
the results back to their sequence browser.

A cine series loads in Slicer as a volume sequence (``vtkMRMLSequenceNode`` of scalar volumes)
played by a ``vtkMRMLSequenceBrowserNode``, which shows the selected frame in its proxy volume.

* Export: the frames are written as one 4D NRRD, the time (list) axis first, as the engine's contract
  says (engine/events.py): "kinds: list domain domain domain", with the index values when they are
  numeric and equally spaced. Every frame must be on the first frame's grid; the user's sequence is
  only read.
* Import: the per-frame results become a segmentation sequence (and an uncertainty volume sequence)
  on the volume sequence's index, synchronised in the same browser: moving the browser's frame
  moves the segmentation with it. Changes the user makes to the segmentation's proxy are saved into
  its sequence (the browser's "save changes"), so a corrected frame can be accepted.

Qt-free; ``slicer`` is imported inside functions.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import scene_io
from .services import PLCLError, SlicerServices, is_owned, mark_owned

#: Owner kinds (services.OWNER_ATTRIBUTE) of the nodes this module adds for a sequence.
SEGMENTATION_SEQUENCE = "segmentationSequence"
UNCERTAINTY_SEQUENCE = "uncertaintySequence"
PROXY = "sequenceProxy"

#: "The same grid" between frames: axes and origin equal to this fraction of the largest voxel size.
GRID_TOLERANCE = 1e-3

_NRRD_TYPES = {"int8": "signed char", "uint8": "unsigned char", "int16": "short", "uint16": "unsigned short",
               "int32": "int", "uint32": "unsigned int", "int64": "long long", "uint64": "unsigned long long",
               "float32": "float", "float64": "double"}


@dataclass
class VolumeSequence:
    """A volume sequence played by a browser, and the proxy volume that shows its selected frame."""

    browser: Any  # vtkMRMLSequenceBrowserNode
    sequence: Any  # vtkMRMLSequenceNode of vtkMRMLScalarVolumeNode
    proxy: Any  # vtkMRMLScalarVolumeNode in the scene


def volume_sequences(scene: Any) -> list[VolumeSequence]:
    """The grayscale volume sequence of every browser whose master sequence it is (not the ones this module
    added). Only the master: the browser's frame number counts the master's items, and a frame is a number
    here (another sequence of the browser may have other items, matched by index value)."""
    found = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode")):
        browser = scene.GetNthNodeByClass(index, "vtkMRMLSequenceBrowserNode")
        sequence = browser.GetMasterSequenceNode()
        if sequence is None or is_owned(sequence) or sequence.GetDataNodeClassName() != "vtkMRMLScalarVolumeNode":
            continue
        proxy = browser.GetProxyNode(sequence)
        if proxy is not None and not is_owned(proxy) and scene_io.is_grayscale_volume(proxy):
            found.append(VolumeSequence(browser, sequence, proxy))
    return found


def synchronized(browser: Any) -> list[Any]:
    """The browser's sequences, its master sequence first."""
    import vtk

    collection = vtk.vtkCollection()
    browser.GetSynchronizedSequenceNodes(collection, True)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def proxy_ids(scene: Any) -> set[str]:
    """IDs of every proxy node of every browser: such a node shows a frame, it is not a volume of its own."""
    ids = set()
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode")):
        browser = scene.GetNthNodeByClass(index, "vtkMRMLSequenceBrowserNode")
        for sequence in synchronized(browser):
            proxy = browser.GetProxyNode(sequence)
            if proxy is not None:
                ids.add(proxy.GetID())
    return ids


def browser_of(scene: Any, node: Any) -> tuple[Any, Any] | None:
    """(browser, sequence) if ``node`` is the proxy node of a browser's sequence, else None."""
    if node is None:
        return None
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode")):
        browser = scene.GetNthNodeByClass(index, "vtkMRMLSequenceBrowserNode")
        if browser.IsProxyNodeID(node.GetID()):
            return browser, browser.GetSequenceNode(node)
    return None


def frame_count(sequence: Any) -> int:
    return int(sequence.GetNumberOfDataNodes())


def frame_volume(sequence: Any, frame: int) -> Any:
    node = sequence.GetNthDataNode(frame)
    if node is None:
        raise PLCLError(f"Sequence '{sequence.GetName()}' has no frame {frame}.")
    return node


def check_frame(sequence: Any, frame: int) -> None:
    count = frame_count(sequence)
    if not 0 <= frame < count:
        raise PLCLError(f"Sequence '{sequence.GetName()}' has no frame {frame} (it has {count} frames: 0 to "
                        f"{count - 1}).")


def _grid(volume: Any) -> tuple[tuple[int, ...], np.ndarray]:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    image = volume.GetImageData()
    dimensions = tuple(image.GetDimensions()) if image is not None else (0, 0, 0)
    return dimensions, np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(3)])


def check_grids(sequence: Any, name: str) -> None:
    """Every frame is a one-component scalar volume on frame 0's grid; else one line naming the frame."""
    count = frame_count(sequence)
    if count == 0:
        raise PLCLError(f"Sequence '{name}' has no frame.")
    first_size, first = _grid(frame_volume(sequence, 0))
    # Axes (spacing x direction) and origin to a small fraction of a voxel.
    tolerance = GRID_TOLERANCE * float(np.linalg.norm(first[:, :3], axis=0).max())
    for frame in range(count):
        volume = frame_volume(sequence, frame)
        image = volume.GetImageData()
        if image is None or image.GetNumberOfScalarComponents() != 1:
            raise PLCLError(f"Sequence '{name}': frame {frame} is not a grayscale volume.")
        size, matrix = _grid(volume)
        if size != first_size:
            raise PLCLError(f"Sequence '{name}': frame {frame} has size {'x'.join(map(str, size))}, frame 0 "
                            f"{'x'.join(map(str, first_size))}; every frame must be on one grid.")
        if not np.allclose(matrix, first, rtol=0.0, atol=tolerance):
            raise PLCLError(f"Sequence '{name}': frame {frame} has another position, spacing or orientation than "
                            "frame 0; every frame must be on one grid.")


def _uniform_index(sequence: Any) -> list[float] | None:
    """The numeric index values when they are equally spaced (the engine's time axis), else None."""
    if sequence.GetIndexTypeAsString() != "numeric":
        return None
    try:
        values = [float(sequence.GetNthIndexValue(i)) for i in range(frame_count(sequence))]
    except ValueError:
        return None
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        return None
    steps = np.diff(values)
    if steps[0] <= 0 or not np.allclose(steps, steps[0], rtol=1e-3, atol=0.0):
        return None
    return values


def write_volume_sequence(sequence: Any, path: str | Path, name: str) -> int:
    """Write the frames of ``sequence`` as one 4D NRRD (time axis first); returns the frame count.

    The user's sequence is only read. Raises PLCLError naming the sequence and frame when the frames
    are not on one grid.
    """
    import slicer

    check_grids(sequence, name)
    arrays = [np.asarray(slicer.util.arrayFromVolume(frame_volume(sequence, f))) for f in range(frame_count(sequence))]
    dtypes = {a.dtype for a in arrays}
    dtype = arrays[0].dtype if len(dtypes) == 1 and arrays[0].dtype.name in _NRRD_TYPES else np.dtype(np.float32)
    data = np.stack([a.astype(dtype, copy=False) for a in arrays], axis=-1)  # [k, j, i, t]: t varies fastest
    _, ijk_to_ras = _grid(frame_volume(sequence, 0))
    lps = ijk_to_ras.copy()
    lps[:2] *= -1.0  # RAS -> LPS
    vectors = " ".join("(" + ",".join(repr(float(v)) for v in lps[:3, axis]) + ")" for axis in range(3))
    k, j, i, t = data.shape
    header = ["NRRD0004", f"type: {_NRRD_TYPES[dtype.name]}", "dimension: 4", "space: left-posterior-superior",
              f"sizes: {t} {i} {j} {k}", f"space directions: none {vectors}", "kinds: list domain domain domain",
              f"labels: \"{sequence.GetIndexName() or 'frame'}\" \"\" \"\" \"\"", "endian: little", "encoding: raw",
              "space origin: (" + ",".join(repr(float(v)) for v in lps[:3, 3]) + ")"]
    index = _uniform_index(sequence)
    if index is not None:
        header += [f"units: \"{sequence.GetIndexUnit()}\" \"\" \"\" \"\"", "axis 0 index type:=numeric",
                   "axis 0 index values:=" + " ".join(repr(v) for v in index)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as stream:
        stream.write(("\n".join(header) + "\n\n").encode("ascii", errors="replace"))
        stream.write(np.ascontiguousarray(data.astype(dtype.newbyteorder("<"), copy=False)).tobytes())
    return t


def index_numbers(sequence: Any) -> list[float] | None:
    """The index values as numbers (time points), or None when they are not numeric."""
    if sequence.GetIndexTypeAsString() != "numeric":
        return None
    try:
        return [float(sequence.GetNthIndexValue(i)) for i in range(frame_count(sequence))]
    except ValueError:
        return None


# --- a frame's annotation -------------------------------------------------------------------------


def is_segmentation_sequence(node: Any) -> bool:
    return node is not None and node.IsA("vtkMRMLSequenceNode") \
        and node.GetDataNodeClassName() == "vtkMRMLSegmentationNode"


def frame_segmentation(source: Any, volume_sequence: Any, frame: int) -> Any:
    """The segmentation node that annotates ``frame``: ``source`` itself (a segmentation node drawn on
    that frame) or, for a segmentation sequence, its item at the frame's index value."""
    if not is_segmentation_sequence(source):
        return source
    node = source.GetDataNodeAtValue(volume_sequence.GetNthIndexValue(frame), True)
    if node is None:
        raise PLCLError(f"'{source.GetName()}' has no segmentation at frame {frame}.")
    return node


# --- results ------------------------------------------------------------------------------------


def new_sequence(scene: Any, like: Any, name: str, kind: str) -> Any:
    """An empty sequence (not yet in the scene) on the index of ``like``, marked as this module's."""
    import slicer

    node = slicer.vtkMRMLSequenceNode()
    node.SetName(scene.GenerateUniqueName(name))
    node.CopySequenceIndex(like)
    mark_owned(node, kind)
    return node


def set_frame_segmentation(target: Any, volume_sequence: Any, frame: int, segmentation: Any) -> None:
    """Put a copy of ``segmentation`` (a vtkSegmentation) at ``frame`` of the segmentation sequence
    ``target``, its reference geometry that of the frame."""
    import slicer

    node = slicer.vtkMRMLSegmentationNode()
    node.GetSegmentation().DeepCopy(segmentation)
    node.SetReferenceImageGeometryParameterFromVolumeNode(frame_volume(volume_sequence, frame))
    # The browser copies an item's attributes into the proxy at each frame: the mark must be on the items.
    mark_owned(node, PROXY)
    target.SetDataNodeAtValue(node, volume_sequence.GetNthIndexValue(frame))


def set_frame_volume(target: Any, volume_sequence: Any, frame: int, volume: Any) -> None:
    mark_owned(volume, PROXY)
    target.SetDataNodeAtValue(volume, volume_sequence.GetNthIndexValue(frame))


def zero_volume(volume_sequence: Any, frame: int) -> Any:
    """A float volume of zeros on the frame's grid (the uncertainty of an annotated frame)."""
    import slicer
    import vtk

    reference = frame_volume(volume_sequence, frame)
    node = slicer.vtkMRMLScalarVolumeNode()
    image = vtk.vtkImageData()
    image.SetDimensions(reference.GetImageData().GetDimensions())
    image.AllocateScalars(vtk.VTK_FLOAT, 1)
    image.GetPointData().GetScalars().Fill(0.0)
    node.SetAndObserveImageData(image)
    matrix = vtk.vtkMatrix4x4()
    reference.GetIJKToRASMatrix(matrix)
    node.SetIJKToRASMatrix(matrix)
    return node


def add_to_browser(services: SlicerServices, transaction: scene_io.SceneTransaction, browser: Any, sequence: Any,
                   volume_proxy: Any, save_changes: bool, default_display: bool = True) -> Any:
    """Add ``sequence`` (not yet in the scene) to the scene and synchronise it in ``browser``; returns
    its proxy node, shown at the browser's current frame. ``save_changes``: the user's edits of the
    proxy are stored into the sequence's item of the current frame. ``default_display``: give the proxy
    Slicer's default display node (else the caller gives it its own)."""
    sequence = transaction.add(sequence)
    browser.AddSynchronizedSequenceNodeID(sequence.GetID())
    browser.SetSaveChanges(sequence, save_changes)
    update_proxies(services, browser)
    proxy = browser.GetProxyNode(sequence)
    if proxy is None:
        raise PLCLError(f"The sequence browser '{browser.GetName()}' made no proxy node for '{sequence.GetName()}'.")
    transaction.added.append(proxy)  # a rollback removes it too
    mark_owned(proxy, PROXY)
    if default_display and proxy.IsA("vtkMRMLDisplayableNode") and proxy.GetDisplayNode() is None:
        proxy.CreateDefaultDisplayNodes()
    elif not default_display:  # the display nodes the browser gave our new proxy: the caller gives its own
        for display in [proxy.GetNthDisplayNode(i) for i in range(proxy.GetNumberOfDisplayNodes())]:
            scene_io.remove_node(services.scene, display)
    proxy.SetAndObserveTransformNodeID(volume_proxy.GetTransformNodeID())
    scene_io.place_next_to(services, sequence, volume_proxy)
    scene_io.place_next_to(services, proxy, volume_proxy)
    return proxy


def update_proxies(services: SlicerServices, browser: Any) -> None:
    """Bring the browser's proxy nodes to its selected frame (Slicer's Sequences logic does it on every
    change of the frame; after adding a sequence it must be asked)."""
    if services.sequences is None:
        raise PLCLError("The Sequences module is not available.")
    services.sequences.UpdateProxyNodesFromSequences(browser)


def save_proxy(services: SlicerServices, browser: Any, proxy: Any) -> None:
    """Store the proxy's current content into its sequence at the browser's frame (what "save changes"
    does on each edit; asked again before the frame is used, in case an edit came without an event)."""
    if services.sequences is not None and proxy is not None:
        services.sequences.UpdateSequencesFromProxyNodes(browser, proxy)


def remove_from_browser(scene: Any, browser: Any, sequence: Any) -> None:
    """Remove this module's ``sequence`` and its proxy from the browser and the scene."""
    if sequence is None or sequence.GetScene() is None:
        return
    proxy = browser.GetProxyNode(sequence) if browser is not None else None
    if browser is not None:
        browser.RemoveSynchronizedSequenceNode(sequence.GetID())
    if proxy is not None and is_owned(proxy):
        scene_io.remove_node(scene, proxy)
    scene_io.remove_node(scene, sequence)


def sequence_digest(sequence: Any) -> str:
    """A digest of a volume sequence's index and voxels (tests and checks: it must never change)."""
    import slicer

    digest = hashlib.sha1()
    for frame in range(frame_count(sequence)):
        volume = frame_volume(sequence, frame)
        size, matrix = _grid(volume)
        digest.update(f"{sequence.GetNthIndexValue(frame)}|{size}|{matrix.round(9).tolist()}".encode())
        digest.update(np.ascontiguousarray(slicer.util.arrayFromVolume(volume)).tobytes())
    return digest.hexdigest()


def frame_segments(segmentation: Any, names: Sequence[str]) -> list[str]:
    """IDs of the segments of a vtkSegmentation named like ``names`` (in that order, where present)."""
    by_name = {}
    for index in range(segmentation.GetNumberOfSegments()):
        by_name.setdefault(segmentation.GetNthSegment(index).GetName().strip().lower(),
                           segmentation.GetNthSegmentID(index))
    return [by_name[n.strip().lower()] for n in names if n.strip().lower() in by_name]
