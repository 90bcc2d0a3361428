"""Batches for training and evaluation, deterministic from a seed.

In-memory splits (``TensorDataset``) are sliced directly by index tensors, with no per-sample
collation; other datasets (lazily decoded images) go through a ``DataLoader``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

Batch = tuple[Tensor, Tensor]


def training_batches(
    dataset: Dataset, batch_size: int, seed: int, device: torch.device, num_workers: int = 0
) -> Iterator[Batch]:
    """Endless shuffled batches (a fresh permutation each epoch; the last partial batch dropped).

    The shuffle uses its own generator seeded with ``seed``, independent of the model's RNG.
    """
    generator = torch.Generator().manual_seed(seed)
    if isinstance(dataset, TensorDataset):
        inputs, targets = dataset.tensors
        inputs, targets = inputs.to(device), targets.to(device)
        count = len(inputs)
        if count < batch_size:
            raise ValueError(f"the training split has {count} samples, fewer than batch_size")
        while True:
            order = torch.randperm(count, generator=generator).to(device)
            for start in range(0, count - batch_size + 1, batch_size):
                index = order[start : start + batch_size]
                yield inputs[index], targets[index]
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        generator=generator,
        num_workers=num_workers,
    )
    while True:
        for inputs, targets in loader:
            yield inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)


def evaluation_batches(
    dataset: Dataset, batch_size: int, device: torch.device, num_workers: int = 0
) -> Iterator[Batch]:
    """One ordered pass over a split."""
    if isinstance(dataset, TensorDataset):
        inputs, targets = dataset.tensors
        for start in range(0, len(inputs), batch_size):
            yield (
                inputs[start : start + batch_size].to(device),
                targets[start : start + batch_size].to(device),
            )
        return
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for inputs, targets in loader:
        yield inputs.to(device), targets.to(device)
