"""A few painted slices in the module, on a real MRML scene (slicer-core): the slice count, the choice of
slices, a slice marked as background, the paint view, and what reaches the engine."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")

from slicer_support import CARDIAC_SEGMENTS, FAKE_ENGINE, SlicerApp, read_labels, red_slice_view, synthetic_case  # noqa: E402

from PLCLSegmentationLib import scene_io  # noqa: E402
from PLCLSegmentationLib.engine.config import TrainConfig  # noqa: E402
from PLCLSegmentationLib.engine.request import TrainJob  # noqa: E402
from PLCLSegmentationLib.engine.run.inputs import read_training_inputs  # noqa: E402
from PLCLSegmentationLib.logic import PLCLSegmentationLogic  # noqa: E402
from PLCLSegmentationLib.parameters import PREDICTED, REVIEWED, SLICES_ALL, SLICES_AUTO  # noqa: E402
from PLCLSegmentationLib.services import PLCLError  # noqa: E402

pytestmark = pytest.mark.mrml


CASES = ["synthetic_001", "synthetic_003"]
PAINTED = [1, 4]  # slices (k) of synthetic_001 (6 slices, all with heart) left painted


@pytest.fixture
def scene(tmp_path):

    app = SlicerApp()
    red = red_slice_view(app)
    volumes = [app.load_volume(synthetic_case(c)[0], c) for c in CASES]
    labels = read_labels(synthetic_case(CASES[0])[1])
    few = np.zeros_like(labels)
    few[PAINTED] = labels[PAINTED]
    assert all(labels[k].any() for k in PAINTED)
    segmentation = app.add_segmentation(volumes[0], few, CARDIAC_SEGMENTS, "Three slices")
    logic = PLCLSegmentationLogic(app.services, models_dir=tmp_path / "models",
                                  engine_command=[sys.executable, str(FAKE_ENGINE)],
                                  environment={**os.environ, "FAKE_ENGINE_STEP_S": "0.002"})
    logic.refresh()
    logic.set_annotation(volumes[0], segmentation)
    logic.state.set("iterations", 4)
    yield app, logic, volumes, segmentation, red, labels.shape[0]
    logic.shutdown()


def test_the_panel_counts_painted_slices_of_a_real_segmentation(scene):
    app, logic, volumes, segmentation, _, total = scene
    nodes = app.nodes()
    summary = logic.slice_summary(volumes[0])
    assert app.nodes() == nodes  # counted in a scratch scene: nothing added to the user's
    assert (summary.total, summary.painted, summary.view) == (total, PAINTED, "Axial")
    assert summary.mode == SLICES_AUTO and summary.only_painted  # 2 of 6: only the painted ones
    assert summary.text() == f"2 of {total} slices (1, 4)"
    # Painting one more slice (as the Segment Editor does) is counted at once.
    import slicer

    first = segmentation.GetSegmentation().GetNthSegmentID(0)
    more = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, first, volumes[0])
    more[2, 100:110, 70:80] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(more, segmentation, first, volumes[0])
    assert logic.slice_summary(volumes[0]).painted == [1, 2, 4]
    logic.set_slice_mode(volumes[0], SLICES_ALL)
    assert logic.slice_summary(volumes[0]).text() == f"all {total} slices"
    rows = {row.name: row.slices for row in logic.review_rows()}
    assert rows == {CASES[0]: f"all {total} slices", CASES[1]: ""}


def test_mark_the_slice_in_the_paint_view_as_background_and_train_on_it(scene, tmp_path):
    import vtk

    app, logic, volumes, segmentation, red, total = scene
    assert logic.set_up_paint_view(volumes[0]) == "Axial"
    # The Red view now shows the volume's own slices: its normal is the volume's k axis.
    ijk_to_ras = vtk.vtkMatrix4x4()
    volumes[0].GetIJKToRASMatrix(ijk_to_ras)
    normal = np.array([red.GetSliceToRAS().GetElement(r, 2) for r in range(3)])
    k_axis = np.array([ijk_to_ras.GetElement(r, 2) for r in range(3)])
    assert abs(np.dot(normal, k_axis / np.linalg.norm(k_axis))) == pytest.approx(1.0)
    # Move the Red view to slice 0 of the volume, as the user would scroll to it.
    red.JumpSliceByCentering(*ijk_to_ras.MultiplyPoint((20.0, 20.0, 0.0, 1.0))[:3])
    assert scene_io.current_slice(app.scene, volumes[0]) == 0
    summary = logic.mark_background(volumes[0])
    assert summary.background == [0] and summary.annotated == [0, *PAINTED]
    with pytest.raises(PLCLError, match="Slice 4 .* is painted"):
        logic.mark_background(volumes[0], 4)
    with pytest.raises(PLCLError, match="has no slice 99"):
        logic.mark_background(volumes[0], 99)

    # What the module sends is what the engine reads: the same slices of the same file.
    record = logic.record(volumes[0])
    image, label = tmp_path / "image.nrrd", tmp_path / "label.seg.nrrd"
    scene_io.write_volume(volumes[0], str(image))
    classes = scene_io.classes_from_segments(segmentation, record.segment_ids)
    scene_io.write_annotation(app.services, segmentation, record.segment_ids, volumes[0], classes, str(label))
    spec = logic._slice_argument(record)
    assert spec == "0,1,4"
    inputs = read_training_inputs(TrainJob([(str(image), str(label))], [], str(tmp_path / "out"), TrainConfig(),
                                           annotated_slices=[spec]))
    assert inputs.annotated_slices == [[0, 1, 4]]

    job = logic.train()
    argv = job.argv
    assert argv[argv.index("--annotated-slices") + 1] == "0,1,4"
    logic.wait(120)
    assert job.state.name == "DONE", job.error

    # Accepting a corrected prediction makes that whole volume annotated.
    predicted = logic.record(volumes[1])
    assert predicted.role == PREDICTED
    logic.accept(volumes[1])
    assert logic.record(volumes[1]).role == REVIEWED
    assert logic.slice_summary(volumes[1]).annotated == list(range(logic.slice_summary(volumes[1]).total))
    job = logic.train()
    specs = [job.argv[i + 1] for i, arg in enumerate(job.argv) if arg == "--annotated-slices"]
    assert specs == ["0,1,4", "all"]  # one per --labeled pair, in order
    logic.wait(120)
