"""Models for the benchmark scripts (plain torch; torchvision cannot sit beside the CPU torch).

``resnet18_encoder``: the CIFAR-style ResNet-18 of Sener & Koltun's CelebA experiments, used by
``step_time.py --device cuda`` when ``mtlbench.datasets._models`` has none of its own.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class _Block(nn.Module):
    """Basic residual block: 3×3 conv-BN-ReLU, 3×3 conv-BN, plus a (projected) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.project = None
        if stride != 1 or in_channels != out_channels:
            self.project = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.project is None else self.project(x)
        hidden = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(hidden)) + shortcut)


class _ResNet18(nn.Module):
    """3×3 stem (no max-pool), stages of 64/128/256/512 channels (strides 1, 2, 2, 2), then a
    4×4 average pool and flatten: x (B, 3, 64, 64) -> z (B, 2048). 11,168,832 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()
        )
        blocks, channels = [], 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [_Block(channels, width, stride), _Block(width, width, 1)]
            channels = width
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.blocks(self.stem(x)), 4).flatten(1)


def resnet18_encoder(side: int = 64) -> nn.Module:
    """The project's ResNet-18 encoder if the datasets package has one, else this file's."""
    try:
        from mtlbench.datasets._models import ResNet18Encoder  # type: ignore[attr-defined]
    except ImportError:
        return _ResNet18()
    return ResNet18Encoder(side)
