"""MLflow records: one parent run per suite, one child run per (method, dataset, seed) run.

The default store is a SQLite file under the results folder; ``tracking_uri`` may name a server.
Only the driver writes (a SQLite store must not be migrated or written by many processes at
once): runs executed elsewhere report their :class:`RunResult` back and are recorded here.
A child run is created RUNNING when its run starts; if the driver dies, the next invocation of
the suite marks such stale runs KILLED before it starts anything; an interrupted suite
(Ctrl-C) marks its own open runs KILLED (:meth:`Tracker.interrupt`).

Metrics reach MLflow while a run trains: the driver hands each run's new points to
:meth:`Tracker.log_progress`, which writes them at most every ``live_flush_seconds`` per run;
:meth:`Tracker.finish_run` writes the rest and the final metrics, never a (key, step) pair twice.
Every point carries the time it was measured (``MetricPoint.timestamp_ms``), not the time it
was written; the final metrics carry the time the run ended.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mtlbench.harness.progress import MetricPoint
from mtlbench.harness.records import hypervolume_columns
from mtlbench.harness.run_result import RunResult
from mtlbench.harness.selection import selected_row
from mtlbench.harness.suite import RunSpec
from mtlbench.harness.tracking_store import open_tracking_client

SUITE_TAG = "mtlbench.suite"
RUN_HASH_TAG = "mtlbench.run_hash"
PARENT_TAG = "mlflow.parentRunId"
BATCH_LIMIT = 900  # MLflow accepts at most 1000 metrics per log_batch call


def default_tracking_uri(results_dir: Path) -> str:
    return f"sqlite:///{(Path(results_dir) / 'mlflow.db').resolve()}"


def experiment_id_for(client: MlflowClient, name: str, results_dir: Path) -> str:
    """The id of the MLflow experiment ``name``, created (artifacts under
    ``<results_dir>/mlartifacts``) if it does not exist yet."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = (Path(results_dir) / "mlartifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifacts)
    except MlflowException:  # another process created it in between: use theirs
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


class Tracker:
    """Writes a suite's runs into one MLflow experiment named after the suite.

    live_flush_seconds: the least time between two writes of one run's live points.
    """

    live_flush_seconds: float = 5.0

    def __init__(self, results_dir: Path, suite_name: str, tracking_uri: str | None = None):
        for noisy in ("mlflow", "alembic"):  # schema-migration chatter on a new SQLite store
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self.tracking_uri = tracking_uri or default_tracking_uri(results_dir)
        self.client = open_tracking_client(self.tracking_uri, results_dir)
        self.suite_name = suite_name
        self.experiment_id = experiment_id_for(self.client, suite_name, results_dir)
        self.parent_run_id = self._suite_run()
        self._written: dict[str, set[tuple[str, int]]] = {}  # run id -> (key, step) in MLflow
        self._unwritten: dict[str, list[MetricPoint]] = {}  # run id -> points awaiting a flush
        self._last_flush: dict[str, float] = {}  # run id -> time.monotonic() of its last write

    def _suite_run(self) -> str:
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.`{SUITE_TAG}` = '{self.suite_name}' and tags.`mtlbench.kind` = 'suite'"
            ),
            max_results=1,
        )
        if found:
            run_id = found[0].info.run_id
            if found[0].info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"suite:{self.suite_name}",
            tags={SUITE_TAG: self.suite_name, "mtlbench.kind": "suite"},
        )
        return run.info.run_id

    def mark_stale_runs(self) -> int:
        """Set every child run still RUNNING (its driver died) to KILLED. Returns how many."""
        stale = self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"attributes.status = 'RUNNING' and tags.`{PARENT_TAG}` = '{self.parent_run_id}'"
            ),
        )
        for run in stale:
            self.client.set_terminated(run.info.run_id, status="KILLED")
        return len(stale)

    def start_run(self, spec: RunSpec) -> str:
        """Create the child run (status RUNNING) with the run's parameters."""
        run = self.client.create_run(
            self.experiment_id,
            run_name=spec.title,
            tags={
                PARENT_TAG: self.parent_run_id,
                SUITE_TAG: self.suite_name,
                RUN_HASH_TAG: spec.run_hash,
                "mtlbench.kind": "run",
            },
        )
        params = {
            "method": spec.method,
            "method_label": spec.method_label,
            "engine": spec.engine,
            "dataset": spec.dataset,
            "seed": spec.seed,
            "budget_kind": spec.budget_kind,
            "budget_limit": spec.budget_limit,
            "scoring": spec.scoring,
            "device": spec.device,
            **{f"method.{k}": v for k, v in spec.method_params.items()},
            **{f"dataset.{k}": v for k, v in spec.dataset_params.items()},
            **{f"training.{k}": v for k, v in spec.training.items()},
        }
        self.client.log_batch(
            run.info.run_id, params=[Param(k, str(v)[:500]) for k, v in params.items()]
        )
        return run.info.run_id

    def resume_run(self, run_id: str) -> str | None:
        """Reopen the child run ``run_id`` of this suite (a run resumed from its checkpoint):
        status RUNNING again, and its (key, step) pairs already in MLflow never written twice.
        Returns ``run_id``, or None if there is no such run in this suite's experiment."""
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return None
        if run.info.experiment_id != self.experiment_id:
            return None
        self.client.update_run(run_id, status="RUNNING")
        written = self._written.setdefault(run_id, set())
        for key in run.data.metrics:
            written.update(
                (key, point.step) for point in self.client.get_metric_history(run_id, key)
            )
        return run_id

    def log_progress(self, run_id: str, points: list[MetricPoint] | tuple[MetricPoint, ...]) -> int:
        """Queue a run's new points and write the queue if the run's last write is at least
        ``live_flush_seconds`` old (the first write at once). Returns the points written."""
        self._unwritten.setdefault(run_id, []).extend(points)
        last = self._last_flush.get(run_id)
        if last is not None and time.monotonic() - last < self.live_flush_seconds:
            return 0
        return self._flush(run_id)

    def _flush(self, run_id: str) -> int:
        pending, self._unwritten[run_id] = self._unwritten.get(run_id, []), []
        self._last_flush[run_id] = time.monotonic()
        return self._log_points(run_id, pending)

    def _log_points(self, run_id: str, points: list[MetricPoint]) -> int:
        """Write the points not yet in MLflow for ``run_id`` (by (key, step)); return how many."""
        written = self._written.setdefault(run_id, set())
        metrics = []
        for point in points:
            identity = (point.key, point.step)
            if identity in written or not math.isfinite(point.value):
                continue
            written.add(identity)
            metrics.append(Metric(point.key, point.value, point.timestamp_ms, point.step))
        for start in range(0, len(metrics), BATCH_LIMIT):
            self.client.log_batch(run_id, metrics=metrics[start : start + BATCH_LIMIT])
        return len(metrics)

    def finish_run(self, run_id: str, result: RunResult, rows: list[dict[str, Any]]) -> None:
        """Log the curves not written yet, the final metrics, environment and front; then end
        the run. Curves: ``train.*`` against the step, ``anytime.*`` against FLOPs spent."""
        ended_ms = result.ended_ms or int(time.time() * 1000)
        final = _final_metrics(result, rows)
        points = list(result.metric_points)
        points += [MetricPoint(k, v, ended_ms, result.steps) for k, v in final.items()]
        self._log_points(run_id, points)
        for run_state in (self._written, self._unwritten, self._last_flush):
            run_state.pop(run_id, None)
        tags = [RunTag(f"env.{k}", str(v)[:5000]) for k, v in result.environment.items()]
        tags += [
            RunTag(f"mtlbench.engine.{key}", value)
            for key, value in result.engine_stats.items()
            if isinstance(value, str)
        ]
        tags += [
            RunTag("mtlbench.status", result.status),
            RunTag("mtlbench.stop_reason", result.stop_reason),
        ]
        hv_columns = hypervolume_columns(result.hypervolume)
        tags += [RunTag(f"mtlbench.{k}", v) for k, v in hv_columns.items() if isinstance(v, str)]
        if rows:
            chosen = selected_row(rows)
            tags += [
                RunTag("mtlbench.selection_rule", chosen["selection_rule"] or ""),
                RunTag("mtlbench.selected_solution", chosen["solution_label"] or ""),
            ]
            if chosen["delta_m_reason"]:
                tags.append(RunTag("mtlbench.delta_m_reason", chosen["delta_m_reason"][:5000]))
        if result.error:
            tags.append(RunTag("mtlbench.error", result.error[:5000]))
        self.client.log_batch(run_id, tags=tags)
        with tempfile.TemporaryDirectory() as folder:
            front = Path(folder) / "front.json"
            front.write_text(json.dumps(_front_artifact(result, rows), indent=1))
            self.client.log_artifact(run_id, str(front))
        status = "FINISHED" if result.status in ("completed", "diverged") else "FAILED"
        self.client.set_terminated(run_id, status=status)

    def finish_suite(self) -> None:
        self.client.set_terminated(self.parent_run_id, status="FINISHED")

    def interrupt(self, open_run_ids: list[str]) -> int:
        """The suite was interrupted: write the open runs' queued points, mark them and the
        suite run KILLED. Returns the number of runs marked."""
        for run_id in open_run_ids:
            self._flush(run_id)
            self.client.set_terminated(run_id, status="KILLED")
        self.client.set_terminated(self.parent_run_id, status="KILLED")
        return len(open_run_ids)


def _final_metrics(result: RunResult, rows: list[dict[str, Any]]) -> dict[str, float]:
    final: dict[str, float] = {
        "steps": float(result.steps),
        "wall_seconds": result.wall_seconds,
        "train_seconds": result.train_seconds,
        "peak_memory_bytes": float(result.peak_memory_bytes),
        **{k: float(v) for k, v in result.budget.items()},
        **{
            f"engine.{key}": float(value)
            for key, value in result.engine_stats.items()
            if not isinstance(value, str)
        },
    }
    if result.hypervolume is not None:  # every numeric field of the estimate, as in Parquet
        for name, value in hypervolume_columns(result.hypervolume).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                final[name] = float(value)
    final["evaluation_seconds"] = result.evaluation_seconds
    if rows and rows[0]["run_delta_m_pct"] is not None:
        final["delta_m_pct"] = rows[0]["run_delta_m_pct"]  # test Δm% of the selected solution
        chosen = selected_row(rows)
        if chosen.get("val_delta_m_pct") is not None:
            final["val_delta_m_pct"] = chosen["val_delta_m_pct"]
    for solution in result.solutions:
        for name, metric in zip(result.task_names, solution.test_metrics, strict=True):
            final[f"test.{name}.s{solution.index}"] = metric
    if len(result.solutions) == 1:
        for name, metric in zip(result.task_names, result.solutions[0].test_metrics, strict=True):
            final[f"test.{name}"] = metric
    return final


def _front_artifact(result: RunResult, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "tasks": result.task_names,
        "hv_reference": result.hv_reference,
        "selection_rule": rows[0]["selection_rule"] if rows else "",
        "solutions": [
            {
                "label": row["solution_label"],
                "coordinates": row.get("coordinates"),  # absent from a failed run's row
                "test_objectives": row.get("test_objectives"),
                "on_front": row["on_front"],
                "selected": row["selected"],
                "val_delta_m_pct": row["val_delta_m_pct"],
                "delta_m_pct": row["delta_m_pct"],
            }
            for row in rows
            if row["solution_index"] >= 0  # a failed run's placeholder row has no solution
        ],
    }
