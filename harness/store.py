"""The Parquet result table: one row per (run, solution), the contract with the leaderboard.

Each run is one file ``<results_dir>/runs/<run_hash>.parquet`` written atomically (temporary
file, then rename), so a killed writer never leaves half a run, and rewriting a run replaces its
rows instead of duplicating them. The table is every file of that folder read together.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

FINAL_STATUSES = ("completed", "diverged")

# Columns and their types; list columns hold one value per task.
SCHEMA = pa.schema(
    [
        ("run_hash", pa.string()),
        ("suite", pa.string()),
        ("method", pa.string()),
        ("method_label", pa.string()),
        ("method_params", pa.string()),
        ("engine", pa.string()),
        ("dataset", pa.string()),
        ("dataset_params", pa.string()),
        ("seed", pa.int64()),
        ("budget_kind", pa.string()),
        ("budget_limit", pa.float64()),
        ("budget_spent", pa.float64()),
        ("budget_spent_flops", pa.float64()),
        ("training", pa.string()),
        ("scoring", pa.string()),
        ("scored_step", pa.int64()),
        ("device", pa.string()),
        ("status", pa.string()),
        ("stop_reason", pa.string()),
        ("error", pa.string()),
        ("steps", pa.int64()),
        ("train_seconds", pa.float64()),
        ("wall_seconds", pa.float64()),
        ("peak_memory_bytes", pa.int64()),
        ("memory_measure", pa.string()),
        ("engine_stats", pa.string()),  # JSON of the engine's report (e.g. ray_sharded's bytes)
        ("hypervolume", pa.float64()),
        ("hv_method", pa.string()),
        ("hv_standard_error", pa.float64()),
        ("hv_reference", pa.list_(pa.float64())),
        ("task_names", pa.list_(pa.string())),
        ("higher_is_better", pa.list_(pa.bool_())),
        ("solution_index", pa.int64()),
        ("solution_label", pa.string()),
        ("coordinates", pa.list_(pa.float64())),
        ("on_front", pa.bool_()),
        ("val_losses", pa.list_(pa.float64())),
        ("val_metrics", pa.list_(pa.float64())),
        ("val_objectives", pa.list_(pa.float64())),
        ("test_losses", pa.list_(pa.float64())),
        ("test_metrics", pa.list_(pa.float64())),
        ("test_objectives", pa.list_(pa.float64())),
        ("delta_m_pct", pa.float64()),
        ("run_delta_m_pct", pa.float64()),
        ("delta_m_baseline_runs", pa.list_(pa.string())),
        ("mlflow_run_id", pa.string()),
        ("package_version", pa.string()),
        ("torch_version", pa.string()),
        ("environment", pa.string()),
        ("started_at", pa.string()),
    ]
)


class ResultStore:
    """Read and write the run table under ``results_dir/runs``."""

    def __init__(self, results_dir: Path):
        self.directory = Path(results_dir) / "runs"

    def write_run(self, run_hash: str, rows: list[dict[str, Any]]) -> Path:
        """Write (or replace) the rows of one run, atomically."""
        self.directory.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(rows, schema=SCHEMA)
        target = self.directory / f"{run_hash}.parquet"
        temporary = self.directory / f".{run_hash}.{os.getpid()}.tmp"
        pq.write_table(table, temporary)
        os.replace(temporary, target)
        return target

    def read(self) -> pa.Table:
        """The whole table (empty, with the schema, if nothing was recorded)."""
        files = sorted(self.directory.glob("*.parquet")) if self.directory.is_dir() else []
        if not files:
            return SCHEMA.empty_table()
        return pa.concat_tables([pq.read_table(f, schema=SCHEMA) for f in files])

    def rows(self) -> list[dict[str, Any]]:
        return self.read().to_pylist()

    def finished_hashes(self) -> set[str]:
        """Runs with a final outcome (completed or diverged); failed runs are retried."""
        table = self.read()
        if table.num_rows == 0:
            return set()
        return {
            row["run_hash"]
            for row in table.select(["run_hash", "status"]).to_pylist()
            if row["status"] in FINAL_STATUSES
        }


def baseline_for(
    rows: list[dict[str, Any]], like: dict[str, Any]
) -> tuple[list[float], list[str]] | None:
    """Single-task baseline metrics (T,) for runs like ``like`` and the run hashes they come from.

    Baseline runs: ``single_task`` rows of the same dataset, dataset parameters, budget, training
    protocol, scoring and device, one per task, completed. Same seed when all tasks have it;
    otherwise the mean over the seeds that do. None if some task has no baseline at all.
    """
    keys = (
        "dataset",
        "dataset_params",
        "budget_kind",
        "budget_limit",
        "training",
        "scoring",
        "device",
    )
    by_seed: dict[int, dict[int, tuple[float, str]]] = {}
    for row in rows:
        if row["method"] != "single_task" or row["status"] != "completed":
            continue
        if any(row[k] != like[k] for k in keys):
            continue
        task = json.loads(row["method_params"])["task"]
        by_seed.setdefault(row["seed"], {})[task] = (row["test_metrics"][task], row["run_hash"])
    num_tasks = len(like["task_names"])
    complete = {seed: tasks for seed, tasks in by_seed.items() if len(tasks) == num_tasks}
    if like["seed"] in complete:
        chosen = [complete[like["seed"]]]
    elif complete:
        chosen = list(complete.values())
    else:
        return None
    metrics = [sum(tasks[t][0] for tasks in chosen) / len(chosen) for t in range(num_tasks)]
    runs = sorted({tasks[t][1] for tasks in chosen for t in range(num_tasks)})
    return metrics, runs
