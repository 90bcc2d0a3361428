"""Divergence: finite blow-ups count, every method at Adam lr 1e6 is ``diverged`` with its reason,
the suite goes on, and a budget smaller than one step is ``failed``, not ``completed``."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from mtlbench.harness.config import parse_suite
from mtlbench.harness.divergence import DivergenceWatch
from mtlbench.harness.method import DivergenceRule, TrainingConfig
from mtlbench.harness.registry import METHODS
from mtlbench.harness.runner import run_suite
from mtlbench.harness.suite import expand_suite
from mtlbench.harness.trainer import train_run
from rich.console import Console

TINY_DATA = {
    "name": "multidigits",
    "params": {"train_pairs": 64, "val_pairs": 16, "test_pairs": 16},
}
# small steps for the multi-solution methods (each of their steps costs several EW steps)
SMALL_PARAMS = {
    "pareto_expansion": {
        "minres_max_iterations": 3,
        "steps_per_direction": 2,
        "samples_per_simplex": 1,
    },
}


def _row(step: int, *losses: float) -> dict[str, float]:
    return {"step": float(step), **{f"task_losses/t{i}": v for i, v in enumerate(losses)}}


def test_rule_counts_consecutive_high_logs_on_the_mean_loss() -> None:
    """Initial mean 2: threshold 10 x 2 = 20; 2 consecutive logs needed; a dip resets."""
    watch = DivergenceWatch(DivergenceRule(loss_ratio=10, consecutive_logs=2))
    watch.set_initial(2.0)
    finite = [torch.ones(3)]
    assert watch.observe(10, _row(10, 30.0, 30.0), finite) is None  # mean 30 > 20: 1st high
    assert watch.observe(20, _row(20, 1.0, 30.0), finite) is None  # mean 15.5: reset
    assert watch.observe(30, _row(30, 0.0, 41.0), finite) is None  # mean 20.5: 1st high
    # one task far above 10 x its share, the mean still counts: 40 > 20 twice in a row
    reason = watch.observe(40, _row(40, 0.0, 80.0), finite)
    assert reason == (
        "mean task loss 40 above 10 x its initial value 2 for 2 consecutive logs (step 40)"
    )


def test_rule_non_finite_loss_and_parameters_and_off_switches() -> None:
    watch = DivergenceWatch(DivergenceRule())
    watch.set_initial(1.0)
    assert watch.observe(5, _row(5, 1.0, math.inf), [torch.ones(2)]) == (
        "non-finite task loss at step 5 (task_losses/t1)"
    )
    broken = [torch.ones(2), torch.tensor([0.0, math.nan])]
    assert watch.observe(6, _row(6, 1.0, 1.0), broken) == "non-finite parameters at step 6"
    unchecked = DivergenceWatch(DivergenceRule(loss_ratio=None, check_parameters=False))
    unchecked.set_initial(1.0)
    for step in range(1, 10):
        assert unchecked.observe(step, _row(step, 1e30, 1e30), broken) is None
    no_reference = DivergenceWatch(DivergenceRule(consecutive_logs=1))
    no_reference.set_initial(0.0)  # a ratio of 0 means nothing: the ratio rule is off
    assert no_reference.observe(1, _row(1, 5.0), [torch.ones(1)]) is None


def test_rule_settings_are_validated() -> None:
    config = TrainingConfig.model_validate(
        {"divergence": {"loss_ratio": 50, "consecutive_logs": 2}}
    )
    assert config.divergence == DivergenceRule(loss_ratio=50.0, consecutive_logs=2)
    with pytest.raises(ValueError, match="loss_ratio"):
        TrainingConfig.model_validate({"divergence": {"loss_ratio": 0.5}})
    with pytest.raises(ValueError, match="extra"):
        TrainingConfig.model_validate({"divergence": {"ratio": 10}})


def _every_method_suite(lr: float) -> dict:
    methods = [
        {"name": name, "params": SMALL_PARAMS.get(name, {})}
        for name in METHODS.names()
        if not name.startswith("test_")
    ]
    return {
        "name": "blowup",
        "datasets": [TINY_DATA],
        "methods": methods,
        "budget": {"flops": 1e15},
        "training": {"batch_size": 8, "lr": lr, "max_steps": 12, "log_every": 1},
    }


def test_every_method_at_adam_lr_1e6_is_diverged_with_its_reason() -> None:
    """The default rule (100 x, 3 logs, parameters checked) on every registered method: one run
    each (single_task: one task), all ``diverged`` within 12 steps, none scored."""
    specs = expand_suite(parse_suite(_every_method_suite(1e6)))
    one_per_method = {spec.method: spec for spec in reversed(specs)}
    assert set(one_per_method) == {n for n in METHODS.names() if not n.startswith("test_")}
    outcomes = {name: train_run(spec) for name, spec in one_per_method.items()}
    summary = {name: (r.status, r.error.splitlines()[0]) for name, r in outcomes.items()}
    assert {status for status, _ in summary.values()} == {"diverged"}, summary
    for name, result in outcomes.items():
        assert result.stop_reason == "diverged" and result.steps < 12, name
        assert not result.solutions and result.hypervolume is None, name
        assert any(
            phrase in result.error
            for phrase in ("non-finite", "above 100 x its initial value", "when the method raised")
        ), (name, result.error)


def test_suite_goes_on_after_a_finite_blow_up(tmp_path: Path) -> None:
    """PML at its own lr 1e6 blows up (finite losses) and is ``diverged``; the EW run after it
    in the same suite completes."""
    data = {
        "name": "goes_on",
        "datasets": [TINY_DATA],
        "methods": [{"name": "pml", "params": {"lr": 1e6}}, {"name": "ew"}],
        "budget": {"flops": 2e9},
        "training": {"batch_size": 8, "max_steps": 12, "log_every": 1, "eval_every": 6},
    }
    console = Console(file=io.StringIO(), width=200)
    suite = parse_suite(data)
    summary = run_suite(suite, tmp_path / "results", console=console, show_progress=False)
    assert [r.spec.method for r in summary.recorded] == ["pml", "ew"]
    pml, ew = summary.recorded
    assert pml.status == "diverged" and "above 100 x its initial value" in pml.error, pml.error
    assert ew.status == "completed" and ew.steps == 12, ew.error
    rows = {r["method"]: r for r in pq.read_table(tmp_path / "results" / "runs").to_pylist()}
    assert rows["pml"]["status"] == "diverged" and rows["pml"]["stop_reason"] == "diverged"
    assert rows["pml"]["error"] == pml.error
    assert rows["ew"]["status"] == "completed"


def test_budget_below_one_step_is_failed_with_one_line() -> None:
    """EW on the LeNet costs ~1e7 FLOPs a step at batch 8; a 1e3-FLOP budget pays for none."""
    data = {
        "name": "starved",
        "datasets": [TINY_DATA],
        "methods": [{"name": "ew"}],
        "budget": {"flops": 1e3},
        "training": {"batch_size": 8},
    }
    result = train_run(expand_suite(parse_suite(data))[0])
    assert result.status == "failed" and result.steps == 0
    assert result.stop_reason == "budget" and not result.solutions
    assert len(result.error.splitlines()) == 1
    assert result.error.startswith("the budget (1000 flops) is smaller than one step: ")
    assert "FLOPs" in result.error
