"""Slices with their neighbours as the network's input (TrainConfig.slice_context, 2.5D): built alike for
training and prediction, never across frames, recorded in the model file."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import make_image

from PLCLSegmentationLib.engine.config import TrainConfig
from PLCLSegmentationLib.engine.errors import InputError
from PLCLSegmentationLib.engine.events import RecordingSink
from PLCLSegmentationLib.engine.files.volumes import ClassInfo, Grid, Volume
from PLCLSegmentationLib.engine.method.batches import SliceAtlas
from PLCLSegmentationLib.engine.method.modelfile import ModelInfo, save_model
from PLCLSegmentationLib.engine.method.predictor import Predictor
from PLCLSegmentationLib.engine.method.preprocess import with_neighbours
from PLCLSegmentationLib.engine.request import TrainJob
from PLCLSegmentationLib.engine.run import training
from PLCLSegmentationLib.engine.runtime import BACKEND_PACKAGES, missing_modules


def test_each_slice_sees_its_neighbours_in_order_and_zeros_beyond_the_stack():
    stack = (torch.arange(4.0) + 1).view(4, 1, 1).expand(4, 2, 3)
    inputs = with_neighbours(stack, 1)
    assert inputs.shape == (4, 3, 2, 3)
    assert inputs[:, :, 0, 0].tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 0]]
    assert with_neighbours(stack, 2)[0, :, 1, 2].tolist() == [0, 0, 1, 2, 3]
    assert torch.equal(with_neighbours(stack, 0), stack[:, None])


def test_the_atlas_cuts_every_channel_of_a_slice_at_the_same_pixels():
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand((3, 10, 12), generator=generator), torch.rand((2, 7, 9), generator=generator)]
    labels = [(stack > 0.5).to(torch.uint8) for stack in images]
    inputs = [with_neighbours(stack, 1) for stack in images]
    atlas = SliceAtlas.pack(inputs, labels)
    assert atlas.canvas.shape[:2] == (1, 3)
    for index, (stack, label) in enumerate([(inputs[0][2], labels[0][2]), (inputs[1][0], labels[1][0])]):
        rows, cols = torch.meshgrid(torch.arange(stack.shape[1]), torch.arange(stack.shape[2]), indexing="ij")
        slice_index = torch.tensor([2 if index == 0 else 3])
        cut, cut_labels = atlas.sample(slice_index, rows[None].float(), cols[None].float())
        torch.testing.assert_close(cut[0], stack)
        assert torch.equal(cut_labels[0], label)


def _stack_with_a_top_slice_labelled_otherwise(tmp_path) -> tuple[str, str]:
    """Six slices showing the same disc; the annotation calls it a structure in all but the first slice,
    as an atrium at a stack's end looks like the ventricle below it: only a slice's place tells them apart."""
    k, j, i = np.meshgrid(np.arange(6), np.arange(32), np.arange(32), indexing="ij")
    disc = (j - 15.5) ** 2 + (i - 15.5) ** 2 < 64
    image = np.where(disc, 1000.0, 100.0).astype(np.float32)
    labels = (disc & (k > 0)).astype(np.uint8)
    paths = (str(tmp_path / "image.nrrd"), str(tmp_path / "labels.nrrd"))
    sitk.WriteImage(make_image(image, spacing=(1.0, 1.0, 8.0)), paths[0])
    sitk.WriteImage(make_image(labels, spacing=(1.0, 1.0, 8.0)), paths[1])
    return paths


@pytest.mark.parametrize("context", [0, 1])
def test_only_a_network_that_sees_the_neighbours_learns_what_only_the_place_in_the_stack_tells(tmp_path, context):
    paths = _stack_with_a_top_slice_labelled_otherwise(tmp_path)
    config = TrainConfig(patch_size=32, levels=3, base_channels=8, embedding_dim=4, batch_size=6,
                         warmup_iterations=150, rounds=0, background_batches=False, precision="fp32",
                         foreground_patch_fraction=1.0, learning_rate=3e-3, largest_component=False,
                         slice_context=context, inference_tile=32, seed=1)
    training.run_training(TrainJob([paths], [], str(tmp_path / "run"), config), RecordingSink())
    model = tmp_path / "run" / "model.pt"
    architecture = torch.load(model, weights_only=True)["info"]["architecture"]
    assert (architecture["in_channels"], architecture["slice_context"]) == (2 * context + 1, context)

    predictor = Predictor.load(str(model), torch.device("cpu"), precision="fp32")
    image = sitk.GetArrayFromImage(sitk.ReadImage(paths[0]))
    grid = Grid.of(sitk.ReadImage(paths[0]))
    labels = predictor.predict(predictor.prepare(Volume("v", paths[0], image, grid))[0]).labels
    disc = image > 500
    labelled_top = (labels[0][disc[0]] > 0).mean()
    labelled_below = (labels[1:][disc[1:]] > 0).mean()
    assert labelled_below > 0.9
    if context:
        assert labelled_top < 0.1
    else:  # the same image, so the same answer: the top slice takes its neighbours' label
        assert labelled_top > 0.9


def test_frames_predicted_together_never_see_each_other(tmp_path):
    """Frames of a 4D image go through the network in one pass; each frame's end slices still see zeros."""
    info = ModelInfo(classes=[ClassInfo(1, "disc", (1.0, 0.0, 0.0))], target_spacing_mm=1.0, patch_size=32,
                     base_channels=4, levels=3, embedding_dim=4, slice_context=2, intensity_percentiles=(1.0, 99.0),
                     inference_tile=32)
    torch.manual_seed(0)
    save_model(tmp_path / "m.pt", info.build_network(), info)
    predictor = Predictor.load(str(tmp_path / "m.pt"), torch.device("cpu"), precision="fp32")
    rng = np.random.default_rng(0)
    frames = []
    for index in range(2):
        array = rng.random((5, 24, 28)).astype(np.float32)
        frames.append(predictor.prepare(Volume(f"f{index}", f"f{index}.nrrd", array, Grid.of(make_image(array))))[0])
    together = list(predictor.predict_group(frames))
    for frame, result in zip(frames, together):
        alone = predictor.predict(frame)
        np.testing.assert_allclose(result.uncertainty, alone.uncertainty, atol=1e-5)
    assert info.to_dict()["architecture"]["in_channels"] == 5


@pytest.mark.parametrize("backend", list(BACKEND_PACKAGES))
def test_an_exported_network_takes_the_neighbour_channels_as_torch_does(tmp_path, backend):
    missing = missing_modules(backend)
    if missing:
        pytest.skip(f"{missing[0]} is not installed (pip install '.[{BACKEND_PACKAGES[backend][1]}]')")
    info = ModelInfo(classes=[ClassInfo(1, "disc", (1.0, 0.0, 0.0))], target_spacing_mm=1.0, patch_size=32,
                     base_channels=4, levels=3, embedding_dim=4, slice_context=1, intensity_percentiles=(1.0, 99.0),
                     inference_tile=32)
    torch.manual_seed(0)
    save_model(tmp_path / "m.pt", info.build_network(), info)
    cpu = torch.device("cpu")
    reference = Predictor.load(str(tmp_path / "m.pt"), cpu, precision="fp32", backend="torch")
    exported = Predictor.load(str(tmp_path / "m.pt"), cpu, precision="fp32", backend=backend)
    array = np.random.default_rng(0).random((5, 24, 28)).astype(np.float32)
    images = reference.prepare(Volume("v", "v.nrrd", array, Grid.of(make_image(array))))[0].images
    torch.testing.assert_close(exported.probabilities(images), reference.probabilities(images), atol=1e-4, rtol=0)


def test_a_warm_start_without_settings_keeps_the_models_neighbour_channels(tmp_path):
    """The Slicer module retrains with --init-model and no --set: the model's network is kept, not refused."""
    paths = _stack_with_a_top_slice_labelled_otherwise(tmp_path)
    tiny = dict(patch_size=32, levels=3, base_channels=4, embedding_dim=4, batch_size=2, warmup_iterations=2,
                rounds=0, background_batches=False, precision="fp32", inference_tile=32)
    training.run_training(TrainJob([paths], [], str(tmp_path / "first"), TrainConfig(**tiny, slice_context=1)),
                          RecordingSink())
    first = str(tmp_path / "first" / "model.pt")
    training.run_training(TrainJob([paths], [], str(tmp_path / "again"), TrainConfig(**tiny), init_model=first),
                          RecordingSink())
    architecture = torch.load(tmp_path / "again" / "model.pt", weights_only=True)["info"]["architecture"]
    assert (architecture["in_channels"], architecture["slice_context"]) == (3, 1)
    with pytest.raises(InputError, match="slice_context 1 \\(settings: 2\\)"):
        training.run_training(TrainJob([paths], [], str(tmp_path / "other"), TrainConfig(**tiny, slice_context=2),
                                       init_model=first), RecordingSink())
    assert not (tmp_path / "other").exists()
