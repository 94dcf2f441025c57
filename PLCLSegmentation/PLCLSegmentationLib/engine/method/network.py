"""The 2D U-Net of Chaitanya et al. with a segmentation head and contrastive projection heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import most_embedding_levels


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(*_conv_bn_relu(in_channels, out_channels), *_conv_bn_relu(out_channels, out_channels))


def channel_plan(base_channels: int, levels: int) -> list[int]:
    """16, 32, 64, 128, 128, 128 for the paper's base of 16 and six levels."""
    return [base_channels * min(2**level, 8) for level in range(levels)]


class UNet2D(nn.Module):
    """Encoder of ``levels`` double-conv blocks with max-pooling; decoder of nearest x2 upsampling,
    a conv, skip concatenation and a double conv; heads at full resolution. ``embedding_levels`` > 1
    adds a projection head on each of the next coarser decoder outputs (1/2, 1/4, ... resolution)."""

    def __init__(self, num_classes: int, base_channels: int = 16, levels: int = 6, embedding_dim: int = 16,
                 in_channels: int = 1, initialise: bool = True, embedding_levels: int = 1) -> None:
        super().__init__()
        channels = channel_plan(base_channels, levels)
        self.in_channels = in_channels
        self.encoder = nn.ModuleList()
        previous = in_channels
        for width in channels:
            self.encoder.append(_double_conv(previous, width))
            previous = width
        self.up_convs = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for skip_width in reversed(channels[:-1]):
            self.up_convs.append(nn.Sequential(*_conv_bn_relu(previous, skip_width)))
            self.decoder.append(_double_conv(2 * skip_width, skip_width))
            previous = skip_width
        head_width = channels[0]
        self.segmentation_head = nn.Sequential(
            *_conv_bn_relu(previous, head_width), *_conv_bn_relu(head_width, head_width),
            nn.Conv2d(head_width, num_classes, 3, padding=1))
        self.projection_head = nn.Sequential(
            *_conv_bn_relu(previous, embedding_dim, kernel=1), nn.Conv2d(embedding_dim, embedding_dim, 1))
        if not 1 <= embedding_levels <= most_embedding_levels(levels):
            raise ValueError(f"embedding_levels {embedding_levels}: 1 to {most_embedding_levels(levels)} "
                             f"with {levels} levels")
        # Empty for one level, so such a network's weights are those of networks before this option.
        self.coarse_projection_heads = nn.ModuleList(
            nn.Sequential(*_conv_bn_relu(width, embedding_dim, kernel=1), nn.Conv2d(embedding_dim, embedding_dim, 1))
            for width in channels[1:embedding_levels])
        self.divisor = 2 ** (levels - 1)
        if initialise:
            self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")  # He-normal
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The decoder's outputs, finest (full resolution) first, as many as the projection heads."""
        skips, outputs = [], []
        for level, block in enumerate(self.encoder):
            if level:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for up_conv, block, skip in zip(self.up_convs, self.decoder, reversed(skips[:-1])):
            x = up_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
            x = block(torch.cat([x, skip], dim=1))
            outputs.append(x)
        return outputs[::-1][:1 + len(self.coarse_projection_heads)] if outputs else [x]

    def forward(self, x: torch.Tensor, with_embedding: bool = False):
        """Logits [B, C, H, W]; with ``with_embedding`` also the projections (not normalised), one per
        embedding level, finest first: [B, D, H, W], [B, D, H/2, W/2], ..."""
        features = self.features(x)
        logits = self.segmentation_head(features[0])
        if with_embedding:
            heads = [self.projection_head, *self.coarse_projection_heads]
            return logits, [head(level) for head, level in zip(heads, features)]
        return logits
