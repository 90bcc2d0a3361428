"""Run a suite: expand it, skip what is already recorded, execute the rest, record each result.

The driver is the only writer of records: an executor (local, in this process; Ray, elsewhere)
yields :class:`RunResult` objects and the driver turns each into Parquet rows and an MLflow run
as soon as it arrives, so a suite killed half-way keeps every finished run and a rerun does only
the missing ones.

While runs train, the executor forwards their :class:`~mtlbench.harness.progress.RunProgress`
reports to the driver (:class:`RunMonitor`), which shows them (bars on a terminal, else a line
every ``report_seconds``) and writes their metric points to MLflow as they come. On Ctrl-C,
:func:`run_suite` marks the suite's open MLflow runs KILLED, says what finished and how to
continue, and re-raises ``KeyboardInterrupt``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import shlex
import sys
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from mtlbench.harness.checkpoints import checkpoint_sidecars
from mtlbench.harness.config import ConfigError, SuiteConfig
from mtlbench.harness.progress import RunProgress, SuiteProgress
from mtlbench.harness.records import EvaluationRecord, RunRecord, to_row
from mtlbench.harness.registry import EXECUTORS, LOOKUP_ERRORS, METHODS
from mtlbench.harness.selection import annotate_run, baseline_for, is_baseline_row
from mtlbench.harness.store import ResultStore
from mtlbench.harness.suite import RunSpec, expand_suite
from mtlbench.harness.trainer import RunResult, train_run
from rich.console import Console


@dataclass(frozen=True)
class RunMonitor:
    """What an executor tells the driver about runs in flight (the driver's callbacks).

    started(spec): the run is about to start; returns the id of the MLflow run recording it (the
    one its checkpoints name, if it resumes), which the executor hands to ``train_run``.
    progressed(spec, report): a report of a run in flight (called on the driver's thread; late
    reports of a recorded run are ignored).
    """

    started: Callable[[RunSpec], str | None]
    progressed: Callable[[RunSpec, RunProgress], None]


Executor = Callable[[list[RunSpec], RunMonitor, Path], Generator[RunResult, None, None]]


@dataclass
class SuiteSummary:
    planned: int
    skipped: int
    recorded: list[RunResult] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for result in self.recorded:
            counts[result.status] = counts.get(result.status, 0) + 1
        return counts


def ensure_writable(results_dir: Path) -> None:
    """Create ``results_dir`` and prove it writable, or raise ConfigError naming it."""
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        probe = results_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError(f"output.results_dir: cannot write to {results_dir}: {reason}") from None


def execute_local(
    specs: list[RunSpec], monitor: RunMonitor, results_dir: Path, keep_checkpoints: bool = False
) -> Generator[RunResult, None, None]:
    """Run each spec in this process, one after another; reports go straight to ``monitor``."""
    for spec in specs:
        mlflow_run_id = monitor.started(spec) or ""

        def report(update: RunProgress, spec: RunSpec = spec) -> None:
            monitor.progressed(spec, update)

        folder = checkpoint_folder(results_dir, spec)
        yield train_run(spec, folder, report, mlflow_run_id, keep_checkpoints)


def checkpoint_folder(results_dir: Path, spec: RunSpec) -> Path:
    """Where a run's checkpoints go: ``<results_dir>/checkpoints/<run_hash>``."""
    return Path(results_dir) / "checkpoints" / spec.run_hash


def resumable_mlflow_run(results_dir: Path, spec: RunSpec) -> str:
    """The MLflow run id named by the run's newest complete checkpoint ("" if none)."""
    sidecars = checkpoint_sidecars(checkpoint_folder(results_dir, spec), warn=False)
    return str(sidecars[-1].get("mlflow_run_id", "")) if sidecars else ""


def _identity(spec: RunSpec) -> dict[str, Any]:
    """The columns that name a run, shared by its result rows and its evaluation rows."""
    return {
        "run_hash": spec.run_hash,
        "suite": spec.suite,
        "method": spec.method,
        "method_label": spec.method_label,
        "is_baseline": METHODS.get(spec.method).is_baseline,
        "dataset": spec.dataset,
        "seed": spec.seed,
        "budget_kind": spec.budget_kind,
        "budget_limit": spec.budget_limit,
    }


def result_rows(
    result: RunResult, mlflow_run_id: str, previous_rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Parquet rows of one run: one per solution (one placeholder row if none was scored), with
    the selected solution and Δm% against the baseline runs among ``previous_rows``."""
    spec = result.spec
    base = RunRecord(
        **_identity(spec),
        method_params=json.dumps(spec.method_params, sort_keys=True),
        engine=spec.engine,
        dataset_params=json.dumps(spec.dataset_params, sort_keys=True),
        budget_spent=result.budget.get("budget_spent", math.nan),
        budget_spent_flops=result.budget.get("budget_spent_flops", math.nan),
        training=json.dumps(spec.training, sort_keys=True),
        scoring=spec.scoring,
        scored_step=result.scored_step,
        device=spec.device,
        status=result.status,
        stop_reason=result.stop_reason,
        error=result.error,
        steps=result.steps,
        train_seconds=result.train_seconds,
        evaluation_seconds=result.evaluation_seconds,
        wall_seconds=result.wall_seconds,
        peak_memory_bytes=result.peak_memory_bytes,
        memory_measure=result.memory_measure,
        engine_stats=json.dumps(result.engine_stats, sort_keys=True),
        hv=result.hypervolume,
        hv_reference=result.hv_reference,
        task_names=result.task_names,
        higher_is_better=result.higher_is_better,
        mlflow_run_id=mlflow_run_id,
        package_version=result.environment.get("mtlbench_version", ""),
        torch_version=result.environment.get("torch", ""),
        environment=json.dumps(result.environment, sort_keys=True),
        started_at=result.started_at,
    )
    records = [
        dataclasses.replace(
            base,
            solution_index=solution.index,
            solution_label=solution.label,
            coordinates=solution.coordinates,
            on_front=solution.on_front,
            val_losses=solution.val_losses,
            val_metrics=solution.val_metrics,
            val_objectives=solution.val_objectives,
            test_losses=solution.test_losses,
            test_metrics=solution.test_metrics,
            test_objectives=solution.test_objectives,
        )
        for solution in result.solutions
    ] or [base]
    rows = [to_row(record) for record in records]
    baseline = None
    if not base.is_baseline and result.status == "completed":
        baseline = baseline_for(previous_rows, rows[0])
    return annotate_run(rows, baseline)


def evaluation_rows(result: RunResult, mlflow_run_id: str) -> list[dict[str, Any]]:
    """Rows of the evaluation table for one run: one per evaluation during training."""
    spec = result.spec
    return [
        to_row(EvaluationRecord(**_identity(spec), mlflow_run_id=mlflow_run_id, **point))
        for point in result.evaluations
    ]


@dataclass
class _SuiteRecorder:
    """The driver's side of a suite in flight: opens each run's MLflow run when it starts, logs
    its progress, and records each result (Parquet rows, evaluations, MLflow) as it arrives."""

    results_dir: Path
    store: ResultStore
    tracker: Any  # mtlbench.harness.tracking.Tracker (imported late: MLflow is slow to import)
    view: SuiteProgress
    console: Console
    summary: SuiteSummary
    mlflow_ids: dict[str, str] = field(default_factory=dict)  # run hash -> MLflow run id
    open_ids: dict[str, str] = field(default_factory=dict)  # those started, not yet recorded

    def started(self, spec: RunSpec) -> str:
        previous = resumable_mlflow_run(self.results_dir, spec)  # a checkpointed run continues
        run_id = (previous and self.tracker.resume_run(previous)) or self.tracker.start_run(spec)
        self.mlflow_ids[spec.run_hash] = self.open_ids[spec.run_hash] = run_id
        self.view.run_started(spec)
        return run_id

    def progressed(self, spec: RunSpec, update: RunProgress) -> None:
        self.view.run_progressed(spec, update)
        if spec.run_hash in self.open_ids:
            self.tracker.log_progress(self.open_ids[spec.run_hash], update.points)

    def record(self, result: RunResult) -> None:
        run_hash = result.spec.run_hash
        mlflow_id = self.mlflow_ids.get(run_hash, "")
        rows = result_rows(result, mlflow_id, self.store.rows())
        self.store.write_run(run_hash, rows)
        self.store.write_evaluations(run_hash, evaluation_rows(result, mlflow_id))
        self.tracker.finish_run(mlflow_id or self.tracker.start_run(result.spec), result, rows)
        self.open_ids.pop(run_hash, None)
        self.summary.recorded.append(result)
        self.view.run_finished(result)
        for step in result.resumed_from_steps:
            self.console.print(f"{result.spec.title}: resumed from its checkpoint at step {step}")
        if result.status != "completed":
            first_line = result.error.splitlines()[0] if result.error else ""
            self.console.print(f"[yellow]{result.spec.title}: {result.status}[/] {first_line}")


def run_suite(
    suite: SuiteConfig,
    results_dir: Path | None = None,
    tracking_uri: str | None = None,
    executor: str | None = None,
    console: Console | None = None,
    show_progress: bool = True,
    report_seconds: float = 60.0,
    rerun_command: str | None = None,
) -> SuiteSummary:
    """Execute every run of ``suite`` not already recorded; return what was done.

    executor: a registered executor's name (default: ``suite.executor.kind``). show_progress:
    progress bars, when ``console`` is a terminal; otherwise (or without bars) a progress line
    every ``report_seconds`` (0: none). rerun_command: the command that continues the suite,
    printed on Ctrl-C (default: this process's ``mtlbench run ...`` command line).
    Raises KeyboardInterrupt after recording the interruption (open MLflow runs KILLED).
    """
    from mtlbench.harness.tracking import Tracker

    console = console or Console(stderr=True)
    results_dir = Path(results_dir or suite.output.results_dir)
    ensure_writable(results_dir)
    store = ResultStore(results_dir)
    specs = expand_suite(suite)
    finished = store.finished_hashes()
    todo = [spec for spec in specs if spec.run_hash not in finished]
    summary = SuiteSummary(planned=len(specs), skipped=len(specs) - len(todo))
    plan = (
        f"suite {suite.name}: {len(specs)} runs, {summary.skipped} already recorded, "
        f"{len(todo)} to run"
    )
    if not todo:
        console.print(plan)
        return summary
    # the store is opened before anything is printed: a corrupt or unreachable one is one line
    tracker = Tracker(results_dir, suite.name, tracking_uri or suite.output.tracking_uri)
    console.print(plan)
    stale = tracker.mark_stale_runs()
    if stale:
        console.print(f"marked {stale} interrupted MLflow run(s) as KILLED")
    bars = show_progress and console.is_terminal
    view = SuiteProgress(console, suite.name, len(todo), bars=bars, report_seconds=report_seconds)
    recorder = _SuiteRecorder(results_dir, store, tracker, view, console, summary)
    run_executor = executor_for(executor or suite.executor.kind, suite)
    results = run_executor(todo, RunMonitor(recorder.started, recorder.progressed), results_dir)
    try:
        with view:
            for result in results:
                recorder.record(result)
    except KeyboardInterrupt:
        killed = tracker.interrupt(list(recorder.open_ids.values()))
        console.print(
            _interruption_message(summary, view, killed, results_dir, rerun_command),
            markup=False,
            highlight=False,
            soft_wrap=True,  # one line, whatever the console width: the command is copied
        )
        raise
    finally:
        results.close()  # an executor stopped early ends its runs (Ray: cancels its tasks)
    backfilled = backfill_delta_m(store, tracker)
    if backfilled:
        console.print(f"Δm% filled in for {backfilled} run(s) that finished before their baseline")
    tracker.finish_suite()
    return summary


def _interruption_message(
    summary: SuiteSummary,
    view: SuiteProgress,
    killed: int,
    results_dir: Path,
    rerun_command: str | None,
) -> str:
    """What an interrupted suite says: what finished, what was stopped, how to continue."""
    if rerun_command is None and sys.argv[1:2] == ["run"]:  # the CLI: this very command
        rerun_command = shlex.join(["mtlbench", *sys.argv[1:]])
    how = (
        f"to continue, run: {rerun_command}"
        if rerun_command
        else f"to continue, run the same suite with results folder {results_dir}"
    )
    return (
        f"interrupted: {len(summary.recorded)} of {summary.planned - summary.skipped} "
        f"runs recorded this time ({view.counts_text()}), {summary.skipped} recorded before; "
        f"{killed} run(s) in flight marked KILLED in MLflow. Recorded runs are kept and skipped "
        f"on a rerun; {how}"
    )


def backfill_delta_m(store: ResultStore, tracker: Any = None) -> int:
    """Redo selection and Δm% for recorded runs that finished before their baseline existed.

    With concurrent executors a method's run can end before the baseline runs; once they are
    recorded, such runs are re-annotated by the same rule as :func:`result_rows` (the selected
    solution may change: validation Δm% replaces the fallback rule) and rewritten, and the
    Δm% logged to their MLflow run. Returns the number of runs updated.
    """
    rows = store.rows()
    by_run: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_run.setdefault(row["run_hash"], []).append(row)
    updated = 0
    for run_hash, run_rows in by_run.items():
        first = run_rows[0]
        if is_baseline_row(first) or first["status"] != "completed":
            continue
        if first["run_delta_m_pct"] is not None and not math.isnan(first["run_delta_m_pct"]):
            continue
        baseline = baseline_for(rows, first)
        if baseline is None:
            continue
        before = copy.deepcopy(run_rows)
        run_rows = annotate_run(sorted(run_rows, key=lambda r: r["solution_index"]), baseline)
        before.sort(key=lambda r: r["solution_index"])
        if _same_rows(before, run_rows):
            continue  # Δm% stays undefined (e.g. a baseline metric of 0): nothing new to write
        store.write_run(run_hash, run_rows)
        run_delta = run_rows[0]["run_delta_m_pct"]
        if tracker is not None and first["mlflow_run_id"] and math.isfinite(run_delta):
            tracker.client.log_metric(first["mlflow_run_id"], "delta_m_pct", run_delta)
        updated += 1
    return updated


def _same_rows(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> bool:
    def canonical(rows: list[dict[str, Any]]) -> str:
        return json.dumps(rows, sort_keys=True, default=str)  # NaN == NaN as text

    return canonical(first) == canonical(second)


def local_executor(suite: SuiteConfig) -> Executor:
    """Executor ``local``: the suite's runs one after another in this process."""
    return functools.partial(execute_local, keep_checkpoints=suite.output.keep_checkpoints)


def executor_for(kind: str, suite: SuiteConfig) -> Executor:
    """The executor registered as ``kind`` (``local``, ``ray``, a plugin's), set up for
    ``suite``. An executor is registered as a factory ``(suite) -> Executor``."""
    try:
        factory = EXECUTORS.get(kind)
    except LOOKUP_ERRORS as error:
        raise ConfigError(f"executor.kind: {error}") from None
    return cast(Executor, factory(suite))
