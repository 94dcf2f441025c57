"""Self-test steps that need neither torch nor the engine: PLCLSegmentationTest runs them in Slicer,
and Testing/test_slicer_selftest.py runs them on slicer-core, so the module's own test is tested.

Each step raises AssertionError (or PLCLError) with a message saying what went wrong.
"""

from __future__ import annotations

from typing import Any

from .parameters import ANNOTATED, EXCLUDED, UNANNOTATED
from .services import PLCLError


def annotated_scene(scene: Any) -> tuple[Any, Any, Any]:
    """Two small grayscale volumes in ``scene``, the first with a two-segment segmentation."""
    import numpy as np
    import slicer

    rng = np.random.default_rng(0)
    volumes = []
    for name in ("PLCL self-test A", "PLCL self-test B"):
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        slicer.util.updateVolumeFromArray(node, rng.normal(100, 20, (6, 40, 40)).astype(np.int16))
        node.CreateDefaultDisplayNodes()
        volumes.append(node)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "PLCL self-test annotation")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volumes[0])
    for value, (name, color) in enumerate((("Inner", (0.9, 0.3, 0.2)), ("Outer", (0.2, 0.6, 0.9))), start=1):
        segment_id = segmentation.GetSegmentation().AddEmptySegment(name, name, color)
        mask = np.zeros((6, 40, 40), np.uint8)
        mask[1:5, 10 * value:10 * value + 8, 12:28] = 1
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, segment_id, volumes[0])
    return volumes[0], volumes[1], segmentation


def _expect_error(text: str, action: Any) -> None:
    try:
        action()
    except PLCLError as error:
        assert text in str(error), f"expected an error about {text!r}, got: {error}"
    else:
        raise AssertionError(f"expected an error about {text!r}")


def check_roles(logic: Any, annotated: Any, other: Any, segmentation: Any) -> None:
    """Roles, records and clear errors, through the logic on the scene (no engine run)."""
    from . import scene_io

    names = {r.name for r in logic.refresh()}
    assert {annotated.GetName(), other.GetName()} <= names, f"volumes not found among {sorted(names)}"
    _expect_error("Choose at least one annotated volume", logic.train)
    _expect_error("Load or train a model first", logic.predict)
    record = logic.set_annotation(annotated, segmentation)
    assert record.role == ANNOTATED and len(record.segment_ids) == 2
    _expect_error("Retrain needs a trained model", logic.retrain)
    assert [c.name for c in scene_io.classes_from_segments(segmentation, record.segment_ids)] == ["Inner", "Outer"]
    assert logic.set_role(other, EXCLUDED).role == EXCLUDED
    assert logic.set_role(other, UNANNOTATED).role == UNANNOTATED
    rows = logic.review_rows()
    assert [r.role for r in rows if r.name in (annotated.GetName(), other.GetName())] == [UNANNOTATED, ANNOTATED]
    _expect_error("has no prediction to accept", lambda: logic.accept(other))
    _expect_error("no prediction to accept a slice of", lambda: logic.accept_slice(other, 0))
    assert logic.next_uncertain_slice() is None, "a slice to review without any prediction"


def cine_scene(scene: Any, sequences_logic: Any) -> tuple[Any, Any]:
    """A three-frame volume sequence in a browser, as Slicer loads a cine series, and a segmentation
    drawn on its frame 1: (the browser's proxy volume, the segmentation)."""
    import numpy as np
    import slicer

    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "PLCL self-test cine sequence")
    rng = np.random.default_rng(1)
    for frame in range(3):
        volume = slicer.vtkMRMLScalarVolumeNode()
        slicer.util.updateVolumeFromArray(volume, rng.normal(100, 20, (4, 32, 32)).astype(np.int16))
        sequence.SetDataNodeAtValue(volume, str(frame))
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "PLCL self-test cine")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    sequences_logic.UpdateProxyNodesFromSequences(browser)
    browser.SetSelectedItemNumber(1)
    sequences_logic.UpdateProxyNodesFromSequences(browser)
    proxy = browser.GetProxyNode(sequence)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "PLCL self-test frame 1")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(proxy)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("Inner", "Inner", (0.9, 0.3, 0.2))
    mask = np.zeros((4, 32, 32), np.uint8)
    mask[1:3, 10:20, 10:20] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, segment_id, proxy)
    return proxy, segmentation


def check_cine(logic: Any, proxy: Any, segmentation: Any) -> None:
    """A volume sequence is one record; the browser's frame is annotated by its own segmentation."""
    records = [r for r in logic.refresh() if r.volume.GetID() == proxy.GetID()]
    assert len(records) == 1 and records[0].is_sequence, "the sequence's proxy volume is not a sequence record"
    record = logic.set_annotation(proxy, segmentation)
    assert record.role == ANNOTATED and record.training_frames() == [1], f"frames: {record.training_frames()}"
    assert record.frames[1].source.GetID() == segmentation.GetID()
    _expect_error("has no frame 5", lambda: logic.set_frame_annotation(proxy, 5, segmentation))
    _expect_error("whole", lambda: logic.slice_summary(proxy))
    _expect_error("accept a frame whole", lambda: logic.accept_slice(proxy, 0))
    assert logic.remove_frame(proxy, 1).role == UNANNOTATED
