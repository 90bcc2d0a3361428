"""Batches for training and evaluation, deterministic from a seed.

In-memory splits (``TensorDataset``) are sliced directly by index tensors, with no per-sample
collation; other datasets (lazily decoded images) go through a ``DataLoader``.

Training batches are resumable: :class:`TrainingBatches` keeps the shuffle generator's state at
the start of the current epoch and the number of batches drawn in it, so a checkpoint restores
the data order exactly without loading (or replaying) a single sample of the batches skipped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, TensorDataset

Batch = tuple[Tensor, Tensor]


def sample_count(dataset: Dataset) -> int:
    """Number of samples in ``dataset``, which must be map-style (sized).

    torch's ``Dataset`` declares no ``__len__`` (an iterable-style dataset may have none); every
    split a dataset of mtlbench returns has one, and this says so if one does not.
    """
    if not isinstance(dataset, Sized):
        raise TypeError(f"a split must be a sized (map-style) dataset: {type(dataset).__name__}")
    return len(dataset)


class TrainingBatches(Iterator[Batch]):
    """Endless shuffled batches (a fresh permutation each epoch; the last partial batch dropped).

    The shuffle uses its own generator seeded with ``seed``, independent of the model's RNG.
    For a ``DataLoader`` dataset the permutation is the one ``DataLoader(shuffle=True,
    generator=...)`` draws (its base seed, then ``RandomSampler``'s permutations), computed here
    so that an epoch can start at any batch. ``state_dict()``: {"epoch_start_rng": the shuffle
    generator's state when the current epoch's order was drawn, "position": batches of that epoch
    already yielded}.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        device: torch.device,
        num_workers: int = 0,
    ):
        self.dataset, self.batch_size, self.device = dataset, batch_size, device
        self.num_workers = num_workers
        self.generator = torch.Generator().manual_seed(seed)
        self.tensors: tuple[Tensor, Tensor] | None = None
        if isinstance(dataset, TensorDataset):
            inputs, targets = dataset.tensors
            self.tensors = (inputs.to(device), targets.to(device))
        count = sample_count(dataset)
        if count < batch_size:
            raise ValueError(f"the training split has {count} samples, fewer than batch_size")
        self.epoch_start_rng: Tensor = self.generator.get_state()
        self.position = 0
        self._epoch: list[Tensor] = []
        self._pending: Iterator[Batch] | None = None
        self._draw_epoch()

    def _draw_epoch(self) -> None:
        """Draw the next epoch's batch indices: a list of (batch_size,) index tensors."""
        self.epoch_start_rng = self.generator.get_state()
        self.position = 0
        count = len(self.dataset)  # type: ignore[arg-type]
        if self.tensors is not None:
            order = torch.randperm(count, generator=self.generator)
            self._epoch = [
                order[start : start + self.batch_size]
                for start in range(0, count - self.batch_size + 1, self.batch_size)
            ]
        else:  # as DataLoader(shuffle=True) draws it: its base seed first, then the sampler's
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)
            sampler = RandomSampler(self.dataset, generator=self.generator)  # type: ignore[arg-type]
            self._epoch = [
                torch.tensor(indices)
                for indices in BatchSampler(sampler, self.batch_size, drop_last=True)
            ]
        self._pending = None

    def _loaded(self, position: int) -> Iterator[Batch]:
        """The rest of the epoch from batch ``position``, loaded by a DataLoader."""
        loader = DataLoader(
            self.dataset,
            batch_sampler=[index.tolist() for index in self._epoch[position:]],
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(0),  # workers' seeds: not the shuffle's
        )
        for inputs, targets in loader:
            yield (
                inputs.to(self.device, non_blocking=True),
                targets.to(self.device, non_blocking=True),
            )

    def __next__(self) -> Batch:
        if self.position >= len(self._epoch):
            self._draw_epoch()
        if self.tensors is not None:
            index = self._epoch[self.position].to(self.device)
            self.position += 1
            return self.tensors[0][index], self.tensors[1][index]
        if self._pending is None:
            self._pending = self._loaded(self.position)
        self.position += 1
        return next(self._pending)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_start_rng": self.epoch_start_rng.clone(), "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: redraw that epoch's order, skip ``position`` batches
        without loading them."""
        self.generator.set_state(state["epoch_start_rng"])
        self._draw_epoch()
        self.position = int(state["position"])


def training_batches(
    dataset: Dataset, batch_size: int, seed: int, device: torch.device, num_workers: int = 0
) -> TrainingBatches:
    """Endless shuffled batches, resumable (:class:`TrainingBatches`)."""
    return TrainingBatches(dataset, batch_size, seed, device, num_workers)


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
