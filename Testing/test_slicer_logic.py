"""The user's path through the Qt-free logic, on a real MRML scene, with a fake engine as the child."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")

from slicer_support import (  # noqa: E402
    CARDIAC_SEGMENTS,
    FAKE_ENGINE,
    LAUNCHER,
    SlicerApp,
    alive,
    read_labels,
    snapshot,
    synthetic_case,
)

from PLCLSegmentationLib import scene_io  # noqa: E402
from PLCLSegmentationLib.engine.files import volumes  # noqa: E402
from PLCLSegmentationLib.jobs import JobState  # noqa: E402
from PLCLSegmentationLib.logic import PLCLSegmentationLogic  # noqa: E402
from PLCLSegmentationLib.parameters import ANNOTATED, EXCLUDED, PREDICTED, REVIEWED, UNANNOTATED  # noqa: E402
from PLCLSegmentationLib.plots import LOSS_CHART  # noqa: E402
from PLCLSegmentationLib.services import OWNER_ATTRIBUTE, PLCLError  # noqa: E402

pytestmark = pytest.mark.mrml


CASES = ["synthetic_001", "synthetic_002", "synthetic_003"]


def digest(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


class Session:
    """A scene with three SYNTHETIC volumes, the first annotated by the user (loaded from a .seg.nrrd file)."""

    def __init__(self, tmp_path: Path, launcher: bool = False, **engine_env: str) -> None:
        self.tmp = tmp_path
        # As in Slicer, where PythonSlicer is a launcher that starts the real Python as its child.
        self.command = [sys.executable, str(LAUNCHER)] * launcher + [sys.executable, str(FAKE_ENGINE)]
        self.app = SlicerApp()
        self.volumes = [self.app.load_volume(synthetic_case(c)[0], c) for c in CASES]
        image = volumes.read_volume(synthetic_case(CASES[0])[0])
        classes = [volumes.ClassInfo(v, name, color) for v, (name, color, _) in enumerate(CARDIAC_SEGMENTS, start=1)]
        self.annotation_file = tmp_path / "annotation.seg.nrrd"
        volumes.write_segmentation(self.annotation_file, read_labels(synthetic_case(CASES[0])[1]), image.grid, classes)
        self.user_segmentation = self.app.segmentations.LoadSegmentationFromFile(str(self.annotation_file), False,
                                                                                 "My annotation")
        assert self.user_segmentation is not None
        # A terminology the module must carry over to every prediction.
        self.user_segmentation.GetSegmentation().GetNthSegment(2).SetTerminology(CARDIAC_SEGMENTS[2][2])
        self.files = {p: digest(p) for p in [self.annotation_file, *(synthetic_case(c)[0] for c in CASES)]}
        self.user_snapshot = snapshot(self.user_segmentation)
        self.environment = {**os.environ, "FAKE_ENGINE_STEP_S": "0.002", **engine_env}
        self.logic = self.make_logic()
        self.logic.refresh()
        self.logic.set_annotation(self.volumes[0], self.user_segmentation)
        self.logic.state.set("iterations", 10)

    def make_logic(self) -> PLCLSegmentationLogic:
        return PLCLSegmentationLogic(self.app.services, models_dir=self.tmp / "models",
                                     engine_command=self.command, environment=self.environment,
                                     grace_s=10)

    def check_user_data_untouched(self) -> None:
        assert snapshot(self.user_segmentation) == self.user_snapshot, "the user's segmentation node changed"
        assert {p: digest(p) for p in self.files} == self.files, "an input file changed"

    def record(self, index: int):
        return self.logic.state.record_for(self.volumes[index])


@pytest.fixture
def session(tmp_path):
    session = Session(tmp_path)
    yield session
    session.logic.shutdown()
    session.check_user_data_untouched()


def test_train_propagates_to_every_unannotated_volume(session):
    logic = session.logic
    job = logic.train()
    assert job.state == JobState.RUNNING and logic.busy
    with pytest.raises(PLCLError, match="in progress"):
        logic.train()
    job = logic.wait(60)
    assert job.state == JobState.DONE, job.error
    assert sorted(job.imported) == sorted(CASES[1:])
    assert not job.inputs_dir.exists(), "the private export folder was not removed"
    user_segments = session.user_segmentation.GetSegmentation()
    hierarchy = session.app.services.subject_hierarchy()
    for index in (1, 2):
        record = session.record(index)
        volume = session.volumes[index]
        assert record.role == PREDICTED and record.score is not None
        node = record.segmentation
        assert node.GetName() == f"{volume.GetName()} segmentation"
        assert node.GetAttribute(OWNER_ATTRIBUTE) == scene_io.PREDICTION
        assert node.GetNodeReferenceID("referenceImageGeometryRef") == volume.GetID()
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == \
            hierarchy.GetItemParent(hierarchy.GetItemByDataNode(volume))
        segments = node.GetSegmentation()
        assert segments.GetNumberOfSegments() == 3
        for n in range(3):
            mine, theirs = segments.GetNthSegment(n), user_segments.GetNthSegment(n)
            assert mine.GetName() == theirs.GetName()
            np.testing.assert_allclose(mine.GetColor(), theirs.GetColor(), atol=1e-6)
            assert mine.GetTerminology() == theirs.GetTerminology()
        assert record.uncertainty is not None and record.uncertainty.GetDisplayNode().GetColorNode() is not None
    state = logic.state
    assert Path(state.model_path).is_file() and [c["name"] for c in state.classes] == [s[0] for s in CARDIAC_SEGMENTS]
    # Imported, then tidied: the run folder in the user's data folder keeps the model, the engine's
    # summary and the log; not the checkpoint (pseudo-labels derived from the patients' volumes).
    assert sorted(p.name for p in Path(state.model_path).parent.iterdir()) == \
        ["engine.log", "model.pt", "summary.json"]
    # The loss plot grew with the progress events.
    assert job.plot.rows == 10 and set(job.plot.series) == {"segmentation", "total"}
    assert job.plot.chart.GetAttribute(OWNER_ATTRIBUTE) == LOSS_CHART
    # Review: every volume, the lowest estimated Dice first.
    rows = logic.review_rows()
    assert [r.role for r in rows] == [PREDICTED, PREDICTED, ANNOTATED]
    assert rows[0].worst <= rows[1].worst
    # Clicking a row shows the volume with its prediction and the uncertainty overlay.
    logic.show(session.volumes[2])
    composite = session.app.nodes_by_class("vtkMRMLSliceCompositeNode")[0]
    assert composite.GetBackgroundVolumeID() == session.volumes[2].GetID()
    assert composite.GetForegroundVolumeID() == session.record(2).uncertainty.GetID()
    assert not session.record(1).segmentation.GetDisplayNode().GetVisibility()
    assert session.record(2).segmentation.GetDisplayNode().GetVisibility()


def test_cancel_mid_run_leaves_no_partial_nodes_and_no_process(tmp_path):
    session = Session(tmp_path, launcher=True, FAKE_ENGINE_STEP_S="0.05",
                      FAKE_ENGINE_GRANDCHILD=str(tmp_path / "grandchild.pid"))
    logic = session.logic
    logic.state.set("iterations", 5000)
    nodes_before = session.app.nodes()
    records_before = logic.state.node.GetParameter("volumes")
    job = logic.train()
    deadline = time.monotonic() + 30
    while job.iteration < 3:
        logic.poll()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert job.plot.rows >= 1 and session.app.nodes() != nodes_before  # the live plot is in the scene
    logic.cancel()
    assert job.state == JobState.CANCELLING
    logic.wait(30)
    assert job.state == JobState.CANCELLED
    assert any(line.startswith("cancelled: stopped on request") for line in job.log), \
        "the engine was killed instead of stopping after its step"
    assert job.process.returncode == 130
    # The run's folder is removed on cancel: nothing to --resume, so the engine's hint is not shown.
    assert not any("--resume" in line for line in job.log), [line for line in job.log if "resume" in line]
    assert session.app.nodes() == nodes_before
    assert logic.state.node.GetParameter("volumes") == records_before
    assert logic.state.model_path == ""
    assert not job.out_dir.exists() and not job.inputs_dir.exists()
    grandchild = int((tmp_path / "grandchild.pid").read_text())
    time.sleep(0.2)
    assert not alive(grandchild), "a process of the run survived the cancel"
    assert not alive(job.process.pid)
    session.check_user_data_untouched()


def test_a_crash_shows_its_error_and_log_and_changes_nothing(tmp_path):
    session = Session(tmp_path, FAKE_ENGINE_FAIL_AT="4")
    nodes_before = session.app.nodes()
    job = session.logic.train()
    session.logic.wait(60)
    assert job.state == JobState.FAILED
    assert job.error == "RuntimeError: simulated crash at iteration 4"
    assert any("Traceback" in line for line in job.tail)
    assert job.status_line().startswith("Failed: RuntimeError")
    assert "simulated crash" in job.log_path.read_text()  # the log is kept for the user
    assert session.app.nodes() == nodes_before
    assert all(r.role in (ANNOTATED, UNANNOTATED) for r in session.logic.state.records())
    session.check_user_data_untouched()


def test_accept_and_retrain_from_the_current_model(session):
    logic = session.logic
    logic.train()
    first = logic.wait(60)
    model = logic.state.model_path
    # The user corrects the prediction of volume 1 with the Segment Editor, then accepts it.
    import slicer

    corrected = session.record(1).segmentation
    segment_id = corrected.GetSegmentation().GetNthSegmentID(0)
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(corrected, segment_id, session.volumes[1])
    mask[:, :10, :10] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, corrected, segment_id, session.volumes[1])
    accepted = logic.accept(session.volumes[1])
    assert accepted.role == REVIEWED and accepted.segmentation is corrected
    corrected_snapshot = snapshot(corrected)
    old_prediction = session.record(2).segmentation
    with pytest.raises(PLCLError, match="no prediction to accept"):
        logic.accept(session.volumes[0])

    job = logic.retrain()
    assert job.warm_start and job.argv[job.argv.index("--init-model") + 1] == model
    # The module asks for the user's budget and a warm start; the engine's schedule makes it shorter.
    assert job.argv[job.argv.index("--iterations") + 1] == "10"
    assert job.argv.count("--labeled") == 2
    logic.wait(60)
    assert job.state == JobState.DONE, job.error
    assert job.total == 3 and job.plot.rows == 3 and first.total == 10
    assert job.imported == [CASES[2]]
    assert snapshot(corrected) == corrected_snapshot  # the accepted segmentation is training data: untouched
    assert old_prediction.GetScene() is None  # the unedited previous prediction was replaced
    assert session.record(2).segmentation.GetScene() is not None
    assert json.loads(Path(logic.state.model_path).read_text())["init_model"] == model
    assert len(session.app.nodes_by_class("vtkMRMLPlotChartNode")) == 1  # the previous run's plot is replaced
    assert first.elapsed_s > 0 and job.elapsed_s > 0


def test_an_edited_prediction_is_kept_when_predicted_again(session):
    logic = session.logic
    logic.train()
    logic.wait(60)
    import slicer

    edited = session.record(2).segmentation
    segment_id = edited.GetSegmentation().GetNthSegmentID(1)
    slicer.util.updateSegmentBinaryLabelmapFromArray(np.zeros((7, 224, 154), np.uint8), edited, segment_id,
                                                     session.volumes[2])
    job = logic.retrain()
    logic.wait(60)
    assert edited.GetScene() is not None
    assert any("edited but not accepted" in w for w in job.warnings)
    assert session.record(2).segmentation is not edited


def test_save_model_and_apply_it_to_newly_loaded_volumes(session, tmp_path):
    logic = session.logic
    logic.train()
    logic.wait(60)
    mine = tmp_path / "saved" / "heart.json"  # a file of the user's beside the chosen name
    mine.parent.mkdir()
    mine.write_text("the user's own notes")
    saved = logic.save_model(tmp_path / "saved" / "heart")
    assert saved.endswith("heart.pt") and Path(saved).is_file()
    assert mine.read_text() == "the user's own notes"
    assert sorted(p.name for p in mine.parent.iterdir()) == ["heart.json", "heart.pt"]
    assert logic.state.model_path == saved

    new_volume = session.app.load_volume(synthetic_case("synthetic_004")[0], "synthetic_004")
    fresh = session.make_logic()  # e.g. after restarting Slicer
    fresh.load_model(saved)
    job = fresh.predict()
    assert job.argv[job.argv.index("--model") + 1] == saved
    fresh.wait(60)
    assert job.state == JobState.DONE, job.error
    assert job.imported == ["synthetic_004"]
    record = fresh.state.record_for(new_volume)
    assert record.role == PREDICTED
    names = [record.segmentation.GetSegmentation().GetNthSegment(n).GetName() for n in range(3)]
    assert names == [s[0] for s in CARDIAC_SEGMENTS]
    assert not job.out_dir.exists()  # a prediction's files are removed once imported
    with pytest.raises(PLCLError, match="No volume to segment"):
        fresh.predict()
    with pytest.raises(PLCLError, match="Model file not found"):
        fresh.load_model(tmp_path / "missing.pt")


def test_roles_and_clear_errors(session):
    logic = session.logic
    with pytest.raises(PLCLError, match="Retrain needs a trained model"):
        logic.retrain()
    logic.set_role(session.volumes[2], EXCLUDED)
    assert session.record(2).role == EXCLUDED
    # A second annotated volume must have the same segments (by name).
    other = session.app.add_segmentation(session.volumes[1], np.zeros((7, 224, 154), np.uint8),
                                         [("Left ventricle", (1, 0, 0), "")], "Partial annotation")
    logic.set_annotation(session.volumes[1], other)
    with pytest.raises(PLCLError, match="no segment named 'Right ventricle', 'Myocardium'"):
        logic.train()
    logic.set_role(session.volumes[1], UNANNOTATED)
    assert session.record(1).segmentation is None and other.GetScene() is not None
    logic.set_role(session.volumes[0], UNANNOTATED)
    with pytest.raises(PLCLError, match="at least one annotated volume"):
        logic.train()
    with pytest.raises(PLCLError, match="use set_annotation|Use set_annotation"):
        logic.set_role(session.volumes[0], ANNOTATED)
    # A deleted volume is forgotten.
    session.app.scene.RemoveNode(session.volumes[2])
    assert [r.name for r in logic.refresh()] == CASES[:2]


def test_a_saved_scene_reopens_where_the_user_left_off(session, tmp_path):
    logic = session.logic
    logic.state.set("budget", "quick")
    logic.state.set("device", "cpu")
    logic.state.set("showUncertainty", False)
    logic.train()
    logic.wait(60)
    logic.accept(session.volumes[1])
    rows_before = [(r.name, r.role, r.score) for r in logic.review_rows()]
    mrml = session.app.save(tmp_path / "bundle")

    reopened = SlicerApp.open(mrml)
    logic2 = PLCLSegmentationLogic(reopened.services, models_dir=tmp_path / "models",
                                   engine_command=[sys.executable, str(FAKE_ENGINE)],
                                   environment=session.environment)
    state = logic2.state
    assert (state.budget, state.device, state.iterations, state.show_uncertainty) == ("quick", "cpu", 10, False)
    assert state.model_path == logic.state.model_path
    assert [(r.name, r.role, r.score) for r in logic2.review_rows()] == rows_before
    by_name = {r.name: r for r in state.records()}
    assert by_name[CASES[0]].segmentation.GetName() == "My annotation"
    assert by_name[CASES[0]].segment_ids == session.record(0).segment_ids
    assert by_name[CASES[1]].segmentation.GetName() == f"{CASES[1]} segmentation"
    assert by_name[CASES[2]].uncertainty.GetName() == f"{CASES[2]} uncertainty"
    # ... and carries on: retrain from the reloaded scene.
    job = logic2.retrain()
    logic2.wait(60)
    assert job.state == JobState.DONE, job.error
    assert job.imported == [CASES[2]]


def test_inputs_left_by_a_crashed_slicer_are_removed_at_start_up(tmp_path, monkeypatch):
    """A killed Slicer cannot tidy up: the next one removes the patients' volumes it exported, never the
    inputs of a Slicer that still runs."""
    import socket
    import subprocess
    import tempfile

    from PLCLSegmentationLib import engine_run

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale, running = tmp_path / "plcl-inputs-stale", tmp_path / "plcl-inputs-running"
    for folder, pid in ((stale, gone.pid), (running, os.getpid())):
        (folder / "images").mkdir(parents=True)
        (folder / "images" / "case.nrrd").write_bytes(b"patient")
        (folder / engine_run.OWNER_FILE).write_text(f"{pid} {socket.gethostname()}")
    with engine_run.RunInputs.exporting() as inputs:  # a run's own folder names its owner
        assert (inputs.folder / engine_run.OWNER_FILE).read_text().split()[0] == str(os.getpid())
    PLCLSegmentationLogic(SlicerApp().services, models_dir=tmp_path / "models")
    assert not stale.exists() and running.exists() and inputs.folder.exists()


def test_exports_and_imports_say_how_far_they_are_and_refuse_other_actions_meanwhile(session):
    """Risk 8 of issue 25: the panel shows these steps and lets Slicer repaint between volumes."""
    logic, said = session.logic, []

    def progress(text: str, done: int, total: int) -> None:
        with pytest.raises(PLCLError, match="in progress"):  # a click let through by a repaint does nothing
            logic.train()
        said.append((text, done, total))

    logic.progress = progress
    job = logic.train()
    exports = [(f"Exporting {n} of 3 volumes...", n - 1, 3) for n in (1, 2, 3)]
    assert said == exports
    assert logic.wait(60).state == JobState.DONE, job.error
    assert said[3:] == [(f"Adding {n} of 2 results to the scene...", n - 1, 2) for n in (1, 2)]
    said.clear()
    logic.predict([session.volumes[1]])
    assert said == [("Exporting 1 of 1 volumes...", 0, 1)]
    logic.wait(60)
