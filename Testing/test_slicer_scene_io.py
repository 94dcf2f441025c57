"""Export and import between a real MRML scene (slicer-core) and the engine's files."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")

from slicer_support import HEART_TERMINOLOGY, MYOCARDIUM_TERMINOLOGY, SlicerApp, snapshot  # noqa: E402

from PLCLSegmentationLib import scene_io  # noqa: E402
from PLCLSegmentationLib.engine.files import volumes  # noqa: E402
from PLCLSegmentationLib.services import OWNER_ATTRIBUTE  # noqa: E402

pytestmark = pytest.mark.mrml

SEGMENTS = [("Left ventricle", (0.9, 0.1, 0.2), HEART_TERMINOLOGY),
            ("Myocardium", (0.2, 0.7, 0.3), MYOCARDIUM_TERMINOLOGY),
            ("Scar", (0.1, 0.2, 0.9), "")]


def oblique_ijk_to_ras() -> np.ndarray:
    """A rotated, anisotropic grid with an offset origin: what real scanners write."""
    a, b = math.radians(25), math.radians(-10)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    matrix = np.eye(4)
    matrix[:3, :3] = rz @ rx @ np.diag([0.7, 0.8, 3.5])
    matrix[:3, 3] = [-40.5, 12.25, 7.0]
    return matrix


@pytest.fixture
def oblique():
    app = SlicerApp()
    rng = np.random.default_rng(0)
    image = rng.normal(100, 20, (7, 40, 50)).astype(np.int16)
    volume = app.add_volume(image, "oblique case", oblique_ijk_to_ras())
    labels = np.zeros(image.shape, np.uint8)
    labels[2:5, 10:20, 10:30] = 1
    labels[1:6, 22:30, 15:40] = 2
    labels[3, 32:36, 5:9] = 3
    segmentation = app.add_segmentation(volume, labels, SEGMENTS, "My annotation")
    return app, volume, segmentation, labels


def test_export_annotation_on_the_volume_grid_with_names_colours_and_terminology(oblique, tmp_path):
    app, volume, segmentation, labels = oblique
    before = snapshot(segmentation)
    ids = scene_io.segment_ids(segmentation)
    classes = scene_io.classes_from_segments(segmentation, ids)
    scene_io.write_volume(volume, str(tmp_path / "image.nrrd"))
    scene_io.write_annotation(app.services, segmentation, ids, volume, classes, str(tmp_path / "label.seg.nrrd"))

    # Read back with the engine's own reader (slicerio): exactly the grid, the voxels and the metadata.
    image = volumes.read_volume(tmp_path / "image.nrrd")
    ras_to_lps = np.diag([-1, -1, 1, 1])
    np.testing.assert_allclose(image.grid.ijk_to_lps(), ras_to_lps @ oblique_ijk_to_ras(), atol=1e-4)
    read, read_classes = volumes.read_annotation(tmp_path / "label.seg.nrrd", image)
    np.testing.assert_array_equal(read, labels)
    assert [c.name for c in read_classes] == [s[0] for s in SEGMENTS]
    for info, (_, color, _) in zip(read_classes, SEGMENTS):
        np.testing.assert_allclose(info.color, color, atol=1e-3)
    assert read_classes[0].terminology["type"][1] == "80891009"  # SCT code of Heart
    assert read_classes[1].terminology["type"][1] == "74281007"  # Myocardium
    assert snapshot(segmentation) == before


def test_export_a_subset_in_class_order_and_an_empty_class(oblique, tmp_path):
    app, volume, segmentation, labels = oblique
    ids = scene_io.segment_ids(segmentation)
    classes = scene_io.classes_from_segments(segmentation, [ids[1], ids[0]])
    scene_io.write_annotation(app.services, segmentation, [ids[1], ids[0]], volume, classes,
                              str(tmp_path / "subset.seg.nrrd"))
    scene_io.write_volume(volume, str(tmp_path / "image.nrrd"))
    image = volumes.read_volume(tmp_path / "image.nrrd")
    read, read_classes = volumes.read_annotation(tmp_path / "subset.seg.nrrd", image)
    assert [c.name for c in read_classes] == ["Myocardium", "Left ventricle"]
    np.testing.assert_array_equal(read == 1, labels == 2)
    np.testing.assert_array_equal(read == 2, labels == 1)

    # An annotation where one of the classes is empty still carries every class.
    partial = app.add_segmentation(volume, (labels == 1).astype(np.uint8), SEGMENTS[:2], "Partial")
    two = scene_io.classes_from_segments(partial, scene_io.segment_ids(partial))
    scene_io.write_annotation(app.services, partial, scene_io.segment_ids(partial), volume, two,
                              str(tmp_path / "partial.seg.nrrd"))
    read, read_classes = volumes.read_annotation(tmp_path / "partial.seg.nrrd", image)
    assert [c.name for c in read_classes] == ["Left ventricle", "Myocardium"]
    np.testing.assert_array_equal(read, (labels == 1).astype(np.uint8))

    # A class absent from the slices written (a slice accepted without the first structure: slices 1 and 5
    # hold the second class alone) and from the whole annotation: every voxel keeps its class.
    ids = scene_io.segment_ids(segmentation)
    three = scene_io.classes_from_segments(segmentation, ids)
    axis = scene_io.volume_axes(volume).slice_axis
    kept = [i for i in range(labels.shape[axis]) if not (np.take(labels, i, axis=axis) == 1).any()]
    assert kept and any((np.take(labels, i, axis=axis) > 0).any() for i in kept)
    path = tmp_path / "accepted.seg.nrrd"
    scene_io.write_annotation(app.services, segmentation, ids, volume, three, str(path), only_slices=(axis, kept))
    read, read_classes = volumes.read_annotation(path, image)
    assert [c.name for c in read_classes] == [s[0] for s in SEGMENTS]  # each voxel's class, in class order
    outside = np.ones(labels.shape[axis], bool)
    outside[kept] = False
    expected = labels.copy()
    expected[(slice(None),) * axis + (outside,)] = 0
    np.testing.assert_array_equal(read, expected)
    scene_io.write_annotation(app.services, segmentation, ids[1:], volume, three[1:], str(path))
    read, read_classes = volumes.read_annotation(path, image)  # the first segment left out: the others' names
    assert [c.name for c in read_classes] == [s[0] for s in SEGMENTS[1:]]
    np.testing.assert_array_equal(read, np.where(labels > 1, labels - 1, 0))

    # Nothing painted at all: one clear line.
    empty = app.add_segmentation(volume, np.zeros_like(labels), SEGMENTS[:1], "Empty")
    with pytest.raises(scene_io.PLCLError, match="'Empty' has nothing painted on 'oblique case'"):
        scene_io.write_annotation(app.services, empty, scene_io.segment_ids(empty), volume, two[:1],
                                  str(tmp_path / "empty.seg.nrrd"))


def test_match_segments_by_name_and_clear_error(oblique):
    app, volume, segmentation, _ = oblique
    classes = scene_io.classes_from_segments(segmentation, scene_io.segment_ids(segmentation))
    other = app.add_segmentation(volume, np.zeros((7, 40, 50), np.uint8),
                                 [("myocardium ", (1, 1, 1), ""), ("Left Ventricle", (1, 0, 0), "")], "Second")
    ids = scene_io.segment_ids(other)
    assert scene_io.match_segments(other, classes[:2]) == [ids[1], ids[0]]
    with pytest.raises(scene_io.PLCLError, match="no segment named 'Scar'"):
        scene_io.match_segments(other, classes)


def test_import_prediction_next_to_its_volume(oblique, tmp_path):
    app, volume, segmentation, labels = oblique
    hierarchy = app.services.subject_hierarchy()
    study = hierarchy.CreateFolderItem(hierarchy.GetSceneItemID(), "Study")
    hierarchy.SetItemParent(hierarchy.GetItemByDataNode(volume), study)
    ids = scene_io.segment_ids(segmentation)
    classes = scene_io.classes_from_segments(segmentation, ids)
    # The engine writes its prediction with slicerio, on the image grid, classes with dict terminology.
    scene_io.write_volume(volume, str(tmp_path / "image.nrrd"))
    image = volumes.read_volume(tmp_path / "image.nrrd")
    engine_classes = [volumes.ClassInfo(c.value, f"class {c.value}", (0.5, 0.5, 0.5)) for c in classes]
    volumes.write_segmentation(tmp_path / "pred.seg.nrrd", labels, image.grid, engine_classes)
    volumes.write_image(tmp_path / "unc.nrrd", np.linspace(0, 1, labels.size, dtype=np.float32).reshape(labels.shape),
                        image.grid)
    transaction = scene_io.SceneTransaction(app.scene)
    node = scene_io.add_prediction(app.services, transaction, volume, str(tmp_path / "pred.seg.nrrd"), classes)
    uncertainty = scene_io.add_uncertainty(app.services, transaction, volume, str(tmp_path / "unc.nrrd"))

    assert node.GetName() == "oblique case segmentation"
    assert node.GetAttribute(OWNER_ATTRIBUTE) == scene_io.PREDICTION
    assert node.GetNodeReferenceID("referenceImageGeometryRef") == volume.GetID()
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(uncertainty)) == study
    segments = node.GetSegmentation()
    for index, (name, color, terminology) in enumerate(SEGMENTS):
        segment = segments.GetNthSegment(index)
        assert segment.GetName() == name
        np.testing.assert_allclose(segment.GetColor(), color, atol=1e-6)
        if terminology:
            assert segment.GetTerminology() == terminology
        import slicer

        mask = slicer.util.arrayFromSegmentBinaryLabelmap(node, segments.GetNthSegmentID(index), volume)
        np.testing.assert_array_equal(mask.astype(bool), labels == index + 1)
    import slicer

    np.testing.assert_allclose(slicer.util.arrayFromVolume(uncertainty).ravel()[[0, -1]], [0, 1], atol=1e-6)
    display = uncertainty.GetDisplayNode()
    assert display.GetColorNode().GetAttribute(OWNER_ATTRIBUTE) == scene_io.COLOR_TABLE
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0.0, 1.0)
    assert node.GetStorageNode() is None  # nothing points to the temporary files

    # Show as overlay, then roll everything back: the scene is as before.
    scene_io.show_in_views(app.scene, volume, node, uncertainty, 0.5)
    composite = app.nodes_by_class("vtkMRMLSliceCompositeNode")[0]
    assert composite.GetBackgroundVolumeID() == volume.GetID()
    assert composite.GetForegroundVolumeID() == uncertainty.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.5)
    count = app.scene.GetNumberOfNodes()
    transaction.rollback()
    assert app.scene.GetNumberOfNodes() < count
    assert node.GetScene() is None and uncertainty.GetScene() is None


def test_fingerprint_tells_an_edit(oblique):
    app, volume, segmentation, labels = oblique
    import slicer

    before = scene_io.fingerprint(segmentation)
    assert scene_io.fingerprint(segmentation) == before
    ids = scene_io.segment_ids(segmentation)
    edited = (labels == 1).astype(np.uint8)
    edited[0, 0, 0] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(edited, segmentation, ids[0], volume)
    assert scene_io.fingerprint(segmentation) != before


def test_scalar_volumes_leave_out_label_maps_and_our_maps(oblique):
    app, volume, _, _ = oblique
    labelmap = app.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    assert labelmap is not None
    ours = app.add_volume(np.zeros((2, 3, 4), np.float32), "map")
    ours.SetAttribute(OWNER_ATTRIBUTE, scene_io.UNCERTAINTY)
    assert [v.GetID() for v in scene_io.scalar_volumes(app.scene)] == [volume.GetID()]


def test_round_trip_through_files_keeps_voxels_geometry_and_metadata(oblique, tmp_path):
    """Export an annotation of an oblique volume, import the file back as a prediction: same segments."""
    import slicer

    app, volume, segmentation, labels = oblique
    transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Registration")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    ids = scene_io.segment_ids(segmentation)
    classes = scene_io.classes_from_segments(segmentation, ids)
    path = str(tmp_path / "round.seg.nrrd")
    scene_io.write_annotation(app.services, segmentation, ids, volume, classes, path)
    node = scene_io.add_prediction(app.services, scene_io.SceneTransaction(app.scene), volume, path, classes)
    assert node.GetTransformNodeID() == transform.GetID()  # in the volume's frame, like the volume
    for index, segment_id in enumerate(ids):
        original = segmentation.GetSegmentation().GetSegment(segment_id)
        copy = node.GetSegmentation().GetNthSegment(index)
        assert (copy.GetName(), copy.GetColor(), copy.GetTerminology()) == \
            (original.GetName(), original.GetColor(), original.GetTerminology())
        back = slicer.util.arrayFromSegmentBinaryLabelmap(node, node.GetSegmentation().GetNthSegmentID(index), volume)
        np.testing.assert_array_equal(back.astype(bool), labels == index + 1)


def test_an_export_adds_nothing_to_the_users_segmentation(oblique, tmp_path):
    """As a file loads or a model is imported: no display node, a closed surface as source. An export
    works on a copy: the user's node gets no binary labelmap and no display node."""
    app, volume, segmentation, labels = oblique
    node = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Surfaces")
    node.GetSegmentation().DeepCopy(segmentation.GetSegmentation())
    assert node.GetSegmentation().CreateRepresentation("Closed surface")
    node.GetSegmentation().SetSourceRepresentationName("Closed surface")
    node.GetSegmentation().RemoveRepresentation("Binary labelmap")
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    mtimes = (node.GetMTime(), node.GetSegmentation().GetMTime())
    count = app.scene.GetNumberOfNodes()
    ids = scene_io.segment_ids(node)
    classes = scene_io.classes_from_segments(node, ids)
    scene_io.write_annotation(app.services, node, ids, volume, classes, str(tmp_path / "label.seg.nrrd"))
    assert scene_io.annotation_labels(app.services, node, ids, volume).any()
    assert not node.GetSegmentation().ContainsRepresentation("Binary labelmap")
    assert node.GetDisplayNode() is None
    assert (node.GetMTime(), node.GetSegmentation().GetMTime()) == mtimes
    assert app.scene.GetNumberOfNodes() == count


def test_the_uncertainty_colours_are_saved_with_the_scene_and_rebuilt_if_lost(oblique, tmp_path):
    """File > Save offers only storable nodes not hidden from editors (qSlicerSaveDataDialog at v5.8.0):
    the colour table must be one, else a scene saved as .mrml reopens with a table without colours."""
    import slicer

    app, volume, _, labels = oblique
    scene_io.write_volume(volume, str(tmp_path / "image.nrrd"))
    image = volumes.read_volume(tmp_path / "image.nrrd")
    volumes.write_image(tmp_path / "unc.nrrd", np.linspace(0, 1, labels.size, dtype=np.float32).reshape(labels.shape),
                        image.grid)
    uncertainty = scene_io.add_uncertainty(app.services, scene_io.SceneTransaction(app.scene), volume,
                                           str(tmp_path / "unc.nrrd"))
    table = uncertainty.GetDisplayNode().GetColorNode()
    assert not table.GetHideFromEditors() and table.GetSaveWithScene()
    colours = [table.GetLookupTable().GetTableValue(i) for i in (0, 128, 255)]

    # A scene whose table file was not written (the scene file alone): the table comes back without its colours.
    app.scene.SetURL(str(tmp_path / "scene.mrml"))
    assert app.scene.Commit()
    reopened = slicer.vtkMRMLScene()
    reopened.SetURL(str(tmp_path / "scene.mrml"))
    assert reopened.Import()
    found = [reopened.GetNthNodeByClass(i, "vtkMRMLColorTableNode")
             for i in range(reopened.GetNumberOfNodesByClass("vtkMRMLColorTableNode"))]
    found = [n for n in found if n.GetAttribute(OWNER_ATTRIBUTE) == scene_io.COLOR_TABLE]
    assert len(found) == 1
    assert [found[0].GetLookupTable().GetTableValue(i) for i in (0, 128, 255)] != colours
    table = scene_io.uncertainty_color_table(reopened)
    assert table.GetID() == found[0].GetID() and table.GetNumberOfColors() == 256
    np.testing.assert_allclose([table.GetLookupTable().GetTableValue(i) for i in (0, 128, 255)], colours, atol=1e-6)
