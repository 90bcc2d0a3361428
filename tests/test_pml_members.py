"""PML's ensemble members: distinct initialisations for any model, by a stated rule.

The rule (``methods/_ensemble.py``, ``reinitialised_copy``): a parameter is re-drawn by the
``reset_parameters()`` of its owner or an ancestor; one that no module can reset is re-drawn
entry-wise uniformly between its smallest and largest entry (a constant one is copied). Oracles:
the original tensor (range, constancy), scipy's Kolmogorov–Smirnov test for the uniform draw, the
dataset's own objectives for a parameter-free-heads model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _problems import tiny_taskset
from _zdt2 import zdt2_batch, zdt2_model, zdt2_taskset
from mtlbench.harness.budget import Budget
from mtlbench.harness.gradients import GradientEngine
from mtlbench.harness.method import TrainingConfig
from mtlbench.harness.model import MultiTaskModel, StackedMLPHeads
from mtlbench.harness.registry import DATASETS
from mtlbench.methods._ensemble import EnsembleModel, parameters_without_reset, reinitialised_copy
from mtlbench.methods.pml import ParetoManifoldLearning, PMLParams
from scipy import stats
from torch import nn


class Offsets(nn.Module):
    """A custom layer with no ``reset_parameters``: a random offset and a constant scale."""

    def __init__(self, size: int = 4000):
        super().__init__()
        self.offset = nn.Parameter(4.0 * torch.rand(size) - 1.0)  # U[-1, 3)
        self.scale = nn.Parameter(torch.ones(size))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scale + self.offset


class ResettingParent(nn.Module):
    """Its child has no ``reset_parameters``, but it resets the child's weight itself."""

    def __init__(self):
        super().__init__()
        self.child = nn.Module()
        self.child.weight = nn.Parameter(torch.zeros(3))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.child.weight.normal_()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.child.weight.sum()


def test_parameters_without_reset_names_only_the_uncovered_ones() -> None:
    encoder = nn.Sequential(nn.Linear(4, 4), Offsets(4), ResettingParent())
    model = MultiTaskModel(encoder, StackedMLPHeads(2, 4, 2, hidden=None), 2)
    assert parameters_without_reset(model) == ["encoder.1.offset", "encoder.1.scale"]
    assert parameters_without_reset(nn.Linear(2, 2)) == []


def test_an_unresettable_parameter_is_redrawn_within_its_range() -> None:
    torch.manual_seed(0)
    base = Offsets()
    fresh = reinitialised_copy(base)
    original, redrawn = base.offset.detach(), fresh.offset.detach()
    low, high = float(original.min()), float(original.max())
    assert not torch.equal(redrawn, original)
    assert low <= float(redrawn.min()) and float(redrawn.max()) <= high
    # an independent uniform draw on [low, high]: KS test, and no correlation with the original
    assert stats.kstest(redrawn.numpy(), stats.uniform(loc=low, scale=high - low).cdf).pvalue > 0.01
    assert abs(float(np.corrcoef(original.numpy(), redrawn.numpy())[0, 1])) < 0.05
    # a constant initialisation is kept: every member starts with the architecture's constant
    assert torch.equal(fresh.scale, base.scale)


def test_an_ancestor_reset_covers_its_children() -> None:
    torch.manual_seed(0)
    base = ResettingParent()
    fresh = reinitialised_copy(base)
    assert not torch.equal(fresh.child.weight, base.child.weight)


def test_pml_members_of_a_custom_model_start_distinct() -> None:
    """The model that used to be refused: PML builds, its members differ where the base was
    random, and a step trains it."""
    torch.manual_seed(0)
    model = MultiTaskModel(Offsets(3), StackedMLPHeads(2, 3, 2, hidden=None), 2)
    taskset = tiny_taskset(2)
    method = ParetoManifoldLearning(PMLParams(), model, taskset, TrainingConfig(lr=0.01))
    offsets = method.model.encoder.stacked("offset")
    scales = method.model.encoder.stacked("scale")
    assert not torch.equal(offsets[0], offsets[1])
    assert torch.equal(scales[0], scales[1])
    inputs = torch.randn(8, 3)
    targets = torch.randint(0, 2, (8, 2)).float()
    engine = GradientEngine(method.model, taskset, Budget("flops", 1e30), (inputs, targets))
    before = offsets.detach().clone()
    method.step((inputs, targets), engine)
    assert not torch.equal(method.model.encoder.stacked("offset").detach(), before)


def test_pml_on_parameter_free_heads() -> None:
    """The analytic dataset's model: a decision vector (with ``reset_parameters``) and heads
    with no parameters at all. Each vertex solution computes the problem's objectives at its
    own member's decision vector."""
    dataset_cls = DATASETS.get("analytic")
    dataset = dataset_cls(dataset_cls.Params(problem="zdt1", num_variables=5))
    splits = dataset.load()
    taskset = dataset_cls.taskset(dataset.params)
    torch.manual_seed(0)
    model = dataset.build_model()
    assert list(model.heads.parameters()) == []
    method = ParetoManifoldLearning(
        PMLParams(grid_divisions=4), model, taskset, TrainingConfig(batch_size=1, lr=0.05)
    )
    assert list(method.model.heads.parameters()) == []
    decisions = method.model.encoder.stacked("theta")
    assert decisions.shape == (2, 5) and not torch.equal(decisions[0], decisions[1])
    batch = (splits.train.tensors[0], splits.train.tensors[1])
    engine = GradientEngine(method.model, taskset, Budget("flops", 1e30), batch)
    for _ in range(3):
        method.step(batch, engine)
    problem = model.encoder.problem
    solutions = list(method.solutions())
    assert len(solutions) == 5
    for solution in solutions:
        alpha = torch.tensor(solution.coordinates, dtype=torch.float64)
        theta = (alpha[:, None] * method.model.encoder.stacked("theta").detach()).sum(dim=0)
        expected = problem.objectives(problem.decision(theta)[None])[0]
        with torch.no_grad():
            got = solution.model(batch[0]).reshape(-1)
        torch.testing.assert_close(got, expected)


def test_a_constant_unused_head_parameter_is_copied() -> None:
    """tests/_zdt2.py's heads hold one zero parameter with no reset: every member keeps 0."""
    torch.manual_seed(0)
    model = zdt2_model(torch.randn(3))
    method = ParetoManifoldLearning(PMLParams(), model, zdt2_taskset(), TrainingConfig(lr=0.05))
    assert torch.equal(method.model.heads.stacked("unused"), torch.zeros(2, dtype=torch.float64))
    decisions = method.model.encoder.stacked("x")
    assert not torch.equal(decisions[0], decisions[1])
    engine = GradientEngine(method.model, zdt2_taskset(), Budget("flops", 1e30), zdt2_batch())
    method.step(zdt2_batch(), engine)


@pytest.mark.parametrize("members", [2, 3])
def test_from_builder_still_takes_any_initialisation(members: int) -> None:
    built = EnsembleModel.from_builder(
        lambda: MultiTaskModel(Offsets(3), StackedMLPHeads(2, 3, 2, None), 2), members
    )
    assert built.encoder.stacked("offset").shape == (members, 3)
