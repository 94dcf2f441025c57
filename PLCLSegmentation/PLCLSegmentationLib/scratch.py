"""Copies of the user's nodes in a private scratch scene, placed on a volume's own lattice.

The engine reads a volume on its own voxel lattice, as it is written (no parent transform). A
segmentation may live in another coordinate frame than its volume: the Segment Editor paints a
segmentation that is not under the volume's transform on the transformed lattice (its reference
geometry folds the transform in). Exports therefore work on copies: the volume's lattice with no
transform (the scratch scene's world) and a copy of the segmentation under the linear transform from
its frame to that lattice. Slicer's export then resamples only where the frames differ, and the user's
nodes get no representation, display node or colour table (they are only read).

Qt-free; ``slicer`` is imported inside functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .services import PLCLError


@dataclass
class ScratchCopy:
    """A scratch scene holding a volume's lattice (``volume``: geometry only, no voxels) and a copy of a
    segmentation (``segmentation``) placed in that lattice's frame."""

    scene: Any
    volume: Any
    segmentation: Any


def transform_between(source: Any, target: Any) -> np.ndarray:
    """The 4x4 matrix from the coordinates of ``source`` (a node in the user's scene: its parent
    transform) to those of ``target``. Only linear transforms: a warp cannot place a lattice."""
    import slicer
    import vtk

    matrix = vtk.vtkMatrix4x4()
    source_parent = source.GetParentTransformNode() if source is not None else None
    target_parent = target.GetParentTransformNode() if target is not None else None
    if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(source_parent, target_parent, matrix):
        raise PLCLError(f"'{source.GetName()}' and '{target.GetName()}' are related by a non-linear transform: "
                        "harden it (Transforms module) first.")
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def world_to_local(node: Any, point: tuple[float, float, float]) -> tuple[float, float, float]:
    """A world point in the coordinates of ``node`` (before its parent transform, e.g. a volume's RAS)."""
    import slicer
    import vtk

    parent = node.GetParentTransformNode()
    if parent is None:
        return tuple(point)
    transform = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, parent, transform)
    return tuple(transform.TransformPoint(point))


def lattice_copy(scene: Any, volume: Any) -> Any:
    """A volume node in ``scene`` with ``volume``'s lattice (extent and IJK to RAS) and no voxels."""
    import vtk

    image = vtk.vtkImageData()
    image.SetExtent(volume.GetImageData().GetExtent())
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    node.SetIJKToRASMatrix(matrix)
    node.SetAndObserveImageData(image)
    return node


def on_volume_lattice(segmentation_node: Any, volume: Any, segmentation_placed: Any = None,
                      volume_placed: Any = None) -> ScratchCopy:
    """Copy ``segmentation_node`` and ``volume``'s lattice into a scratch scene, the segmentation under
    the transform from its frame to the volume's own coordinates.

    ``segmentation_placed`` / ``volume_placed``: the nodes of the user's scene whose parent transform
    applies (a frame of a sequence is not in the scene: its browser's proxy node is); default: the nodes
    themselves.
    """
    import slicer

    segmentation_placed = segmentation_placed if segmentation_placed is not None else segmentation_node
    volume_placed = volume_placed if volume_placed is not None else volume
    scene = slicer.vtkMRMLScene()
    lattice = lattice_copy(scene, volume)
    copy = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    copy.GetSegmentation().DeepCopy(segmentation_node.GetSegmentation())
    to_volume = transform_between(segmentation_placed, volume_placed)
    if not np.allclose(to_volume, np.eye(4), atol=1e-9):
        transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(to_volume))
        copy.SetAndObserveTransformNodeID(transform.GetID())
    return ScratchCopy(scene, lattice, copy)
