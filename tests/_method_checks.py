"""Property checks every registered method must pass (reused by each method's own tests).

- finite: every logged tensor and every solution's outputs are finite;
- weights on the simplex: a method that logs ``"weights"`` keeps them non-negative, summing to 1;
- budget respected: training stops by ``BudgetExhausted`` and the spend never exceeds the limit;
- determinism: the same seed gives bit-identical parameters and logs (CPU);
- solutions: at least one, each evaluable on a batch, coordinates (if any) of length T.
"""

from __future__ import annotations

from typing import Any

import torch
from _problems import tiny_batches, tiny_model, tiny_taskset
from mtlbench.harness.budget import Budget, BudgetExhausted
from mtlbench.harness.gradients import get_engine
from mtlbench.harness.method import Method, TrainingConfig
from mtlbench.harness.registry import METHODS

# epoch length told to methods with epoch-based rules (DWA, STCH): several epochs fit a run
TINY_EPOCH_STEPS = 4


def train_tiny(
    name: str,
    params: dict[str, Any] | None = None,
    engine: str | None = None,
    num_tasks: int = 3,
    budget_steps: float = 25,
    seed: int = 0,
) -> tuple[Method, Budget, list[dict[str, torch.Tensor]]]:
    """Train method ``name`` on the tiny problem for a budget of ~``budget_steps`` EW steps."""
    method_cls = METHODS.get(name)
    taskset = tiny_taskset(num_tasks)
    method_params = method_cls.Params.model_validate(params or {})
    method_params = method_cls.expand(method_params, taskset)[0]
    model = tiny_model(num_tasks, seed=seed)
    training = TrainingConfig(batch_size=32, lr=1e-2)
    torch.manual_seed(seed)
    method = method_cls(method_params, model, taskset, training)
    batches = tiny_batches(num_tasks, seed=seed)
    probe = get_engine("loop")(tiny_model(num_tasks), taskset, Budget("flops", 1e30), batches[0])
    ew_step = probe.costs.flops("encoder_forward", 32) + probe.costs.flops("heads_forward", 32)
    ew_step += probe.costs.flops("heads_backward", 32) + probe.costs.flops("encoder_backward", 32)
    budget = Budget("flops", ew_step * budget_steps)
    engine_obj = get_engine(engine or method_cls.default_engine)(
        method.model, taskset, budget, batches[0]
    )
    method.bind(engine_obj, steps_per_epoch=TINY_EPOCH_STEPS)
    logs = []
    for batch in batches:
        try:
            logs.append(method.step(batch, engine_obj))
        except BudgetExhausted:
            break
    else:
        raise AssertionError(f"{name}: 200 steps did not exhaust a {budget_steps}-step budget")
    return method, budget, logs


def check_method_properties(
    name: str, params: dict[str, Any] | None = None, engine: str | None = None
) -> None:
    """Run every property check on method ``name``; raises AssertionError on a violation."""
    method, budget, logs = train_tiny(name, params, engine)
    assert logs, f"{name}: no step fitted in the budget"
    assert budget.spent_flops <= budget.limit, (
        f"{name}: spent {budget.spent_flops} > {budget.limit}"
    )
    for log in logs:
        for key, value in log.items():
            assert torch.isfinite(value).all(), f"{name}: non-finite {key}"
    if type(method).produces_weights:
        for log in logs:
            weights = log["weights"]
            assert weights.shape == (3,), f"{name}: weights shape {tuple(weights.shape)}"
            if not type(method).weights_on_simplex:
                continue
            assert (weights >= -1e-7).all(), f"{name}: negative weight {weights}"
            assert abs(float(weights.sum()) - 1) < 1e-5, (
                f"{name}: weights sum {float(weights.sum())}"
            )
    inputs, _ = tiny_batches(3, count=1, seed=99)[0]
    solutions = list(method.solutions())
    assert solutions, f"{name}: no solutions"
    for solution in solutions:
        if solution.coordinates is not None:
            assert len(solution.coordinates) == 3
        with torch.no_grad():
            outputs = solution.model(inputs)
        stacked = (
            outputs
            if isinstance(outputs, torch.Tensor)
            else torch.cat([o.flatten() for o in outputs])
        )
        assert torch.isfinite(stacked).all(), f"{name}: solution {solution.label} non-finite"
    # determinism: the same seed gives identical parameters and logs
    again, budget_again, logs_again = train_tiny(name, params, engine)
    assert len(logs_again) == len(logs), f"{name}: step count differs between identical runs"
    assert budget_again.spent_flops == budget.spent_flops
    for first, second in zip(
        method.model.state_dict().values(), again.model.state_dict().values(), strict=True
    ):
        assert torch.equal(first, second), f"{name}: parameters differ between identical runs"
