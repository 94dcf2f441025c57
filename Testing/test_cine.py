"""Cine (4D) images: read as frames on one grid, trained on with --labeled-frame, every frame segmented,
and the volume curve over the frames (issue 13, the engine's side of the contract in engine/events.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import events, rotation, run_plcl, write_seq_nrrd

from PLCLSegmentationLib.engine import cli, request
from PLCLSegmentationLib.engine.errors import InputError
from PLCLSegmentationLib.engine.files import cine
from PLCLSegmentationLib.engine.files.volumes import Grid
from PLCLSegmentationLib.engine.protocol import frame_name
from PLCLSegmentationLib.engine.request import TrainJob
from PLCLSegmentationLib.engine.run.volume_curve import class_volumes_ml, curve_from_counts, curve_summary

TINY = ["--iterations", "2", "--budget", "quick", "--set", "patch_size=32", "--set", "levels=3", "--device", "cpu"]
SHAPE = (6, 40, 36)  # [k, j, i]
FRAMES = 5
SPACING = (1.4, 1.3, 8.0)
ORIGIN = (3.0, -5.0, 7.0)
DIRECTION = rotation(0.2, 0.1, 0.4)  # oblique


def beating(frames: int = FRAMES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A disc (class 2) in a ring (class 1) whose radius changes over the frames: (images, labels) [t, k, j, i];
    each frame's intensities are offset by 1000 * t, so a frame is recognised by its values."""
    rng = np.random.default_rng(seed)
    _, j, i = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    r = np.hypot(j - 20, i - 18)
    labels = np.zeros((frames, *SHAPE), np.uint8)
    for t in range(frames):
        radius = 6 + 3 * np.cos(2 * np.pi * t / frames)
        labels[t][r < radius + 5] = 1
        labels[t][r < radius] = 2
    images = labels.astype(np.float64) * 300 + rng.normal(100, 20, labels.shape) + 1000 * np.arange(frames)[:, None,
                                                                                                          None, None]
    return images.astype(np.int16), labels


def grid() -> Grid:
    return Grid(SHAPE[::-1], SPACING, ORIGIN, tuple(DIRECTION.ravel()))


def write_nifti(path: Path, frames: np.ndarray, time_step: float = 0.04) -> None:
    image = sitk.GetImageFromArray(frames, isVector=False)
    direction = np.eye(4)
    direction[:3, :3] = DIRECTION
    image.SetSpacing((*SPACING, time_step))
    image.SetOrigin((*ORIGIN, 0.0))
    image.SetDirection(tuple(direction.ravel()))
    sitk.WriteImage(image, str(path))


def write_label(path: Path, labels: np.ndarray) -> None:
    sitk.WriteImage(grid().apply_to(sitk.GetImageFromArray(labels)), str(path))


def assert_same_grid(a: Grid, b: Grid) -> None:
    assert tuple(a.size) == tuple(b.size)
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=1e-5)
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-4)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-5)


# --- reading ---------------------------------------------------------------------------------------


def test_nifti_frames_keep_their_order_grid_and_direction(tmp_path):
    images, _ = beating()
    write_nifti(tmp_path / "cine.nii.gz", images)
    assert cine.is_sequence(tmp_path / "cine.nii.gz")
    sequence = cine.read_sequence(tmp_path / "cine.nii.gz")
    assert sequence.name == "cine" and sequence.frame_count == FRAMES
    assert sequence.frame_names() == [f"cine_t{t:02d}" for t in range(FRAMES)]
    assert sequence.time_step == pytest.approx(0.04) and sequence.time_unit == "s"
    for t, frame in enumerate(sequence.frames()):
        assert frame.name == f"cine_t{t:02d}" and frame.array.dtype == np.float32
        np.testing.assert_array_equal(frame.array, images[t])
        assert_same_grid(frame.grid, grid())


@pytest.mark.parametrize("list_first", [False, True], ids=["slicer_list_last", "list_first"])
def test_seq_nrrd_frames_keep_their_order_grid_and_direction(tmp_path, list_first):
    images, _ = beating()
    path = tmp_path / "cine.seq.nrrd"
    write_seq_nrrd(path, images, grid().ijk_to_lps(), times=[0, 33.3, 66.6, 99.9, 133.2], list_first=list_first)
    assert cine.is_sequence(path)
    sequence = cine.read_sequence(path)
    assert sequence.name == "cine"  # .seq.nrrd is one extension
    assert sequence.time_step == pytest.approx(33.3) and sequence.time_unit == "ms"
    for t in range(FRAMES):
        np.testing.assert_array_equal(sequence.frame(t).array, images[t])
        assert_same_grid(sequence.frame(t).grid, grid())


def test_a_sequence_written_by_slicer_is_read_on_slicers_grid(tmp_path):
    """Slicer's own writer (slicer-core's vtkMRMLVolumeSequenceStorageNode), oblique, in RAS inside Slicer."""
    slicer = pytest.importorskip("slicer")
    if not hasattr(slicer, "vtkMRMLVolumeSequenceStorageNode"):
        pytest.skip("the 'slicer' module here is not slicer-core")
    import vtk
    from vtk.util import numpy_support

    images, _ = beating(3)
    scene = slicer.vtkMRMLScene()
    sequence_node = slicer.vtkMRMLSequenceNode()
    scene.AddNode(sequence_node)
    ras_from_lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    ijk_to_ras = ras_from_lps @ grid().ijk_to_lps()
    for t in range(3):
        volume = slicer.vtkMRMLScalarVolumeNode()
        data = vtk.vtkImageData()
        data.SetDimensions(*SHAPE[::-1])
        data.AllocateScalars(vtk.VTK_SHORT, 1)
        numpy_support.vtk_to_numpy(data.GetPointData().GetScalars())[:] = images[t].ravel()
        volume.SetAndObserveImageData(data)
        matrix = vtk.vtkMatrix4x4()
        for r in range(4):
            for c in range(4):
                matrix.SetElement(r, c, ijk_to_ras[r, c])
        volume.SetIJKToRASMatrix(matrix)
        sequence_node.SetDataNodeAtValue(volume, str(t * 40))
    storage = slicer.vtkMRMLVolumeSequenceStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "slicer.seq.nrrd"))
    assert storage.WriteData(sequence_node)
    sequence = cine.read_sequence(tmp_path / "slicer.seq.nrrd")
    assert sequence.frame_count == 3 and sequence.time_step == pytest.approx(40)
    for t in range(3):
        np.testing.assert_array_equal(sequence.frame(t).array, images[t])
    assert_same_grid(sequence.grid, grid())


def test_a_non_uniform_time_axis_is_a_one_line_error(tmp_path):
    images, _ = beating()
    path = tmp_path / "uneven.seq.nrrd"
    write_seq_nrrd(path, images, grid().ijk_to_lps(), times=[0, 30, 60, 100, 130])
    with pytest.raises(InputError, match="time axis is not uniform") as error:
        cine.read_sequence(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_frames_that_move_in_space_do_not_share_one_grid(tmp_path):
    """One file cannot give each frame its own grid except through a spatial step of its 4th axis:
    NRRD with a space direction on that axis, or a 4D direction matrix that mixes time and space."""
    images, _ = beating(3)
    path = tmp_path / "moving.nrrd"
    write_seq_nrrd(path, images, grid().ijk_to_lps(), time_direction=(0.0, 0.0, 5.0))
    with pytest.raises(InputError, match="frames do not share one grid"):
        cine.read_sequence(path)
    image = sitk.GetImageFromArray(images, isVector=False)
    direction = np.eye(4)
    direction[2, 3] = direction[3, 2] = 0.6  # time leans into z
    direction[2, 2] = direction[3, 3] = 0.8
    direction[3, 2] *= -1
    image.SetDirection(tuple(direction.ravel()))
    sitk.WriteImage(image, str(tmp_path / "moving.mha"))
    with pytest.raises(InputError, match="frames do not share one grid"):
        cine.read_sequence(tmp_path / "moving.mha")


def test_a_vector_image_is_not_a_sequence(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 8, 8, 3), np.uint8), isVector=True), str(tmp_path / "rgb.nrrd"))
    assert not cine.is_sequence(tmp_path / "rgb.nrrd")
    write_label(tmp_path / "3d.nrrd", np.zeros(SHAPE, np.uint8))
    assert not cine.is_sequence(tmp_path / "3d.nrrd")


def test_frame_names_are_zero_padded_to_the_last_index():
    assert frame_name("a", 3, 5) == "a_t03"
    assert frame_name("a", 7, 120) == "a_t007"


# --- the command line --------------------------------------------------------------------------------


def test_annotated_slices_pair_with_labeled_then_labeled_frame_then_cases(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for folder in ("images", "labels"):
        write_label(tmp_path / folder / "x.nii.gz", np.zeros(SHAPE, np.uint8))
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "bg", "1": "a"}, "cases": {"train": ["x"]}}))
    args = cli.build_parser().parse_args([
        "train", "--labeled", "a.nrrd", "a_lbl.nrrd", "--labeled-frame", "c.nii.gz", "3", "c3.nii.gz",
        "--labeled-frame", "c.nii.gz", "0", "c0.nii.gz", "--data", str(tmp_path), "--labeled-cases", "x",
        "--annotated-slices", "all", "--annotated-slices", "1", "--annotated-slices", "2",
        "--annotated-slices", "labelled", "--out", "o"])
    job = request.make_train_job(request.TrainOptions.from_namespace(args))
    assert [f for _, f, _ in job.labeled_frames] == [3, 0]
    assert [Path(image).name for image, _ in job.labeled] == ["a.nrrd", "x.nii.gz"]
    assert job.slice_specs() == ["all", "labelled", "1", "2"]  # the job's order: labeled (pairs, cases), frames
    again = TrainJob.from_dict(json.loads(json.dumps(job.to_dict())))
    assert again.labeled_frames == job.labeled_frames and again.slice_specs() == job.slice_specs()


def test_frame_must_be_an_index():
    args = cli.build_parser().parse_args(["train", "--labeled-frame", "c.nii.gz", "x", "l.nii.gz", "--out", "o"])
    with pytest.raises(cli.ConfigError, match="FRAME 'x'"):
        request.make_train_job(request.TrainOptions.from_namespace(args))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Frames 0 and 3 of a 4D NIfTI annotated, the others unannotated; trained through the CLI."""
    d = tmp_path_factory.mktemp("cine")
    images, labels = beating()
    write_nifti(d / "cine.nii.gz", images)
    for t in (0, 3):
        write_label(d / f"lbl{t}.nii.gz", labels[t])
    result = run_plcl("train", "--labeled-frame", str(d / "cine.nii.gz"), "3", str(d / "lbl3.nii.gz"),
                      "--labeled-frame", str(d / "cine.nii.gz"), "0", str(d / "lbl0.nii.gz"),
                      "--out", str(d / "run"), "--events", "jsonl", *TINY)
    assert result.returncode == 0, result.stderr
    (d / "events.json").write_text(json.dumps(events(result.stdout)))
    return d


def test_a_frame_annotated_on_some_slices_is_segmented_once_with_its_sequence(tmp_path):
    images, labels = beating()
    write_nifti(tmp_path / "cine.nii.gz", images)
    write_label(tmp_path / "lbl2.nii.gz", labels[2])
    out = tmp_path / "run"
    result = run_plcl("train", "--labeled-frame", str(tmp_path / "cine.nii.gz"), "2", str(tmp_path / "lbl2.nii.gz"),
                      "--annotated-slices", "1,3", "--out", str(out), "--events", "jsonl", *TINY)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    names = [v["name"] for v in summary["volumes"]]
    assert sorted(names) == [f"cine_t{t:02d}" for t in range(FRAMES)]  # each frame once, in its sequence
    assert not any("annotated_slices" in v for v in summary["volumes"])


def _check_sequence_outputs(out: Path, image: Path, annotated: list[int]) -> dict:
    import slicerio

    summary = json.loads((out / "summary.json").read_text())
    [entry] = summary["sequences"]
    names = [f"cine_t{t:02d}" for t in range(FRAMES)]
    assert entry["name"] == "cine" and entry["image"] == str(image) and entry["frames"] == names
    assert entry["annotated_frames"] == annotated
    volumes = {v["name"]: v for v in summary["volumes"]}
    assert sorted(volumes) == names  # every frame segmented
    voxel_ml = float(np.prod(SPACING)) / 1000
    stack = []
    for t, name in enumerate(names):
        assert volumes[name]["sequence"] == "cine" and volumes[name]["frame"] == t
        segmentation = slicerio.read_segmentation(volumes[name]["segmentation"])
        assert_same_grid(Grid.from_ijk_to_lps(segmentation["voxels"].shape, segmentation["ijkToLPS"]), grid())
        uncertainty = sitk.ReadImage(volumes[name]["uncertainty"])
        assert_same_grid(Grid.of(uncertainty), grid())
        values = np.asarray(segmentation["voxels"]).transpose(2, 1, 0)
        stack.append(values)
        for c in summary["classes"]:  # the curve: voxels of the written segmentation x voxel volume
            count = int((values == c["value"]).sum())
            assert entry["volume_curve_ml"][c["name"]][t] == pytest.approx(count * voxel_ml)
    for name, values in entry["volume_curve_ml"].items():
        assert entry["volume_summary"][name]["max_ml"] == pytest.approx(max(values))
    # the whole segmentation as one label map sequence, frame by frame the same as the per-frame files
    sequence = cine.read_sequence(entry["segmentation"])
    assert sequence.frame_count == FRAMES
    assert_same_grid(sequence.grid, grid())
    for t in range(FRAMES):
        np.testing.assert_array_equal(sequence.array[t], stack[t])
    assert Path(entry["curve_plot"]).read_bytes()[:4] == b"\x89PNG"  # matplotlib is in the [test] extra
    return summary


def test_train_on_two_frames_segments_every_frame(trained):
    summary = _check_sequence_outputs(trained / "run", trained / "cine.nii.gz", [0, 3])
    assert summary["sequences"][0]["time_step"] == pytest.approx(0.04)
    outputs = [e for e in json.loads((trained / "events.json").read_text()) if e["event"] == "output"]
    kinds = {e["kind"]: e for e in outputs}
    assert kinds["sequence"]["name"] == "cine" and kinds["sequence"]["path"] == summary["sequences"][0]["segmentation"]
    job = json.loads((trained / "run" / "job.json").read_text())
    assert [f for _, f, _ in job["labeled_frames"]] == [3, 0]
    from PLCLSegmentationLib.engine.request import read_job

    resumed = read_job(trained / "run")  # what --resume continues
    assert resumed.labeled_frames == [(str(trained / "cine.nii.gz"), 3, str(trained / "lbl3.nii.gz")),
                                      (str(trained / "cine.nii.gz"), 0, str(trained / "lbl0.nii.gz"))]


def test_an_unannotated_4d_image_gives_every_frame_to_the_pool(tmp_path):
    from PLCLSegmentationLib.engine.config import TrainConfig
    from PLCLSegmentationLib.engine.run.inputs import read_training_inputs

    images, labels = beating()
    write_nifti(tmp_path / "cine.nii.gz", images)
    sitk.WriteImage(grid().apply_to(sitk.GetImageFromArray(images[0])), str(tmp_path / "a.nrrd"))
    write_label(tmp_path / "a_lbl.nrrd", labels[0])
    write_label(tmp_path / "lbl2.nrrd", labels[2])
    job = TrainJob([(str(tmp_path / "a.nrrd"), str(tmp_path / "a_lbl.nrrd"))], [str(tmp_path / "cine.nii.gz")],
                   str(tmp_path / "out"), TrainConfig())
    inputs = read_training_inputs(job)
    assert [v.name for v in inputs.unannotated] == [f"cine_t{t:02d}" for t in range(FRAMES)]
    assert [(s.name, s.frame_count, frames) for s, frames in inputs.sequences] == [("cine", FRAMES, [])]
    # the same image also with --labeled-frame: its annotated frame leaves the pool, nothing twice
    job.labeled_frames = [(str(tmp_path / "cine.nii.gz"), 2, str(tmp_path / "lbl2.nrrd"))]
    inputs = read_training_inputs(job)
    assert [v.name for v, _ in inputs.annotated] == ["a", "cine_t02"]
    assert [v.name for v in inputs.unannotated] == ["cine_t00", "cine_t01", "cine_t03", "cine_t04"]
    assert [(s.name, frames) for s, frames in inputs.sequences] == [("cine", [2])]


def test_predict_a_seq_nrrd_segments_every_frame(trained, tmp_path):
    images, _ = beating(seed=1)
    write_seq_nrrd(tmp_path / "cine.seq.nrrd", images, grid().ijk_to_lps(), times=[0, 40, 80, 120, 160])
    out = tmp_path / "out"
    result = run_plcl("predict", "--model", str(trained / "run" / "model.pt"), "--out", str(out), "--device", "cpu",
                      str(tmp_path / "cine.seq.nrrd"))
    assert result.returncode == 0, result.stderr
    summary = _check_sequence_outputs(out, tmp_path / "cine.seq.nrrd", [])
    assert summary["sequences"][0]["time_step"] == pytest.approx(40) and summary["sequences"][0]["time_unit"] == "ms"


def test_frames_are_predicted_in_order(trained, tmp_path):
    """Each frame's prepared slices are that frame's voxels (the frames are told apart by their values)."""
    from PLCLSegmentationLib.engine.events import RecordingSink
    from PLCLSegmentationLib.engine.method.modelfile import read_model
    from PLCLSegmentationLib.engine.run.prediction import _prepared_one_by_one

    info, _ = read_model(trained / "run" / "model.pt")
    images, _ = beating()
    prepared = list(_prepared_one_by_one([str(trained / "cine.nii.gz")], info, RecordingSink()))
    assert [p.volume.name for p in prepared] == [f"cine_t{t:02d}" for t in range(FRAMES)]
    for t, p in enumerate(prepared):
        np.testing.assert_array_equal(p.volume.array, images[t])


def test_the_label_sequence_loads_in_slicer_as_a_label_map_sequence(trained):
    slicer = pytest.importorskip("slicer")
    if not hasattr(slicer, "vtkMRMLVolumeSequenceStorageNode"):
        pytest.skip("the 'slicer' module here is not slicer-core")
    import vtk
    from vtk.util import numpy_support

    entry = json.loads((trained / "run" / "summary.json").read_text())["sequences"][0]
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLSequenceNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLVolumeSequenceStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(entry["segmentation"])
    assert storage.ReadData(node)
    assert node.GetNumberOfDataNodes() == FRAMES
    assert node.GetNthDataNode(0).GetClassName() == "vtkMRMLLabelMapVolumeNode"
    assert [float(node.GetNthIndexValue(t)) for t in range(FRAMES)] == pytest.approx([0.04 * t for t in range(FRAMES)])
    frame = node.GetNthDataNode(2)
    m = vtk.vtkMatrix4x4()
    frame.GetIJKToRASMatrix(m)
    matrix = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    np.testing.assert_allclose(np.diag([-1.0, -1.0, 1.0, 1.0]) @ matrix, grid().ijk_to_lps(), atol=1e-4)
    voxels = numpy_support.vtk_to_numpy(frame.GetImageData().GetPointData().GetScalars()).reshape(SHAPE)
    np.testing.assert_array_equal(voxels, cine.read_sequence(entry["segmentation"]).array[2])


# --- the volume curve ----------------------------------------------------------------------------


def test_the_volume_curve_of_known_labels_is_their_voxel_count_times_the_voxel_volume():
    """Boxes of known size: LV 2x3x(t+1) voxels in frame t, RV 4x5x2 in every frame, at 1.5x1.5x10 mm
    (22.5 mm3 = 0.0225 ml a voxel)."""
    spacing = (1.5, 1.5, 10.0)
    classes = {1: "LV", 3: "RV"}  # values need not be consecutive
    frames = []
    for t in range(4):
        labels = np.zeros((8, 20, 20), np.uint8)
        labels[0:t + 1, 0:3, 0:2] = 1
        labels[5:7, 10:15, 10:14] = 3
        frames.append(labels)
    lv = [2 * 3 * (t + 1) * 0.0225 for t in range(4)]
    rv = [4 * 5 * 2 * 0.0225] * 4
    volumes = [class_volumes_ml(labels, spacing, classes) for labels in frames]
    assert [v["LV"] for v in volumes] == pytest.approx(lv) and [v["RV"] for v in volumes] == pytest.approx(rv)
    counts = [{"LV": 6 * (t + 1), "RV": 40} for t in range(4)]
    curve = curve_from_counts(counts, spacing, ["LV", "RV"])
    assert curve["LV"] == pytest.approx(lv) and curve["RV"] == pytest.approx(rv)
    summary = curve_summary(curve)
    assert summary["LV"]["max_frame"] == 3 and summary["LV"]["min_frame"] == 0
    assert summary["LV"]["max_ml"] == pytest.approx(24 * 0.0225) and summary["LV"]["min_ml"] == pytest.approx(0.135)
    assert summary["LV"]["ejection_fraction"] == pytest.approx(75.0)
    assert summary["RV"]["ejection_fraction"] == pytest.approx(0.0)
    assert curve_summary({"absent": [0.0, 0.0]})["absent"]["ejection_fraction"] is None


def test_frames_predicted_in_one_pass_match_frames_predicted_alone(trained, tmp_path):
    """Consecutive frames go through the network together; each must get its own slices' result."""
    import slicerio

    from PLCLSegmentationLib.engine.events import RecordingSink
    from PLCLSegmentationLib.engine.run.prediction import run_prediction

    images, _ = beating(seed=2)
    write_nifti(tmp_path / "cine.nii.gz", images)
    for t in range(FRAMES):
        sitk.WriteImage(grid().apply_to(sitk.GetImageFromArray(images[t])), str(tmp_path / f"cine_t{t:02d}.nrrd"))
    model = str(trained / "run" / "model.pt")
    together = run_prediction(model, [str(tmp_path / "cine.nii.gz")], str(tmp_path / "4d"), "cpu", RecordingSink())
    alone = run_prediction(model, [str(tmp_path / f"cine_t{t:02d}.nrrd") for t in range(FRAMES)], str(tmp_path / "3d"),
                           "cpu", RecordingSink())
    by_name = {v["name"]: v for v in alone["volumes"]}
    for entry in together["volumes"]:
        other = by_name[entry["name"]]
        a = sitk.GetArrayFromImage(sitk.ReadImage(entry["uncertainty"]))
        b = sitk.GetArrayFromImage(sitk.ReadImage(other["uncertainty"]))
        assert np.abs(a - b).max() <= 0.02, entry["name"]
        # the same labels voxel by voxel; a batch of another size may round a few boundary voxels otherwise
        mine, theirs = (np.asarray(slicerio.read_segmentation(v["segmentation"])["voxels"]) for v in (entry, other))
        assert mine.shape == theirs.shape and (mine != theirs).sum() <= 5, entry["name"]
        assert mine.any(), entry["name"]  # a prediction, not two empty label maps


def test_the_volume_curve_needs_numpy_only():
    """The Slicer module imports it: no torch, no SimpleITK."""
    import subprocess
    import sys

    from conftest import REPO

    code = ("import sys; import PLCLSegmentationLib.engine.run.volume_curve; "
            "bad = [m for m in ('torch', 'SimpleITK', 'slicerio', 'nrrd') if m in sys.modules]; print(bad); "
            "sys.exit(bool(bad))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO / "PLCLSegmentation", capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
