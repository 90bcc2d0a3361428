"""Task descriptions and the per-task losses/metrics of a multi-task dataset.

A batch's targets are one float tensor ``targets: (B, T)``; classification tasks read their
column as class indices. Model outputs are either one stacked tensor ``(B, T, C)`` (all heads of
equal width, the fast path) or a list of ``T`` tensors ``(B, C_t)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

TaskKind = Literal["classification", "regression", "objective"]
Outputs = Tensor | Sequence[Tensor]


@dataclass(frozen=True)
class TaskSpec:
    """One task of a dataset.

    name: column name in records.
    kind: ``classification`` (cross-entropy on logits, metric accuracy), ``regression``
        (loss ``regression_loss`` on one output, metric mean absolute error) or ``objective``
        (the model's one output *is* the quantity to minimise: loss, metric and objective are
        that output itself, lower is better; the analytic problems of ``datasets/analytic.py``).
    hv_reference: the reference value of this task's *objective* (the minimised quantity the
        hypervolume is computed on: classification error ``1 - accuracy``, the regression MAE or
        the objective's value). For classification it is 1.0, the worst possible error;
        regression and objective datasets state theirs.
    regression_loss: ``huber`` | ``l1`` | ``mse`` (regression only).
    """

    name: str
    kind: TaskKind
    num_outputs: int
    hv_reference: float = 1.0
    regression_loss: Literal["huber", "l1", "mse"] = "huber"

    @property
    def metric_name(self) -> str:
        return {"classification": "accuracy", "regression": "mae"}.get(self.kind, "objective")

    @property
    def objective_name(self) -> str:
        """Name of the minimised quantity used for fronts and hypervolume."""
        return {"classification": "error", "regression": "mae"}.get(self.kind, "objective")

    @property
    def higher_is_better(self) -> bool:
        return self.kind == "classification"

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Per-sample loss. prediction: (B, C); target: (B,) -> (B,)."""
        if self.kind == "classification":
            return F.cross_entropy(prediction, target.long(), reduction="none")
        if self.kind == "objective":  # the output is the objective: no target
            return prediction.reshape(-1)
        value = prediction.reshape(-1)
        if self.regression_loss == "huber":
            return F.huber_loss(value, target, reduction="none")
        if self.regression_loss == "l1":
            return F.l1_loss(value, target, reduction="none")
        return F.mse_loss(value, target, reduction="none")

    def metric(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Per-sample metric (accuracy in {0, 1}, absolute error, or the objective's value).
        Shapes as ``loss``."""
        if self.kind == "classification":
            return (prediction.argmax(dim=-1) == target.long()).to(prediction.dtype)
        if self.kind == "objective":
            return prediction.reshape(-1)
        return (prediction.reshape(-1) - target).abs()

    def objective(self, metric_value: float) -> float:
        """Turn a mean metric into the minimised objective (error, MAE or the objective)."""
        return 1.0 - metric_value if self.kind == "classification" else metric_value


class TaskSet:
    """The ordered tasks of a dataset, with losses computed for all tasks at once.

    When every task is classification with the same number of classes and the outputs come
    stacked ``(B, T, C)``, the T cross-entropies are one fused kernel call: this is what keeps
    the EW baseline tuned at T = 40.
    """

    def __init__(self, tasks: Sequence[TaskSpec]):
        if not tasks:
            raise ValueError("a dataset needs at least one task")
        self.tasks: tuple[TaskSpec, ...] = tuple(tasks)
        widths = {t.num_outputs for t in self.tasks}
        self.fusable = all(t.kind == "classification" for t in self.tasks) and len(widths) == 1

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[TaskSpec]:
        return iter(self.tasks)

    def __getitem__(self, index: int) -> TaskSpec:
        return self.tasks[index]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def per_sample_losses(self, outputs: Outputs, targets: Tensor) -> Tensor:
        """Per-task, per-sample losses. targets: (B, T) -> (B, T)."""
        if isinstance(outputs, Tensor) and self.fusable:
            batch, tasks, classes = outputs.shape
            flat = F.cross_entropy(
                outputs.reshape(batch * tasks, classes),
                targets.reshape(batch * tasks).long(),
                reduction="none",
            )
            return flat.view(batch, tasks)
        columns = [
            task.loss(task_output(outputs, t), targets[:, t]) for t, task in enumerate(self.tasks)
        ]
        return torch.stack(columns, dim=1)

    def losses(self, outputs: Outputs, targets: Tensor) -> Tensor:
        """Mean loss of each task over the batch: (T,)."""
        return self.per_sample_losses(outputs, targets).mean(dim=0)

    def per_sample_metrics(self, outputs: Outputs, targets: Tensor) -> Tensor:
        """Per-task, per-sample metric values: (B, T)."""
        columns = [
            task.metric(task_output(outputs, t), targets[:, t]) for t, task in enumerate(self.tasks)
        ]
        return torch.stack(columns, dim=1)

    @property
    def hv_reference(self) -> list[float]:
        return [t.hv_reference for t in self.tasks]


def task_output(outputs: Outputs, index: int) -> Tensor:
    """Output of task ``index``: (B, C_t), from stacked or listed outputs."""
    if isinstance(outputs, Tensor):
        return outputs[:, index]
    return outputs[index]
