"""The full path through the real engine as a child process, on a real MRML scene and real ACDC volumes.

Skipped (with the reason) where ``python -m PLCLSegmentationLib.engine train --help`` does not run,
or where ../shared/data/acdc is missing. Small on purpose: three volumes, the quick budget and a few
dozen iterations, so that it runs in about a minute on two CPU cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")

from slicer_support import ACDC, CARDIAC_SEGMENTS, LAUNCHER, ROOT, SlicerApp, acdc_case, read_labels, snapshot  # noqa: E402

from PLCLSegmentationLib import scene_io  # noqa: E402
from PLCLSegmentationLib.jobs import JobState  # noqa: E402
from PLCLSegmentationLib.logic import PLCLSegmentationLogic  # noqa: E402
from PLCLSegmentationLib.parameters import PREDICTED, REVIEWED  # noqa: E402

pytestmark = [pytest.mark.mrml, pytest.mark.slow]

if not (ACDC / "images").is_dir():
    pytest.skip(f"ACDC data not found at {ACDC} (../shared/data/acdc)", allow_module_level=True)

ENVIRONMENT = {**os.environ, "PYTHONPATH": str(ROOT / "PLCLSegmentation")}
if importlib.util.find_spec("torch") is None:  # a broken engine fails below; only a missing torch skips
    pytest.skip("torch is not installed: the module's engine cannot run", allow_module_level=True)

CASES = ["patient041_frame01", "patient041_frame02", "patient090_frame01"]
ITERATIONS = 20


@pytest.fixture
def scene(tmp_path):
    app = SlicerApp()
    volumes = [app.load_volume(acdc_case(c)[0], c) for c in CASES]
    annotation = app.add_segmentation(volumes[0], read_labels(acdc_case(CASES[0])[1]), CARDIAC_SEGMENTS, "Annotation")
    before = snapshot(annotation)
    logic = PLCLSegmentationLogic(app.services, models_dir=tmp_path / "models", environment=ENVIRONMENT,
                                  # through a launcher that forwards no signal, as PythonSlicer
                                  engine_command=[sys.executable, str(LAUNCHER), sys.executable, "-m",
                                                  "PLCLSegmentationLib.engine"])
    logic.refresh()
    logic.set_annotation(volumes[0], annotation)
    for name, value in (("budget", "quick"), ("device", "cpu"), ("iterations", ITERATIONS)):
        logic.state.set(name, value)
    yield app, volumes, annotation, logic
    logic.shutdown()
    assert snapshot(annotation) == before, "the user's segmentation changed"


def test_train_then_accept_and_retrain_on_the_warm_start_schedule(scene, record_property):
    app, volumes, annotation, logic = scene
    started = time.monotonic()
    job = logic.train()
    logic.wait(300)
    train_s = time.monotonic() - started
    assert job.state == JobState.DONE, f"{job.error}\n" + "\n".join(job.tail)
    assert sorted(job.imported) == sorted(CASES[1:])
    assert job.plot.rows > 0 and "total" in job.plot.series
    for volume in volumes[1:]:
        record = logic.state.record_for(volume)
        assert record.role == PREDICTED and 0.0 <= record.score <= 1.0
        segments = record.segmentation.GetSegmentation()
        assert [segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())] == \
            [s[0] for s in CARDIAC_SEGMENTS]
        assert segments.GetNthSegment(2).GetTerminology() == CARDIAC_SEGMENTS[2][2]
        assert record.uncertainty is not None
    run_folder = job.out_dir
    assert sorted(p.name for p in run_folder.iterdir()) == ["engine.log", "model.pt", "summary.json"], \
        "the checkpoint (pseudo-labels of the patients' volumes) stayed in the user's data folder"

    logic.accept(volumes[1])
    assert logic.state.record_for(volumes[1]).role == REVIEWED
    # The third volume: one slice corrected (the ground truth painted in) and accepted alone.
    old, index, corrected = correct_one_slice(app, logic, volumes[2])
    logic.accept_slice(volumes[2], index)
    started = time.monotonic()
    job = logic.retrain()
    logic.wait(300)
    retrain_s = time.monotonic() - started
    assert job.state == JobState.DONE, f"{job.error}\n" + "\n".join(job.tail)
    assert job.imported == [CASES[2]] and not [w for w in job.warnings if "kept beside" in w], job.warnings
    # The engine segmented it again, the accepted slice kept exactly; the old prediction, edited on that
    # slice only, is gone; the slice stays accepted.
    record = logic.state.record_for(volumes[2])
    assert record.accepted == [index] and record.segmentation.GetID() != old and app.scene.GetNodeByID(old) is None
    axis = scene_io.volume_axes(volumes[2]).slice_axis
    labels = scene_io.annotation_labels(app.services, record.segmentation, scene_io.segment_ids(record.segmentation),
                                        volumes[2])
    np.testing.assert_array_equal(np.take(labels, index, axis=axis), corrected)
    assert job.argv[job.argv.index("--iterations") + 1] == str(ITERATIONS)  # the engine shortens it
    retrain_iterations = json.loads((job.out_dir / "summary.json").read_text())["iterations"]
    assert 0 < retrain_iterations < ITERATIONS
    record_property("train_s", round(train_s, 1))
    record_property("retrain_s", round(retrain_s, 1))
    # Faster by its schedule (fewer iterations), not judged by the clock: timings belong in benchmarks.
    print(f"\ntrain from scratch ({ITERATIONS} iterations): {train_s:.1f} s; "
          f"warm-start retrain ({retrain_iterations} iterations, the engine's schedule): {retrain_s:.1f} s")


def correct_one_slice(app, logic, volume):
    """Paint the ground truth into the least certain slice of the prediction of ``volume``: (the prediction's
    node ID, the slice, its labels now)."""

    record = logic.state.record_for(volume)
    prediction = record.segmentation
    index = int(logic.state.review(record.key)["volume"]["slices"][0][0])  # where Next uncertain slice goes first
    axis = scene_io.volume_axes(volume).slice_axis
    truth = read_labels(acdc_case(volume.GetName())[1])
    app.paint_slices(prediction, volume, truth, axis, [index], CARDIAC_SEGMENTS)
    labels = scene_io.annotation_labels(app.services, prediction, scene_io.segment_ids(prediction), volume)
    return prediction.GetID(), index, np.take(labels, index, axis=axis)


def test_cancel_the_real_engine_mid_run(scene):
    app, volumes, annotation, logic = scene
    logic.state.set("iterations", 5000)
    nodes_before = app.nodes()
    job = logic.train()
    deadline = time.monotonic() + 120
    while job.iteration < 1:
        logic.poll()
        assert not job.state.finished, job.error
        assert time.monotonic() < deadline, "no progress from the engine within two minutes"
        time.sleep(0.05)
    logic.cancel()
    logic.wait(120)
    assert job.state == JobState.CANCELLED
    assert any(line.startswith("cancelled: stopped on request") for line in job.log), "killed, not stopped"
    assert job.process.returncode == 130
    assert app.nodes() == nodes_before
    assert not job.out_dir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(job.process.pid, 0)


def test_paint_three_slices_of_two_volumes_train_and_segment_every_other_volume(tmp_path):
    """The annotated-slices workflow through the real engine: three slices painted in each of two
    volumes, the panel's automatic choice, every other volume segmented, the user's segmentations
    untouched."""
    app = SlicerApp()
    annotated_cases, other = [CASES[0], CASES[2]], [CASES[1]]
    painted = {CASES[0]: [0, 2, 4], CASES[2]: [1, 3, 5]}  # spread: the slices between stay unknown
    volumes = {c: app.load_volume(acdc_case(c)[0], c) for c in CASES}
    logic = PLCLSegmentationLogic(app.services, models_dir=tmp_path / "models", environment=ENVIRONMENT,
                                  engine_command=[sys.executable, "-m", "PLCLSegmentationLib.engine"])
    logic.refresh()
    segmentations, before = {}, {}
    for case in annotated_cases:
        labels = read_labels(acdc_case(case)[1])
        few = labels * 0
        few[painted[case]] = labels[painted[case]]
        segmentations[case] = app.add_segmentation(volumes[case], few, CARDIAC_SEGMENTS, f"{case} three slices")
        before[case] = snapshot(segmentations[case])
        logic.set_annotation(volumes[case], segmentations[case])
        assert logic.slice_summary(volumes[case]).annotated == painted[case]
    for name, value in (("budget", "quick"), ("device", "cpu"), ("iterations", 12)):
        logic.state.set(name, value)
    try:
        job = logic.train()
        specs = [job.argv[i + 1] for i, arg in enumerate(job.argv) if arg == "--annotated-slices"]
        assert specs == ["0,2,4", "1,3,5"]
        logic.wait(300)
        assert job.state == JobState.DONE, f"{job.error}\n" + "\n".join(job.tail)
        assert job.imported == other
        record = logic.state.record_for(volumes[other[0]])
        assert record.role == PREDICTED and record.segmentation.GetSegmentation().GetNumberOfSegments() == 3
        summary = json.loads((job.out_dir / "summary.json").read_text())
        assert [entry["indices"] for entry in summary["annotated_slices"]] == [[0, 2, 4], [1, 3, 5]]
        rows = {row.name: row.slices for row in logic.review_rows()}
        assert rows[CASES[0]] == "3 of 6 slices (0, 2, 4)" and rows[CASES[2]] == "3 of 7 slices (1, 3, 5)"
    finally:
        logic.shutdown()
    for case in annotated_cases:
        assert snapshot(segmentations[case]) == before[case], f"the user's segmentation of {case} changed"
