"""What one run records: :class:`RunResult`, and the rows and MLflow points its loop adds to it.

The trainer (``harness.trainer``) fills a ``RunResult`` as it trains; the tracking layer writes
it to MLflow and Parquet (``harness.tracking``), checkpoints carry it across a resume
(``harness.checkpoints``). Every ``log_every`` steps the loop turns the method's step log into a
row of training metrics (:func:`log_row`) and its MLflow points (:func:`row_points`); every
anytime evaluation becomes an entry of ``RunResult.evaluations`` and its points
(:func:`evaluation_points`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from mtlbench.harness.budget import Budget
from mtlbench.harness.evaluation import SolutionResult
from mtlbench.harness.metrics import HypervolumeResult
from mtlbench.harness.progress import MetricPoint, now_ms
from mtlbench.harness.suite import RunSpec

# the hypervolumes of an anytime evaluation recorded as MLflow metrics ``anytime.<key>``
ANYTIME_KEYS = ("val_hypervolume", "test_hypervolume")


@dataclass
class RunResult:
    """Everything recorded about one run (the tracking layer writes it to MLflow and Parquet).

    status: ``completed`` | ``diverged`` | ``failed``; stop_reason: ``budget`` | ``max_steps`` |
    ``exploration_finished`` (a method ended with budget left) | ``diverged`` | ``error``
    (a run stopped by its budget before its first step is ``failed``). history: rows of
    training metrics every ``log_every`` steps.
    evaluations: the anytime points (step, budget spent, val and test hypervolume), one per
    ``eval_every`` steps and one for the final state. metric_points: every MLflow point the run
    measured (training rows, anytime points, in order), with its measurement time; ended_ms:
    Unix time (ms) the run ended (the timestamp of its final metrics). resumed_from_steps: the
    steps of the checkpoints this run continued from, one per resume (killed processes).
    """

    spec: RunSpec
    status: str
    stop_reason: str
    error: str = ""
    steps: int = 0
    budget: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    peak_memory_bytes: int = 0
    memory_measure: str = ""
    history: list[dict[str, float]] = field(default_factory=list)
    engine_stats: dict[str, float | str] = field(default_factory=dict)  # GradientEngine.report
    solutions: list[SolutionResult] = field(default_factory=list)
    hypervolume: HypervolumeResult | None = None
    hv_reference: list[float] = field(default_factory=list)
    task_names: list[str] = field(default_factory=list)
    higher_is_better: list[bool] = field(default_factory=list)
    scored_step: int = 0
    environment: dict[str, str] = field(default_factory=dict)
    started_at: str = ""
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # EvaluationRecord fields
    evaluation_seconds: float = 0.0
    metric_points: list[MetricPoint] = field(default_factory=list)
    ended_ms: int = 0
    resumed_from_steps: list[int] = field(default_factory=list)  # checkpoints it continued from


def log_row(
    step: int, log: dict[str, torch.Tensor], task_names: list[str], budget: Budget
) -> dict[str, float]:
    """One row of training metrics: the step, the budget spent (fraction and FLOPs), and each
    entry of the method's step log: a (T,) tensor as ``<key>/<task name>``, a scalar as
    ``<key>`` (entries of other sizes are not recorded)."""
    row: dict[str, float] = {"step": float(step), "budget_fraction_spent": budget.fraction_spent}
    row["budget_spent_flops"] = budget.spent_flops
    for key, value in log.items():
        flat = value.detach().float().cpu().reshape(-1)
        if flat.numel() == len(task_names):
            for name, entry in zip(task_names, flat.tolist(), strict=True):
                row[f"{key}/{name}"] = entry
        elif flat.numel() == 1:
            row[key] = float(flat)
    return row


def row_points(row: dict[str, float]) -> list[MetricPoint]:
    """The MLflow points of one logged row, stamped now (``train.<key>``, ``/`` as ``.``)."""
    stamp, step = now_ms(), int(row["step"])
    return [
        MetricPoint(f"train.{key}".replace("/", "."), value, stamp, step)
        for key, value in row.items()
        if key != "step" and math.isfinite(value)
    ]


def evaluation_points(point: dict[str, Any], wall_seconds: float) -> list[MetricPoint]:
    """The MLflow points of one anytime evaluation, stamped now; step: FLOPs spent so far."""
    stamp, flops = now_ms(), int(point["budget_spent_flops"])
    values = {f"anytime.{name}": point[name] for name in ANYTIME_KEYS}
    values["anytime.wall_seconds"] = wall_seconds
    return [
        MetricPoint(key, float(value), stamp, flops)
        for key, value in values.items()
        if math.isfinite(value)
    ]
