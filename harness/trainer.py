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
import math
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from mtlbench.harness.budget import Budget, BudgetExhausted
from mtlbench.harness.checkpoints import LoopState, RunCheckpoints, restore, snapshot
from mtlbench.harness.data import Batch, sample_count, training_batches
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
from mtlbench.harness.method import TrainingConfig
from mtlbench.harness.metrics import pareto_mask
from mtlbench.harness.progress import RunProgress, now_ms
from mtlbench.harness.registry import METHODS
from mtlbench.harness.run_result import RunResult, evaluation_points, log_row, row_points
from mtlbench.harness.run_setup import (
    environment,
    load_dataset,
    peak_memory,
    resolve_device,
    seed_everything,
)
from mtlbench.harness.suite import RunSpec

# Importers of the trainer (the runner, the Ray executor, the scaling studies) find the run's
# record and set-up here too.
__all__ = [
    "ProgressCallback",
    "RunResult",
    "environment",
    "load_dataset",
    "resolve_device",
    "seed_everything",
    "train_run",
]

ProgressCallback = Callable[[RunProgress], None]
Evaluation = tuple[list[SolutionResult], float]  # every solution's results, val hypervolume


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
    except Exception as error:  # a failing run is recorded, the suite goes on
        result.status, result.stop_reason = "failed", "error"
        result.error = f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=8)}"
    result.wall_seconds += time.perf_counter() - started  # += the seconds before a resume
    result.ended_ms = now_ms()
    result.peak_memory_bytes, result.memory_measure = peak_memory(device)
    return result


def _train(
    spec: RunSpec,
    device: torch.device,
    checkpoints: RunCheckpoints | None,
    progress: ProgressCallback | None,
    result: RunResult,
    started: float,
) -> None:
    """Build the run, train it until it stops, then score it into ``result``."""
    run = _Run(spec, device, checkpoints, progress, result, started)
    try:  # the engine's actors / shared memory are released however the loop ends
        run.start()
        ending = run.train()
        result.train_seconds = time.perf_counter() - run.loop_started - result.evaluation_seconds
        result.engine_stats = run.engine.report()
        result.engine_stats.update({f"method.{k}": v for k, v in run.method.report().items()})
    finally:
        run.engine.close()
    run.finish(ending)


@dataclass
class _Ending:
    """Why the training loop stopped: ``stop_reason`` (``max_steps``, the budget's reason,
    ``diverged``, or the one a final checkpoint recorded), the budget's message when it ran
    out, and the divergence's reason when the run diverged."""

    stop_reason: str = "max_steps"
    exhausted_message: str = ""
    diverged_reason: str = ""


class _Run:
    """One run in progress: the objects it was built from, its loop state and its two clocks.

    ``started``: ``time.perf_counter()`` when ``train_run`` began (the run's wall clock, with
    ``result.wall_seconds`` of earlier processes); ``loop_started``: when the loop would have
    begun had it never been interrupted (the loop's seconds in a checkpoint are subtracted).
    Building it seeds the global generators and draws in a fixed order (model, method, first
    batch, engine calibration), so a run is reproducible and a resumed one rebuilds the same.
    """

    def __init__(
        self,
        spec: RunSpec,
        device: torch.device,
        checkpoints: RunCheckpoints | None,
        progress: ProgressCallback | None,
        result: RunResult,
        started: float,
    ):
        self.spec, self.device, self.result, self.started = spec, device, result, started
        self.checkpoints, self.progress = checkpoints, progress
        self.training = training = TrainingConfig.model_validate(spec.training)
        dataset, self.splits = load_dataset(spec.dataset, spec.dataset_params)
        self.taskset = taskset = type(dataset).taskset(dataset.params)
        result.task_names = taskset.names
        result.higher_is_better = [t.higher_is_better for t in taskset]
        result.hv_reference = taskset.hv_reference

        seed_everything(spec.seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        model = dataset.build_model().to(device)
        method_cls = METHODS.get(spec.method)
        self.method = method_cls(
            method_cls.Params.model_validate(spec.method_params), model, taskset, training
        )
        self.method.model.to(device)

        self.budget = Budget(spec.budget_kind, spec.budget_limit)  # type: ignore[arg-type]
        self.batches = training_batches(self.splits.train, training.batch_size, spec.seed, device)
        self.batch: Batch = next(self.batches)
        self.engine = get_engine(spec.engine)(
            self.method.model, taskset, self.budget, self.batch, **spec.engine_options
        )
        self.loop = LoopState()
        self.watch = DivergenceWatch(training.divergence)
        self.loop_started = time.perf_counter()
        self.reported = 0  # metric points of ``result`` already handed to ``progress``

    # ---- start, progress reports, checkpoints ------------------------------------------------
    def start(self) -> None:
        """Bind the method to the engine and continue from the latest checkpoint, if any."""
        steps_per_epoch = math.ceil(sample_count(self.splits.train) / self.training.batch_size)
        self.method.bind(self.engine, steps_per_epoch=steps_per_epoch)
        self.budget.restart_clock()
        saved = self.checkpoints.latest() if self.checkpoints else None
        if saved is not None:
            result = self.result
            self.loop = restore(saved, self.method, self.batches, self.budget, self.watch, result)
            result.wall_seconds = self.loop.wall_seconds
            result.resumed_from_steps = [*self.loop.resumed_from_steps, self.loop.step]
            self.loop.resumed_from_steps = result.resumed_from_steps
            print(
                f"{self.spec.title}: resuming from step {self.loop.step}",
                file=sys.stderr,
                flush=True,
            )
            self.batch = next(self.batches)
        self.loop_started = time.perf_counter() - self.loop.loop_seconds
        self.reported = len(self.result.metric_points)

    def wall_seconds(self) -> float:
        """The run's wall seconds so far, earlier processes included."""
        return self.result.wall_seconds + time.perf_counter() - self.started

    def report(self) -> None:
        """Hand ``progress`` the step, the fraction done and the metric points since the last."""
        if self.progress:
            fraction = max(self.budget.fraction_spent, self.loop.step / self.training.max_steps)
            new_points = tuple(self.result.metric_points[self.reported :])
            self.reported = len(self.result.metric_points)
            elapsed = time.perf_counter() - self.loop_started
            self.progress(RunProgress(self.loop.step, min(fraction, 1.0), elapsed, new_points))

    def save(self) -> None:
        """Write a checkpoint of the state after ``loop.step`` (when the run has a folder)."""
        if self.checkpoints is not None:
            self.loop.loop_seconds = time.perf_counter() - self.loop_started
            self.loop.wall_seconds = self.wall_seconds()
            payload = snapshot(
                self.loop,
                self.method,
                self.batches,
                self.budget,
                self.watch,
                self.result,
                self.checkpoints.mlflow_run_id,
            )
            self.checkpoints.write(self.loop.step, payload, self.budget.spent)

    # ---- the loop ----------------------------------------------------------------------------
    def train(self) -> _Ending:
        """Step the method until ``max_steps``, the budget's end, a divergence, or a failure
        (raised, unless the divergence rule explains it)."""
        ending = _Ending(stop_reason=self.loop.stop_reason or "max_steps")
        while self.loop.step < self.training.max_steps and not self.loop.stop_reason:
            try:
                log = self.method.step(self.batch, self.engine)
            except BudgetExhausted as exhausted:
                ending.stop_reason, ending.exhausted_message = exhausted.stop_reason, str(exhausted)
                break
            except Exception as error:  # a failure on a blown-up state is its divergence
                with self.budget.uncharged():
                    mean_loss = mean_loss_now(self.method, self.taskset, self.batch)
                    reason = self.watch.explains_failure(mean_loss, error)
                if reason is None:
                    raise
                ending.stop_reason, ending.diverged_reason = "diverged", reason
                break
            self.loop.step += 1
            reason = self._after_step(log)
            if reason is not None:
                ending.stop_reason, ending.diverged_reason = "diverged", reason
                break
            self.batch = next(self.batches)
        return ending

    def _after_step(self, log: dict[str, torch.Tensor]) -> str | None:
        """Log, check for divergence, evaluate and checkpoint as the step number asks; the
        divergence's reason if the run has diverged (then nothing else is done)."""
        step, names = self.loop.step, self.taskset.names
        if step == 1:
            self.watch.set_initial(mean_task_loss(log_row(step, log, names, self.budget)))
        if step % self.training.log_every == 0:
            row = log_row(step, log, names, self.budget)
            self.result.history.append(row)
            self.result.metric_points += row_points(row)
            reason = self.watch.observe(step, row, trained_tensors(self.method))
            if reason is not None:
                return reason
            self.report()
        if step % self.training.eval_every == 0:
            self.loop.last_evaluation = self._evaluate_point(step)
            self.report()
            val_hv = self.loop.last_evaluation[1]
            if self.spec.scoring == "best_val" and val_hv > self.loop.best_val_hv:
                self.loop.best_val_hv, self.loop.best_step = val_hv, step
                self.loop.best_state = copy.deepcopy(self.method.state_dict())
        if self.checkpoints is not None and self.checkpoints.due(step):
            self.save()
        return None

    # ---- evaluation --------------------------------------------------------------------------
    def _timed_evaluation(self) -> list[SolutionResult]:
        """Every solution on val and test; the time goes to ``result.evaluation_seconds``."""
        started = time.perf_counter()
        solutions = evaluate_solutions(self.method, self.taskset, self.splits, self.device)
        self.result.evaluation_seconds += time.perf_counter() - started
        return solutions

    def _evaluate_point(self, step: int, spend: dict[str, float] | None = None) -> Evaluation:
        """Evaluate every solution on val and test (uncharged) and record the anytime point for
        ``step`` at the budget's current spend (or ``spend``, a ``Budget.summary()``): an entry
        of ``result.evaluations`` and its MLflow points. Returns the solutions and the
        validation hypervolume."""
        spend = spend or self.budget.summary()
        reference = self.taskset.hv_reference
        with self.budget.uncharged():
            solutions = self._timed_evaluation()
            val_hv = front_hypervolume([s.val_objectives for s in solutions], reference)
            test_hv = front_hypervolume([s.test_objectives for s in solutions], reference)
        point = {
            "step": step,
            "budget_spent": spend["budget_spent"],
            "budget_spent_flops": spend["budget_spent_flops"],
            "budget_fraction": spend["budget_fraction_spent"],
            "val_hypervolume": val_hv.value,
            "test_hypervolume": test_hv.value,
            "hv_method": test_hv.method,
            "num_solutions": len(solutions),
        }
        self.result.evaluations.append(point)
        self.result.metric_points += evaluation_points(point, self.wall_seconds())
        return solutions, val_hv.value

    # ---- the end -----------------------------------------------------------------------------
    def finish(self, ending: _Ending) -> None:
        """Record how training ended; score the run unless it diverged or never stepped."""
        result, loop, step = self.result, self.loop, self.loop.step
        result.steps, result.stop_reason = step, ending.stop_reason
        result.budget = self.budget.summary()
        if ending.stop_reason == "diverged":
            result.status, result.error = "diverged", ending.diverged_reason
            self.report()
            if self.checkpoints is not None:
                self.checkpoints.prune()
            return
        if step == 0:  # nothing trained: scoring the initial model would pass it off as a result
            result.error = (
                f"the budget ({self.spec.budget_limit:g} {self.spec.budget_kind}) is smaller "
                f"than one step: {ending.exhausted_message or ending.stop_reason}"
            )
            return
        result.scored_step = step
        last_evaluation = loop.last_evaluation
        if last_evaluation is None or result.evaluations[-1]["step"] != step:
            last_evaluation = loop.last_evaluation = self._evaluate_point(step, result.budget)
        if self.checkpoints is not None:  # the final state, before ``best_val`` swaps the model
            loop.stop_reason = ending.stop_reason
            self.save()
            self.checkpoints.prune(step)
        self._score(last_evaluation)

    def _score(self, final_evaluation: Evaluation) -> None:
        """Score the final state's solutions, or the best validation checkpoint's under
        ``scoring: best_val`` when its validation hypervolume is higher; mark the Pareto front
        of their test objectives and its hypervolume."""
        solutions, final_val_hv = final_evaluation  # the final state, evaluated once
        loop = self.loop
        if (
            self.spec.scoring == "best_val"
            and loop.best_state is not None
            and loop.best_val_hv > final_val_hv
        ):
            self.method.load_state_dict(loop.best_state)
            self.result.scored_step = loop.best_step
            solutions = self._timed_evaluation()
        objectives = [s.test_objectives for s in solutions]
        for solution, on_front in zip(solutions, pareto_mask(np.asarray(objectives)), strict=True):
            solution.on_front = bool(on_front)
        self.result.solutions = solutions
        self.result.hypervolume = front_hypervolume(objectives, self.result.hv_reference)
        self.result.status = "completed"
        self.report()
