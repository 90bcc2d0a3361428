"""Runs of the ``analytic`` dataset through the real trainer, for the tests of that family."""

from __future__ import annotations

from mtlbench.harness.method import TrainingConfig
from mtlbench.harness.registry import DATASETS, METHODS
from mtlbench.harness.suite import RunSpec
from mtlbench.harness.trainer import RunResult, train_run

ANALYTIC = DATASETS.get("analytic")


def analytic_run(
    method: str,
    dataset_params: dict,
    steps: int,
    method_params: dict | None = None,
    engine: str | None = None,
    budget_flops: float = 1e30,
    seed: int = 0,
    lr: float = 0.1,
) -> RunResult:
    """``steps`` steps at most of ``method`` (its first expanded run) on one problem, plain SGD
    at ``lr``, batch 1, under a FLOP budget; one evaluation, at the end."""
    method_cls = METHODS.get(method)
    params = method_cls.Params.model_validate(method_params or {})
    taskset = ANALYTIC.taskset(ANALYTIC.Params.model_validate(dataset_params))
    (run_params,) = method_cls.expand(params, taskset)[:1]
    training = TrainingConfig(
        batch_size=1, optimizer="sgd", lr=lr, momentum=0.0, max_steps=steps, eval_every=steps
    )
    spec = RunSpec(
        suite="analytic-test",
        method=method,
        method_label=method,
        method_params=run_params.model_dump(mode="json"),
        engine=engine or method_cls.default_engine,
        engine_options={},
        dataset="analytic",
        dataset_params=dataset_params,
        seed=seed,
        budget_kind="flops",
        budget_limit=budget_flops,
        training=training.model_dump(mode="json"),
        scoring="final",
        device="cpu",
    )
    return train_run(spec)
