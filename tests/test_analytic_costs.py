"""The budget sees element-wise models: the element-wise FLOP rule (harness/costs.py) against
hand counts, a FLOP budget that ends an analytic run, and the refusal of a step that measures
nothing."""

from __future__ import annotations

import pytest
import torch
from _analytic_runs import analytic_run
from mtlbench.harness.budget import Budget, require_counted_step
from mtlbench.harness.config import ConfigError
from mtlbench.harness.costs import count_flops
from mtlbench.harness.gradients import get_engine
from mtlbench.harness.registry import DATASETS

ANALYTIC = DATASETS.get("analytic")


def test_elementwise_rule_counts_outputs_of_pointwise_ops_and_inputs_of_reductions() -> None:
    x, y = torch.randn(4, 5), torch.randn(4, 5)
    assert count_flops(lambda: torch.sin(x)) == 20  # 20 outputs
    assert count_flops(lambda: x * y + 1.0) == 40  # two pointwise ops of 20 outputs
    assert count_flops(lambda: x.sum(dim=0)) == 20  # a reduction reads 20 inputs
    assert count_flops(lambda: x.t().reshape(-1)[3:7]) == 0  # views and copies: nothing


def test_matrix_rule_is_unchanged_where_it_counts_something() -> None:
    """A pass with a matrix product keeps FlopCounterMode's count, 2·m·k·n, and its
    element-wise work (the ReLU, the sum) is not added."""
    a, b = torch.randn(3, 7), torch.randn(7, 2)
    assert count_flops(lambda: torch.relu(a @ b).sum()) == 2 * 3 * 7 * 2


def test_calibrated_passes_of_the_zdt2_variant_match_a_hand_count() -> None:
    """Encoder forward of Ma et al.'s map on θ (3,): θ2², θ3², their sum, θ1 + s, sin, ½·,
    + ½, cos, ½·, + ½: ten scalar operations, batch of one."""
    dataset = ANALYTIC(ANALYTIC.Params(problem="zdt2_ma2020"))
    batch = dataset.load().train.tensors
    taskset = ANALYTIC.taskset(dataset.params)
    engine = get_engine("loop")(dataset.build_model(), taskset, Budget("flops", 1e9), batch)
    assert engine.costs.per_sample["encoder_forward"] == 10
    assert engine.costs.per_sample["heads_backward_params"] == 0  # no head parameters
    assert all(engine.costs.per_sample[kind] > 0 for kind in ("heads_forward", "encoder_backward"))


@pytest.mark.parametrize("method", ["ew", "mgda"])
def test_a_flop_budget_ends_an_analyticanalytic_run(method: str) -> None:
    """Without the element-wise rule every pass would cost 0 and the run would reach
    max_steps; with it, the budget ends the run and is never overspent."""
    steps_affordable = 25
    probe = analytic_run(method, {"problem": "zdt1", "num_variables": 4}, steps=1)
    step_flops = probe.budget["budget_spent_flops"]
    assert step_flops > 0
    limit = (steps_affordable + 0.5) * step_flops
    result = analytic_run(
        method, {"problem": "zdt1", "num_variables": 4}, 10_000, budget_flops=limit
    )
    assert result.stop_reason == "budget" and result.steps == steps_affordable
    assert result.budget["budget_spent_flops"] <= limit


def test_a_step_that_measures_nothing_is_refused_under_a_flop_budget() -> None:
    with pytest.raises(ConfigError, match="seconds budget") as caught:
        require_counted_step(Budget("flops", 1e9), 0.0, "model Nothing")
    assert "\n" not in str(caught.value) and "model Nothing" in str(caught.value)
    require_counted_step(Budget("seconds", 10.0), 0.0, "model Nothing")  # a clock always ends
    require_counted_step(Budget("flops", 1e9), 3.0, "model Something")
