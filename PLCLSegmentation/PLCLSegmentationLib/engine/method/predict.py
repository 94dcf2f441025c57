"""Whole-slice prediction by sliding window, mapped back onto each volume's own grid."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..runtime import autocast_to
from .preprocess import PreparedVolume, resize_probabilities


def _tile_starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step)) + [length - tile]
    return sorted(set(starts))


def _gaussian_weight(tile: int) -> torch.Tensor:
    """Tile centres count more than tile borders, where context is missing (as in nnU-Net)."""
    coords = torch.arange(tile, dtype=torch.float32) - (tile - 1) / 2
    g = torch.exp(-(coords**2) / (2 * (tile / 8) ** 2))
    weight = torch.outer(g, g)
    return (weight / weight.max()).clamp(min=1e-3)


@torch.no_grad()
def predict_slices(model: torch.nn.Module, images: torch.Tensor, num_classes: int, tile: int,
                   overlap: float, divisor: int, device: torch.device, batch_size: int | None = None,
                   channels_last: bool = False, autocast: torch.dtype | None = None) -> torch.Tensor:
    """Softmax probabilities [S, K, H, W] (on the CPU) for a stack of slices [S, H, W], or of network
    inputs [S, C, H, W] (preprocess.with_neighbours).

    Slices smaller than the tile are predicted whole (padded to the network's divisor); larger ones
    by overlapping tiles blended with Gaussian weights, so nothing outside a centre crop is lost.
    Windows go through the network ``batch_size`` at a time (more on a GPU) and are blended on the
    device; the result crosses to the host once.
    """
    model.eval()
    if batch_size is None:
        batch_size = 8 if device.type == "cpu" else 64
    if images.dim() == 3:
        images = images[:, None]
    n_slices, _, height, width = images.shape
    tile = max(divisor, tile - tile % divisor)
    tile_h = min(tile, math.ceil(height / divisor) * divisor)
    tile_w = min(tile, math.ceil(width / divisor) * divisor)
    pad_h, pad_w = max(0, tile_h - height), max(0, tile_w - width)
    padded = images.to(device)
    padded = F.pad(padded, (0, pad_w, 0, pad_h)) if pad_h or pad_w else padded
    full_h, full_w = padded.shape[-2:]
    step_h = max(1, int(tile_h * (1 - overlap)))
    step_w = max(1, int(tile_w * (1 - overlap)))
    offsets = [(r, c) for r in _tile_starts(full_h, tile_h, step_h) for c in _tile_starts(full_w, tile_w, step_w)]
    windows = [(s, r, c) for s in range(n_slices) for r, c in offsets]
    single = len(offsets) == 1
    acc = torch.zeros((n_slices, num_classes, full_h, full_w), device=device)
    norm = None if single else torch.zeros((n_slices, 1, full_h, full_w), device=device)
    weight = None if single else _gaussian_weight(max(tile_h, tile_w))[:tile_h, :tile_w].to(device)
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        if single:  # whole slices: a contiguous run of the stack, no copying of windows
            x = padded[start:start + len(chunk)]
        else:
            x = torch.stack([padded[s, :, r:r + tile_h, c:c + tile_w] for s, r, c in chunk])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_to(device, autocast):
            logits = model(x)
        probs = logits.float().softmax(dim=1)
        if single:
            acc[start:start + len(chunk)] = probs
            continue
        for (s, r, c), p in zip(chunk, probs):
            acc[s, :, r:r + tile_h, c:c + tile_w] += p * weight
            norm[s, :, r:r + tile_h, c:c + tile_w] += weight
    if norm is not None:
        acc /= norm
    return acc[:, :, :height, :width].cpu()


@dataclass
class VolumePrediction:
    labels: np.ndarray  # uint8 [k, j, i], class indices
    uncertainty: np.ndarray  # float32 [k, j, i], normalised entropy in [0, 1]
    score: float  # mean uncertainty over the predicted foreground


def map_to_volume(prepared: PreparedVolume, probs: torch.Tensor) -> VolumePrediction:
    """Resample slice probabilities back to the native in-plane size and the volume's axis order."""
    layout = prepared.layout
    num_classes = probs.shape[1]
    labels = np.empty(layout.native_shape, dtype=np.uint8)
    entropy = np.empty(layout.native_shape, dtype=np.float32)
    for start in range(0, probs.shape[0], 16):  # chunks bound memory on large volumes
        p = resize_probabilities(probs[start:start + 16], layout.native_shape[1:]).clamp_min(1e-8)
        labels[start:start + 16] = p.numpy().argmax(1)  # numpy's: 3-4x faster than torch's across channels
        h = -(p * p.log()).sum(1) / math.log(num_classes)
        entropy[start:start + 16] = h.clamp(0, 1).numpy()
    labels_kji = layout.from_stack(labels)
    entropy_kji = layout.from_stack(entropy)
    foreground = labels_kji > 0
    score = float(entropy_kji[foreground].mean()) if foreground.any() else 1.0
    return VolumePrediction(labels_kji, entropy_kji, score)
