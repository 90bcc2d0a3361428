"""Which solution a run reports, chosen on validation numbers only; its Δm% against the baseline.

A method with several solutions (a front: PML and the expansion method give 11–66) must report
one, and choosing it on test numbers would flatter methods with many solutions. The rule:

- ``RULE_VAL_DELTA_M``: the solution with the lowest *validation* Δm% against the baseline runs'
  validation metrics (same dataset, budget, protocol and seed; the mean over seeds when that
  seed has no complete baseline — :func:`baseline_for`);
- ``RULE_VAL_MEAN_OBJECTIVE`` when no baseline is recorded (or every validation Δm% is
  undefined): the lowest mean validation objective (objectives are minimised: errors, MAEs).

Ties go to the lowest solution index. The selected solution's *test* Δm% is the run's reported
Δm% (``run_delta_m_pct``); test numbers are never used to choose. Every row records the rule.

Baseline runs are those of a method with ``Method.is_baseline`` (``single_task``): one run per
task, the task being its ``method_params["task"]``, whose own metric on that task is the
reference of Δm%.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from mtlbench.harness.metrics import delta_m

Row = dict[str, Any]
RULE_VAL_DELTA_M = "min validation Δm% vs single-task validation metrics"
RULE_VAL_MEAN_OBJECTIVE = "min mean validation objective"
BASELINE_KEYS = (
    "dataset",
    "dataset_params",
    "budget_kind",
    "budget_limit",
    "training",
    "scoring",
    "device",
)


def is_baseline_row(row: Row) -> bool:
    """The row's ``is_baseline`` column; for rows written before it existed, the registered
    method's ``is_baseline`` (False for a method no longer registered)."""
    if row.get("is_baseline") is not None:
        return bool(row["is_baseline"])
    from mtlbench.harness.registry import METHODS, UnknownName

    try:
        return bool(METHODS.get(row["method"]).is_baseline)
    except UnknownName:
        return False


@dataclass(frozen=True)
class Baseline:
    """Per-task baseline metrics (T,) on validation and test, and the runs they come from."""

    val_metrics: list[float]
    test_metrics: list[float]
    runs: list[str]


def baseline_for(rows: Iterable[Row], like: Row) -> Baseline | None:
    """The baseline of runs like ``like``: completed baseline runs with the same
    ``BASELINE_KEYS``, one per task; the same seed when every task has it, otherwise the mean
    over the seeds that have all tasks. None if no seed has every task."""
    by_seed: dict[int, dict[int, Row]] = {}
    for row in rows:
        if not is_baseline_row(row) or row["status"] != "completed" or row["solution_index"] < 0:
            continue
        if any(row[k] != like[k] for k in BASELINE_KEYS):
            continue
        task = json.loads(row["method_params"])["task"]
        by_seed.setdefault(row["seed"], {})[task] = row
    num_tasks = len(like["task_names"])
    complete = {seed: tasks for seed, tasks in by_seed.items() if len(tasks) == num_tasks}
    if like["seed"] in complete:
        chosen = [complete[like["seed"]]]
    elif complete:
        chosen = list(complete.values())
    else:
        return None

    def mean_of(column: str, task: int) -> float:
        values = [
            tasks[task][column][task] if tasks[task][column] else math.nan for tasks in chosen
        ]
        return float(np.mean(values))

    return Baseline(
        val_metrics=[mean_of("val_metrics", t) for t in range(num_tasks)],
        test_metrics=[mean_of("test_metrics", t) for t in range(num_tasks)],
        runs=sorted({tasks[t]["run_hash"] for tasks in chosen for t in range(num_tasks)}),
    )


def _mean_objective(row: Row) -> float:
    values = row["val_objectives"]
    return float(np.mean(values)) if values else math.nan


def _lowest(rows: list[Row], key: Callable[[Row], float]) -> Row:
    def order(row: Row) -> tuple[bool, float, int]:
        value = key(row)
        return (math.isnan(value), value, row["solution_index"])

    return min(rows, key=order)


def annotate_run(run_rows: list[Row], baseline: Baseline | None) -> list[Row]:
    """Fill the selection and Δm% columns of one run's rows (in place; returned for chaining):
    ``val_delta_m_pct``, ``delta_m_pct`` (test), ``delta_m_reason``, ``selected``,
    ``selection_rule``, ``run_delta_m_pct`` and ``delta_m_baseline_runs``."""
    first = run_rows[0]
    run_is_baseline = is_baseline_row(first)
    solutions = [r for r in run_rows if r["solution_index"] >= 0]
    for row in run_rows:
        row["selected"], row["selection_rule"] = False, ""
        row["delta_m_baseline_runs"] = baseline.runs if baseline and not run_is_baseline else []
        if run_is_baseline or row["solution_index"] < 0:
            row["val_delta_m_pct"] = row["delta_m_pct"] = math.nan
            row["delta_m_reason"] = (
                "a baseline run (the reference of Δm%)" if run_is_baseline else "no scored solution"
            )
            continue
        names = row["task_names"]
        hib = row["higher_is_better"]
        val_baseline = baseline.val_metrics if baseline else None
        test_baseline = baseline.test_metrics if baseline else None
        val = delta_m(row["val_metrics"], val_baseline, hib, names)
        test = delta_m(row["test_metrics"], test_baseline, hib, names)
        row["val_delta_m_pct"], row["delta_m_pct"] = val.value, test.value
        row["delta_m_reason"] = test.reason or (f"validation: {val.reason}" if val.reason else "")
    run_delta, run_reason = math.nan, first.get("delta_m_reason") or ""
    if solutions:
        if any(math.isfinite(r["val_delta_m_pct"]) for r in solutions):
            chosen, rule = _lowest(solutions, lambda r: r["val_delta_m_pct"]), RULE_VAL_DELTA_M
        else:
            chosen, rule = _lowest(solutions, _mean_objective), RULE_VAL_MEAN_OBJECTIVE
        chosen["selected"] = True
        run_delta, run_reason = chosen["delta_m_pct"], chosen["delta_m_reason"]
        for row in run_rows:
            row["selection_rule"] = rule
    for row in run_rows:
        row["run_delta_m_pct"] = run_delta
        if row["solution_index"] < 0 or not solutions:
            row["delta_m_reason"] = run_reason
    return run_rows


def selected_row(run_rows: list[Row]) -> Row:
    """The run's selected solution (its placeholder row if it has none)."""
    for row in run_rows:
        if row.get("selected"):
            return row
    return run_rows[0]


def with_selection(rows: list[Row]) -> list[Row]:
    """``rows`` with every run's selection filled in: rows written before selection was
    recorded (``selected`` null) get ``is_baseline`` from the registry and are annotated by the
    rule above against the baselines among ``rows``; recorded selections are kept."""
    runs: dict[str, list[Row]] = {}
    for row in rows:
        runs.setdefault(row["run_hash"], []).append(row)
    for run_rows in runs.values():
        if any(row.get("selected") is not None for row in run_rows):
            continue
        for row in run_rows:
            row["is_baseline"] = is_baseline_row(row)
        first = run_rows[0]
        baseline = None
        if not first["is_baseline"] and first["status"] == "completed":
            baseline = baseline_for(rows, first)
        annotate_run(run_rows, baseline)
    return rows
