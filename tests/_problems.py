"""Small synthetic multi-task problems shared by the tests (CPU, milliseconds per step)."""

from __future__ import annotations

import torch
from mtlbench.harness.model import MultiTaskModel, StackedMLPHeads
from mtlbench.harness.tasks import TaskSet, TaskSpec
from torch import nn

INPUT_FEATURES = 8
CLASSES = 4


def tiny_taskset(num_tasks: int = 3) -> TaskSet:
    return TaskSet([TaskSpec(f"task{t}", "classification", CLASSES) for t in range(num_tasks)])


def tiny_model(num_tasks: int = 3, seed: int = 0, hidden: int = 16) -> MultiTaskModel:
    """MLP encoder 8 → hidden → hidden and T stacked linear heads hidden → 4."""
    torch.manual_seed(seed)
    encoder = nn.Sequential(
        nn.Linear(INPUT_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
    )
    heads = StackedMLPHeads(num_tasks, hidden, CLASSES, hidden=None)
    return MultiTaskModel(encoder, heads, num_tasks)


def tiny_batches(num_tasks: int = 3, batch_size: int = 32, count: int = 200, seed: int = 0):
    """A fixed list of ``count`` batches with learnable labels (a random linear teacher)."""
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(num_tasks, INPUT_FEATURES, CLASSES, generator=generator)
    batches = []
    for _ in range(count):
        inputs = torch.randn(batch_size, INPUT_FEATURES, generator=generator)
        targets = torch.einsum("bi,tic->btc", inputs, teacher).argmax(dim=-1).float()
        batches.append((inputs, targets))
    return batches
