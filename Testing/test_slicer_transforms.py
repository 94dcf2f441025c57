"""Volumes under a non-identity linear transform (a registration result, a scanner-to-patient
transform): a rotation plus a translation between the volume's own lattice and the world.

The engine reads a volume on its own lattice (as it is written, no parent transform): an annotation
must be written on that lattice, a prediction must carry that lattice as its reference geometry under
the volume's transform (so Segment Editor corrections land on the volume's voxels), a cine frame's
annotation likewise, and the paint view's slice is found in the volume's own coordinates."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")

from slicer_support import MYOCARDIUM_TERMINOLOGY, SlicerApp, moving_phantom, red_slice_view, snapshot  # noqa: E402

from PLCLSegmentationLib import cine, scene_io, sequences  # noqa: E402
from PLCLSegmentationLib.engine.files import volumes  # noqa: E402
from PLCLSegmentationLib.logic import PLCLSegmentationLogic  # noqa: E402

pytestmark = pytest.mark.mrml

SEGMENTS = [("Left ventricle", (0.9, 0.1, 0.2), ""), ("Myocardium", (0.2, 0.7, 0.3), MYOCARDIUM_TERMINOLOGY)]
OBLIQUE = np.array([[0.7 * math.cos(0.4), -0.8 * math.sin(0.4), 0.0, -40.5],
                    [0.7 * math.sin(0.4), 0.8 * math.cos(0.4), 0.0, 12.25],
                    [0.0, 0.0, 3.5, 7.0],
                    [0.0, 0.0, 0.0, 1.0]])


def rotation_and_translation() -> np.ndarray:
    """30 degrees about an oblique axis, then 12 mm, -7 mm, 30 mm: nothing stays on its axis."""
    axis = np.array([1.0, 2.0, 2.0]) / 3.0
    angle = math.radians(30)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    matrix = np.eye(4)
    matrix[:3, :3] = np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross
    matrix[:3, 3] = [12.0, -7.0, 30.0]
    return matrix


def add_transform(app: SlicerApp, name: str = "Registration") -> object:
    import slicer

    transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(rotation_and_translation()))
    return transform


def paint(app: SlicerApp, volume, labels: np.ndarray, name: str, under_transform: bool):
    """A segmentation painted on ``volume`` as the Segment Editor does: its reference geometry set from
    the volume (which folds in the transform between them when the segmentation is not under it), the
    voxels of each segment those of ``labels`` on the volume's lattice."""
    import slicer
    import vtk

    node = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    if under_transform:
        node.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    for value, (segment_name, color, _) in enumerate(SEGMENTS, start=1):
        segment_id = node.GetSegmentation().AddEmptySegment(segment_name.replace(" ", "_"), segment_name, color)
        # The painted voxels in the segmentation's frame: the volume's lattice moved by the transform between.
        labelmap = app.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__paint__")
        labelmap.SetAndObserveTransformNodeID(node.GetTransformNodeID())
        matrix = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(matrix)
        to_segmentation = np.eye(4) if under_transform else rotation_and_translation()
        lattice = to_segmentation @ slicer.util.arrayFromVTKMatrix(matrix)
        labelmap.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(lattice))
        slicer.util.updateVolumeFromArray(labelmap, (labels == value).astype(np.uint8))
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        assert app.segmentations.ImportLabelmapToSegmentationNode(labelmap, node, ids)
        app.scene.RemoveNode(labelmap)
    return node


def phantom_labels(shape: tuple[int, int, int]) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[2:5, 10:20, 10:30] = 1
    labels[1:6, 22:30, 15:40] = 2
    return labels


@pytest.fixture
def transformed():
    app = SlicerApp()
    rng = np.random.default_rng(0)
    image = rng.normal(100, 20, (7, 40, 50)).astype(np.int16)
    volume = app.add_volume(image, "registered case", OBLIQUE)
    volume.SetAndObserveTransformNodeID(add_transform(app).GetID())
    return app, volume, phantom_labels(image.shape)


@pytest.mark.parametrize("under_transform", [False, True], ids=["segmentation in world", "segmentation under T"])
def test_an_annotation_of_a_transformed_volume_is_written_on_its_own_lattice(transformed, tmp_path, under_transform):
    app, volume, labels = transformed
    segmentation = paint(app, volume, labels, "My annotation", under_transform)
    before = snapshot(segmentation)
    ids = scene_io.segment_ids(segmentation)
    classes = scene_io.classes_from_segments(segmentation, ids)
    scene_io.write_volume(volume, str(tmp_path / "image.nrrd"))
    scene_io.write_annotation(app.services, segmentation, ids, volume, classes, str(tmp_path / "label.seg.nrrd"))
    # The engine's own reader refuses a label that is not on the image's grid.
    image = volumes.read_volume(tmp_path / "image.nrrd")
    read, _ = volumes.read_annotation(tmp_path / "label.seg.nrrd", image)
    np.testing.assert_array_equal(read, labels)
    # The painted slices are counted on the same lattice.
    np.testing.assert_array_equal(scene_io.annotation_labels(app.services, segmentation, ids, volume), labels)
    assert snapshot(segmentation) == before


def test_a_prediction_of_a_transformed_volume_has_the_lattice_the_segment_editor_uses(transformed, tmp_path):
    import slicer

    app, volume, labels = transformed
    scene_io.write_volume(volume, str(tmp_path / "image.nrrd"))
    image = volumes.read_volume(tmp_path / "image.nrrd")
    classes = [scene_io.SegmentClass(v, name, color, term) for v, (name, color, term) in enumerate(SEGMENTS, 1)]
    volumes.write_segmentation(tmp_path / "pred.seg.nrrd", labels, image.grid,
                               [volumes.ClassInfo(c.value, c.name, c.color) for c in classes])
    node = scene_io.add_prediction(app.services, scene_io.SceneTransaction(app.scene), volume,
                                   str(tmp_path / "pred.seg.nrrd"), classes)
    assert node.GetTransformNodeID() == volume.GetTransformNodeID()
    # What the Segment Editor would set for a segmentation under the volume's transform: its own lattice.
    expected = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "expected")
    expected.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
    expected.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    parameter = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    assert node.GetSegmentation().GetConversionParameter(parameter) == \
        expected.GetSegmentation().GetConversionParameter(parameter)
    # An edit in the Segment Editor happens on that lattice: the voxels stay the volume's.
    for index in range(len(SEGMENTS)):
        segment_id = node.GetSegmentation().GetNthSegmentID(index)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(node, segment_id, volume)
        np.testing.assert_array_equal(mask.astype(bool), labels == index + 1)


def test_a_frame_of_a_transformed_sequence_is_exported_on_the_frames_lattice(tmp_path):
    app = SlicerApp()
    frames, frame_labels = moving_phantom(4)
    proxy = app.add_volume_sequence(frames, "Cine", OBLIQUE)
    proxy.SetAndObserveTransformNodeID(add_transform(app).GetID())
    browser, _ = sequences.browser_of(app.scene, proxy)
    browser.SetSelectedItemNumber(1)
    app.sequences.UpdateProxyNodesFromSequences(browser)
    annotation = paint(app, proxy, frame_labels[1], "Frame 1", under_transform=False)
    logic = PLCLSegmentationLogic(app.services, models_dir=tmp_path / "models")
    logic.refresh()
    logic.set_annotation(proxy, annotation)
    record = logic.record(proxy)
    classes = scene_io.classes_from_segments(annotation, scene_io.segment_ids(annotation))
    exported = cine.export(app.services, record, tmp_path, classes, training=True)
    scene_io.write_volume(sequences.frame_volume(record.sequence, 1), str(tmp_path / "frame1.nrrd"))
    read, _ = volumes.read_annotation(exported.labels[1], volumes.read_volume(tmp_path / "frame1.nrrd"))
    np.testing.assert_array_equal(read, frame_labels[1])


def test_mark_background_finds_the_paint_views_slice_in_the_volumes_own_coordinates(transformed, tmp_path):
    import slicer
    import vtk

    app, volume, labels = transformed
    red = red_slice_view(app)
    segmentation = paint(app, volume, labels, "My annotation", under_transform=False)
    logic = PLCLSegmentationLogic(app.services, models_dir=tmp_path / "models")
    logic.refresh()
    logic.set_annotation(volume, segmentation)
    logic.set_up_paint_view(volume)
    # Scroll the Red view to slice 6 of the volume, in world coordinates (where the view is).
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijk_to_ras)
    local = ijk_to_ras.MultiplyPoint((20.0, 20.0, 6.0, 1.0))
    world = slicer.util.vtkMatrixFromArray(rotation_and_translation()).MultiplyPoint(local)
    red.JumpSliceByCentering(*world[:3])
    assert scene_io.current_slice(app.scene, volume) == 6
    assert logic.mark_background(volume).background == [6]
