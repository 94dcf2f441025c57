"""Cine through the real engine as a child process, on a real MRML scene (issue 13's "done when"): one
sequence with two annotated frames in Slicer; Train gives every frame of every loaded sequence a
segmentation, playable in its sequence browser.

Skipped (with the reason) where the engine does not run. Small on purpose: a generated beating phantom
(two sequences of a few small frames), the quick budget and a few iterations.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")

from slicer_support import LAUNCHER, ROOT, SlicerApp, moving_phantom, snapshot  # noqa: E402
from test_slicer_cine import IJK_TO_RAS, SEGMENTS  # noqa: E402

from PLCLSegmentationLib import scene_io, sequences  # noqa: E402
from PLCLSegmentationLib.jobs import JobState  # noqa: E402
from PLCLSegmentationLib.logic import PLCLSegmentationLogic  # noqa: E402
from PLCLSegmentationLib.parameters import ANNOTATED, PREDICTED  # noqa: E402

pytestmark = [pytest.mark.mrml, pytest.mark.slow]

ENVIRONMENT = {**os.environ, "PYTHONPATH": str(ROOT / "PLCLSegmentation")}
if importlib.util.find_spec("torch") is None:  # a broken engine fails below; only a missing torch skips
    pytest.skip("torch is not installed: the module's engine cannot run", allow_module_level=True)

ITERATIONS = 6


def test_two_annotated_frames_give_every_frame_of_every_sequence_a_segmentation(tmp_path):
    app = SlicerApp()
    images, labels = moving_phantom(5, shape_kji=(4, 40, 36))
    proxy = app.add_volume_sequence(images, "Cine", IJK_TO_RAS)
    other = app.add_volume_sequence(moving_phantom(3, shape_kji=(4, 40, 36), seed=1, shift=2.0)[0], "Cine 2",
                                    IJK_TO_RAS)
    browser, sequence = sequences.browser_of(app.scene, proxy)
    annotations = []
    logic = PLCLSegmentationLogic(app.services, models_dir=tmp_path / "models", environment=ENVIRONMENT,
                                  # through a launcher that forwards no signal, as PythonSlicer
                                  engine_command=[sys.executable, str(LAUNCHER), sys.executable, "-m",
                                                  "PLCLSegmentationLib.engine"])
    for frame in (0, 2):
        browser.SetSelectedItemNumber(frame)
        annotations.append(app.add_segmentation(proxy, labels[frame], SEGMENTS, f"frame {frame}"))
        logic.set_annotation(proxy, annotations[-1])
    before = [snapshot(a) for a in annotations]
    digest = sequences.sequence_digest(sequence)
    for name, value in (("budget", "quick"), ("device", "cpu"), ("iterations", ITERATIONS)):
        logic.state.set(name, value)
    job = logic.train()
    try:
        logic.wait(400)
    finally:
        logic.shutdown()
    assert job.state == JobState.DONE, f"{job.error}\n" + "\n".join(job.tail)
    assert sorted(job.imported) == ["Cine", "Cine 2"]
    for volume, count, annotated in ((proxy, 5, {0, 2}), (other, 3, set())):
        record = logic.state.record_for(volume)
        result = record.segmentation
        assert result.GetNumberOfDataNodes() == count
        assert record.browser.IsSynchronizedSequenceNodeID(result.GetID())
        assert {i for i, f in record.frames.items() if f.role == ANNOTATED} == annotated
        assert {i for i, f in record.frames.items() if f.role == PREDICTED} == set(range(count)) - annotated
        assert all(0.0 <= f.score <= 1.0 for f in record.frames.values() if f.role == PREDICTED)
        proxy_segmentation = record.browser.GetProxyNode(result)
        for frame in range(count):  # playable: the browser's frame moves the segmentation
            record.browser.SetSelectedItemNumber(frame)
            assert scene_io.fingerprint(proxy_segmentation) == scene_io.fingerprint(result.GetNthDataNode(frame))
            segments = proxy_segmentation.GetSegmentation()
            assert [segments.GetNthSegment(n).GetName() for n in range(segments.GetNumberOfSegments())] == \
                [s[0] for s in SEGMENTS]
            assert scene_io.get_terminology(segments.GetNthSegment(1)) == SEGMENTS[1][2]
        chart = logic.volume_curve(volume)
        assert chart is not None and chart.GetNumberOfPlotSeriesNodes() == 2
        table = chart.GetNthPlotSeriesNode(0).GetTableNode().GetTable()
        assert table.GetNumberOfRows() == count
        values = [table.GetValue(row, 1).ToDouble() for row in range(count)]
        assert all(np.isfinite(values)) and min(values) >= 0.0
        assert logic.volume_summary(volume).startswith("Myocardium: ")
    assert [snapshot(a) for a in annotations] == before, "the user's segmentations changed"
    assert sequences.sequence_digest(sequence) == digest, "the user's volume sequence changed"
