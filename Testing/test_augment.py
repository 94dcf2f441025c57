"""Batched augmentation and batches: patches cut exactly, images and labels stay aligned under every
transform, the random draws obey the configuration, and a seed gives the same batches.

Every test runs on the CPU and, where a CUDA GPU is present, again on it (marked ``cuda``)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from PLCLSegmentationLib.engine.config import TrainConfig
from PLCLSegmentationLib.engine.method.augment import (
    SpatialParams,
    patch_coordinates,
    random_appearance,
    random_spatial,
)
from PLCLSegmentationLib.engine.method.batches import BatchMaker, SliceAtlas

DEVICES = ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")])]


def cut(atlas: SliceAtlas, slices: list[int], centres: list[tuple[float, float]], patch: int,
        params: SpatialParams | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    device = atlas.canvas.device
    params = params or SpatialParams.identity(len(slices), device)
    rows, cols = patch_coordinates(torch.tensor(centres, dtype=torch.float32, device=device), patch, params)
    return atlas.sample(torch.tensor(slices, device=device), rows, cols)


def blocks(height: int, width: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat blocks whose label is a function of the intensity: 0 where 0, 2 where 1. With two levels a
    bilinear sample within 1e-4 of a level has its nearest pixel (weight >= 1/4) at that level."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    on = (rows // 7 + cols // 5 + offset) % 2
    return on.float(), (2 * on).to(torch.uint8)


@pytest.mark.parametrize("device", DEVICES)
def test_identity_cuts_the_exact_patch_of_each_slice_of_an_atlas(device):
    a = torch.arange(40 * 30, dtype=torch.float32).reshape(1, 40, 30)
    b = -torch.arange(17 * 50, dtype=torch.float32).reshape(1, 17, 50)
    atlas = SliceAtlas.pack([a, b], [torch.zeros_like(a, dtype=torch.uint8), torch.ones_like(b, dtype=torch.uint8)],
                            device)
    x, y = cut(atlas, [0, 1], [(19.5, 14.5), (7.5, 25.5)], 8)  # centres between pixels
    torch.testing.assert_close(x[0, 0].cpu(), a[0, 16:24, 11:19])
    torch.testing.assert_close(x[1, 0].cpu(), b[0, 4:12, 22:30])
    assert y[0].eq(0).all() and y[1].eq(1).all()


@pytest.mark.parametrize("device", DEVICES)
def test_outside_a_slice_is_zero_and_background_never_a_neighbours_pixels(device):
    ones = [torch.ones(1, 10, 12), torch.full((1, 30, 9), 5.0), torch.full((1, 12, 12), 7.0)]
    labels = [torch.full((1, *s.shape[1:]), i + 1, dtype=torch.uint8) for i, s in enumerate(ones)]
    atlas = SliceAtlas.pack(ones, labels, device)
    x, y = cut(atlas, [0, 1, 2], [(5.0, 6.0)] * 3, 64)  # patches far larger than the slices
    for index, value in enumerate([1.0, 5.0, 7.0]):
        assert x[index].min() >= 0 and x[index].max() == value
        assert set(y[index].unique().tolist()) == {0, index + 1}
    # The reference: zero padding of the slice alone (grid_sample's own padding_mode="zeros").
    single = SliceAtlas.pack([ones[1]], [labels[1]], device)
    alone, _ = cut(single, [0], [(5.0, 6.0)], 64)
    torch.testing.assert_close(x[1], alone[0])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("augmentation,points", [("strong", 3), ("paper", 3), ("strong", 8)])
def test_images_and_labels_stay_aligned_under_every_transform(device, augmentation, points):
    """Label = 2 x intensity on the source; after rotation, scaling, flips and elastic deformation,
    every patch pixel not blended across a block edge keeps that relation, pixel by pixel."""
    stacks = [blocks(60 + 9 * o, 70, offset=o)[0][None].repeat(3, 1, 1) for o in range(2)]
    labels = [blocks(60 + 9 * o, 70, offset=o)[1][None].repeat(3, 1, 1) for o in range(2)]
    config = TrainConfig(patch_size=32, augmentation=augmentation, elastic_probability=1.0, elastic_sigma_px=4.0,
                         rotation_degrees=180, scale_range=(0.6, 1.5), elastic_points=points)
    maker = BatchMaker(config, SliceAtlas.pack(stacks, labels, device), None, seed=3)
    x, y = maker.draw(maker.annotated, 64)
    flat = (x[:, 0] - x[:, 0].round()).abs() < 1e-4  # not blended across a block edge
    assert flat.float().mean() > 0.5 and y[flat].eq(2).any() and y[flat].eq(0).any()
    torch.testing.assert_close((2 * x[:, 0].round()[flat]).to(torch.uint8), y[flat])


@pytest.mark.parametrize("device", DEVICES)
def test_flip_and_rotation_move_pixels_as_expected(device):
    image = torch.zeros(1, 21, 21)
    image[0, 10, 15] = 1.0  # five pixels right of the centre
    atlas = SliceAtlas.pack([image], [torch.zeros_like(image, dtype=torch.uint8)], device)
    params = SpatialParams.identity(2, device)
    params.flip = torch.tensor([True, False], device=device)
    params.angle = torch.tensor([0.0, math.pi / 2], device=device)
    x, _ = cut(atlas, [0, 0], [(10.0, 10.0)] * 2, 21, params)
    assert x[0, 0, 10, 5] == 1.0
    assert x[1, 0].argmax().item() in (5 * 21 + 10, 15 * 21 + 10)  # moved onto the vertical axis


@pytest.mark.parametrize("device", DEVICES)
def test_foreground_share_of_patches_follows_the_configuration(device):
    labels = torch.zeros(4, 200, 200, dtype=torch.uint8)
    labels[:, 90:100, 150:160] = 2  # a small structure far from the centre
    images = labels.float()
    for fraction in (0.0, 0.7, 1.0):
        config = TrainConfig(patch_size=16, foreground_patch_fraction=fraction, elastic_probability=0,
                             rotation_degrees=0, scale_range=(1.0, 1.0))
        maker = BatchMaker(config, SliceAtlas.pack([images], [labels], device), None, seed=0)
        centres = maker._centres(maker.annotated, torch.zeros(4000, dtype=torch.long, device=device))
        on = ((centres[:, 0] - 94.5).abs() <= 4 + 5) & ((centres[:, 1] - 154.5).abs() <= 4 + 5)
        uniform_share = (10 + 8) ** 2 / 200**2  # a uniform centre lands there this often
        expected = fraction + (1 - fraction) * uniform_share
        assert abs(on.float().mean().item() - expected) < 0.03, fraction


def test_slices_without_foreground_get_uniform_centres():
    labels = torch.zeros(2, 50, 40, dtype=torch.uint8)
    maker = BatchMaker(TrainConfig(patch_size=16, foreground_patch_fraction=1.0),
                       SliceAtlas.pack([labels.float()], [labels]), None, seed=0)
    centres = maker._centres(maker.annotated, torch.tensor([0, 1] * 500))
    assert (centres >= 0).all() and (centres[:, 0] <= 49).all() and (centres[:, 1] <= 39).all()
    assert centres[:, 0].std() > 10


@pytest.mark.parametrize("device", DEVICES)
def test_random_transforms_follow_the_configured_ranges(device):
    generator = torch.Generator(device=device).manual_seed(1)
    strong = TrainConfig(augmentation="strong", rotation_degrees=30, scale_range=(0.8, 1.2), elastic_probability=0,
                         orientation_augmentation=False)
    params = random_spatial(strong, 4000, 16, generator)
    assert params.angle.abs().max() <= math.radians(30) + 1e-6 and params.angle.abs().max() > math.radians(28)
    assert params.scale.min() >= 0.8 and params.scale.max() <= 1.2 and not params.flip.any()
    assert params.elastic is None
    paper = dataclasses.replace(strong, augmentation="paper", rotation_degrees=15, scale_range=(0.95, 1.05),
                                elastic_probability=0.5)
    params = random_spatial(paper, 4000, 16, generator)
    plain = (params.angle == 0) & (params.scale == 1) & ~params.flip
    assert abs(params.flip.float().mean().item() - 0.2) < 0.03  # one change of five kinds at a time
    assert abs(plain.float().mean().item() - 0.2) < 0.03
    eighths = torch.rad2deg(params.angle[params.angle.abs() > math.radians(15) + 1e-6]) / 45
    assert len(eighths) > 500 and (eighths - eighths.round()).abs().max() < 1e-4
    moved = params.elastic.flatten(1).abs().amax(1) > 0
    assert abs(moved.float().mean().item() - 0.5) < 0.03
    x = torch.rand(8, 1, 16, 16, device=device)
    y = random_appearance(x, strong, generator)
    assert y.shape == x.shape and torch.isfinite(y).all() and not torch.equal(x, y)


@pytest.mark.parametrize("device", DEVICES)
def test_orientation_augmentation_turns_by_quarter_turns_and_mirrors_half_of_the_patches(device):
    config = TrainConfig(augmentation="strong", rotation_degrees=10, elastic_probability=0,
                         orientation_augmentation=False)
    plain = random_spatial(config, 4000, 16, torch.Generator(device=device).manual_seed(5))
    turned = random_spatial(dataclasses.replace(config, orientation_augmentation=True), 4000, 16,
                            torch.Generator(device=device).manual_seed(5))
    # The same small rotations, plus a multiple of 90 degrees drawn evenly.
    quarters = (turned.angle - plain.angle) / (math.pi / 2)
    assert (quarters - quarters.round()).abs().max() < 1e-4
    counts = torch.bincount(quarters.round().long(), minlength=4)
    assert len(counts) == 4 and (counts.float() / 4000 - 0.25).abs().max() < 0.03
    assert abs(turned.flip.float().mean().item() - 0.5) < 0.03 and not plain.flip.any()
    torch.testing.assert_close(turned.scale, plain.scale)
    # An image and its labels stay aligned under the turn and the mirror.
    images, labels = blocks(70, 60)
    maker = BatchMaker(dataclasses.replace(config, orientation_augmentation=True, patch_size=32),
                       SliceAtlas.pack([images[None]], [labels[None]], device), None, seed=2)
    x, y = maker.draw(maker.annotated, 64)
    flat = (x[:, 0] - x[:, 0].round()).abs() < 1e-4
    torch.testing.assert_close((2 * x[:, 0].round()[flat]).to(torch.uint8), y[flat])


@pytest.mark.parametrize("device", DEVICES)
def test_the_same_seed_gives_the_same_batches(device):
    images, labels = blocks(80, 90)
    atlas = SliceAtlas.pack([images[None].repeat(2, 1, 1)], [labels[None].repeat(2, 1, 1)], device)
    config = TrainConfig(patch_size=32, batch_size=4, contrastive_images=3, online_pseudo_labels=True)
    first = [BatchMaker(config, atlas, atlas, seed=7).joint_batch() for _ in range(2)]
    again = BatchMaker(config, atlas, atlas, seed=8).joint_batch()
    assert first[0].weak_images is not None
    for a, b in zip(dataclasses.astuple(first[0]), dataclasses.astuple(first[1])):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
    assert not torch.equal(first[0].images, again.images)
    batch = first[0]
    assert batch.images.shape == (4, 1, 32, 32) and batch.contrastive_images.shape == (6, 1, 32, 32)
    assert batch.images.device.type == device and batch.labels.dtype == torch.uint8


def test_new_labels_replace_the_old_ones_and_their_foreground():
    images = torch.rand(2, 30, 30)
    empty = torch.zeros(2, 30, 30, dtype=torch.uint8)
    atlas = SliceAtlas.pack([images], [empty])
    assert atlas.foreground_count.sum() == 0
    labelled = empty.clone()
    labelled[1, 10:12, 10:13] = 3
    atlas = atlas.with_labels([labelled])
    assert atlas.foreground_count.tolist() == [0, 6]
    _, y = cut(atlas, [1], [(10.5, 11.5)], 4)  # rows 9..12, columns 10..13
    assert y[0, 1:3, 0:3].eq(3).all() and y[0, 0].eq(0).all() and y[0, :, 3].eq(0).all()
    with pytest.raises(ValueError, match="label slices"):
        atlas.with_labels([labelled[:1]])


def test_more_elastic_points_bend_a_patch_locally_with_the_same_displacements():
    """The same displacement size: a finer control grid changes the displacement faster across the
    patch (a structure's thickness changes), a coarse one moves neighbouring pixels alike."""
    def bending(points: int) -> tuple[float, float]:
        config = TrainConfig(patch_size=64, elastic_probability=1.0, elastic_sigma_px=5.0, elastic_points=points)
        field = random_spatial(config, 64, 64, torch.Generator().manual_seed(0)).elastic
        return field.abs().mean().item(), (field[..., 1:] - field[..., :-1]).abs().mean().item()

    coarse, fine = bending(3), bending(10)
    assert fine[0] == pytest.approx(coarse[0], rel=0.35)
    assert fine[1] > 2.5 * coarse[1]
