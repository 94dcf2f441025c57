"""The review that guides the eye, on a real MRML scene (slicer-core) with the fake engine's review fields:
the table's order by estimated Dice, "Next uncertain slice" (the right slice in the right view, visited
slices skipped, then the next volume; under a parent transform; frames of a sequence) and "Accept slice"
(those slices alone reach the retrain as annotated; the segmentation is only read)."""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")

from slicer_support import (  # noqa: E402
    CARDIAC_SEGMENTS,
    FAKE_ENGINE,
    SlicerApp,
    moving_phantom,
    read_labels,
    slice_views,
    snapshot,
    synthetic_case,
)

from PLCLSegmentationLib import review, scene_io  # noqa: E402
from PLCLSegmentationLib.logic import PLCLSegmentationLogic  # noqa: E402
from PLCLSegmentationLib.parameters import ANNOTATED, PREDICTED  # noqa: E402
from PLCLSegmentationLib.services import PLCLError  # noqa: E402

pytestmark = pytest.mark.mrml

CASES = ["synthetic_001", "synthetic_002", "synthetic_003"]  # 003 is stored with permuted axes (Coronal)


def turn_and_shift() -> np.ndarray:
    """A parent transform: 25 degrees about an oblique axis, then 9, -4, 17 mm."""
    axis = np.array([2.0, 1.0, 2.0]) / 3.0
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = math.radians(25)
    matrix = np.eye(4)
    matrix[:3, :3] = np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross
    matrix[:3, 3] = [9.0, -4.0, 17.0]
    return matrix


def ijk_to_world(volume, transform: np.ndarray | None = None) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    local = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    return (transform if transform is not None else np.eye(4)) @ local


def shown_slice(node, volume, axis: str, transform: np.ndarray | None = None) -> float:
    """The voxel index along ``axis`` of the slice view's plane, checked to be that voxel axis's slices:
    its normal is the axis (in voxel coordinates) and every point of it has the same index."""
    to_ijk = np.linalg.inv(ijk_to_world(volume, transform))
    slice_to_ras = np.array([[node.GetSliceToRAS().GetElement(r, c) for c in range(4)] for r in range(4)])
    points = [to_ijk @ slice_to_ras @ np.array([x, y, 0.0, 1.0]) for x, y in ((0, 0), (50, 0), (0, 50))]
    along = [p["ijk".index(axis)] for p in points]
    assert max(along) - min(along) == pytest.approx(0.0, abs=1e-6), "the view is not across that axis"
    return along[0]


@pytest.fixture
def session(tmp_path):
    """Three volumes (the first annotated, the third under a parent transform) after a training with the fake
    engine: two predictions with their review fields."""
    import slicer

    app = SlicerApp()
    views = slice_views(app)
    volumes = [app.load_volume(synthetic_case(c)[0], c) for c in CASES]
    transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Registration")
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(turn_and_shift()))
    volumes[2].SetAndObserveTransformNodeID(transform.GetID())
    annotation = app.add_segmentation(volumes[0], read_labels(synthetic_case(CASES[0])[1]), CARDIAC_SEGMENTS,
                                      "Annotation")
    before = snapshot(annotation)
    logic = PLCLSegmentationLogic(app.services, models_dir=tmp_path / "models",
                                  engine_command=[sys.executable, str(FAKE_ENGINE)],
                                  environment={**os.environ, "FAKE_ENGINE_STEP_S": "0.001"})
    logic.refresh()
    logic.set_annotation(volumes[0], annotation)
    logic.state.set("iterations", 4)
    job = logic.train()
    logic.wait(120)
    assert job.state.name == "DONE", job.error
    summary = json.loads((job.out_dir / "summary.json").read_text())
    entries = {logic.state.record_for(v).key: v for v in volumes}
    by_volume = {entries[e["name"]].GetID(): e for e in summary["volumes"]}
    yield app, logic, volumes, views, by_volume
    logic.shutdown()
    if app.scene.GetNodeByID(annotation.GetID()).GetStorageNode() is None:  # (a scene saved gave it one)
        assert snapshot(annotation) == before  # the user's annotation is only ever read


def voxels(node) -> dict:
    """A segmentation's snapshot without its display node (highlighting shows a segment, never edits it)."""
    return {k: v for k, v in snapshot(node).items() if k != "display_mtime"}


def test_the_table_lists_each_predictions_structures_worst_first_and_the_worst_volume_first(session):
    _, logic, volumes, _, by_volume = session
    rows = logic.review_rows()
    assert [r.role for r in rows] == [PREDICTED, PREDICTED, ANNOTATED]
    for row in rows[:2]:
        expected = by_volume[row.record.volume.GetID()]["structures"]
        assert [s["name"] for s in row.structures] == [s["name"] for s in expected]
        assert [s["estimated_dice"] for s in row.structures] == [s["estimated_dice"] for s in expected]
        assert row.worst == min(s["estimated_dice"] for s in expected if s["estimated_dice"] is not None)
        assert review.structures_text(row.structures).startswith(f"{expected[0]['name']} ")
    # The lowest estimated Dice first, whatever the uncertainty scores say.
    worst = {v.GetID(): min(s["estimated_dice"] for s in e["structures"] if s["estimated_dice"] is not None)
             for v, e in ((v, by_volume[v.GetID()]) for v in volumes[1:])}
    assert [r.record.volume.GetID() for r in rows[:2]] == sorted(worst, key=worst.get)
    # A structure predicted nowhere goes last and says so; a volume with nothing found is the worst.
    none = [{"name": "Left ventricle", "estimated_dice": None}, {"name": "Myocardium", "estimated_dice": 0.9}]
    ordered = review.structures_of({"structures": none})
    assert review.structures_text(ordered) == "Myocardium 0.90, Left ventricle not found"
    assert review.worst_estimate(ordered) == 0.9 and review.worst_estimate(ordered[1:]) == 0.0


def test_next_uncertain_slice_shows_the_least_certain_slice_of_a_volume_then_the_next_volume_s(session):
    app, logic, volumes, views, by_volume = session
    first, second = (r.record for r in logic.review_rows()[:2])
    transform = turn_and_shift()
    editor = app.scene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
    editor.UnRegister(None)
    editor.SetSingletonTag("SegmentEditor")
    editor = app.scene.AddNode(editor)
    editor.SetAndObserveSegmentationNode(first.segmentation)
    fingerprints = {r.key: scene_io.fingerprint(r.segmentation) for r in (first, second)}
    hidden = first.segmentation.GetSegmentation().GetNthSegmentID(0)
    first.segmentation.GetDisplayNode().SetSegmentVisibility(hidden, False)

    visited = []
    shown = {first.key: 0, second.key: 0}
    entries = {r.key: by_volume[r.volume.GetID()] for r in (first, second)}
    while (stop := logic.next_uncertain_slice(visited[-1][0] if visited else None)) is not None:
        record = stop.record
        entry = entries[record.key]
        # Each volume's slices in the engine's order, in passes: none shows a slice of a later pass than another's.
        waiting = [k for k in shown if shown[k] < len(entries[k]["slices"])]
        assert shown[record.key] // review.SLICES_PER_PASS == min(shown[k] // review.SLICES_PER_PASS for k in waiting)
        expected = entry["slices"][shown[record.key]]
        shown[record.key] += 1
        assert (stop.index, stop.axis) == (expected["index"], entry["slice_axis"])
        assert stop.structure == expected["structure"]
        view = views[stop.view]
        assert stop.view == scene_io.volume_axes(record.volume).view  # the engine's slicing plane
        moved = transform if record.volume.GetTransformNodeID() else None
        assert shown_slice(view, record.volume, stop.axis, moved) == pytest.approx(stop.index, abs=1e-6)
        assert scene_io.current_slice(app.scene, record.volume) == stop.index
        composite = next(n for n in app.nodes_by_class("vtkMRMLSliceCompositeNode")
                         if n.GetLayoutName() == view.GetLayoutName())
        assert composite.GetBackgroundVolumeID() == record.volume.GetID()
        if stop.structure is not None:  # that structure's segment is shown, and selected where it is edited
            segment_id = record.segmentation.GetSegmentation().GetSegmentIdBySegmentName(stop.structure)
            assert stop.segment_id == segment_id
            assert record.segmentation.GetDisplayNode().GetSegmentVisibility(segment_id)
            if record.key == first.key:
                assert editor.GetSelectedSegmentID() == segment_id
        visited.append((record.volume, stop.index))
    assert review.SLICES_PER_PASS == 1  # one of the first, one of the second, then the first's second, ...
    assert [(v.GetID(), i) for v, i in visited[:4]] == [
        (r.volume.GetID(), entries[r.key]["slices"][i]["index"]) for i in (0, 1) for r in (first, second)]
    assert shown == {k: len(entries[k]["slices"]) for k in shown}  # every slice seen, once
    assert any(v.GetTransformNodeID() for v, _ in visited), "a volume under a parent transform was reviewed"
    assert logic.next_uncertain_slice(second.volume) is None
    # Looking is never editing.
    assert {r.key: scene_io.fingerprint(r.segmentation) for r in (first, second)} == fingerprints


def test_visited_slices_are_skipped_and_kept_with_the_scene(session, tmp_path):
    app, logic, volumes, _, by_volume = session
    rows = logic.review_rows()
    second = rows[1].record
    entry = by_volume[second.volume.GetID()]
    # Starting from the second row goes to its slices first.
    stop = logic.next_uncertain_slice(second.volume)
    assert (stop.record.key, stop.index) == (second.key, entry["slices"][0]["index"])
    assert stop.remaining == len(entry["slices"]) - 1
    # One shown: the other prediction's (the table's first, from the top) before a second of it.
    first = rows[0].record
    assert logic.next_uncertain_slice(second.volume).record.key == first.key
    # Back to it: its visited slice is skipped.
    assert logic.next_uncertain_slice(second.volume).index == entry["slices"][1]["index"]
    assert logic.next_uncertain_slice(first.volume).record.key == first.key
    # Saved and reopened: the estimates, the visited slices and the order are still there.
    reopened = SlicerApp.open(app.save(tmp_path / "scene"))
    slice_views(reopened)
    logic2 = PLCLSegmentationLogic(reopened.services, models_dir=tmp_path / "models")
    assert [(r.name, r.structures) for r in logic2.review_rows()] == [(r.name, r.structures) for r in rows]
    # with each slice's digest of the prediction as imported (which slices the user edits, for a retrain)
    assert [r.record.slice_digests for r in logic2.review_rows()] == [r.record.slice_digests for r in rows]
    assert all(len(r.record.slice_digests) > 1 for r in rows if r.record.role == PREDICTED)
    proxy = reopened.scene.GetNodeByID(second.volume.GetID())
    assert logic2.next_uncertain_slice(proxy).index == entry["slices"][2]["index"]


def test_a_slice_that_cannot_be_shown_stays_to_be_seen(session):
    app, logic, _, views, _ = session
    first = logic.review_rows()[0].record
    app.scene.RemoveNode(views[scene_io.volume_axes(first.volume).view])
    with pytest.raises(PLCLError, match=r"There is no \w+ slice view to show slice \d+ of"):
        logic.next_uncertain_slice(first.volume)
    assert logic.state.review(first.key)["volume"]["visited"] == []


def first_prediction(logic):
    """The review table's first row: its record, volume, prediction, slicing axis and ground truth."""
    record = logic.review_rows()[0].record
    volume = record.volume
    return record, volume, record.segmentation, scene_io.volume_axes(volume).slice_axis, \
        read_labels(synthetic_case(volume.GetName())[1])


def test_accept_slice_sends_those_slices_alone_to_the_retrain_and_its_new_prediction_keeps_them(session):
    from PLCLSegmentationLib.engine.config import TrainConfig
    from PLCLSegmentationLib.engine.files import volumes as engine_volumes
    from PLCLSegmentationLib.engine.request import TrainJob
    from PLCLSegmentationLib.engine.run.inputs import read_training_inputs

    app, logic, volumes, _, _ = session
    record, volume, prediction, axis, truth = first_prediction(logic)
    # Next uncertain slice shows a slice; the user corrects two slices (the ground truth painted in) and
    # a third one, but accepts only the shown one and one other.
    shown = logic.next_uncertain_slice(volume).index
    full = [i for i in np.argsort(-np.count_nonzero(truth, axis=tuple(a for a in range(3) if a != axis)))
            if i != shown]
    other, unaccepted = int(full[0]), int(full[1])
    segmentation = prediction.GetSegmentation()
    app.paint_slices(prediction, volume, truth, axis, (shown, other, unaccepted), CARDIAC_SEGMENTS)
    corrected = voxels(prediction)
    drawn = scene_io.annotation_labels(app.services, prediction,
                                       [segmentation.GetSegmentIdBySegmentName(n) for n, _, _ in CARDIAC_SEGMENTS],
                                       volume)
    assert logic.accept_slice(volume) == shown  # the slice the view shows
    assert logic.accept_slice(volume, other) == other
    with pytest.raises(PLCLError, match="accepted already"):
        logic.accept_slice(volume, other)
    accepted = sorted([shown, other])
    assert logic.record(volume).accepted == accepted and logic.record(volume).role == PREDICTED
    row = next(r for r in logic.review_rows() if r.record.key == record.key)
    assert row.slices == f"accepted slices {accepted[0]}, {accepted[1]}"
    assert voxels(prediction) == corrected  # accepting reads nothing yet, writes nothing ever

    job = logic.retrain()
    argv = job.argv
    pairs = [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == "--labeled"]
    specs = [argv[i + 1] for i, a in enumerate(argv) if a == "--annotated-slices"]
    image, label = next(p for p in pairs if os.path.basename(p[0]) == f"{record.key}.nrrd")
    assert specs[pairs.index((image, label))] == ",".join(map(str, accepted))
    unlabeled = argv[argv.index("--unlabeled") + 1:argv.index("--out")] if "--unlabeled" in argv[:argv.index(
        "--out")] else []
    assert image not in unlabeled
    # What the engine reads: the accepted slices as corrected, nothing of the other slices (the third
    # corrected slice included); the engine takes exactly those slices as annotated.
    read, _ = engine_volumes.read_annotation(label, engine_volumes.read_volume(image))
    expected = np.zeros_like(drawn)
    for index in accepted:
        cut = (slice(None),) * axis + (index,)
        expected[cut] = drawn[cut]
    np.testing.assert_array_equal(read, expected)
    inputs = read_training_inputs(TrainJob(pairs, [], str(job.out_dir / "check"), TrainConfig(),
                                           annotated_slices=specs))
    assert inputs.annotated_slices[pairs.index((image, label))] == accepted
    logic.wait(120)
    assert job.state.name == "DONE", job.error
    # The retrain segments the volume again: its new prediction holds the accepted slices exactly as
    # accepted, the new model's segmentation elsewhere, and they stay accepted. The old prediction was
    # corrected on a slice not accepted: it is kept, untouched, beside the new one, and the user is told.
    after = logic.record(volume)
    assert after.segmentation is not prediction and after.accepted == accepted and after.role == PREDICTED
    assert app.scene.GetNodeByID(prediction.GetID()) is prediction and voxels(prediction) == corrected
    assert any(prediction.GetName() in w and "slices not accepted" in w for w in job.warnings), job.warnings
    ids = [after.segmentation.GetSegmentation().GetSegmentIdBySegmentName(n) for n, _, _ in CARDIAC_SEGMENTS]
    new = scene_io.annotation_labels(app.services, after.segmentation, ids, volume)
    assert new.shape == drawn.shape
    for index in range(drawn.shape[axis]):
        cut = (slice(None),) * axis + (index,)
        if index in accepted:
            np.testing.assert_array_equal(new[cut], drawn[cut])
    assert not np.array_equal(np.take(new, unaccepted, axis=axis), np.take(drawn, unaccepted, axis=axis))
    assert not set(after_slices(logic, after)) & set(accepted)  # nothing to review there
    with pytest.raises(PLCLError, match="accepted slices"):
        logic.predict([volume])
    # Accept (whole) supersedes the slices: the whole volume is training data.
    logic.accept(volume)
    assert logic.record(volume).accepted == [] and logic.slice_summary(volume).text().startswith("all ")


def after_slices(logic, record) -> list[int]:
    """The indices of the slices to review of a record's prediction, as the module stores them."""
    stored = logic.state.review(record.key).get(review.VOLUME_KEY) or {}
    assert stored.get("slices"), "the prediction has slices to review"
    return [int(item[0]) for item in stored["slices"]]


def test_a_prediction_corrected_on_its_accepted_slices_only_is_replaced_by_the_retrain_s(session):
    app, logic, _, _, _ = session
    _, volume, prediction, axis, truth = first_prediction(logic)
    # A slice without the first structure (its class must not shift onto the others in the label file).
    index = next(i for i in range(truth.shape[axis])
                 if np.take(truth, i, axis=axis).any() and not (np.take(truth, i, axis=axis) == 1).any())
    cut = (slice(None),) * axis + (index,)
    app.paint_slices(prediction, volume, truth, axis, [index], CARDIAC_SEGMENTS)  # a correction on that slice only
    ids = scene_io.segment_ids(prediction)
    drawn = scene_io.annotation_labels(app.services, prediction, ids, volume)
    logic.accept_slice(volume, index)
    job = logic.retrain()
    logic.wait(120)
    assert job.state.name == "DONE", job.error
    # Nothing of the old prediction is lost (its one correction is in the new one): it goes, silently.
    after = logic.record(volume)
    assert app.scene.GetNodeByID(prediction.GetID()) is None and not job.warnings
    assert after.accepted == [index] and len(after.slice_digests) == drawn.shape[axis]
    new = scene_io.annotation_labels(app.services, after.segmentation, scene_io.segment_ids(after.segmentation),
                                     volume)
    np.testing.assert_array_equal(new[cut], drawn[cut])
    # The accepted slice goes to the next retrain again, from the new prediction, as accepted.
    assert logic.slices_text(after) == f"accepted slice {index}"


def test_an_accepted_slice_edited_during_the_retrain_keeps_the_old_prediction_and_every_slice_accepted_no_new_one(
        session):
    import slicer

    app, logic, _, _, _ = session
    first, second = (row.record for row in logic.review_rows()[:2])
    # The first volume: a slice accepted as predicted, then edited while the retrain runs (after its export).
    axis = scene_io.volume_axes(first.volume).slice_axis
    index = logic.next_uncertain_slice(first.volume).index
    logic.accept_slice(first.volume, index)
    # The second volume: every slice accepted, so it is annotated whole and nothing is left to segment.
    total = second.volume.GetImageData().GetDimensions()[2 - scene_io.volume_axes(second.volume).slice_axis]
    for slice_index in range(total):
        logic.accept_slice(second.volume, slice_index)
    job = logic.retrain()
    segment_id = scene_io.segment_ids(first.segmentation)[0]
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(first.segmentation, segment_id, first.volume)
    mask[(slice(None),) * axis + (index,)] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, first.segmentation, segment_id, first.volume)
    edited = voxels(first.segmentation)
    logic.wait(120)
    assert job.state.name == "DONE", job.error
    assert app.scene.GetNodeByID(first.segmentation.GetID()) is first.segmentation
    assert voxels(first.segmentation) == edited
    assert any("during the run" in w and first.segmentation.GetName() in w for w in job.warnings), job.warnings
    assert logic.record(first.volume).segmentation is not first.segmentation
    after = logic.record(second.volume)
    assert after.segmentation is second.segmentation and after.accepted == list(range(total))
    assert second.name not in job.imported


def test_accept_slice_refuses_what_is_no_prediction_and_writes_background_slices(session, tmp_path):
    app, logic, volumes, _, _ = session
    with pytest.raises(PLCLError, match="no prediction to accept a slice of"):
        logic.accept_slice(volumes[0], 0)  # the user's annotation
    record = logic.review_rows()[0].record
    with pytest.raises(PLCLError, match="has no slice 99"):
        logic.accept_slice(record.volume, 99)
    # A slice with nothing predicted on it is annotated background: written empty on the volume's whole
    # grid, with every class, as the engine reads it.
    from PLCLSegmentationLib.engine.files import volumes as engine_volumes

    axis = scene_io.volume_axes(record.volume).slice_axis
    ids = scene_io.segment_ids(record.segmentation)
    labels = scene_io.annotation_labels(app.services, record.segmentation, ids, record.volume)
    empty = next(i for i in range(labels.shape[axis]) if not np.take(labels, i, axis=axis).any())
    classes = scene_io.classes_from_segments(record.segmentation, ids)
    path, image = tmp_path / "background.seg.nrrd", tmp_path / "image.nrrd"
    scene_io.write_annotation(app.services, record.segmentation, ids, record.volume, classes, str(path),
                              only_slices=(axis, [empty]))
    scene_io.write_volume(record.volume, str(image))
    written, found = engine_volumes.read_annotation(path, engine_volumes.read_volume(image))
    assert written.shape == labels.shape and not written.any()
    assert [c.name for c in found] == [c.name for c in classes]


def test_frames_of_a_sequence_are_reviewed_slice_by_slice_and_accepted_whole(tmp_path):
    app = SlicerApp()
    views = slice_views(app)
    frames, labels = moving_phantom(4)
    proxy = app.add_volume_sequence(frames, "Cine")
    browser = next(iter(app.nodes_by_class("vtkMRMLSequenceBrowserNode")))
    annotation = app.add_segmentation(proxy, labels[0], [("Myocardium", (0.9, 0.8, 0.5), ""),
                                                         ("Left ventricle", (0.5, 0.7, 0.5), "")], "Frame 0")
    logic = PLCLSegmentationLogic(app.services, models_dir=tmp_path / "models",
                                  engine_command=[sys.executable, str(FAKE_ENGINE)],
                                  environment={**os.environ, "FAKE_ENGINE_STEP_S": "0.001"})
    logic.refresh()
    logic.set_annotation(proxy, annotation)
    logic.state.set("iterations", 4)
    job = logic.train()
    logic.wait(120)
    assert job.state.name == "DONE", job.error
    summary = json.loads((job.out_dir / "summary.json").read_text())
    entries = {e["frame"]: e for e in summary["volumes"]}
    rows = [r for r in logic.review_rows() if r.role == PREDICTED]
    assert sorted(r.frame for r in rows) == [1, 2, 3]
    for row in rows:
        assert [s["estimated_dice"] for s in row.structures] == \
            [s["estimated_dice"] for s in entries[row.frame]["structures"]]
    stop = logic.next_uncertain_slice(proxy, rows[1].frame)
    entry = entries[rows[1].frame]
    assert (stop.frame, stop.index) == (rows[1].frame, entry["slices"][0]["index"])
    assert browser.GetSelectedItemNumber() == rows[1].frame  # the browser shows that frame
    assert shown_slice(views[stop.view], proxy, stop.axis) == pytest.approx(stop.index, abs=1e-6)
    with pytest.raises(PLCLError, match="accept a frame whole"):
        logic.accept_slice(proxy, stop.index, stop.frame)
