"""Budget accounting: the engine's tally against FlopCounterMode, and stopping rules."""

import time

import pytest
import torch
from mtlbench.harness.budget import Budget, BudgetExhausted
from mtlbench.harness.gradients import get_engine
from mtlbench.harness.method import TrainingConfig
from mtlbench.harness.registry import DATASETS, METHODS
from torch.utils.flop_counter import FlopCounterMode


def test_charge_refuses_overspend_and_records_nothing() -> None:
    budget = Budget("flops", 100.0)
    budget.charge("a", 60.0)
    with pytest.raises(BudgetExhausted):
        budget.charge("b", 41.0)
    assert budget.spent_flops == 60.0 and "b" not in budget.flops_by_pass
    budget.charge("b", 40.0)
    assert budget.spent == 100.0 and budget.fraction_spent == 1.0
    assert budget.summary()["flops_b"] == 40.0


def test_seconds_budget_stops_after_limit() -> None:
    budget = Budget("seconds", 0.05)
    budget.charge("a", 1.0)
    time.sleep(0.06)
    with pytest.raises(BudgetExhausted):
        budget.charge("a", 1.0)
    assert budget.spent_flops == 1.0


@pytest.mark.parametrize("limit", [0.0, -1.0])
def test_budget_limit_must_be_positive(limit: float) -> None:
    with pytest.raises(ValueError):
        Budget("flops", limit)


@pytest.mark.parametrize("engine_name", ["loop", "batched"])
def test_engine_tally_matches_flop_counter_on_multidigits(engine_name: str) -> None:
    """Ten EW steps of the real default model: charged FLOPs within 5% of FlopCounterMode."""
    dataset_cls = DATASETS.get("multidigits")
    dataset = dataset_cls(dataset_cls.Params(train_pairs=640, val_pairs=10, test_pairs=10))
    splits = dataset.load()
    taskset = dataset_cls.taskset(dataset.params)
    torch.manual_seed(0)
    method_cls = METHODS.get("ew")
    method = method_cls(method_cls.Params(), dataset.build_model(), taskset, TrainingConfig())
    inputs, targets = splits.train.tensors
    batches = [(inputs[i : i + 64], targets[i : i + 64]) for i in range(0, 640, 64)]
    budget = Budget("flops", 1e15)
    engine = get_engine(engine_name)(method.model, taskset, budget, batches[0])
    with FlopCounterMode(display=False) as counter:
        for batch in batches:
            method.step(batch, engine)
    measured = counter.get_total_flops()
    assert measured > 0
    assert abs(budget.spent_flops - measured) / measured < 0.05, (budget.spent_flops, measured)
