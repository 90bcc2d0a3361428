"""Evaluation of a method's solutions: per-task losses, metrics and objectives on val and test.

Not charged to the budget (the trainer evaluates inside ``Budget.uncharged``). Each solution is
one pass over each split in batches of ``EVAL_BATCH_SIZE``; the front's hypervolume is taken on
the minimised objectives against the dataset's reference point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from mtlbench.harness.data import evaluation_batches
from mtlbench.harness.dataset import Splits
from mtlbench.harness.method import Method
from mtlbench.harness.metrics import HypervolumeResult, hypervolume
from mtlbench.harness.tasks import TaskSet
from torch.utils.data import Dataset

EVAL_BATCH_SIZE = 1024


@dataclass
class SolutionResult:
    """One evaluated solution: per-task losses, metrics and objectives on val and test (T,)."""

    index: int
    label: str
    coordinates: list[float] | None
    val_losses: list[float]
    val_metrics: list[float]
    val_objectives: list[float]
    test_losses: list[float]
    test_metrics: list[float]
    test_objectives: list[float]
    on_front: bool = False


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module, taskset: TaskSet, split: Dataset, device: torch.device
) -> tuple[list[float], list[float], list[float]]:
    """Mean per-task loss, metric and objective over a split: three lists of length T."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros(len(taskset), dtype=torch.float64, device=device)
    metric_sum = torch.zeros(len(taskset), dtype=torch.float64, device=device)
    count = 0
    for inputs, targets in evaluation_batches(split, EVAL_BATCH_SIZE, device):
        outputs = model(inputs)
        loss_sum += taskset.per_sample_losses(outputs, targets).sum(dim=0).double()
        metric_sum += taskset.per_sample_metrics(outputs, targets).sum(dim=0).double()
        count += int(inputs.shape[0])
    model.train(was_training)
    losses = (loss_sum / count).tolist()
    metrics = (metric_sum / count).tolist()
    objectives = [task.objective(value) for task, value in zip(taskset, metrics, strict=True)]
    return losses, metrics, objectives


def evaluate_solutions(
    method: Method, taskset: TaskSet, splits: Splits, device: torch.device, with_test: bool = True
) -> list[SolutionResult]:
    results = []
    for index, solution in enumerate(method.solutions()):
        val = evaluate_model(solution.model, taskset, splits.val, device)
        test = evaluate_model(solution.model, taskset, splits.test, device) if with_test else val
        coordinates = list(map(float, solution.coordinates)) if solution.coordinates else None
        results.append(SolutionResult(index, solution.label, coordinates, *val, *test))
    method.model.train()
    return results


def front_hypervolume(objectives: list[list[float]], reference: list[float]) -> HypervolumeResult:
    return hypervolume(np.asarray(objectives, dtype=float).reshape(-1, len(reference)), reference)
