"""The dataset contract: splits, tasks and a default model.

Every split is a ``torch.utils.data.Dataset`` whose items are ``(input, targets)`` with
``targets: (T,)`` float (classification columns hold class indices). In-memory datasets return
a ``TensorDataset``; the trainer then slices batches directly instead of collating samples.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.tasks import TaskSet
from pydantic import BaseModel, ConfigDict
from torch.utils.data import Dataset


class DatasetParams(BaseModel):
    """Base of every dataset's parameters. data_root: where the downloaded files lie."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_root: Path | None = None


class DatasetFileError(ValueError):
    """A dataset file is missing or malformed; the message names the file and the problem."""


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
    def true_front(cls, params: DatasetParams) -> np.ndarray | None:
        """The known Pareto front, or None (every learning dataset: it is unknown).

        A dense sample of the front in objective space, shape (N, T), float64, in the units of
        the recorded ``test_objectives`` (minimised, task order of :meth:`taskset`); analytic
        problems return it so that fronts can be held to it (HV / true HV, distance to it).
        """
        return None
