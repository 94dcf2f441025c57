"""A slice view moved to one of the engine's slices of a volume, and a structure highlighted there.

The engine names a slice by its file index along a voxel axis of the volume's own grid (i, j or
k; slicing.py). The view that shows it is the one of the engine's slicing plane for that axis
(slicing.VIEW_OF_AXIS, from the volume's own directions, as the paint view); it is turned so that
its normal is that voxel axis in the world (through the volume's parent transform, linear only)
and moved so that its plane passes through the slice's voxel centres. The segmentation's voxels are
never touched: the structure's segment is made visible and selected in the Segment Editor.

Qt-free; ``slicer`` is imported inside functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import scene_io
from .engine import slicing
from .services import PLCLError

#: The IJK index of each of the engine's slice axes (the array axis of [k, j, i] is 2 - IJK index).
IJK = {name: 2 - axis for axis, name in enumerate(slicing.AXIS_NAMES)}
#: The Segment Editor's parameter node (Modules/Scripted/SegmentEditor/SegmentEditor.py).
SEGMENT_EDITOR_TAG = "SegmentEditor"


def view_of_axis(volume: Any, axis: str) -> str:
    """The view (Axial, Coronal, Sagittal) of the engine's slicing plane across ``axis`` of ``volume``."""
    canonical = scene_io.volume_axes(volume)
    position = canonical.axes.index(2 - IJK[axis])  # array axis of IJK axis a is 2 - a
    return slicing.VIEW_OF_AXIS[2 - position]


def ijk_to_world(volume: Any) -> np.ndarray:
    """The 4x4 matrix from the volume's voxel indices to world RAS (its parent transform included)."""
    import slicer
    import vtk

    def array(matrix: Any) -> np.ndarray:
        return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])

    ijk_to_ras, to_world = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijk_to_ras)
    if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(volume.GetParentTransformNode(), None,
                                                                      to_world):
        raise PLCLError(f"'{volume.GetName()}' is under a non-linear transform: harden it (Transforms module) "
                        "first.")
    return array(to_world) @ array(ijk_to_ras)


def show_slice(scene: Any, volume: Any, axis: str, index: int) -> tuple[str, Any]:
    """Turn the view of the engine's plane across ``axis`` to the volume's slices and move it to slice
    ``index``; returns (its name, its slice node)."""
    import slicer

    if axis not in IJK:
        raise PLCLError(f"'{volume.GetName()}': unknown slice axis {axis!r} (i, j or k).")
    size = volume.GetImageData().GetDimensions()
    if not 0 <= index < size[IJK[axis]]:
        raise PLCLError(f"'{volume.GetName()}' has no slice {index} along its {axis} axis.")
    view = view_of_axis(volume, axis)
    node = scene_io.slice_node(scene, scene_io.VIEW_LAYOUTS[view][0])
    if node is None:
        raise PLCLError(f"There is no {view} slice view to show slice {index} of '{volume.GetName()}'.")
    matrix = ijk_to_world(volume)
    node.SetOrientation(view)
    node.RotateToAxes(slicer.util.vtkMatrixFromArray(matrix), IJK[axis])
    centre = [(n - 1) / 2.0 for n in size]
    centre[IJK[axis]] = float(index)
    node.JumpSliceByOffsetting(*(matrix @ np.array([*centre, 1.0]))[:3])
    return view, node


def highlight(scene: Any, segmentation: Any, structure: str | None) -> str | None:
    """Show the segment named ``structure`` of ``segmentation`` and select it in the Segment Editor (where
    it edits this segmentation); returns its ID (None: no such segment)."""
    if segmentation is None or not structure:
        return None
    segment_id = segmentation.GetSegmentation().GetSegmentIdBySegmentName(structure)
    if not segment_id:
        return None
    display = segmentation.GetDisplayNode()
    if display is not None and not display.GetSegmentVisibility(segment_id):
        display.SetSegmentVisibility(segment_id, True)
    editor = scene.GetSingletonNode(SEGMENT_EDITOR_TAG, "vtkMRMLSegmentEditorNode")
    if editor is not None and editor.GetSegmentationNode() is not None \
            and editor.GetSegmentationNode().GetID() == segmentation.GetID():
        editor.SetSelectedSegmentID(segment_id)
    return segment_id
