"""Default model builders shared by several datasets."""

from __future__ import annotations

from torch import nn

from mtlbench.harness.model import MultiTaskModel, StackedMLPHeads


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
        self.fc = nn.Sequential(nn.Linear(20 * after_second * after_second, representation), nn.ReLU())

    def forward(self, x):
        return self.fc(self.features(x))


def multi_lenet(side: int, num_tasks: int, num_classes: int = 10) -> MultiTaskModel:
    """LeNet encoder + T heads ``50 → 50 → num_classes`` (stacked, one batched product each)."""
    encoder = LeNetEncoder(side)
    heads = StackedMLPHeads(num_tasks, 50, num_classes, hidden=50)
    return MultiTaskModel(encoder, heads, num_tasks)
