"""The quality estimate's calibration, fitted at the end of training on the annotated slices alone.

The raw estimate (method/quality.py, the expected soft Dice) is optimistic on images unlike the
annotated ones, where the model errs. Copies of the annotated slices made harder than anything the
training showed (lower resolution, other contrast and gamma, a smooth bias field, noise, all drawn
per copy) give pairs of raw estimate and true Dice over a range of qualities, without a label of
any unannotated volume; a monotone map fitted to them (quality.fit_calibration) is stored in the
model file. Deterministic: the copies are drawn from a seeded generator.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .predict import keep_largest_components
from .preprocess import PreparedVolume
from .quality import Calibration, expected_dice, fit_calibration

#: Perturbed copies of each annotated volume (its annotated slices), besides the volume itself ...
COPIES = 12
#: ... fewer where the annotated slices are many: at most about this many slices are predicted in all.
MAX_SLICES = 600


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return float(low + (high - low) * torch.rand(1, generator=generator))


def perturb(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One harder copy of a stack [S, H, W] of normalised slices."""
    height, width = images.shape[-2:]
    x = images.clone()
    factor = _uniform(generator, 1.0, 3.0)
    if factor > 1.2:  # a lower resolution
        small = F.interpolate(x[:, None], scale_factor=1 / factor, mode="bilinear", antialias=True)
        x = F.interpolate(small, size=(height, width), mode="bilinear")[:, 0]
    x = x.clamp(0, 1) ** _uniform(generator, 0.5, 2.0)
    mean = x.mean()
    x = (x - mean) * _uniform(generator, 0.6, 1.4) + mean + _uniform(generator, -0.15, 0.15)
    field = F.interpolate(torch.randn(1, 1, 3, 3, generator=generator), size=(height, width), mode="bicubic",
                          align_corners=True)[0, 0]
    x = x * (1 + _uniform(generator, 0.0, 0.4) * field)
    return x + _uniform(generator, 0.0, 0.15) * torch.randn(x.shape, generator=generator)


def stack_pairs(probs: np.ndarray, truth: np.ndarray, num_classes: int,
                largest_component: bool) -> list[tuple[float, float]]:
    """(raw estimate, true Dice) per class present in the prediction or the truth of one stack."""
    labels = probs.argmax(1).astype(np.uint8)
    if largest_component:
        labels = keep_largest_components(labels, num_classes)
    confidence = np.take_along_axis(probs, probs.argmax(1)[:, None], 1)[:, 0]
    flat = labels.reshape(-1).astype(np.int64)
    counts = np.bincount(flat, minlength=num_classes)
    hits = np.bincount(flat, weights=confidence.reshape(-1), minlength=num_classes)
    raw = expected_dice(hits, counts, probs.sum(axis=(0, 2, 3), dtype=np.float64))
    pairs = []
    for c in range(1, num_classes):
        predicted, true = labels == c, truth == c
        total = int(predicted.sum()) + int(true.sum())
        if total:
            estimate = 0.0 if np.isnan(raw[c]) else float(raw[c])
            pairs.append((estimate, 2.0 * float((predicted & true).sum()) / total))
    return pairs


def fit_on_annotated(predict: Callable[[torch.Tensor], torch.Tensor], annotated: list[PreparedVolume],
                     num_classes: int, largest_component: bool, seed: int,
                     copies: int = COPIES) -> tuple[Calibration, int]:
    """The calibration from perturbed copies of the annotated slices of ``annotated`` (``predict`` maps a stack
    [S, H, W] to probabilities [S, C, H, W]); and the number of pairs it was fitted on."""
    generator = torch.Generator().manual_seed(seed)
    pairs: list[tuple[float, float]] = []
    total = sum(len(v.images) if v.annotated is None else int(v.annotated.sum()) for v in annotated)
    copies = max(1, min(copies, MAX_SLICES // max(1, total) - 1))
    for volume in annotated:
        rows = slice(None) if volume.annotated is None else volume.annotated
        images, truth = volume.images[rows], volume.labels[rows].numpy()
        if not len(images):
            continue
        for copy in range(copies + 1):
            x = images if copy == 0 else perturb(images, generator)
            pairs += stack_pairs(predict(x).numpy(), truth, num_classes, largest_component)
    raw, true = zip(*pairs) if pairs else ((), ())
    return fit_calibration(raw, true), len(pairs)
