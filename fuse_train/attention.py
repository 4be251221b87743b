"""Attention blocks of the fusion network: channel, spatial, dual-attention fusion, medical attention.

Layouts follow ../shared/docs/design-notes.md ("Model"): one channel- and one spatial-attention
module per fusion block, shared by both modalities (the same weights attend both feature maps).
"""

from __future__ import annotations

import torch
from torch import nn

#: Channel-attention bottleneck: C → C/16 → C (design).
CHANNEL_REDUCTION = 16
#: Spatial-attention kernel size in pixels (design: 7×7).
SPATIAL_KERNEL = 7
#: Hidden channels of the medical attention layer (design: 3 → 16 → 3).
MEDICAL_HIDDEN = 16


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation style channel gate: x [N,C,H,W] → x × sigmoid(MLP(mean_hw(x))).

    Global average pool → Linear C→C/r (no bias) → ReLU → Linear C/r→C (no bias) → sigmoid.
    """

    def __init__(self, channels: int, reduction: int = CHANNEL_REDUCTION) -> None:
        super().__init__()
        if channels < reduction or channels % reduction:
            raise ValueError(f"channels must be a positive multiple of reduction={reduction}, got {channels}")
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.fc(self.avg_pool(x).flatten(1))
        return x * weights[:, :, None, None]


class SpatialAttention(nn.Module):
    """Spatial gate: x [N,C,H,W] → x × sigmoid(conv7×7(x)) with a [N,1,H,W] map."""

    def __init__(self, channels: int, kernel_size: int = SPATIAL_KERNEL) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, kernel_size=kernel_size, padding=kernel_size // 2)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sigmoid(self.conv(x))


class DualAttentionFusion(nn.Module):
    """Fuse two same-shaped feature maps [N,C,H,W] into one [N,C,H,W].

    Each input goes through the shared channel attention then the shared spatial attention; the two
    results are concatenated (2C) and mixed by conv3×3 2C→C, BN, ReLU, conv3×3 C→C, BN, ReLU.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channel_attention = ChannelAttention(channels)
        self.spatial_attention = SpatialAttention(channels)
        self.fusion_conv = nn.Sequential(
            nn.Conv2d(channels * 2, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial_attention(self.channel_attention(x))

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return self.fusion_conv(torch.cat([self.attend(first), self.attend(second)], dim=1))


class MedicalAttention(nn.Sequential):
    """Per-pixel, per-channel gate on the output image: x [N,3,H,W] in [0,1] → x × sigmoid(...).

    conv3×3 3→16 (bias), ReLU, conv1×1 16→3, sigmoid; the result stays in [0,1] and is never
    brighter than the input. A ``Sequential`` so its parameter names (``0.weight``, ``2.weight``)
    match the original layout.
    """

    def __init__(self, channels: int = 3, hidden: int = MEDICAL_HIDDEN) -> None:
        super().__init__(
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * super().forward(x)
