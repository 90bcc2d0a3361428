"""Default model builders shared by several datasets."""

from __future__ import annotations

import torch
from mtlbench.harness.model import MultiTaskModel, StackedMLPHeads
from torch import nn


class LeNetEncoder(nn.Module):
    """MultiLeNet-style encoder (Sener & Koltun 2018), sized by the input side.

    conv(1→10, 5×5) → max-pool 2 → ReLU → conv(10→20, 5×5) → Dropout2d → max-pool 2 → ReLU →
    flatten → Linear(·, 50) → ReLU. x: (B, 1, S, S) -> z: (B, 50).
    """

    def __init__(self, side: int, representation: int = 50, dropout: float = 0.5):
        super().__init__()
        after_first = (side - 4) // 2
        after_second = (after_first - 4) // 2
        self.features = nn.Sequential(
            nn.Conv2d(1, 10, kernel_size=5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(10, 20, kernel_size=5),
            nn.Dropout2d(dropout),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.fc = nn.Sequential(
            nn.Linear(20 * after_second * after_second, representation), nn.ReLU()
        )

    def forward(self, x):
        return self.fc(self.features(x))


def multi_lenet(side: int, num_tasks: int, num_classes: int = 10) -> MultiTaskModel:
    """LeNet encoder + T heads ``50 → 50 → num_classes`` (stacked, one batched product each)."""
    encoder = LeNetEncoder(side)
    heads = StackedMLPHeads(num_tasks, 50, num_classes, hidden=50)
    return MultiTaskModel(encoder, heads, num_tasks)


class BasicBlock(nn.Module):
    """Two 3×3 conv + BatchNorm layers with an identity (or 1×1 conv + BN) shortcut (He et al.
    2016). x: (B, in, H, W) -> (B, out, H/stride, W/stride)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18Encoder(nn.Module):
    """CIFAR-style ResNet-18 encoder (the one Sener & Koltun 2018 and PaMaL use on 64×64 faces).

    3×3 stem conv (stride 1, no max-pool) + BN + ReLU, then four stages of two basic blocks with
    ``width·(1, 2, 4, 8)`` channels and strides (1, 2, 2, 2), then average pooling to a
    ``grid × grid`` map with ``grid = max(1, side // 32)`` and flatten. With width 64 that is
    11,168,832 parameters, and on 64×64 inputs the 8×8 final map is pooled by 4×4 windows into
    2×2×512 = 2048 features, as the reference's ``avg_pool2d(out, 4)``. Written in plain torch:
    torchvision cannot be installed beside the CPU torch this project pins.
    x: (B, 3, side, side) -> z: (B, 8·width·grid²).
    """

    def __init__(self, side: int, width: int = 64, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        stages = []
        channels = width
        for index, stride in enumerate((1, 2, 2, 2)):
            out_channels = width * 2**index
            stages.append(BasicBlock(channels, out_channels, stride))
            stages.append(BasicBlock(out_channels, out_channels, 1))
            channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.grid = max(1, side // 32)
        self.pool = nn.AdaptiveAvgPool2d(self.grid)
        self.representation_size = channels * self.grid * self.grid

    def forward(self, x):
        return self.pool(self.stages(self.stem(x))).flatten(1)


class MLPEncoder(nn.Module):
    """Fully connected encoder ``in → hidden[0] → … → hidden[-1]``, ReLU after every layer.
    x: (B, in) -> z: (B, hidden[-1])."""

    def __init__(self, in_features: int, hidden: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip((in_features, *hidden[:-1]), hidden, strict=True):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)
