"""Augmentation on tensors: patches cut through one sampling grid that carries the spatial transform.

Rotation, scaling, flips and the elastic deformation are composed into one grid per sample, so a
patch is interpolated once, straight from the full slice: no padding artefacts at patch borders and
no second resampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import TrainConfig


@dataclass
class SpatialParams:
    angle: float = 0.0  # radians
    scale: float = 1.0
    flip: bool = False
    elastic: torch.Tensor | None = None  # [2, P, P] displacement in pixels (x, y)


def random_spatial(config: TrainConfig, patch: int, generator: torch.Generator) -> SpatialParams:
    """A random spatial transform, by ``config.augmentation``:

    - "paper": one of a small rotation, a scaling, a flip, a rotation by a multiple of 45 degrees,
      or none; plus, with some probability, a smooth elastic deformation (Chaitanya et al.);
    - "strong": rotation and scaling always, no flips (the canonical orientation keeps left and
      right apart), elastic deformation with some probability: more variety from one patient.
    """

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    params = SpatialParams()
    if config.augmentation == "strong":
        params.angle = math.radians(uniform(-config.rotation_degrees, config.rotation_degrees))
        params.scale = uniform(*config.scale_range)
    else:
        choice = int(torch.randint(5, (), generator=generator))
        if choice == 0:
            params.angle = math.radians(uniform(-config.rotation_degrees, config.rotation_degrees))
        elif choice == 1:
            params.scale = uniform(*config.scale_range)
        elif choice == 2:
            params.flip = True
        elif choice == 3:
            params.angle = math.radians(45.0 * int(torch.randint(1, 8, (), generator=generator)))
    if config.elastic_sigma_px > 0 and float(torch.rand((), generator=generator)) < config.elastic_probability:
        coarse = torch.randn((1, 2, 3, 3), generator=generator) * config.elastic_sigma_px
        params.elastic = F.interpolate(coarse, size=(patch, patch), mode="bicubic", align_corners=True)[0]
    return params


def sampling_grid(centre: tuple[float, float], shape: tuple[int, int], patch: int,
                  params: SpatialParams) -> torch.Tensor:
    """grid_sample grid [P, P, 2] taking a ``patch`` x ``patch`` window centred at ``centre``
    (row, column, in pixels) of a slice of ``shape``, through ``params``."""
    offsets = torch.arange(patch, dtype=torch.float32) - (patch - 1) / 2.0
    dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
    if params.flip:
        dx = -dx
    cos, sin = math.cos(params.angle) * params.scale, math.sin(params.angle) * params.scale
    x = centre[1] + cos * dx - sin * dy
    y = centre[0] + sin * dx + cos * dy
    if params.elastic is not None:
        x = x + params.elastic[0]
        y = y + params.elastic[1]
    height, width = shape
    # align_corners=False: pixel centre p maps to (2p + 1) / size - 1.
    return torch.stack([(2 * x + 1) / width - 1, (2 * y + 1) / height - 1], dim=-1)


def cut_patches(images: list[torch.Tensor], labels: list[torch.Tensor | None], grids: list[torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample each (image, label) slice through its grid: images bilinear, labels nearest."""
    image_patches = [F.grid_sample(img[None, None], grid[None], mode="bilinear", padding_mode="zeros",
                                   align_corners=False)[0] for img, grid in zip(images, grids)]
    x = torch.stack(image_patches)
    if any(lbl is None for lbl in labels):
        return x, None
    label_patches = [F.grid_sample(lbl[None, None].float(), grid[None], mode="nearest", padding_mode="zeros",
                                   align_corners=False)[0, 0] for lbl, grid in zip(labels, grids)]
    return x, torch.stack(label_patches).to(torch.uint8)


def random_appearance(x: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """For "strong" augmentation of segmentation batches: per-sample gamma, then contrast and
    brightness, then Gaussian noise, so one patient's appearance stands for many scanners."""
    n = x.shape[0]
    log_gamma = (torch.rand((n, 1, 1, 1), generator=generator) * 2 - 1) * math.log(config.gamma_max)
    x = x.clamp(min=0) ** log_gamma.exp()
    x = random_intensity(x, config, generator)
    sigma = torch.rand((n, 1, 1, 1), generator=generator) * config.noise_sigma
    return x + sigma * torch.randn(x.shape, generator=generator)


def random_intensity(x: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Per-sample contrast around the mean, then brightness shift (the paper's two photometric changes)."""
    n = x.shape[0]
    low, high = config.contrast_range
    contrast = low + (high - low) * torch.rand((n, 1, 1, 1), generator=generator)
    brightness = (torch.rand((n, 1, 1, 1), generator=generator) * 2 - 1) * config.brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * contrast + mean + brightness
