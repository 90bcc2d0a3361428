"""The ZDT2 variant of Ma, Du & Matusik (ICML 2020, supplement) as a tiny MultiTaskModel.

3 variables x, 2 objectives: u = x1 + x2² + x3², s = x2² + x3²;
x1' = ½ sin(u) + ½, x2' = x3' = ½ cos(s) + ½; g = 1 + 4.5 (x2' + x3');
f1 = x1', f2 = g (1 - (x1'/g)²). Pareto front f2 = 1 - f1², f1 in [0, 1]; Pareto set
s = π with x1 in [-3π/2, -π/2].

The "encoder" holds x and outputs (f1, f2) for every sample (the data play no part); the heads
are the identity; each task's loss is its objective itself. All in float64.
"""

from __future__ import annotations

import math

import torch
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.tasks import TaskSet, TaskSpec
from torch import Tensor, nn


class ObjectiveTask(TaskSpec):
    """A task whose per-sample loss is the model's output itself (an objective to minimise)."""

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        return prediction.reshape(-1)


def zdt2_objectives(x: Tensor) -> Tensor:
    """(f1, f2) of the ZDT2 variant at x (3,) -> (2,)."""
    s = x[1] ** 2 + x[2] ** 2
    first = 0.5 * torch.sin(x[0] + s) + 0.5
    rest = 0.5 * torch.cos(s) + 0.5
    g = 1 + 4.5 * (2 * rest)
    return torch.stack([first, g * (1 - (first / g) ** 2)])


class Zdt2Variables(nn.Module):
    """Holds x (3,) (float64). inputs (B, ...) -> objectives repeated per sample (B, 2)."""

    def __init__(self, start: Tensor):
        super().__init__()
        self.x = nn.Parameter(start.to(torch.float64).clone())

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.x.normal_()

    def forward(self, inputs: Tensor) -> Tensor:
        return zdt2_objectives(self.x).expand(inputs.shape[0], 2)


class IdentityHeads(nn.Module):
    """z (B, T) -> stacked outputs (B, T, 1), unchanged.

    Holds one parameter that the outputs ignore (added times zero): the gradient engines expect
    heads with parameters. Its gradient and Hessian rows are zero, so it never moves.
    """

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, z: Tensor) -> Tensor:
        return z.unsqueeze(-1) + 0.0 * self.unused


def zdt2_model(start: Tensor) -> MultiTaskModel:
    return MultiTaskModel(Zdt2Variables(start), IdentityHeads(), num_tasks=2)


def zdt2_taskset() -> TaskSet:
    return TaskSet([ObjectiveTask("f1", "regression", 1), ObjectiveTask("f2", "regression", 1)])


def zdt2_batch(size: int = 4) -> tuple[Tensor, Tensor]:
    return torch.zeros(size, 1, dtype=torch.float64), torch.zeros(size, 2, dtype=torch.float64)


def distance_to_front(points: Tensor, resolution: int = 20001) -> Tensor:
    """Euclidean distance of objective vectors (n, 2) to the front f2 = 1 - f1², f1 ∈ [0, 1]."""
    f1 = torch.linspace(0.0, 1.0, resolution, dtype=torch.float64)
    curve = torch.stack([f1, 1 - f1**2], dim=1)
    return torch.cdist(points.to(torch.float64), curve).min(dim=1).values


def front_coverage(points: Tensor, radius: float, resolution: int = 1001) -> float:
    """Fraction of the true front (sampled evenly in f1) lying within ``radius`` of a point."""
    f1 = torch.linspace(0.0, 1.0, resolution, dtype=torch.float64)
    curve = torch.stack([f1, 1 - f1**2], dim=1)
    nearest = torch.cdist(curve, points.to(torch.float64)).min(dim=1).values
    return float((nearest <= radius).double().mean())


PARETO_SET_X1 = (-1.5 * math.pi, -0.5 * math.pi)
