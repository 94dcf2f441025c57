"""Batched augmentation on the training device: one spatial transform per sample, drawn for the whole
batch at once, and the pixel coordinates of each patch through it.

Rotation, scaling, flips and the elastic deformation are composed into one coordinate map per sample,
so a patch is interpolated once, straight from the full slice: no padding artefacts at patch borders
and no second resampling. Every draw is a tensor operation over the batch (no per-sample Python loop),
made with the generator of the device the model trains on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import TrainConfig


@dataclass
class SpatialParams:
    """One spatial transform per sample of a batch of ``B``."""

    angle: torch.Tensor  # [B] radians
    scale: torch.Tensor  # [B]
    flip: torch.Tensor  # [B] bool: mirror the columns
    elastic: torch.Tensor | None = None  # [B, 2, P, P] displacement in pixels (column, row); None: none

    @classmethod
    def identity(cls, count: int, device: torch.device | str = "cpu") -> SpatialParams:
        zeros = torch.zeros(count, device=device)
        return cls(zeros, zeros + 1.0, zeros.bool())


def _uniform(count: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(count, generator=generator, device=generator.device)


def random_spatial(config: TrainConfig, count: int, patch: int, generator: torch.Generator) -> SpatialParams:
    """``count`` random spatial transforms, by ``config.augmentation``:

    - "paper": per sample one of a small rotation, a scaling, a flip, a rotation by a multiple of
      45 degrees, or none; plus, with some probability, a smooth elastic deformation (Chaitanya et al.);
    - "strong": rotation and scaling always, elastic deformation with some probability: more
      variety from one patient. No flips, unless ``config.orientation_augmentation`` adds a turn by
      a random multiple of 90 degrees and a mirror to half of the samples: then a model does not
      rely on one in-plane orientation of the heart, which file headers do not always give.
    """
    device = generator.device
    angle = torch.deg2rad(_uniform(count, -config.rotation_degrees, config.rotation_degrees, generator))
    scale = _uniform(count, *config.scale_range, generator)
    flip = torch.zeros(count, dtype=torch.bool, device=device)
    if config.augmentation != "strong":
        choice = torch.randint(5, (count,), generator=generator, device=device)
        right_angles = torch.deg2rad(45.0 * torch.randint(1, 8, (count,), generator=generator, device=device))
        angle = torch.where(choice == 0, angle, torch.where(choice == 3, right_angles, torch.zeros_like(angle)))
        scale = torch.where(choice == 1, scale, torch.ones_like(scale))
        flip = choice == 2
    elif config.orientation_augmentation:
        quarter_turns = torch.randint(4, (count,), generator=generator, device=device)
        angle = angle + quarter_turns * (math.pi / 2)
        flip = torch.rand(count, generator=generator, device=device) < 0.5
    elastic = None
    if config.elastic_sigma_px > 0 and config.elastic_probability > 0:
        points = config.elastic_points
        coarse = torch.randn((count, 2, points, points), generator=generator, device=device) * config.elastic_sigma_px
        chosen = torch.rand(count, generator=generator, device=device) < config.elastic_probability
        coarse = coarse * chosen.view(-1, 1, 1, 1)
        elastic = F.interpolate(coarse, size=(patch, patch), mode="bicubic", align_corners=True)
    return SpatialParams(angle, scale, flip, elastic)


def patch_coordinates(centres: torch.Tensor, patch: int, params: SpatialParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Slice pixel coordinates (rows, columns), each [B, P, P], of ``patch`` x ``patch`` windows
    centred at ``centres`` [B, 2] (row, column) through ``params``."""
    offsets = torch.arange(patch, dtype=torch.float32, device=centres.device) - (patch - 1) / 2.0
    dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
    dx = torch.where(params.flip.view(-1, 1, 1), -dx, dx)  # [B, P, P]
    dy = dy.expand_as(dx)
    cos = (torch.cos(params.angle) * params.scale).view(-1, 1, 1)
    sin = (torch.sin(params.angle) * params.scale).view(-1, 1, 1)
    cols = centres[:, 1].view(-1, 1, 1) + cos * dx - sin * dy
    rows = centres[:, 0].view(-1, 1, 1) + sin * dx + cos * dy
    if params.elastic is not None:
        cols = cols + params.elastic[:, 0]
        rows = rows + params.elastic[:, 1]
    return rows, cols


def random_appearance(x: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """For "strong" augmentation of segmentation batches: per-sample gamma, then contrast and
    brightness, then Gaussian noise, so one patient's appearance stands for many scanners."""
    n, device = x.shape[0], x.device
    log_gamma = (torch.rand((n, 1, 1, 1), generator=generator, device=device) * 2 - 1) * math.log(config.gamma_max)
    x = x.clamp(min=0) ** log_gamma.exp()
    x = random_intensity(x, config, generator)
    sigma = torch.rand((n, 1, 1, 1), generator=generator, device=device) * config.noise_sigma
    return x + sigma * torch.randn(x.shape, generator=generator, device=device)


def random_intensity(x: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Per-sample contrast around the mean, then brightness shift (the paper's two photometric changes)."""
    n, device = x.shape[0], x.device
    low, high = config.contrast_range
    contrast = low + (high - low) * torch.rand((n, 1, 1, 1), generator=generator, device=device)
    brightness = (torch.rand((n, 1, 1, 1), generator=generator, device=device) * 2 - 1) * config.brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * contrast + mean + brightness
