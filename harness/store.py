"""The Parquet result tables, the contract with the leaderboard.

``runs/``: one row per (run, solution), a :class:`~mtlbench.harness.records.RunRecord`.
``evaluations/``: one row per (run, evaluation during training), an
:class:`~mtlbench.harness.records.EvaluationRecord` (the anytime curve).

Each run is one file ``<results_dir>/<table>/<run_hash>.parquet`` written atomically (temporary
file, then rename), so a killed writer never leaves half a run, and rewriting a run replaces its
rows instead of duplicating them. A table is every file of its folder read together, with the
current schema: a file written before a column existed reads back with that column null.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from mtlbench.harness.records import EVALUATION_SCHEMA, RUN_SCHEMA, complete_row

FINAL_STATUSES = ("completed", "diverged")

SCHEMA = RUN_SCHEMA  # the run table's columns, derived from RunRecord


def _write_atomic(
    directory: Path, run_hash: str, rows: list[dict[str, Any]], schema: pa.Schema
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([complete_row(row, schema) for row in rows], schema=schema)
    target = directory / f"{run_hash}.parquet"
    temporary = directory / f".{run_hash}.{os.getpid()}.tmp"
    pq.write_table(table, temporary)
    os.replace(temporary, target)
    return target


def _read_folder(directory: Path, schema: pa.Schema) -> pa.Table:
    files = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
    if not files:
        return schema.empty_table()
    return pa.concat_tables([pq.read_table(f, schema=schema) for f in files])


class ResultStore:
    """Read and write the run table (``results_dir/runs``) and the evaluation table
    (``results_dir/evaluations``)."""

    def __init__(self, results_dir: Path):
        self.directory = Path(results_dir) / "runs"
        self.evaluations_directory = Path(results_dir) / "evaluations"

    def write_run(self, run_hash: str, rows: list[dict[str, Any]]) -> Path:
        """Write (or replace) the rows of one run, atomically. A row lacking a column gets
        null there; a key that is not a column is an error."""
        return _write_atomic(self.directory, run_hash, rows, SCHEMA)

    def write_evaluations(self, run_hash: str, rows: list[dict[str, Any]]) -> Path:
        """Write (or replace) the anytime rows of one run, atomically."""
        return _write_atomic(self.evaluations_directory, run_hash, rows, EVALUATION_SCHEMA)

    def read(self) -> pa.Table:
        """The whole run table (empty, with the schema, if nothing was recorded)."""
        return _read_folder(self.directory, SCHEMA)

    def rows(self) -> list[dict[str, Any]]:
        return self.read().to_pylist()

    def evaluation_rows(self) -> list[dict[str, Any]]:
        """The whole evaluation table as rows (none for results written before it existed)."""
        return _read_folder(self.evaluations_directory, EVALUATION_SCHEMA).to_pylist()

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
