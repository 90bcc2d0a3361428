"""One run: a method trained on a dataset under a compute budget, then scored on its solutions.

``train_run(spec)`` seeds everything, builds the dataset's default model, hands it to the method,
wraps it in the requested gradient engine (which calibrates pass costs and charges the budget),
and steps until the budget is spent (``BudgetExhausted``), ``max_steps`` is reached or the run
diverges (``training.divergence``, :class:`~mtlbench.harness.method.DivergenceRule`: a
non-finite loss or parameter, or a loss that stays far above its initial value; recorded as
*diverged* with the reason). A run whose budget cannot pay for one step is *failed*, not
completed. The scored checkpoint is the final one or the best
on validation hypervolume (suite field ``scoring``). Each solution of the method is then
evaluated on val and test. Evaluation is not charged to the budget (nor to a seconds budget's
clock).

Anytime results: every ``training.eval_every`` steps, and once more at the end, every solution
is evaluated on val and test and the hypervolume of each split's front is recorded against the
budget spent so far (``RunResult.evaluations``; the evaluation table and the MLflow metrics
``anytime.*`` come from it). Validation serves ``best_val`` scoring from the same evaluation;
the test split is evaluated only for the anytime record, once per evaluation point, and never
chooses anything. Cost: each point is (number of solutions) × (|val| + |test|) forward passes,
so a 66-solution PML run with ``eval_every: 100`` spends 66 × (|val| + |test|) samples of
inference every 100 steps; raise ``eval_every`` to thin the curve. The time is recorded as
``evaluation_seconds`` and excluded from ``train_seconds``.

While it trains, a run reports :class:`~mtlbench.harness.progress.RunProgress` to its
``progress`` callback after every logged step and every evaluation, with the MLflow metric points
measured since the last report (``train.*`` at each log, ``anytime.*`` at each evaluation),
stamped with the time they were measured; all of them are also in ``RunResult.metric_points``.
"""

from __future__ import annotations

import copy
import datetime
import importlib.metadata
import math
import platform
import resource
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mtlbench.harness.budget import Budget, BudgetExhausted
from mtlbench.harness.checkpoints import LoopState, RunCheckpoints, restore, snapshot
from mtlbench.harness.data import training_batches
from mtlbench.harness.dataset import MultiTaskDataset, Splits
from mtlbench.harness.divergence import (
    DivergenceWatch,
    mean_loss_now,
    mean_task_loss,
    trained_tensors,
)
from mtlbench.harness.evaluation import (
    SolutionResult,
    evaluate_solutions,
    front_hypervolume,
)
from mtlbench.harness.gradients import get_engine
from mtlbench.harness.method import Method, TrainingConfig
from mtlbench.harness.metrics import HypervolumeResult, pareto_mask
from mtlbench.harness.progress import MetricPoint, RunProgress, now_ms
from mtlbench.harness.registry import DATASETS, METHODS
from mtlbench.harness.suite import RunSpec
from mtlbench.harness.tasks import TaskSet

ProgressCallback = Callable[[RunProgress], None]
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


# ---- set-up ----------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _load_dataset(name: str, params_json: str) -> tuple[MultiTaskDataset, Splits]:
    import json

    dataset_cls = DATASETS.get(name)
    dataset = dataset_cls(dataset_cls.Params.model_validate(json.loads(params_json)))
    return dataset, dataset.load()


def load_dataset(name: str, params: dict[str, Any]) -> tuple[MultiTaskDataset, Splits]:
    """The dataset object and its splits, cached per process (runs share loaded data)."""
    import json

    return _load_dataset(name, json.dumps(params, sort_keys=True, default=str))


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@lru_cache(maxsize=1)
def _code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("mtlbench")
    except PackageNotFoundError:
        package = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,  # outside a git checkout: no commit, stdout empty
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{package}+{commit}" if commit else package


def _installed_version(distribution: str) -> str:
    """A distribution's installed version, read from its metadata (no import), or "absent"."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def environment(device: torch.device) -> dict[str, str]:
    """Versions and device recorded with every run (reproducibility)."""
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    )
    return {
        "mtlbench_version": _code_version(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "mlflow": _installed_version("mlflow"),
        "pyarrow": _installed_version("pyarrow"),
        "device": str(device),
        "device_name": device_name or platform.machine(),
        "torch_threads": str(torch.get_num_threads()),
        "hostname": platform.node(),
    }


# ---- the run ---------------------------------------------------------------------------------
def _log_row(step: int, log: dict[str, torch.Tensor], names: list[str], budget: Budget) -> dict:
    row: dict[str, float] = {"step": float(step), "budget_fraction_spent": budget.fraction_spent}
    row["budget_spent_flops"] = budget.spent_flops
    for key, value in log.items():
        value = value.detach().float().cpu().reshape(-1)
        if value.numel() == len(names):
            for name, entry in zip(names, value.tolist()):
                row[f"{key}/{name}"] = entry
        elif value.numel() == 1:
            row[key] = float(value)
    return row


def _row_points(row: dict[str, float]) -> list[MetricPoint]:
    """The MLflow points of one logged row, stamped now (``train.<key>``, ``/`` as ``.``)."""
    stamp, step = now_ms(), int(row["step"])
    return [
        MetricPoint(f"train.{key}".replace("/", "."), value, stamp, step)
        for key, value in row.items()
        if key != "step" and math.isfinite(value)
    ]


def _evaluation_points(point: dict[str, Any], wall_seconds: float) -> list[MetricPoint]:
    """The MLflow points of one anytime evaluation, stamped now; step: FLOPs spent so far."""
    stamp, flops = now_ms(), int(point["budget_spent_flops"])
    values = {f"anytime.{name}": point[name] for name in ANYTIME_KEYS}
    values["anytime.wall_seconds"] = wall_seconds
    return [
        MetricPoint(key, float(value), stamp, flops)
        for key, value in values.items()
        if math.isfinite(value)
    ]


def _peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process_max_rss"


def train_run(
    spec: RunSpec,
    checkpoint_dir: Path | None = None,
    progress: ProgressCallback | None = None,
    mlflow_run_id: str = "",
    keep_checkpoints: bool = False,
) -> RunResult:
    """Train and score one run. Never raises for a failing method: the result says ``failed``.

    checkpoint_dir: where the run's checkpoints go (``harness.checkpoints``); a run that finds
    one there continues from it. mlflow_run_id: the MLflow run recording it (kept in the
    checkpoints, so that a resumed run continues the same MLflow run). keep_checkpoints: keep
    every checkpoint of a finished run (default: only its last one)."""
    started = time.perf_counter()
    device = resolve_device(spec.device)
    result = RunResult(
        spec,
        status="failed",
        stop_reason="error",
        started_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        environment=environment(device),
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        checkpoints = (
            None
            if checkpoint_dir is None
            else RunCheckpoints.of_run(checkpoint_dir, spec, mlflow_run_id, keep_checkpoints)
        )
        _train(spec, device, checkpoints, progress, result, started)
    except Exception as error:  # noqa: BLE001 - a failing run is recorded, the suite goes on
        result.status, result.stop_reason = "failed", "error"
        result.error = f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=8)}"
    result.wall_seconds += time.perf_counter() - started  # += the seconds before a resume
    result.ended_ms = now_ms()
    result.peak_memory_bytes, result.memory_measure = _peak_memory(device)
    return result


def _train(
    spec: RunSpec,
    device: torch.device,
    checkpoints: RunCheckpoints | None,
    progress: ProgressCallback | None,
    result: RunResult,
    started: float,
) -> None:
    training = TrainingConfig.model_validate(spec.training)
    dataset, splits = load_dataset(spec.dataset, spec.dataset_params)
    taskset = type(dataset).taskset(dataset.params)
    result.task_names = taskset.names
    result.higher_is_better = [t.higher_is_better for t in taskset]
    result.hv_reference = taskset.hv_reference

    seed_everything(spec.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    model = dataset.build_model().to(device)
    method_cls = METHODS.get(spec.method)
    method = method_cls(
        method_cls.Params.model_validate(spec.method_params), model, taskset, training
    )
    method.model.to(device)

    budget = Budget(spec.budget_kind, spec.budget_limit)  # type: ignore[arg-type]
    batches = training_batches(splits.train, training.batch_size, spec.seed, device)
    first = next(batches)
    engine = get_engine(spec.engine)(method.model, taskset, budget, first, **spec.engine_options)
    try:  # the engine's actors / shared memory are released however the loop ends
        method.bind(engine, steps_per_epoch=math.ceil(len(splits.train) / training.batch_size))
        budget.restart_clock()

        loop = LoopState()
        stop_reason, exhausted_message, diverged_reason = "max_steps", "", ""
        watch = DivergenceWatch(training.divergence)
        batch = first
        saved = checkpoints.latest() if checkpoints else None
        if saved is not None:
            loop = restore(saved, method, batches, budget, watch, result)
            result.wall_seconds = loop.wall_seconds
            result.resumed_from_steps = [*loop.resumed_from_steps, loop.step]
            loop.resumed_from_steps = result.resumed_from_steps
            print(f"{spec.title}: resuming from step {loop.step}", file=sys.stderr, flush=True)
            batch = next(batches)
        loop_started = time.perf_counter() - loop.loop_seconds
        reported = len(result.metric_points)  # metric points already handed to ``progress``

        def report() -> None:
            nonlocal reported
            if progress:
                fraction = max(budget.fraction_spent, loop.step / training.max_steps)
                new_points = tuple(result.metric_points[reported:])
                reported = len(result.metric_points)
                elapsed = time.perf_counter() - loop_started
                progress(RunProgress(loop.step, min(fraction, 1.0), elapsed, new_points))

        def save() -> None:
            if checkpoints is not None:
                loop.loop_seconds = time.perf_counter() - loop_started
                loop.wall_seconds = result.wall_seconds + time.perf_counter() - started
                payload = snapshot(
                    loop, method, batches, budget, watch, result, checkpoints.mlflow_run_id
                )
                checkpoints.write(loop.step, payload, budget.spent)

        if loop.stop_reason:  # resumed from the final checkpoint: training had ended
            stop_reason = loop.stop_reason
        while loop.step < training.max_steps and not loop.stop_reason:
            try:
                log = method.step(batch, engine)
            except BudgetExhausted as exhausted:
                stop_reason, exhausted_message = exhausted.stop_reason, str(exhausted)
                break
            except Exception as error:  # a failure on a blown-up state is its divergence
                with budget.uncharged():
                    reason = watch.explains_failure(mean_loss_now(method, taskset, batch), error)
                if reason is None:
                    raise
                stop_reason, diverged_reason = "diverged", reason
                break
            loop.step += 1
            step = loop.step
            if step == 1:
                watch.set_initial(mean_task_loss(_log_row(step, log, taskset.names, budget)))
            if step % training.log_every == 0:
                row = _log_row(step, log, taskset.names, budget)
                result.history.append(row)
                result.metric_points += _row_points(row)
                reason = watch.observe(step, row, trained_tensors(method))
                if reason is not None:
                    stop_reason, diverged_reason = "diverged", reason
                    break
                report()
            if step % training.eval_every == 0:
                loop.last_evaluation = _evaluate_point(
                    method, taskset, splits, device, budget, step, result
                )
                result.metric_points += _evaluation_points(
                    result.evaluations[-1], result.wall_seconds + time.perf_counter() - started
                )
                report()
                val_hv = loop.last_evaluation[1]
                if spec.scoring == "best_val" and val_hv > loop.best_val_hv:
                    loop.best_val_hv, loop.best_step = val_hv, step
                    loop.best_state = copy.deepcopy(method.state_dict())
            if checkpoints is not None and checkpoints.due(step):
                save()
            batch = next(batches)
        result.train_seconds = time.perf_counter() - loop_started - result.evaluation_seconds
        result.engine_stats = engine.report()
        result.engine_stats.update({f"method.{k}": v for k, v in method.report().items()})
    finally:
        engine.close()
    step, last_evaluation = loop.step, loop.last_evaluation
    result.steps, result.stop_reason = step, stop_reason
    result.budget = budget.summary()
    if stop_reason == "diverged":
        result.status, result.error = "diverged", diverged_reason
        report()
        if checkpoints is not None:
            checkpoints.prune()
        return
    if step == 0:  # nothing trained: scoring the initial model would pass it off as a result
        result.error = (
            f"the budget ({spec.budget_limit:g} {spec.budget_kind}) is smaller than one "
            f"step: {exhausted_message or stop_reason}"
        )
        return
    result.scored_step = step
    if last_evaluation is None or result.evaluations[-1]["step"] != step:
        last_evaluation = loop.last_evaluation = _evaluate_point(
            method, taskset, splits, device, budget, step, result, result.budget
        )
        result.metric_points += _evaluation_points(
            result.evaluations[-1], result.wall_seconds + time.perf_counter() - started
        )
    if checkpoints is not None:  # the final state, before ``best_val`` swaps the model
        loop.stop_reason = stop_reason
        save()
        checkpoints.prune(step)
    solutions, final_val_hv = last_evaluation  # the final state, evaluated once
    if (
        spec.scoring == "best_val"
        and loop.best_state is not None
        and loop.best_val_hv > final_val_hv
    ):
        method.load_state_dict(loop.best_state)
        result.scored_step = loop.best_step
        solutions = _timed_evaluation(method, taskset, splits, device, result)
    objectives = [s.test_objectives for s in solutions]
    for solution, on_front in zip(solutions, pareto_mask(np.asarray(objectives))):
        solution.on_front = bool(on_front)
    result.solutions = solutions
    result.hypervolume = front_hypervolume(objectives, result.hv_reference)
    result.status = "completed"
    report()


def _timed_evaluation(
    method: Method, taskset: TaskSet, splits: Splits, device, result: RunResult
) -> list[SolutionResult]:
    started = time.perf_counter()
    solutions = evaluate_solutions(method, taskset, splits, device)
    result.evaluation_seconds += time.perf_counter() - started
    return solutions


def _evaluate_point(
    method: Method,
    taskset: TaskSet,
    splits: Splits,
    device,
    budget: Budget,
    step: int,
    result: RunResult,
    spend: dict[str, float] | None = None,
) -> tuple[list[SolutionResult], float]:
    """Evaluate every solution on val and test (uncharged) and append the anytime point for
    ``step`` at the budget's current spend (or ``spend``, a ``Budget.summary()``). Returns the
    solutions and the validation hypervolume."""
    spend = spend or budget.summary()
    with budget.uncharged():
        solutions = _timed_evaluation(method, taskset, splits, device, result)
        val_hv = front_hypervolume([s.val_objectives for s in solutions], taskset.hv_reference)
        test_hv = front_hypervolume([s.test_objectives for s in solutions], taskset.hv_reference)
    result.evaluations.append(
        {
            "step": step,
            "budget_spent": spend["budget_spent"],
            "budget_spent_flops": spend["budget_spent_flops"],
            "budget_fraction": spend["budget_fraction_spent"],
            "val_hypervolume": val_hv.value,
            "test_hypervolume": test_hv.value,
            "hv_method": test_hv.method,
            "num_solutions": len(solutions),
        }
    )
    return solutions, val_hv.value
