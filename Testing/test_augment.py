"""Augmentation: the sampling grid cuts exactly, labels stay labels, and the random draws obey the config."""

from __future__ import annotations

import math

import torch

from PLCLSegmentationLib.engine.augment import (
    SpatialParams,
    cut_patches,
    random_appearance,
    random_spatial,
    sampling_grid,
)
from PLCLSegmentationLib.engine.config import TrainConfig


def test_identity_grid_cuts_the_exact_patch():
    image = torch.arange(40 * 30, dtype=torch.float32).reshape(40, 30)
    grid = sampling_grid((19.5, 14.5), (40, 30), 8, SpatialParams())  # centre between pixels 16..23, 11..18
    patch, _ = cut_patches([image], [None], [grid])
    torch.testing.assert_close(patch[0, 0], image[16:24, 11:19])


def test_flip_and_rotation_move_pixels_as_expected():
    image = torch.zeros(21, 21)
    image[10, 15] = 1.0  # five pixels right of the centre
    centre = (10.0, 10.0)
    flipped, _ = cut_patches([image], [None], [sampling_grid(centre, (21, 21), 21, SpatialParams(flip=True))])
    assert flipped[0, 0, 10, 5] == 1.0
    turned, _ = cut_patches([image], [None],
                            [sampling_grid(centre, (21, 21), 21, SpatialParams(angle=math.pi / 2))])
    assert turned[0, 0].argmax().item() in (5 * 21 + 10, 15 * 21 + 10)  # moved onto the vertical axis


def test_labels_are_sampled_nearest_and_keep_their_values():
    labels = torch.zeros(32, 32, dtype=torch.uint8)
    labels[8:24, 8:24] = 3
    labels[12:20, 12:20] = 1
    config = TrainConfig()
    generator = torch.Generator().manual_seed(0)
    grids = [sampling_grid((16.0, 16.0), (32, 32), 24, random_spatial(config, 24, generator)) for _ in range(4)]
    _, y = cut_patches([labels.float()] * 4, [labels] * 4, grids)
    assert set(torch.unique(y).tolist()) <= {0, 1, 3}


def test_strong_augmentation_draws_within_the_configured_ranges():
    config = TrainConfig(augmentation="strong", rotation_degrees=30, scale_range=(0.8, 1.2), elastic_probability=0)
    generator = torch.Generator().manual_seed(1)
    draws = [random_spatial(config, 16, generator) for _ in range(200)]
    assert all(abs(d.angle) <= math.radians(30) + 1e-9 and 0.8 <= d.scale <= 1.2 and not d.flip for d in draws)
    assert all(d.elastic is None for d in draws)
    x = torch.rand(8, 1, 16, 16)
    y = random_appearance(x, config, generator)
    assert y.shape == x.shape and torch.isfinite(y).all() and not torch.equal(x, y)
