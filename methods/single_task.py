"""``single_task``: train on one task alone; the reference rows that Δm% is measured against.

A suite entry without ``task`` expands into one run per task. The run trains the shared
encoder and that task's head with weight 1 on its loss (the other heads are never updated);
it is evaluated on every task, but only its own task's metric serves as a baseline.
"""

from __future__ import annotations

import torch
from mtlbench.harness.method import MethodParams, TrainingConfig
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.registry import register_method
from mtlbench.harness.tasks import TaskSet
from mtlbench.harness.weighting import LossWeighting


class SingleTaskParams(MethodParams):
    """task: index of the task to train (None: expand to every task)."""

    task: int | None = None


@register_method("single_task")
class SingleTask(LossWeighting[SingleTaskParams]):
    """Weight 1 on its task, 0 on the others."""

    Params = SingleTaskParams
    weights_on_simplex = True
    is_baseline = True
    consumes = "task losses"
    cost = "1 forward + 1 backward (one run per task)"
    paper = "the Δm% reference: one model per task"

    def __init__(
        self,
        params: SingleTaskParams,
        model: MultiTaskModel,
        taskset: TaskSet,
        training: TrainingConfig,
    ) -> None:
        super().__init__(params, model, taskset, training)
        if params.task is None:
            raise ValueError("single_task needs a task index (suites expand it automatically)")
        self.fixed_weights = torch.zeros(len(taskset))
        self.fixed_weights[params.task] = 1.0

    @classmethod
    def check(cls, params: SingleTaskParams, taskset: TaskSet) -> None:
        if params.task is not None and not 0 <= params.task < len(taskset):
            raise ValueError(f"task must be in [0, {len(taskset) - 1}], got {params.task}")

    @classmethod
    def expand(cls, params: SingleTaskParams, taskset: TaskSet) -> list[SingleTaskParams]:
        if params.task is not None:
            return [params]
        return [SingleTaskParams(task=t) for t in range(len(taskset))]

    def weights(self, task_losses: torch.Tensor) -> torch.Tensor:
        return self.fixed_weights.to(task_losses)
