"""PML held to a known front: trained through the harness on the ``analytic`` dataset.

ZDT1 (convex, curved front f₂ = 1 − √f₁, f₁ ∈ [0, 1]) with its 30 variables, PML with default
parameters, 5 seeds, under a FLOP budget. Oracles: the true hypervolume in closed form (the
area above the front up to the dataset's reference point, computed here, not by the dataset)
and moocore's hypervolume of the recorded test objectives.
"""

from __future__ import annotations

import moocore
import numpy as np
import pytest
from mtlbench.harness.config import parse_suite
from mtlbench.harness.suite import expand_suite
from mtlbench.harness.trainer import train_run

SEEDS = [0, 1, 2, 3, 4]
# ZDT1 is charged 2000 FLOPs per PML step (4 forwards and 4 backwards at n = 30, element-wise
# rule of harness/costs.py): this budget is 100 steps.
BUDGET_FLOPS = 2.0e5


def zdt1_true_hypervolume(reference: list[float]) -> float:
    """∫₀¹ (r₂ − 1 + √f₁) df₁ + (r₁ − 1)·r₂ = r₂ − 1/3 + (r₁ − 1)·r₂, for r ≥ (1, 1)."""
    first, second = reference
    return second - 1.0 / 3.0 + (first - 1.0) * second


@pytest.fixture(scope="module")
def zdt1_runs():
    suite = {
        "name": "pml-zdt1",
        "datasets": [{"name": "analytic", "params": {"problem": "zdt1"}}],
        "methods": [{"name": "pml"}],
        "seeds": SEEDS,
        "budget": {"flops": BUDGET_FLOPS},
        # the problem's needs: its one-sample batch, and a step size for a 30-variable decision
        # vector; one evaluation, at the end
        "training": {
            "batch_size": 1,
            "optimizer": "sgd",
            "lr": 0.05,
            "log_every": 10,
            "eval_every": 1_000_000,
        },
        "device": "cpu",
    }
    return [train_run(spec) for spec in expand_suite(parse_suite(suite))]


def test_pml_reaches_98_percent_of_the_true_hypervolume_for_every_seed(zdt1_runs) -> None:
    ratios, evaluation_seconds = [], []
    for result in zdt1_runs:
        assert result.status == "completed", result.error
        assert result.stop_reason == "budget"
        assert result.budget["budget_spent"] <= BUDGET_FLOPS
        objectives = np.array([s.test_objectives for s in result.solutions])
        assert objectives.shape == (101, 2)  # the default grid
        reference = result.hv_reference
        hypervolume = moocore.hypervolume(objectives, ref=reference)
        assert result.hypervolume.value == pytest.approx(hypervolume, rel=1e-9)
        ratios.append(hypervolume / zdt1_true_hypervolume(reference))
        evaluation_seconds.append(result.evaluation_seconds)
        # the points lie on the front (never below it: it is the Pareto front)
        gap = objectives[:, 1] - (1.0 - np.sqrt(np.clip(objectives[:, 0], 0.0, None)))
        assert gap.min() > -1e-9 and gap.max() < 0.01
        assert objectives[:, 0].min() < 0.01 and objectives[:, 0].max() > 0.99  # both ends
    print(
        f"\nPML on ZDT1, HV / true HV per seed: {np.round(ratios, 4).tolist()}; evaluation of "
        f"the 101 points (val + test): {np.round(evaluation_seconds, 2).tolist()} s"
    )
    assert min(ratios) >= 0.98
