"""``analytic``: multi-objective problems whose Pareto front is known, as a dataset.

What they are for: checking a method's *front* (does it reach the true front, how much of it,
how evenly), not ranking methods for real learning; see ``docs/analytic.md``.

How a problem becomes a dataset:

- the decision vector is the model's parameters: the encoder (:class:`DecisionVector`) holds θ
  (n,) and outputs the problem's decision vector z (B, n), the same for every sample;
- the heads (:class:`ObjectiveHeads`) have no parameters: they compute the T objectives of z,
  stacked (B, T, 1);
- every task is of kind ``objective``: its loss, metric and recorded objective are the
  objective's value (lower is better);
- the batch is constant: every split is one sample (input 0, no targets), so use
  ``batch_size: 1`` (``training_defaults``);
- everything is float64.

Problems (``problem``; ``datasets/_analytic_problems.py`` has the formulas, parameterisations,
fronts and the density of their samples): ``zdt2_ma2020`` (Ma, Du & Matusik 2020's ZDT2 variant,
3 variables, non-convex), ``zdt1`` (convex), ``zdt2`` (non-convex), ``dtlz2`` (3 objectives,
non-convex), ``quadratic`` (convex, ``num_objectives`` 2 or 3). ``true_front`` returns the dense
sample and ``taskset(params).hv_reference`` the reference point (1.1 in every objective).

Cost: the passes are element-wise, which ``FlopCounterMode`` counts as 0; the harness costs them
by its element-wise rule (``harness/costs.py``), so a FLOP budget ends these runs too.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from mtlbench.datasets._analytic_problems import (
    DEFAULT_VARIABLES,
    PROBLEMS,
    AnalyticProblem,
    Quadratic,
)
from mtlbench.harness.dataset import DatasetParams, MultiTaskDataset, Splits
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.registry import register_dataset
from mtlbench.harness.tasks import TaskSet, TaskSpec
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.utils.data import TensorDataset

ProblemName = Literal["zdt2_ma2020", "zdt1", "zdt2", "dtlz2", "quadratic"]
OBJECTIVE_COUNTS = {"zdt2_ma2020": 2, "zdt1": 2, "zdt2": 2, "dtlz2": 3}
MIN_VARIABLES = {"zdt1": 2, "zdt2": 2, "dtlz2": 3}


class AnalyticParams(DatasetParams):
    """problem: which problem (see the module docstring). num_variables: n, the length of the
    decision vector (None: the problem's default, zdt2_ma2020 3 (the only value it takes), zdt1
    and zdt2 30, dtlz2 12, quadratic 10). num_objectives: T, for ``quadratic`` only (2 or 3;
    None: 2); the others have theirs (None or that number)."""

    problem: ProblemName = "zdt2_ma2020"
    num_variables: int | None = Field(None, ge=1, le=100_000)
    num_objectives: int | None = Field(None, ge=2, le=3)

    @model_validator(mode="after")
    def _fits_the_problem(self) -> AnalyticParams:
        variables = self.num_variables
        if self.problem == "zdt2_ma2020" and variables not in (None, 3):
            raise ValueError(f"num_variables: zdt2_ma2020 has exactly 3 variables, got {variables}")
        if self.problem in MIN_VARIABLES and variables is not None:
            least = MIN_VARIABLES[self.problem]
            if variables < least:
                raise ValueError(
                    f"num_variables: {self.problem} needs at least {least}, got {variables}"
                )
        if self.problem == "quadratic":
            if variables is not None and variables < (self.num_objectives or 2):
                raise ValueError(
                    f"num_variables: quadratic needs at least num_objectives "
                    f"({self.num_objectives or 2}) variables, got {variables}"
                )
        elif self.num_objectives not in (None, OBJECTIVE_COUNTS[self.problem]):
            raise ValueError(
                f"num_objectives: {self.problem} has {OBJECTIVE_COUNTS[self.problem]} "
                f"objectives, got {self.num_objectives}"
            )
        return self


def problem_of(params: AnalyticParams) -> AnalyticProblem:
    """The problem object that ``params`` name (defaults resolved)."""
    variables = params.num_variables or DEFAULT_VARIABLES[params.problem]
    if params.problem == "quadratic":
        return Quadratic(variables, num_tasks=params.num_objectives or 2)
    return PROBLEMS[params.problem](variables)


class DecisionVector(nn.Module):
    """The encoder: holds θ (n,) float64; inputs (B, ...) -> z (B, n), z = decision(θ) for every
    sample. ``reset_parameters`` draws a fresh start (the problem's initial distribution)."""

    def __init__(self, problem: AnalyticProblem):
        super().__init__()
        self.problem = problem
        self.theta = nn.Parameter(problem.initial_parameters())

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.theta.copy_(self.problem.initial_parameters())

    def forward(self, inputs: Tensor) -> Tensor:
        decision = self.problem.decision(self.theta)
        return decision.expand(inputs.shape[0], decision.shape[0])


class ObjectiveHeads(nn.Module):
    """The heads, parameter-free: z (B, n) -> the T objectives, stacked (B, T, 1)."""

    def __init__(self, problem: AnalyticProblem):
        super().__init__()
        self.problem = problem

    def forward(self, z: Tensor) -> Tensor:
        return self.problem.objectives(z).unsqueeze(-1)


@register_dataset("analytic")
class Analytic(MultiTaskDataset):
    Params = AnalyticParams
    training_defaults = {"batch_size": 1, "optimizer": "sgd", "lr": 1e-2}
    model_description = "θ ∈ R^n → decision vector z (encoder) + T parameter-free objective heads"

    @classmethod
    def taskset(cls, params: DatasetParams) -> TaskSet:
        assert isinstance(params, AnalyticParams)
        problem = problem_of(params)
        return TaskSet(
            [
                TaskSpec(f"f{t + 1}", "objective", 1, hv_reference=reference)
                for t, reference in enumerate(problem.reference)
            ]
        )

    @classmethod
    def true_front(cls, params: DatasetParams) -> np.ndarray:
        """A dense sample (N, T) of the problem's true front, float64: 20,001 points evenly
        spaced in arc length for 2 objectives, 45,451 (a simplex lattice's image) for 3; each
        problem's docstring in ``datasets/_analytic_problems.py`` states its hypervolume error."""
        assert isinstance(params, AnalyticParams)
        return problem_of(params).front()

    @classmethod
    def input_shape(cls, params: DatasetParams) -> tuple[int, ...]:
        return (1,)

    @classmethod
    def stand_in_inputs(
        cls, params: DatasetParams, batch_size: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Zeros, float64, as :meth:`load`'s constant input (the model ignores it)."""
        return torch.zeros(batch_size, 1, dtype=torch.float64)

    def load(self) -> Splits:
        """The constant batch: one sample, input (1, 1) zeros, targets (1, T) zeros (unused)."""
        num_tasks = problem_of(self.params).num_objectives  # type: ignore[arg-type]
        inputs = torch.zeros(1, 1, dtype=torch.float64)
        targets = torch.zeros(1, num_tasks, dtype=torch.float64)
        split = TensorDataset(inputs, targets)
        return Splits(train=split, val=split, test=split)

    def build_model(self) -> MultiTaskModel:
        problem = problem_of(self.params)  # type: ignore[arg-type]
        return MultiTaskModel(
            DecisionVector(problem), ObjectiveHeads(problem), problem.num_objectives
        )
