"""The dataset contract: splits, tasks, a default model, and stand-in batches of the real shapes.

Every split is a ``torch.utils.data.Dataset`` whose items are ``(input, targets)`` with
``targets: (T,)`` float (classification columns hold class indices). In-memory datasets return
a ``TensorDataset``; the trainer then slices batches directly instead of collating samples.

A *stand-in batch* (:meth:`MultiTaskDataset.stand_in_batch`) has the shapes and value ranges of
a real batch without reading any file: scaling studies measure a dataset's costs on it where the
files are absent (the costs of its model depend on the shapes, not on the values).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.tasks import TaskSet
from pydantic import BaseModel, ConfigDict
from torch import Tensor
from torch.utils.data import Dataset


class DatasetParams(BaseModel):
    """Base of every dataset's parameters. data_root: where the downloaded files lie."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_root: Path | None = None


class DatasetFileError(ValueError):
    """A dataset file is missing or malformed; the message names the file and the problem.

    absent: the files are not there at all (no data root, or a file or folder the loader needs
    is absent), as opposed to present but malformed. Scaling studies measure such a dataset's
    costs on a stand-in batch; a malformed file stays an error. (An attribute, not a subclass:
    the CLI recognises this error by its class name in a failed run's recorded error.)
    """

    def __init__(self, message: str, *, absent: bool = False):
        super().__init__(message)
        self.absent = absent


def stand_in_targets(taskset: TaskSet, batch_size: int, generator: torch.Generator) -> Tensor:
    """Valid targets (batch_size, T) float32 for each task kind: a class index drawn uniformly
    in [0, num_outputs) for classification, a standard normal value for regression (the real
    targets are standardised), 0 for an objective (its output is the loss; no target)."""
    columns = []
    for task in taskset:
        if task.kind == "classification":
            column = torch.randint(0, task.num_outputs, (batch_size,), generator=generator)
            columns.append(column.float())
        elif task.kind == "regression":
            columns.append(torch.randn(batch_size, generator=generator))
        else:
            columns.append(torch.zeros(batch_size))
    return torch.stack(columns, dim=1)


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset


class MultiTaskDataset(ABC):
    """Base class. Subclasses set ``Params``, implement ``taskset``, ``load`` and ``build_model``.

    training_defaults: the paper's settings for this dataset (batch size, optimizer, lr), which a
    suite may adopt; recorded with every run.
    """

    Params: ClassVar[type[DatasetParams]] = DatasetParams
    training_defaults: ClassVar[dict[str, object]] = {}
    model_description: ClassVar[str] = ""
    registry_name: ClassVar[str] = ""

    def __init__(self, params: DatasetParams):
        self.params = params

    @classmethod
    @abstractmethod
    def taskset(cls, params: DatasetParams) -> TaskSet:
        """The tasks, known without reading any data."""

    @abstractmethod
    def load(self) -> Splits:
        """Read (or build) the train/val/test splits."""

    @abstractmethod
    def build_model(self) -> MultiTaskModel:
        """A freshly initialised default model (uses the global torch RNG: seed first)."""

    @classmethod
    def input_shape(cls, params: DatasetParams) -> tuple[int, ...]:
        """The shape of one input sample, known without reading any data (e.g. (3, 64, 64)).

        Each dataset states it; it must equal the shape of the items :meth:`load` returns.
        """
        raise NotImplementedError(f"dataset {cls.registry_name!r} states no input shape")

    @classmethod
    def stand_in_inputs(
        cls, params: DatasetParams, batch_size: int, generator: torch.Generator
    ) -> Tensor:
        """Stand-in inputs (batch_size, *input_shape): standard normal float32, the range of
        standardised inputs; a dataset whose real inputs lie elsewhere overrides this."""
        return torch.randn((batch_size, *cls.input_shape(params)), generator=generator)

    @classmethod
    def stand_in_batch(
        cls, params: DatasetParams, batch_size: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """A batch of the real shapes with valid values, read from no file: inputs
        (batch_size, *input_shape) and targets (batch_size, T) float32 (:func:`stand_in_targets`).
        Drawn from ``generator`` alone (seed it for a reproducible batch)."""
        inputs = cls.stand_in_inputs(params, batch_size, generator)
        return inputs, stand_in_targets(cls.taskset(params), batch_size, generator)

    @classmethod
    def true_front(cls, params: DatasetParams) -> np.ndarray | None:
        """The known Pareto front, or None (every learning dataset: it is unknown).

        A dense sample of the front in objective space, shape (N, T), float64, in the units of
        the recorded ``test_objectives`` (minimised, task order of :meth:`taskset`); analytic
        problems return it so that fronts can be held to it (HV / true HV, distance to it).
        """
        return None
