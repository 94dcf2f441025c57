"""Cine MRI (issue 13) on a real MRML scene: volume sequences in sequence browsers, two annotated frames,
train, and every frame of every loaded sequence segmented in its browser. The engine is the fake one
(Testing/fake_engine.py: the real parser, the contract's files)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")

from slicer_support import (  # noqa: E402
    FAKE_ENGINE,
    HEART_TERMINOLOGY,
    MYOCARDIUM_TERMINOLOGY,
    SlicerApp,
    moving_phantom,
    snapshot,
)

from PLCLSegmentationLib import scene_io, sequences  # noqa: E402
from PLCLSegmentationLib.engine.files import volumes  # noqa: E402
from PLCLSegmentationLib.jobs import JobState  # noqa: E402
from PLCLSegmentationLib.logic import PLCLSegmentationLogic  # noqa: E402
from PLCLSegmentationLib.parameters import ANNOTATED, PREDICTED, REVIEWED, UNANNOTATED  # noqa: E402
from PLCLSegmentationLib.services import PLCLError  # noqa: E402

pytestmark = pytest.mark.mrml

SEGMENTS = [("Myocardium", (0.95, 0.84, 0.57), MYOCARDIUM_TERMINOLOGY),
            ("Left ventricle", (0.5, 0.68, 0.5), HEART_TERMINOLOGY)]
FRAMES = 5
# An oblique grid (1.5 x 1.4 mm in plane, 6 mm slices), as cine stacks are.
ANGLE = 0.3
IJK_TO_RAS = np.array([[1.5 * np.cos(ANGLE), -1.4 * np.sin(ANGLE), 0.0, -20.0],
                       [1.5 * np.sin(ANGLE), 1.4 * np.cos(ANGLE), 0.0, 12.0],
                       [0.0, 0.0, 6.0, -9.0],
                       [0.0, 0.0, 0.0, 1.0]])


class Cine:
    """Two cine sequences (each in its own browser) and one still volume; frames 0 and 2 of the first
    sequence annotated by the user, each with its own segmentation node."""

    def __init__(self, tmp_path: Path, **engine_env: str) -> None:
        self.tmp = tmp_path
        self.app = SlicerApp()
        self.images, self.labels = moving_phantom(FRAMES)
        self.proxy = self.app.add_volume_sequence(self.images, "Cine", IJK_TO_RAS)
        other, _ = moving_phantom(4, seed=1, shift=1.0)
        self.other = self.app.add_volume_sequence(other, "Cine 2", IJK_TO_RAS, index_values=["0", "1", "2", "3"])
        self.still = self.app.add_volume(moving_phantom(1, seed=2)[0][0], "Still", IJK_TO_RAS)
        self.browser, self.sequence = sequences.browser_of(self.app.scene, self.proxy)
        self.other_browser, self.other_sequence = sequences.browser_of(self.app.scene, self.other)
        self.annotations = {}
        for frame in (0, 2):
            self.browser.SetSelectedItemNumber(frame)
            self.annotations[frame] = self.app.add_segmentation(self.proxy, self.labels[frame], SEGMENTS,
                                                                name=f"Cine frame {frame}")
        self.snapshots = {f: snapshot(node) for f, node in self.annotations.items()}
        self.digests = {s.GetID(): sequences.sequence_digest(s) for s in (self.sequence, self.other_sequence)}
        environment = {**os.environ, "FAKE_ENGINE_STEP_S": "0.002", **engine_env}
        self.logic = PLCLSegmentationLogic(self.app.services, models_dir=tmp_path / "models",
                                           engine_command=[sys.executable, str(FAKE_ENGINE)],
                                           environment=environment, grace_s=10)
        self.logic.state.set("iterations", 10)

    def annotate(self) -> None:
        for frame, node in self.annotations.items():
            self.browser.SetSelectedItemNumber(frame)  # the frame the user paints on
            self.logic.set_annotation(self.proxy, node)

    def record(self, proxy=None):
        return self.logic.record(proxy or self.proxy)

    def check_user_data_untouched(self) -> None:
        for frame, node in self.annotations.items():
            assert snapshot(node) == self.snapshots[frame], f"the user's segmentation of frame {frame} changed"
        for sequence in (self.sequence, self.other_sequence):
            assert sequences.sequence_digest(sequence) == self.digests[sequence.GetID()], "a volume sequence changed"


@pytest.fixture
def cine(tmp_path):
    session = Cine(tmp_path)
    yield session
    session.logic.shutdown()
    session.check_user_data_untouched()


def labels_of(app: SlicerApp, node, reference) -> np.ndarray:
    """The segments of a segmentation node as a label map on ``reference``'s grid (segment n: n + 1)."""
    return scene_io.annotation_labels(app.services, node, scene_io.segment_ids(node), reference)


def test_a_sequence_is_one_record_and_its_proxy_is_not_a_volume(cine):
    records = cine.logic.refresh()
    assert sorted(r.name for r in records) == ["Cine", "Cine 2", "Still"]
    record = cine.record()
    assert record.is_sequence and record.browser.GetID() == cine.browser.GetID()
    assert record.sequence.GetID() == cine.sequence.GetID()
    cine.annotate()
    record = cine.record()
    assert record.role == ANNOTATED and record.training_frames() == [0, 2]
    assert record.frames[0].source.GetID() == cine.annotations[0].GetID()  # each frame keeps its own
    assert record.frames[2].source.GetID() == cine.annotations[2].GetID()
    assert cine.logic.slices_text(record) == f"frames 0, 2 of {FRAMES} (whole frames)"
    assert [r.name for r in cine.logic.annotated()] == ["Cine"]
    with pytest.raises(PLCLError, match="has no frame 7"):
        cine.logic.set_frame_annotation(cine.proxy, 7, cine.annotations[0])
    with pytest.raises(PLCLError, match="whole"):
        cine.logic.slice_summary(cine.proxy)
    cine.logic.remove_frame(cine.proxy, 2)
    assert cine.record().training_frames() == [0]
    cine.logic.set_role(cine.proxy, UNANNOTATED)
    assert cine.record().role == UNANNOTATED and not cine.record().frames


def test_two_annotated_frames_segment_every_frame_of_every_sequence_in_its_browser(cine):
    import slicer

    cine.annotate()
    nodes_before = cine.app.nodes()
    job = cine.logic.train()
    argv = job.argv
    frames = [argv[i + 2] for i, a in enumerate(argv) if a == "--labeled-frame"]
    assert frames == ["0", "2"]
    assert argv.count("--labeled") == 0
    job = cine.logic.wait(60)
    assert job.state == JobState.DONE, job.error
    assert sorted(job.imported) == ["Cine", "Cine 2", "Still"]
    assert job.status_line().endswith(": 1 volume(s) and 2 sequence(s), every frame, segmented.")
    assert not job.inputs_dir.exists()

    for proxy, browser, sequence, annotated in ((cine.proxy, cine.browser, cine.sequence, {0, 2}),
                                                (cine.other, cine.other_browser, cine.other_sequence, set())):
        record = cine.record(proxy)
        result = record.segmentation
        count = sequence.GetNumberOfDataNodes()
        # One segmentation sequence on the volume's index, synchronised in the same browser.
        assert result.GetDataNodeClassName() == "vtkMRMLSegmentationNode"
        assert result.GetNumberOfDataNodes() == count
        assert [result.GetNthIndexValue(i) for i in range(count)] == \
            [sequence.GetNthIndexValue(i) for i in range(count)]
        assert browser.IsSynchronizedSequenceNodeID(result.GetID())
        assert browser.GetMasterSequenceNode().GetID() == sequence.GetID()
        segmentation_proxy = browser.GetProxyNode(result)
        assert segmentation_proxy is not None and segmentation_proxy.GetScene() is cine.app.scene
        assert {i for i, f in record.frames.items() if f.role == ANNOTATED} == annotated
        assert {i for i, f in record.frames.items() if f.role == PREDICTED} == set(range(count)) - annotated
        assert all(f.score is not None for f in record.frames.values() if f.role == PREDICTED)
        # Playing the browser moves the segmentation with the volume, frame by frame.
        for frame in range(count):
            browser.SetSelectedItemNumber(frame)
            item = result.GetNthDataNode(frame)
            assert scene_io.fingerprint(segmentation_proxy) == scene_io.fingerprint(item), frame
            assert np.array_equal(slicer.util.arrayFromVolume(proxy),
                                  slicer.util.arrayFromVolume(sequence.GetNthDataNode(frame)))
            segments = segmentation_proxy.GetSegmentation()
            assert [segments.GetNthSegment(n).GetName() for n in range(2)] == [s[0] for s in SEGMENTS]
            # drawn on the sequence's volume, whatever the frame (the Segment Editor's source volume)
            assert segmentation_proxy.GetNodeReferenceID("referenceImageGeometryRef") == proxy.GetID()
            for n, (_, color, terminology) in enumerate(SEGMENTS):
                segment = segments.GetNthSegment(n)
                assert np.allclose(segment.GetColor(), color, atol=1e-3)
                assert scene_io.get_terminology(segment) == terminology
        # The uncertainty follows too, and the volume curve has one line per structure.
        assert browser.IsSynchronizedSequenceNodeID(record.uncertainty.GetID())
        chart = cine.logic.volume_curve(proxy)
        assert chart is not None and chart.GetNumberOfPlotSeriesNodes() == 2
        table = chart.GetNthPlotSeriesNode(1).GetTableNode().GetTable()
        summary = json.loads((job.out_dir / "summary.json").read_text())
        entry = next(s for s in summary["sequences"] if s["name"] == cine.record(proxy).key)
        curve = entry["volume_curve_ml"]["Left ventricle"]
        assert [table.GetValue(r, 2).ToDouble() for r in range(count)] == pytest.approx(curve)
        times = [float(sequence.GetNthIndexValue(i)) for i in range(count)]
        assert [table.GetValue(r, 0).ToDouble() for r in range(count)] == pytest.approx(times)
        lines = cine.logic.volume_summary(proxy).splitlines()
        lv = entry["volume_summary"]["Left ventricle"]
        assert lines[1] == (f"Left ventricle: {lv['max_ml']:.1f} ml ({proxy.GetName()}_t{lv['max_frame']:02d}) to "
                            f"{lv['min_ml']:.1f} ml ({proxy.GetName()}_t{lv['min_frame']:02d}), ejection fraction "
                            f"{lv['ejection_fraction']:.0f}%")
    # An annotated frame shows the user's annotation; a predicted one the engine's result.
    cine.browser.SetSelectedItemNumber(2)
    shown = labels_of(cine.app, cine.browser.GetProxyNode(cine.record().segmentation), cine.proxy)
    assert np.array_equal(shown, cine.labels[2])
    # The user's nodes: only read. The run added only this module's nodes.
    cine.check_user_data_untouched()
    added = [cine.app.scene.GetNodeByID(i) for i in cine.app.nodes() - nodes_before]
    assert all(scene_io.is_owned(n) or n.IsA("vtkMRMLDisplayNode") or n.IsA("vtkMRMLStorageNode")
               for n in added), [n.GetClassName() for n in added if not scene_io.is_owned(n)]
    orphans = [n.GetName() for n in added if n.IsA("vtkMRMLDisplayNode") and n.GetDisplayableNode() is None]
    assert not orphans, f"display nodes of nothing: {orphans}"
    uncertainty = cine.browser.GetProxyNode(cine.record().uncertainty)
    assert uncertainty.GetNumberOfDisplayNodes() == 1
    assert uncertainty.GetDisplayNode().GetColorNode().GetName() == scene_io.UNCERTAINTY_COLORS_NAME


def test_review_orders_frames_by_estimated_dice_and_an_accepted_frame_trains_whole(cine):
    import slicer

    cine.annotate()
    cine.logic.train()
    assert cine.logic.wait(60).state == JobState.DONE
    rows = cine.logic.review_rows()
    predicted = [r for r in rows if r.role == PREDICTED]
    assert len(predicted) == (FRAMES - 2) + 4 + 1
    worst = [r.worst for r in predicted]
    assert None not in worst and worst == sorted(worst)  # the lowest estimated Dice first, frames and volumes mixed
    assert rows[:len(predicted)] == predicted
    names = {r.name for r in rows if r.frame is not None}
    assert {"Cine_t00", "Cine_t01", "Cine 2_t03"} <= names
    row = next(r for r in rows if r.name == "Cine_t03")
    assert row.frame == 3 and row.record.is_sequence

    # Review frame 3: the browser goes there; correct it in the proxy; accept it.
    cine.logic.show(cine.proxy, frame=3)
    assert cine.browser.GetSelectedItemNumber() == 3
    record = cine.record()
    proxy_segmentation = cine.browser.GetProxyNode(record.segmentation)
    segment_id = proxy_segmentation.GetSegmentation().GetNthSegmentID(1)
    corrected = (cine.labels[3] == 2).astype(np.uint8)
    slicer.util.updateSegmentBinaryLabelmapFromArray(corrected, proxy_segmentation, segment_id, cine.proxy)
    cine.logic.accept(cine.proxy, 3)
    record = cine.record()
    assert record.frames[3].role == REVIEWED and record.training_frames() == [0, 2, 3]
    with pytest.raises(PLCLError, match="no prediction to accept"):
        cine.logic.accept(cine.proxy, 0)
    cine.logic.remove_frame(cine.proxy, 3)  # changed one's mind: a prediction again, the edit kept
    assert cine.record().frames[3].role == PREDICTED
    cine.logic.accept(cine.proxy, 3)

    # Retrain: frame 3 is training data, whole; the corrected frame stays in the new result.
    job = cine.logic.retrain()
    frames = [job.argv[i + 2] for i, a in enumerate(job.argv) if a == "--labeled-frame"]
    assert frames == ["0", "2", "3"]
    old = record.segmentation
    assert cine.logic.wait(60).state == JobState.DONE, job.error
    record = cine.record()
    assert old.GetScene() is None, "the previous segmentation sequence was not replaced"
    assert record.frames[3].role == REVIEWED
    cine.browser.SetSelectedItemNumber(3)
    shown = labels_of(cine.app, cine.browser.GetProxyNode(record.segmentation), cine.proxy)
    assert np.array_equal(shown == 2, corrected.astype(bool))
    assert cine.browser.GetNumberOfSynchronizedSequenceNodes() == 2  # segmentation, uncertainty: no leftovers


def test_a_segmentation_sequence_of_the_browser_annotates_its_frames(cine):
    """Slicer users paint cine frames in a segmentation sequence of the browser: its proxy is the source."""
    import slicer

    segmentation = slicer.vtkMRMLSequenceNode()
    segmentation.SetName("My cine segmentation")
    segmentation.CopySequenceIndex(cine.sequence)
    for frame in range(FRAMES):
        cine.browser.SetSelectedItemNumber(frame)
        node = cine.app.add_segmentation(cine.proxy, cine.labels[frame], SEGMENTS, name="tmp")
        segmentation.SetDataNodeAtValue(node, cine.sequence.GetNthIndexValue(frame))
        scene_io.remove_node(cine.app.scene, node)
    segmentation = cine.app.scene.AddNode(segmentation)
    cine.browser.AddSynchronizedSequenceNodeID(segmentation.GetID())
    cine.app.sequences.UpdateProxyNodesFromSequences(cine.browser)
    proxy = cine.browser.GetProxyNode(segmentation)
    cine.browser.SetSelectedItemNumber(1)
    # Slicer's default: "save changes" off, the painting would never reach the frame. Refused, then turned on.
    assert not cine.browser.GetSaveChanges(segmentation)
    with pytest.raises(PLCLError, match="does not keep what is painted"):
        cine.logic.set_annotation(cine.proxy, proxy)
    assert not cine.logic.record(cine.proxy).frames
    cine.browser.SetSaveChanges(segmentation, True)
    cine.logic.set_annotation(cine.proxy, proxy)
    cine.browser.SetSelectedItemNumber(4)
    cine.logic.set_annotation(cine.proxy, proxy)
    record = cine.record()
    assert record.training_frames() == [1, 4] and record.frames[1].source.GetID() == segmentation.GetID()
    items = [scene_io.fingerprint(segmentation.GetNthDataNode(i)) for i in range(FRAMES)]
    job = cine.logic.train()
    labels = {job.argv[i + 2]: job.argv[i + 3] for i, a in enumerate(job.argv) if a == "--labeled-frame"}
    assert sorted(labels) == ["1", "4"]
    grid = volumes.Grid.from_ijk_to_lps((20, 24, 4), np.diag([-1, -1, 1, 1]) @ IJK_TO_RAS)
    written, _ = volumes.read_annotation(labels["4"], volumes.Volume("f", "", np.zeros((4, 24, 20)), grid))
    assert np.array_equal(written, cine.labels[4])  # that frame's own segmentation, on its grid
    assert cine.logic.wait(60).state == JobState.DONE, job.error
    assert cine.browser.IsSynchronizedSequenceNodeID(segmentation.GetID()), "the user's sequence left the browser"
    for frame in range(FRAMES):  # playing the browser after the run changes none of the user's frames
        cine.logic.show(cine.proxy, frame)
    assert [scene_io.fingerprint(segmentation.GetNthDataNode(i)) for i in range(FRAMES)] == items


def test_frames_on_different_grids_are_refused_with_one_line(cine):
    import slicer

    frames, _ = moving_phantom(3, seed=3)
    odd = cine.app.add_volume_sequence(frames, "Odd", IJK_TO_RAS)
    _, sequence = sequences.browser_of(cine.app.scene, odd)
    bigger = slicer.vtkMRMLScalarVolumeNode()
    slicer.util.updateVolumeFromArray(bigger, np.zeros((5, 24, 20), np.int16))
    bigger.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(IJK_TO_RAS))
    sequence.SetDataNodeAtValue(bigger, sequence.GetNthIndexValue(2))
    cine.annotate()
    nodes = cine.app.nodes()
    with pytest.raises(PLCLError) as error:
        cine.logic.train()
    message = str(error.value)
    assert "\n" not in message and "'Odd'" in message and "frame 2" in message and "5" in message
    assert cine.logic.job is None and cine.app.nodes() == nodes
    moved = slicer.vtkMRMLScalarVolumeNode()
    slicer.util.updateVolumeFromArray(moved, np.zeros((4, 24, 20), np.int16))
    shifted = IJK_TO_RAS.copy()
    shifted[0, 3] += 0.1  # a fifteenth of a voxel
    moved.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(shifted))
    sequence.SetDataNodeAtValue(moved, sequence.GetNthIndexValue(2))
    with pytest.raises(PLCLError, match="'Odd': frame 2 has another position"):
        cine.logic.train()
    shifted[0, 3] -= 0.1 - 1e-4  # rounding of a file's header: the same grid
    moved.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(shifted))
    sequence.SetDataNodeAtValue(moved, sequence.GetNthIndexValue(2))
    sequences.check_grids(sequence, "Odd")


def test_the_4d_file_is_the_contracts_nrrd_on_the_frames_grid(cine, tmp_path):
    import SimpleITK as sitk

    path = tmp_path / "cine.nrrd"
    assert sequences.write_volume_sequence(cine.sequence, path, "Cine") == FRAMES
    header = path.read_bytes().split(b"\n\n")[0].decode()
    assert "kinds: list domain domain domain" in header
    assert "axis 0 index values:=0.0 0.04 0.08" in header
    image = sitk.ReadImage(str(path))
    assert image.GetNumberOfComponentsPerPixel() == FRAMES
    array = sitk.GetArrayFromImage(image)
    for frame in range(FRAMES):
        assert np.array_equal(array[..., frame], cine.images[frame])
    frame_file = tmp_path / "frame.nrrd"
    scene_io.write_volume(cine.sequence.GetNthDataNode(0), str(frame_file))
    expected = volumes.read_volume(frame_file).grid
    got = volumes.Grid.of(image)
    assert got.size == expected.size
    assert np.allclose(got.spacing, expected.spacing) and np.allclose(got.origin, expected.origin)
    assert np.allclose(got.direction, expected.direction)


def test_cancel_and_a_failed_import_leave_the_browsers_as_they_were(tmp_path):
    session = Cine(tmp_path, FAKE_ENGINE_STEP_S="0.05")
    session.annotate()
    nodes = session.app.nodes()
    synchronized = session.browser.GetNumberOfSynchronizedSequenceNodes()
    job = session.logic.train()
    session.logic.cancel()
    assert session.logic.wait(60).state == JobState.CANCELLED
    assert session.app.nodes() == nodes
    assert session.browser.GetNumberOfSynchronizedSequenceNodes() == synchronized
    assert not job.out_dir.exists()

    # An engine that forgets a frame: the import fails as a whole and adds nothing.
    session.logic.environment = {**session.logic.environment, "FAKE_ENGINE_STEP_S": "0.002",
                                 "FAKE_ENGINE_DROP_FRAME": "1"}
    job = session.logic.train()
    session.logic.wait(60)
    assert job.state == JobState.FAILED and "frame 1 of 'Cine'" in job.error
    assert session.app.nodes() == nodes
    assert session.browser.GetNumberOfSynchronizedSequenceNodes() == synchronized
    assert session.record().segmentation is None
    session.logic.shutdown()
    session.check_user_data_untouched()


def test_a_saved_scene_reopens_with_its_sequences_frames_and_results(cine, tmp_path):
    cine.annotate()
    cine.logic.train()
    assert cine.logic.wait(60).state == JobState.DONE
    cine.logic.accept(cine.proxy, 1)
    rows = [(r.name, r.role, r.score, r.frame) for r in cine.logic.review_rows()]
    cine.check_user_data_untouched()
    mrml = cine.app.save(tmp_path / "bundle")
    # Slicer's own saving writes the user's segmentations (merging their layers): what the module must
    # leave alone from here on is the saved state.
    cine.snapshots = {f: snapshot(node) for f, node in cine.annotations.items()}

    reopened = SlicerApp.open(mrml)
    logic = PLCLSegmentationLogic(reopened.services, models_dir=tmp_path / "models",
                                  engine_command=cine.logic.engine_command, environment=cine.logic.environment)
    assert [(r.name, r.role, r.score, r.frame) for r in logic.review_rows()] == rows
    proxy = reopened.scene.GetFirstNodeByName("Cine")
    record = logic.state.record_for(proxy)
    assert record.is_sequence and record.training_frames() == [0, 1, 2]
    assert record.frames[0].source.GetName() == "Cine frame 0"
    assert record.browser.IsSynchronizedSequenceNodeID(record.segmentation.GetID())
    record.browser.SetSelectedItemNumber(3)
    assert scene_io.fingerprint(record.browser.GetProxyNode(record.segmentation)) == \
        scene_io.fingerprint(record.segmentation.GetNthDataNode(3))
    job = logic.retrain()
    assert [job.argv[i + 2] for i, a in enumerate(job.argv) if a == "--labeled-frame"] == ["0", "1", "2"]
    assert logic.wait(60).state == JobState.DONE, job.error
    logic.shutdown()


def test_a_saved_model_segments_a_newly_loaded_sequence(cine, tmp_path):
    cine.annotate()
    cine.logic.train()
    assert cine.logic.wait(60).state == JobState.DONE
    frames, _ = moving_phantom(3, seed=5)
    new = cine.app.add_volume_sequence(frames, "New cine", IJK_TO_RAS)
    assert cine.record(new).role == UNANNOTATED
    job = cine.logic.predict()
    assert any(a.endswith(".nrrd") and "sequences" in a for a in job.argv)
    assert cine.logic.wait(60).state == JobState.DONE, job.error
    assert job.imported == ["New cine"]
    record = cine.record(new)
    assert record.role == PREDICTED and sorted(record.frames) == [0, 1, 2]
    assert record.browser.IsSynchronizedSequenceNodeID(record.segmentation.GetID())
    segments = record.browser.GetProxyNode(record.segmentation).GetSegmentation()
    assert [segments.GetNthSegment(n).GetName() for n in range(2)] == [s[0] for s in SEGMENTS]
    assert not job.out_dir.exists()


def test_an_edited_frame_not_accepted_is_kept_beside_the_new_result(cine):
    import slicer

    cine.annotate()
    cine.logic.train()
    assert cine.logic.wait(60).state == JobState.DONE
    record = cine.record()
    old = record.segmentation
    cine.logic.show(cine.proxy, frame=4)
    proxy_segmentation = cine.browser.GetProxyNode(old)
    edit = np.zeros_like(cine.labels[4])
    edit[1, 2:6, 2:6] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(edit, proxy_segmentation,
                                                     proxy_segmentation.GetSegmentation().GetNthSegmentID(0),
                                                     cine.proxy)
    job = cine.logic.retrain()
    assert cine.logic.wait(60).state == JobState.DONE, job.error
    assert any("edited but not accepted (4)" in w for w in job.warnings), job.warnings
    assert old.GetScene() is cine.app.scene and not cine.browser.IsSynchronizedSequenceNodeID(old.GetID())
    record = cine.record()
    assert record.segmentation.GetID() != old.GetID()
    assert cine.browser.IsSynchronizedSequenceNodeID(record.segmentation.GetID())
    assert cine.browser.GetNumberOfSynchronizedSequenceNodes() == 2


@pytest.mark.parametrize("index_values, step", [(None, 0.04), (["0", "1", "3", "4", "5"], None),
                                                (["a", "b", "c", "d", "e"], None)])
def test_the_engine_reads_the_modules_4d_file_as_the_same_frames(tmp_path, index_values, step):
    """The contract from both sides: the module's writer, the engine's reader (engine/cine.py). Index values
    that are not an equally spaced time axis are left out (the engine refuses a non-uniform time axis)."""
    pytest.importorskip("nrrd", reason="pynrrd (the engine's NRRD reader) is not installed")
    from PLCLSegmentationLib.engine.files import cine as engine_cine

    app = SlicerApp()
    images, _ = moving_phantom(FRAMES)
    proxy = app.add_volume_sequence(images, "Cine", IJK_TO_RAS, index_values=index_values,
                                    text_index=bool(index_values and index_values[0] == "a"))
    _, sequence = sequences.browser_of(app.scene, proxy)
    assert sequence.GetNumberOfDataNodes() == FRAMES
    path = tmp_path / "cine.nrrd"
    sequences.write_volume_sequence(sequence, path, "Cine")
    read = engine_cine.read_sequence(path)
    assert read.frame_count == FRAMES and read.name == "cine"
    for frame in range(FRAMES):
        assert np.array_equal(read.array[frame], images[frame])
    frame_file = tmp_path / "frame.nrrd"
    scene_io.write_volume(sequence.GetNthDataNode(0), str(frame_file))
    expected = volumes.read_volume(frame_file).grid
    assert read.grid.size == expected.size
    assert np.allclose(read.grid.spacing, expected.spacing) and np.allclose(read.grid.origin, expected.origin)
    assert np.allclose(read.grid.direction, expected.direction)
    assert read.time_step == (pytest.approx(step) if step else None)


def test_a_browser_deleted_or_frames_cut_during_the_run_skip_those_sequences_only(cine):
    cine.annotate()
    job = cine.logic.train()
    cine.app.scene.RemoveNode(cine.other_browser)  # the user closes "Cine 2" while the engine runs
    cine.sequence.RemoveDataNodeAtValue(cine.sequence.GetNthIndexValue(4))  # and cuts a frame of "Cine"
    assert cine.logic.wait(60).state == JobState.DONE, job.error
    assert job.imported == ["Still"]
    assert any("deleted during the run" in w for w in job.warnings), job.warnings
    assert any("'Cine' got frames added or removed" in w for w in job.warnings), job.warnings
    assert cine.record().segmentation is None
    cine.digests[cine.sequence.GetID()] = sequences.sequence_digest(cine.sequence)  # the user's own change


def test_one_plain_segmentation_cannot_annotate_two_frames_and_is_never_proposed_for_another(cine):
    """A plain segmentation node does not follow the browser: added for two frames, both would train on
    whatever was painted last. Refused, and not proposed once it annotates a frame."""
    cine.browser.SetSelectedItemNumber(0)
    cine.logic.set_annotation(cine.proxy, cine.annotations[0])
    assert cine.logic.proposed_segmentation(cine.proxy).GetID() == cine.annotations[0].GetID()
    cine.browser.SetSelectedItemNumber(3)
    proposed = cine.logic.proposed_segmentation(cine.proxy)
    assert proposed is None or proposed.GetID() != cine.annotations[0].GetID()
    with pytest.raises(PLCLError, match="already annotates frame 0 of 'Cine': use one segmentation per frame"):
        cine.logic.set_annotation(cine.proxy, cine.annotations[0])
    assert cine.logic.record(cine.proxy).training_frames() == [0]
    cine.browser.SetSelectedItemNumber(0)
    cine.logic.set_annotation(cine.proxy, cine.annotations[0])  # the same frame again: fine


def test_only_a_browsers_master_volume_sequence_is_a_record(cine):
    """The browser's frame number counts the items of its master sequence: another volume sequence of the
    same browser (other items) is not taken as a sequence of its own."""
    import slicer

    extra = slicer.vtkMRMLSequenceNode()
    extra.SetName("Fewer frames")
    extra.SetIndexName("time")
    extra.SetIndexUnit("s")
    for index, array in enumerate(moving_phantom(3, seed=4)[0]):
        volume = slicer.vtkMRMLScalarVolumeNode()
        slicer.util.updateVolumeFromArray(volume, array)
        extra.SetDataNodeAtValue(volume, f"{0.08 * index:g}")
    extra = cine.app.scene.AddNode(extra)
    cine.browser.AddSynchronizedSequenceNodeID(extra.GetID())
    cine.app.sequences.UpdateProxyNodesFromSequences(cine.browser)
    assert cine.browser.GetProxyNode(extra) is not None
    records = cine.logic.refresh()
    assert sorted(r.name for r in records if r.cine) == ["Cine", "Cine 2"]
    assert cine.browser.GetProxyNode(extra).GetID() not in {r.volume.GetID() for r in records}
