"""``single_task``: train on one task alone; the reference rows that Δm% is measured against.

A suite entry without ``task`` expands into one run per task. The run trains the shared
encoder and that task's head with weight 1 on its loss (the other heads are never updated);
it is evaluated on every task, but only its own task's metric serves as a baseline.
"""

from __future__ import annotations

import torch
from mtlbench.harness.gradients import Batch, GradientEngine
from mtlbench.harness.method import Method, MethodParams, StepLog
from mtlbench.harness.registry import register_method
from mtlbench.harness.tasks import TaskSet


class SingleTaskParams(MethodParams):
    """task: index of the task to train (None: expand to every task)."""

    task: int | None = None


@register_method("single_task")
class SingleTask(Method):
    Params = SingleTaskParams
    produces_weights = True

    def __init__(self, params: SingleTaskParams, model, taskset, training):
        super().__init__(params, model, taskset, training)
        if params.task is None:
            raise ValueError("single_task needs a task index (suites expand it automatically)")
        self.weights = torch.zeros(len(taskset))
        self.weights[params.task] = 1.0

    @classmethod
    def check(cls, params: SingleTaskParams, taskset: TaskSet) -> None:
        if params.task is not None and not 0 <= params.task < len(taskset):
            raise ValueError(f"task must be in [0, {len(taskset) - 1}], got {params.task}")

    @classmethod
    def expand(cls, params: SingleTaskParams, taskset: TaskSet) -> list[SingleTaskParams]:
        if params.task is not None:
            return [params]
        return [SingleTaskParams(task=t) for t in range(len(taskset))]

    def step(self, batch: Batch, engine: GradientEngine) -> StepLog:
        self.optimizer.zero_grad(set_to_none=True)
        state = engine.forward(batch)
        weights = self.weights.to(state.task_losses.device)
        engine.backward(state, weights)
        self.optimizer.step()
        return {"task_losses": state.task_losses.detach(), "weights": weights}
